"""Image folders ``<split>/<class>/<image>``, as a directory or a tar archive (CIFAR-10/100 JPEG, CINIC-10, a user's own)."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
"""Pillow's modes of greyscale images with more than 8 bits (16-bit PNGs open as ``I;16``)."""
CLASS_LIST = "classes.txt"
"""An optional file beside the split folders naming the classes one a line, in label order (as the CIFAR-100 archive has)."""


def _entries(source: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """Yield (path parts, bytes) of every image file and of the class list."""
    def wanted(name: str) -> bool:
        return Path(name).suffix.lower() in IMAGE_SUFFIXES or Path(name).name == CLASS_LIST

    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and wanted(path.name):
                yield path.relative_to(source).parts, path.read_bytes()
        return
    with tarfile.open(source) as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                yield Path(member.name).parts, tar.extractfile(member).read()


def _class_order(source: Path, listed: list[str] | None, found: set[str]) -> list[str]:
    """The label order: the class list's if there is one (it must name every class folder), else the sorted folder names."""
    if listed is None:
        return sorted(found)
    twice = sorted(c for c, times in Counter(listed).items() if times > 1)
    if twice:  # the second entry would be a class of its own, with no image
        raise DataError(f"{source}: its {CLASS_LIST} names {', '.join(twice[:3])} more than once; list each class once, in label order")
    unlisted = sorted(found - set(listed))
    if unlisted:
        raise DataError(f"{source}: class folder(s) {', '.join(unlisted[:3])} are not in its {CLASS_LIST}")
    return listed


def _pixels(blob: bytes, size: int | None) -> np.ndarray:
    """One image as H×W×3: uint8, or float32 for a 16-bit (or 32-bit) greyscale image, which the caller scales to 8 bits.

    ``convert("RGB")`` would clip such an image's values to 255; a 12-bit scan stored
    in 16 bits would lose most of its range.
    """
    with Image.open(io.BytesIO(blob)) as img:
        wide = img.mode in WIDE_GREY_MODES
        img = img.convert("F" if wide else "RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        if not wide:
            return np.asarray(img, dtype=np.uint8)
        return np.repeat(np.asarray(img, dtype=np.float32)[..., None], 3, axis=2)


def _scale_wide_images(images: dict[str, list[np.ndarray]]) -> None:
    """Turn the 16-bit greyscale images into uint8 in place, all by one factor: the largest value among them becomes 255.

    One factor keeps their brightness comparable, and a 12-bit scan (0..4095) keeps 8 bits
    of its range where dividing by 257 would leave it 16 grey levels.
    """
    wide = [im for split in images.values() for im in split if im.dtype != np.uint8]
    if not wide:
        return
    scale = 255 / max(max(float(im.max()) for im in wide), 1.0)
    for split in images.values():
        split[:] = [im if im.dtype == np.uint8 else np.rint(np.clip(im * scale, 0, 255)).astype(np.uint8) for im in split]


def decode(source: Path, splits: dict[str, tuple[str, ...]], size: int | None = None) -> dict[str, np.ndarray]:
    """Decode an image folder; ``splits`` maps ``train``/``test`` to the folder names that feed it.

    Class indices follow ``classes.txt`` at the top if present, else the sorted
    class-folder names, which is the official label order of CIFAR-10, CIFAR-100 and
    CINIC-10. With ``size``, every image is resized to ``size`` × ``size`` pixels;
    without it, all images must already share one size.
    """
    folder_to_split = {folder: split for split, folders in splits.items() for folder in folders}
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    names: dict[str, list[str]] = {"train": [], "test": []}
    listed: list[str] | None = None
    # Decoding happens once per file, below any command's --quiet: show it only on a terminal, not in logs.
    for parts, blob in tqdm(_entries(source), desc=f"decoding {source.name}", unit="img", leave=False, disable=None):
        if parts[-1] == CLASS_LIST:
            if len(parts) <= 2:  # at the top, or below one top folder of the archive
                listed = [line.strip() for line in blob.decode("utf-8").splitlines() if line.strip()]
            continue
        # The split folder may sit below a top folder of the archive: find it from the end.
        if len(parts) < 3 or parts[-3] not in folder_to_split:
            continue
        split = folder_to_split[parts[-3]]
        try:
            images[split].append(_pixels(blob, size))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            why = "not an image Pillow reads" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
            raise DataError(f"{source}: cannot read the image {'/'.join(parts)} ({why}); remove or replace it") from None
        names[split].append(parts[-2])
    _scale_wide_images(images)
    if not images["train"] or not images["test"]:
        wanted = ", ".join(f"{f}/<class>/<image>" for folders in splits.values() for f in folders)
        raise DataError(f"{source} holds no images laid out as {wanted}")
    classes = _class_order(source, listed, set(names["train"]) | set(names["test"]))
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {"classes": np.asarray(classes)}
    for split in ("train", "test"):
        shapes = {im.shape for im in images[split]}
        if len(shapes) != 1:
            raise DataError(f"{source}: images of several sizes {sorted(shapes)[:3]} in {split}; "
                            "resize them to one size (data.size: N resizes every image to N×N)")
        out[f"x_{split}"] = np.stack(images[split])
        out[f"y_{split}"] = np.asarray([index[n] for n in names[split]], dtype=np.int64)
    return out
