"""Every Python package folder ships: pyproject lists packages explicitly (package-dir layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check itself needs one version only

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"runtime": "medstream.runtime", "cli": "medstream.cli", "export": "medstream.export",
         "calibration": "medstream.calibration", "benchmarks": "medstream.benchmarks"}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, name in ROOTS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_runtime_never_imports_export_calibration_benchmarks_or_cli():
    offenders = []
    for path in (REPO / "runtime").rglob("*.py"):
        text = path.read_text()
        for other in ("medstream.export", "medstream.calibration", "medstream.benchmarks", "medstream.cli"):
            if f"from {other}" in text or f"import {other}" in text:
                offenders.append(f"{path.relative_to(REPO)} imports {other}")
    assert offenders == []
