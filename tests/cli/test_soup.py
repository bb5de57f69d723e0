"""`medstream soup`: the SOUP list follows the extras a requirement asks for, read from the real installed metadata."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

from medstream.cli.commands import soup

ROOT = Path(__file__).resolve().parents[2]


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not (_installed("tritonclient") and _installed("grpcio")), reason="needs tritonclient[grpc] "
                    "(the dev extra installs it)")
def test_a_dependencys_extras_bring_their_requirements_and_only_when_asked():
    names = lambda extras: {soup._norm(n) for n, _, _ in soup._requirements("tritonclient", extras)}  # noqa: E731
    assert "grpcio" in names({"grpc"})
    assert "grpcio" not in names(set()), "a bare tritonclient does not pull in gRPC"
    # medstream's own requirement asks tritonclient for [grpc,http]: the walk must follow it.
    mine = {soup._norm(n): x for n, e, x in soup._requirements("medstream") if e == "triton"}
    assert {"grpc", "http"} <= mine["tritonclient"]


@pytest.mark.skipif(not (_installed("tritonclient") and _installed("grpcio") and _installed("geventhttpclient")),
                    reason="needs tritonclient[grpc,http] (the dev extra installs it)")
def test_the_list_holds_what_tritonclient_grpc_http_installs_under_the_triton_extra():
    rows = {soup._norm(r["name"]): r for r in soup.collect()}
    for dep in ("tritonclient", "grpcio", "geventhttpclient", "gevent"):
        assert rows[dep]["scope"] == "optional [triton]", (dep, rows[dep])
    assert "selenium" not in rows, "development tools are not shipped and not listed"
    assert rows["jetson-stats"]["flag"].startswith("AGPL"), "always listed and flagged, installed or not"


def test_every_direct_dependency_has_a_purpose_and_a_row_in_docs_soup_md():
    text = (ROOT / "docs" / "SOUP.md").read_text(encoding="utf-8")
    listed = {soup._norm(m) for m in re.findall(r"^\| ([^|]+?) \|", text, flags=re.M)}
    for name, extra, _ in soup._requirements("medstream"):
        if extra in soup.EXCLUDED_EXTRAS:
            continue
        key = soup._norm(name)
        assert soup.PURPOSE.get(key) or soup.PURPOSE.get(name), f"{name}: add why medstream uses it to PURPOSE"
        assert key in listed, f"{name} ({extra or 'core'}) is missing from docs/SOUP.md: medstream soup --out docs/SOUP.md"
