from pathlib import Path

import yaml

from medstream.runtime.config import RunConfig, load_config

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "runtime" / "default.yaml"


def test_the_shipped_default_yaml_is_valid_and_is_the_default():
    cfg = load_config(DEFAULT_YAML, {})
    assert cfg == RunConfig()


def test_the_default_yaml_documents_every_key():
    documented = yaml.safe_load(DEFAULT_YAML.read_text())
    sections = set(RunConfig.model_fields) - {"inject", "security"}
    assert sections <= set(documented)
    for section in sections - {"streams", "models"}:  # lists of sections
        assert set(RunConfig.model_fields[section].annotation.model_fields) <= set(documented[section]), section
