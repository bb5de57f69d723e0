from __future__ import annotations

import pytest

from medstream.runtime.config import DEFAULT_MODEL, DEFAULT_PUBLISH, DEFAULT_SOURCE, load_config
from medstream.runtime.errors import ConfigError


def test_defaults_are_the_built_in_run():
    cfg = load_config(None, {})
    assert (cfg.source, cfg.model, cfg.publish, cfg.backend) == (DEFAULT_SOURCE, DEFAULT_MODEL, DEFAULT_PUBLISH, "auto")


def test_flags_override_yaml_and_none_flags_do_not(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("source: synthetic://fluoroscopy\nthreads: 2\n")
    cfg = load_config(p, {"threads": 1, "source": None})
    assert cfg.source == "synthetic://fluoroscopy" and cfg.threads == 1


@pytest.mark.parametrize("text, needle", [
    ("sorce: x\n", "unknown key 'sorce'"),
    ("inject:\n  delay_ms:\n    inference: 5\n", "inject.delay_ms.inference"),
    ("publish: http://x\n", "'publish'"),
    ("status_interval_s: 5\n", "'status_interval_s'"),
    ("- a\n- b\n", "must hold a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_config_names_the_key_and_the_file(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p, {})
    assert needle in str(exc.value) and str(p) in str(exc.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml", {})
