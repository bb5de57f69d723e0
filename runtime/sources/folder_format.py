"""The frame-folder format: the one definition of how frames and their truth masks lie in a folder.

``medstream record`` writes it, :class:`~medstream.runtime.sources.file_source.FileSource` replays it,
and evaluation, calibration and training read frames with truth from it (through
:func:`medstream.runtime.sources.read_labelled_frames`). Change a name here and all of them follow.

Layouts understood (:func:`list_folder`):

* a ``medstream record`` folder: ``NNNNNNNN.npy`` frames, each with an optional ``NNNNNNNN.json``
  header and ``NNNNNNNN.truth.npy`` ground-truth class map;
* ``images/`` + ``masks/`` sub-folders whose files share stems (``images/a.png`` + ``masks/a.png``);
* ``NAME.ext`` beside ``NAME_mask.ext`` (also ``NAME.mask.ext``, ``NAME-mask.ext``), any frame suffix;
* ``.npz`` files holding an ``image`` and a ``mask`` (or ``truth``) array, each its own pair.

A mask file is never a frame: it rides along with its frame as ``Frame.truth``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Image files OpenCV decodes, in the order a mask beside a frame is looked for after ``.npy``.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Raw numpy frames (``uint8``/``uint16``, ``HxW`` or ``HxWxC``): what ``medstream record`` writes.
ARRAY_SUFFIX = ".npy"
#: Every single-frame file suffix; ``.npy`` first (a recording's own format wins a name clash).
FRAME_SUFFIXES = (ARRAY_SUFFIX, *IMAGE_SUFFIXES)
#: An ``image`` + ``mask`` pair in one file.
ARCHIVE_SUFFIX = ".npz"
ARCHIVE_IMAGE_KEY = "image"
#: Keys of the truth array in an ``.npz``, in order of preference.
ARCHIVE_MASK_KEYS = ("mask", "truth")
#: What ``medstream record`` writes beside ``NNNNNNNN.npy``: its header and its ground truth.
HEADER_SUFFIX = ".json"
TRUTH_SUFFIX = ".truth.npy"
#: ``NAME<tag><suffix>`` is the truth mask of ``NAME<suffix'>``; ``.truth`` is what ``record`` writes.
MASK_TAGS = ("_mask", ".mask", "-mask", ".truth")
#: Sub-folders of the images/ + masks/ layout.
IMAGES_DIR = "images"
MASKS_DIR = "masks"
#: ``medstream record`` names frames by arrival count with this many digits, so names sort in order.
NAME_DIGITS = 8


def recorded_name(index: int, suffix: str) -> str:
    """``NNNNNNNN<suffix>``: the name ``medstream record`` gives frame ``index``'s file."""
    return f"{index:0{NAME_DIGITS}d}{suffix}"


def header_path(frame_file: Path) -> Path:
    """The ``.json`` header beside a recorded frame file."""
    return frame_file.with_suffix(HEADER_SUFFIX)


def is_mask_file(path: Path) -> bool:
    """True for a truth mask (``NAME_mask.png``, ``NNNNNNNN.truth.npy``...): never replayed as a frame."""
    return path.suffix.lower() in FRAME_SUFFIXES and any(path.stem.endswith(tag) for tag in MASK_TAGS)


def is_frame_file(path: Path) -> bool:
    """True for a file a folder source replays: a frame suffix (or ``.npz``) and not a mask."""
    suffix = path.suffix.lower()
    return suffix == ARCHIVE_SUFFIX or (suffix in FRAME_SUFFIXES and not is_mask_file(path))


@dataclass(frozen=True)
class FolderItem:
    """One frame file of a folder and its truth mask file (``None`` when it has none).

    For an ``.npz`` the mask is the file itself (its ``mask`` array).
    """

    image: Path
    mask: Path | None


def has_images_and_masks(root: Path) -> bool:
    """Whether ``root`` uses the ``images/`` + ``masks/`` layout."""
    return (root / IMAGES_DIR).is_dir() and (root / MASKS_DIR).is_dir()


def list_folder(root: Path) -> list[FolderItem]:
    """The frames of a folder in name order, each with its truth mask file if one is there.

    Mask files are not frames; other files (README, ``.json`` headers) are skipped. See the module
    docstring for the layouts.
    """
    if has_images_and_masks(root):
        masks = {p.stem: p for p in sorted((root / MASKS_DIR).iterdir())
                 if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES}
        return [FolderItem(p, masks.get(p.stem)) for p in sorted((root / IMAGES_DIR).iterdir())
                if p.is_file() and is_frame_file(p)]
    files = sorted(p for p in root.iterdir() if p.is_file())
    names = {p.name: p for p in files}
    items = []
    for f in files:
        if not is_frame_file(f):
            continue
        if f.suffix.lower() == ARCHIVE_SUFFIX:
            items.append(FolderItem(f, f))
            continue
        mask = next((names[f"{f.stem}{tag}{ext}"] for tag in MASK_TAGS for ext in FRAME_SUFFIXES
                     if f"{f.stem}{tag}{ext}" in names), None)
        items.append(FolderItem(f, mask))
    return items


#: What a folder of frames with truth may look like, for error messages.
LABELLED_LAYOUTS = ("a `medstream record` folder (NNNNNNNN.npy + NNNNNNNN.truth.npy), images/ + masks/ "
                    "sub-folders with matching names, NAME.npy beside NAME_mask.npy (.png also works), or "
                    ".npz files with 'image' and 'mask' arrays")

__all__ = [
    "ARCHIVE_IMAGE_KEY", "ARCHIVE_MASK_KEYS", "ARCHIVE_SUFFIX", "ARRAY_SUFFIX", "FRAME_SUFFIXES", "HEADER_SUFFIX",
    "IMAGES_DIR", "IMAGE_SUFFIXES", "LABELLED_LAYOUTS", "MASKS_DIR", "MASK_TAGS", "NAME_DIGITS", "TRUTH_SUFFIX",
    "FolderItem", "has_images_and_masks", "header_path", "is_frame_file", "is_mask_file", "list_folder",
    "recorded_name",
]
