"""Image folders ``<split>/<class>/<image>``, as a directory or a tar archive (CIFAR-10/100 JPEG, CINIC-10, a user's own)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
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
    unlisted = sorted(found - set(listed))
    if unlisted:
        raise DataError(f"{source}: class folder(s) {', '.join(unlisted[:3])} are not in its {CLASS_LIST}")
    return listed


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
        with Image.open(io.BytesIO(blob)) as img:
            img = img.convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            images[split].append(np.asarray(img, dtype=np.uint8))
        names[split].append(parts[-2])
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
