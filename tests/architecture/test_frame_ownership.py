"""One owner for reading frames: ``medstream.runtime.sources`` (issue 12).

Two grep-level rules over the source tree (``runtime``, ``cli``, ``export``, ``calibration``,
``benchmarks``), read with :mod:`ast` so comments and docstrings do not count:

* the frame-folder format (image suffixes, mask tags, ``.truth.npy``, ``.json`` headers, ``NNNNNNNN``
  names) is defined once, in ``runtime/sources/folder_format.py``: no other module assigns one of its
  constant names or spells one of its file-name literals in code;
* no module outside ``runtime/sources/`` opens a ZeroMQ SUB socket to read frames (a SUB/XSUB socket
  in a module that decodes frames or subscribes to the ``frame`` topic). Subscribers of overlays and
  status are fine.

Each rule is also run on a small tree with a violation, so the checks are shown to be able to fail.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "cli", "export", "calibration", "benchmarks")
SOURCES = "runtime/sources/"
FORMAT_OWNER = "runtime/sources/folder_format.py"

#: Names of the folder-format constants (module-level or class-level assignments count).
FORMAT_NAMES = frozenset({"IMAGE_SUFFIXES", "ARRAY_SUFFIX", "FRAME_SUFFIXES", "ARCHIVE_SUFFIX", "TRUTH_SUFFIX",
                          "HEADER_SUFFIX", "MASK_TAGS", "NAME_DIGITS", "IMAGES_DIR", "MASKS_DIR"})
#: File-name literals only the format may spell (also inside longer strings and f-strings).
FORMAT_LITERALS = frozenset({".truth.npy", "_mask", ".mask", "-mask", ".truth"})
MASK_FILE_NAME = re.compile(r"(\.truth\.npy|[_.\-]mask\.[A-Za-z]+)$")

#: Frame readers outside runtime/sources/ that are allowed, each with its reason.
FRAME_READER_EXCEPTIONS = {
    "benchmarks/naive_loop.py": "the benchmark's baseline: the loop a user writes WITHOUT medstream (raw SUB, "
                                "unbounded queue); reading through medstream's source would make it not a baseline",
}


def _modules(root: Path) -> dict[str, ast.Module]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            out[path.relative_to(root).as_posix()] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def _docstring_nodes(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def format_definitions(modules: dict[str, ast.Module]) -> list[str]:
    """``file:line: what`` for every folder-format constant or literal outside the owner."""
    found = []
    for rel, tree in modules.items():
        if rel == FORMAT_OWNER:
            continue
        docs = _docstring_nodes(tree)
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id in FORMAT_NAMES:
                    found.append(f"{rel}:{node.lineno}: defines {t.id}")
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                    and (node.value in FORMAT_LITERALS or MASK_FILE_NAME.search(node.value))):
                found.append(f"{rel}:{node.lineno}: spells {node.value!r}")
    return found


def _is_sub_socket(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in ("SUB", "XSUB") and \
        isinstance(node.value, ast.Name) and node.value.id == "zmq"


def _name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _is_frame_topic(node: ast.AST) -> bool:
    return _name(node) == "FRAME_TOPIC" or (isinstance(node, ast.Constant) and node.value in (b"frame", "frame"))


def _reads_frames(node: ast.AST) -> bool:
    """A call of ``decode_frame``, or a subscription to the frame topic (``FRAME_TOPIC``/``b"frame"``)."""
    if not isinstance(node, ast.Call):
        return False
    name = _name(node.func)
    if name == "decode_frame":
        return True
    return name in ("setsockopt", "setsockopt_string", "subscribe") and any(_is_frame_topic(a) for a in node.args)


def frame_readers(modules: dict[str, ast.Module]) -> list[str]:
    """Modules outside runtime/sources/ with a ZeroMQ SUB socket that reads frames."""
    found = []
    for rel, tree in modules.items():
        if rel.startswith(SOURCES):
            continue
        nodes = list(ast.walk(tree))
        subs = [n.lineno for n in nodes if _is_sub_socket(n)]
        reads = [n.lineno for n in nodes if _reads_frames(n)]
        if subs and reads:
            found.append(f"{rel}: SUB socket (line {subs[0]}) reading frames (line {reads[0]})")
    return found


def test_folder_format_is_defined_once():
    found = format_definitions(_modules(REPO))
    assert not found, ("the frame-folder format lives in medstream.runtime.sources.folder_format; import it from "
                       "there:\n" + "\n".join(found))


def test_only_runtime_sources_reads_frames_from_zeromq():
    found = [f for f in frame_readers(_modules(REPO)) if f.split(":")[0] not in FRAME_READER_EXCEPTIONS]
    assert not found, ("read frames through medstream.runtime.sources (open_source('zmq+tcp://...'), "
                       "read_frames, read_labelled_frames), not a SUB socket of your own:\n" + "\n".join(found))


def test_exceptions_are_current():
    readers = {f.split(":")[0] for f in frame_readers(_modules(REPO))}
    stale = [rel for rel in FRAME_READER_EXCEPTIONS if rel not in readers]
    assert not stale, f"{stale} no longer read frames: remove them from FRAME_READER_EXCEPTIONS"


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, ast.Module]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
    return _modules(tmp_path)


def test_the_checks_see_a_second_definition_and_a_frame_reader(tmp_path):
    modules = _tree(tmp_path, {
        FORMAT_OWNER: 'TRUTH_SUFFIX = ".truth.npy"\nMASK_TAGS = ("_mask",)\n',
        "calibration/data.py": '"""Skips NNNNNNNN.truth.npy files (a docstring: fine)."""\nTRUTH_SUFFIX = ".truth.npy"\n',
        "runtime/evaluation.py": 'def mask_of(stem):\n    return f"{stem}_mask.png"\n',
        "cli/commands/view.py": 'import zmq\nfrom medstream.runtime.wire import decode_frame\n'
                                's = zmq.Context().socket(zmq.SUB)\nf = decode_frame(s.recv_multipart())\n',
        "benchmarks/relay.py": 'import zmq\ns = zmq.Context().socket(zmq.SUB)\ns.setsockopt(zmq.SUBSCRIBE, b"frame")\n',
        "benchmarks/subscriber.py": 'import zmq\ns = zmq.Context().socket(zmq.SUB)\n'
                                    's.setsockopt(zmq.SUBSCRIBE, b"overlay")\nbad = [b"frame", b"{not json"]\n',
        "runtime/sources/zmq_source.py": 'import zmq\nfrom medstream.runtime.wire import decode_frame\n'
                                         's = zmq.Context().socket(zmq.SUB)\n',
    })
    found = format_definitions(modules)
    assert any(f.startswith("calibration/data.py:2: defines TRUTH_SUFFIX") for f in found)
    assert any(f.startswith("calibration/data.py:2: spells '.truth.npy'") for f in found)
    assert any(f.startswith("runtime/evaluation.py:2: spells '_mask.png'") for f in found)  # an f-string part
    assert not any(f.startswith(FORMAT_OWNER) for f in found)
    readers = {f.split(":")[0] for f in frame_readers(modules)}
    assert readers == {"cli/commands/view.py", "benchmarks/relay.py"}
