"""The package rules of docs/ARCHITECTURE.md, as import-linter contracts (``[tool.importlinter]`` in
pyproject.toml), checked on the real tree, and shown to fail on a copy of the tree with one forbidden
import added (so this test cannot pass with the contracts switched off)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "cli", "export", "calibration", "benchmarks")


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        found = shutil.which("lint-imports")
        if found is None:
            pytest.fail("lint-imports is not installed: pip install -e '.[dev]' (import-linter is in the dev extra)")
        exe = Path(found)
    return str(exe)


def _run(cwd: Path, env: dict[str, str] | None = None, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    only = ["--contract", contract] if contract else []
    return subprocess.run([_lint_imports(), "--no-cache", *only, str(REPO / "pyproject.toml")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_every_import_contract():
    out = _run(REPO)
    assert out.returncode == 0, f"import contracts broken:\n{out.stdout}\n{out.stderr}"
    assert " kept, 0 broken." in out.stdout


def _copy_tree(dest: Path) -> Path:
    """The five packages' .py files under ``dest/medstream/`` (a plain namespace package)."""
    root = dest / "medstream"
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, ignore=lambda d, names: [
            n for n in names if not n.endswith(".py") and not (Path(d) / n).is_dir() or n == "__pycache__"])
    return dest


@pytest.mark.parametrize("importer,forbidden,contract", [
    ("runtime/gpu/cuda.py", "medstream.runtime.backends", "runtime-layers"),      # the old gpu -> backends cycle
    ("runtime/sources/base.py", "medstream.runtime.backends", "runtime-layers"),   # sources never import backends
    ("runtime/engine/cache.py", "medstream.runtime.service", "runtime-layers"),    # engine below the service layer
    ("runtime/contract.py", "medstream.cli", "top-level"),                         # runtime imports none above it
    ("calibration/cache.py", "medstream.export", "top-level"),                     # siblings stay apart
])
def test_a_forbidden_import_breaks_the_contracts(tmp_path, importer, forbidden, contract):
    tree = _copy_tree(tmp_path)
    target = tree / "medstream" / importer
    target.write_text(target.read_text() + f"\nimport {forbidden}  # planted by the test\n")
    # The copy comes first on the path (the editable install's finder is consulted only after it): checked.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    check = subprocess.run([sys.executable, "-c", "import medstream.runtime, sys; print(medstream.runtime.__file__)"],
                           env=env, capture_output=True, text=True, cwd=tree)
    assert str(tree) in check.stdout, f"the copy is not what gets analysed: {check.stdout}{check.stderr}"
    assert _run(tree, env).returncode != 0
    out = _run(tree, env, contract)  # and it is this contract that catches it
    assert out.returncode != 0, f"planted import {importer} -> {forbidden} was not caught by {contract}:\n{out.stdout}"
    module = "medstream." + importer[:-3].replace("/", ".")
    assert "BROKEN" in out.stdout and module in out.stdout and forbidden in out.stdout
