"""One owner for atomic file writes: ``medstream.runtime.files``.

A grep of the tree: no module but runtime/files.py renames a temporary file into place or makes one
with ``mkstemp`` for that purpose. Plus the helpers themselves, on real files: contents, mode
(what a plain ``open()`` gives, 0644 with umask 022) and nothing left behind on failure.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from medstream.runtime import files

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "cli", "export", "calibration", "benchmarks")
OWNER = "runtime/files.py"
HAND_ROLLED = re.compile(r"\bos\.(replace|rename)\(|\bmkstemp\(|\.rename\(|\btmp\w*\.replace\(|\bshutil\.move\(")

#: Files still writing by hand, each with why it is not fixed yet. The list only shrinks: an entry whose
#: file no longer matches fails test_pending_list_is_current, so remove it then.
PENDING: dict[str, str] = {}


def _hand_rolled() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == OWNER:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if HAND_ROLLED.search(line.split("#", 1)[0]):
                    found.setdefault(rel, []).append(f"{rel}:{n}: {line.strip()}")
    return found


def test_no_hand_rolled_atomic_write_outside_runtime_files():
    found = {rel: lines for rel, lines in _hand_rolled().items() if rel not in PENDING}
    assert not found, ("atomic writes must go through medstream.runtime.files (write_bytes_atomic, "
                       "write_text_atomic, write_json_atomic, atomic_file, atomic_path, publish):\n"
                       + "\n".join(line for lines in found.values() for line in lines))


def test_pending_list_is_current():
    stale = [rel for rel in PENDING if rel not in _hand_rolled()]
    assert not stale, f"{stale} no longer write by hand: remove them from PENDING in {Path(__file__).name}"


def test_the_grep_sees_a_hand_rolled_write():
    assert HAND_ROLLED.search("    os.replace(tmp, path)") and HAND_ROLLED.search("tmp.replace(out)")
    assert HAND_ROLLED.search("fd, tmp = tempfile.mkstemp(dir=d)")
    assert not HAND_ROLLED.search('name = text.replace("a", "b")')


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_helper_writes_with_a_normal_files_mode(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    normal = _mode(plain)  # what open() gives under this process's umask (0644 with the usual 022)
    assert normal == files.DEFAULT_MODE and normal != 0o600  # not mkstemp's owner-only mode
    written = [files.write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01", durable=True),
               files.write_text_atomic(tmp_path / "b.txt", "héllo"),
               files.write_json_atomic(tmp_path / "c.json", {"k": 1})]
    with files.atomic_file(tmp_path / "d.bin") as f:
        f.write(b"abc")
    written.append(tmp_path / "d.bin")
    with files.atomic_path(tmp_path / "e.npz", suffix=".npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npz")
        tmp.write_bytes(b"npz")
    written.append(tmp_path / "e.npz")
    assert [_mode(p) for p in written] == [normal] * len(written)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b.txt").read_text("utf-8") == "héllo"
    assert (tmp_path / "d.bin").read_bytes() == b"abc" and (tmp_path / "e.npz").read_bytes() == b"npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json", "d.bin", "e.npz", "plain"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = files.write_text_atomic(tmp_path / "out.json", "old")
    with pytest.raises(RuntimeError), files.atomic_file(target, "w") as f:
        f.write("half of the new")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("library failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(ValueError):
        files.atomic_file(target, "a").__enter__()  # appending is not an atomic whole-file write
