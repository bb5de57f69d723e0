from __future__ import annotations

import pytest

from medstream.runtime.config import DEFAULT_MODEL, DEFAULT_PUBLISH, DEFAULT_SOURCE, load_config
from medstream.runtime.errors import ConfigError


def test_defaults_are_the_built_in_run():
    cfg = load_config(None, {})
    assert (cfg.source.uri, cfg.model.file, cfg.publish.endpoints, cfg.model.backend) == (
        DEFAULT_SOURCE, DEFAULT_MODEL, [DEFAULT_PUBLISH], "auto")


def test_flags_override_yaml_and_none_flags_do_not(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("source: synthetic://fluoroscopy\nthreads: 2\n")
    cfg = load_config(p, {"threads": 1, "source": None})
    assert cfg.source.uri == "synthetic://fluoroscopy" and cfg.model.threads == 1


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


def test_sections_and_first_release_flat_keys_give_the_same_config(tmp_path):
    flat, sectioned = tmp_path / "flat.yaml", tmp_path / "sections.yaml"
    flat.write_text("source: zmq+tcp://127.0.0.1:5555\nsource_id: room-1\nmodel: fluoroscopy\nthreads: 2\n"
                    "publish: tcp://127.0.0.1:6000\nmax_age_ms: 150\nmetrics_port: 9108\nduration: 5\n")
    sectioned.write_text("source:\n  uri: zmq+tcp://127.0.0.1:5555\n  id: room-1\nmodel:\n  file: fluoroscopy\n"
                         "  threads: 2\npublish:\n  endpoints: [tcp://127.0.0.1:6000]\n  max_age_ms: 150\n"
                         "service:\n  metrics_port: 9108\nrun:\n  duration: 5\n")
    a, b = load_config(flat, {}), load_config(sectioned, {})
    assert a == b
    assert (b.source.id, b.model.file, b.publish.max_age_ms, b.service.metrics_port, b.run.duration) == (
        "room-1", "fluoroscopy", 150, 9108, 5)
    # a flag (flat, as the command line gives it) overrides one field of a section and keeps the others
    c = load_config(sectioned, {"threads": 1})
    assert c.model.threads == 1 and c.model.file == "fluoroscopy"


@pytest.mark.parametrize("roi", ["[0, 0, 0, 0]", "[-1, 0, 10, 10]", "[0, 0, 10, -5]"])
def test_an_empty_or_negative_roi_is_refused_at_config_time(tmp_path, roi):
    p = tmp_path / "c.yaml"
    p.write_text(f"source:\n  roi: {roi}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p, {})
    assert "source.roi" in str(exc.value) and "w, h > 0" in str(exc.value)


def test_an_error_in_a_section_names_the_section_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  threds: 2\n")
    with pytest.raises(ConfigError, match="unknown key 'model.threds'"):
        load_config(p, {})
