"""Image folders ``<split>/<class>/<image>``, as a directory or a tar archive (CIFAR-10 JPEG, CINIC-10)."""

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


def _entries(source: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """Yield (path parts, encoded bytes) of every image file."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path.relative_to(source).parts, path.read_bytes()
        return
    with tarfile.open(source) as tar:
        for member in tar:
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(member.name).parts, tar.extractfile(member).read()


def decode(source: Path, splits: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
    """Decode an image folder; ``splits`` maps ``train``/``test`` to the folder names that feed it.

    Class indices follow the sorted class-folder names, which is the official label
    order of CIFAR-10 and CINIC-10.
    """
    folder_to_split = {folder: split for split, folders in splits.items() for folder in folders}
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    names: dict[str, list[str]] = {"train": [], "test": []}
    # Decoding happens once per file, below any command's --quiet: show it only on a terminal, not in logs.
    for parts, blob in tqdm(_entries(source), desc=f"decoding {source.name}", unit="img", leave=False, disable=None):
        # The split folder may sit below a top folder of the archive: find it from the end.
        if len(parts) < 3 or parts[-3] not in folder_to_split:
            continue
        split = folder_to_split[parts[-3]]
        with Image.open(io.BytesIO(blob)) as img:
            images[split].append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        names[split].append(parts[-2])
    if not images["train"] or not images["test"]:
        wanted = ", ".join(f"{f}/<class>/<image>" for folders in splits.values() for f in folders)
        raise DataError(f"{source} holds no images laid out as {wanted}")
    classes = sorted(set(names["train"]) | set(names["test"]))
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {"classes": np.asarray(classes)}
    for split in ("train", "test"):
        shapes = {im.shape for im in images[split]}
        if len(shapes) != 1:
            raise DataError(f"{source}: images of several sizes {sorted(shapes)[:3]} in {split}; resize them to one size")
        out[f"x_{split}"] = np.stack(images[split])
        out[f"y_{split}"] = np.asarray([index[n] for n in names[split]], dtype=np.int64)
    return out
