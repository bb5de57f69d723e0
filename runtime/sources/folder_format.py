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
from typing import Any

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


#: Paste-able conversion of black/white (0/255) mask images into class maps (255 -> class 1), in place.
BINARY_MASK_FIX = ("convert them to class ids (0 = background, 1 = the structure) once, in place: python -c \"import "
                   "sys, cv2; [cv2.imwrite(f, (cv2.imread(f, cv2.IMREAD_GRAYSCALE) > 127).astype('uint8')) for f in "
                   "sys.argv[1:]]\" MASKS...  (for .npy: np.save(f, (np.load(f) > 127).astype(np.uint8)))")


def mask_problem(mask: Any) -> tuple[str, str] | None:
    """Why ``mask`` (as read from its file) is not a class map, as ``(what, fix)``; ``None`` when it may be one.

    A truth mask is an ``HxW`` array of class ids (0 = background, then the contract's class order). Two
    common exports are pictures of masks instead, and both used to be read wrong or refused without a word
    on how to fix them:

    * black/white images (values 0 and 255 only): 255 is not a class id of any medstream model. medstream
      refuses them rather than reading 255 as class 1: the same file could be a 2-class mask or the first
      levels of a display-scaled multi-class one, and an accuracy number must not rest on a guess. The fix
      is a one-line conversion (:data:`BINARY_MASK_FIX`);
    * colour (RGB/RGBA) images: a grey mask saved with three equal channels, or a colour-coded one.
    """
    import numpy as np

    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        colour = mask[:, :, :3]
        if (colour == colour[:, :, :1]).all():
            binary = colour.max() == 255 and not np.count_nonzero((colour != 0) & (colour != 255))
            return (f"is a {mask.shape[2]}-channel image with equal channels (a grey mask saved as RGB), not an HxW "
                    "class map" + (" of class ids (its values are 0 and 255)" if binary else ""),
                    BINARY_MASK_FIX if binary else
                    "save it single-channel: python -c \"import sys, cv2; [cv2.imwrite(f, cv2.imread(f, "
                    "cv2.IMREAD_GRAYSCALE)) for f in sys.argv[1:]]\" MASKS...")
        n = len(np.unique(colour.reshape(-1, 3), axis=0))
        return (f"is a colour-coded {mask.shape[2]}-channel image ({n} distinct colours), not an HxW class map",
                "convert it to one class id per pixel (0 = background, then the contract's class order), e.g. "
                "ids = np.zeros(m.shape[:2], np.uint8); ids[(m[:, :, :3] == (B, G, R)).all(-1)] = 1 for each class "
                "colour (OpenCV reads colour as BGR), and save ids as PNG or .npy")
    if mask.ndim == 2 and np.issubdtype(mask.dtype, np.integer) and mask.size and mask.max() == 255 \
            and not np.count_nonzero((mask != 0) & (mask != 255)):
        return ("holds only the values 0 and 255: a black/white picture of a mask, not class ids (255 would be "
                "class 255)", BINARY_MASK_FIX)
    return None


#: What a folder of frames with truth may look like, for error messages.
LABELLED_LAYOUTS = ("a `medstream record` folder (NNNNNNNN.npy + NNNNNNNN.truth.npy), images/ + masks/ "
                    "sub-folders with matching names, NAME.npy beside NAME_mask.npy (.png also works), or "
                    ".npz files with 'image' and 'mask' arrays")

__all__ = [
    "ARCHIVE_IMAGE_KEY", "ARCHIVE_MASK_KEYS", "ARCHIVE_SUFFIX", "ARRAY_SUFFIX", "BINARY_MASK_FIX", "FRAME_SUFFIXES",
    "HEADER_SUFFIX",
    "IMAGES_DIR", "IMAGE_SUFFIXES", "LABELLED_LAYOUTS", "MASKS_DIR", "MASK_TAGS", "NAME_DIGITS", "TRUTH_SUFFIX",
    "FolderItem", "has_images_and_masks", "header_path", "is_frame_file", "is_mask_file", "list_folder", "mask_problem",
    "recorded_name",
]
