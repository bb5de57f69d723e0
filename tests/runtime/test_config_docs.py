"""docs/CONFIG.md is generated from the config models; it must not drift from them."""

from pathlib import Path

from medstream.runtime.config import RunConfig, config_reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_config_md_is_what_the_generator_writes():
    assert DOC.read_text() == config_reference_markdown(), (
        "docs/CONFIG.md is stale: run 'python -m medstream.runtime.config --markdown > docs/CONFIG.md'")


def test_config_md_lists_every_key_of_every_section():
    text = DOC.read_text()
    for section, info in RunConfig.model_fields.items():
        if section in ("streams", "models"):  # lists of sections, described in prose
            assert f"## `{section}`" in text
            continue
        for name in info.annotation.model_fields:
            assert f"`{section}.{name}`" in text, f"{section}.{name} missing from docs/CONFIG.md"
