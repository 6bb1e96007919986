"""Data sets behind one registry.

``load_dataset(name, data_root=None, path=None, size=None)`` returns a :class:`DataSet`.
Files are looked up under ``data_root`` (else ``$QKT_DATA_ROOT``, else ``./data``)
by their official names, or taken from ``path``; nothing is ever downloaded
unless :func:`download` is called, which checks the official checksum.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import cifar, digits, imagefolder, medmnist, npz
from .base import DATA_ROOT_ENV, DataSet, cached, resolve_root, validate_arrays

__all__ = ["DataSet", "DATASETS", "load_dataset", "download", "dataset_names"]


@dataclass(frozen=True)
class Source:
    """Where a registry data set comes from and how its file is decoded."""

    candidates: tuple[str, ...]
    decode: Callable[[Path], dict[str, np.ndarray]]
    where: str
    url: str | None = None
    md5: str | None = None
    classes: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)


SPLIT_FOLDERS = {"train": ("train",), "test": ("test",)}
_FOLDERS = partial(imagefolder.decode, splits=SPLIT_FOLDERS)


def _cifar_source(
    classes: int,
    decode_pickle: Callable[[Path], dict[str, np.ndarray]],
    extracted: str,
    marker: str,
    md5: str,
    folder_note: str = "",
) -> Source:
    """The official pickle archive or its ``extracted`` folder (recognised by name or ``marker`` file), else an image folder."""
    archive = f"cifar-{classes}-python.tar.gz"
    return Source(
        (archive, extracted, f"cifar{classes}-jpeg.tar.xz", f"cifar{classes}.tar.gz", f"cifar{classes}"),
        lambda p: decode_pickle(p) if _is_cifar_pickle(p, f"cifar-{classes}-", marker) else _FOLDERS(p),
        f"the official {archive} from https://www.cs.toronto.edu/~kriz/cifar.html "
        f"(or an image folder train/<class>/*, test/<class>/*{folder_note})",
        f"https://www.cs.toronto.edu/~kriz/{archive}",
        md5,
    )


DATASETS: dict[str, Source] = {
    "cifar10": _cifar_source(
        10, cifar.decode_cifar10, "cifar-10-batches-py", "data_batch_1", "c58f30108f718f92721af3b95e74349a"
    ),
    "cifar100": _cifar_source(
        100, cifar.decode_cifar100, "cifar-100-python", "meta", "eb9058c3a382ffc7106e4002c42a8d85", " with classes.txt in label order"
    ),
    "cinic10": Source(
        ("CINIC-10.tar.gz", "cinic-10.tar.gz", "CINIC-10", "cinic10"),
        _FOLDERS,
        "CINIC-10.tar.gz (train|valid|test/<class>/*.png) from https://datashare.ed.ac.uk/handle/10283/3192",
    ),
    "imagefolder": Source(
        (), _FOLDERS, "a folder or tar archive of your images as train/<class>/*, test/<class>/* (give it as data.path / "
                      "--data-path; data.size resizes them to one size)"
    ),
    "npz": Source(
        (), npz.decode, "a .npz you made with x_train, y_train, x_test, y_test (give it as data.path / --data-path)"
    ),
}
for _name, _classes in medmnist.CLASSES.items():
    DATASETS[_name] = Source(
        medmnist.file_names(_name, None),
        medmnist.decode,
        f"the official {_name}.npz (or {_name}_<size>.npz) of MedMNIST from https://medmnist.com (Zenodo record 10519652)",
        classes=_classes,
    )


def dataset_names() -> list[str]:
    return ["digits", *sorted(DATASETS)]


def _is_cifar_pickle(path: Path, prefix: str, batch: str) -> bool:
    return path.name.startswith(prefix) or (path.is_dir() and (path / batch).exists())


def _candidates(name: str, size: int | None) -> tuple[str, ...]:
    """The file names to look for: a MedMNIST file is named by its image size."""
    if size is not None and name not in medmnist.CLASSES and name != "imagefolder":
        raise DataError(f"{name}: data.size picks the file of a MedMNIST data set ({', '.join(map(str, medmnist.SIZES))} "
                        f"pixels) or resizes an imagefolder; {name} comes in one size")
    return medmnist.file_names(name, size) if name in medmnist.CLASSES else _source(name).candidates


def find_file(name: str, data_root: str | os.PathLike | None = None, size: int | None = None) -> Path:
    """The first file of ``name``'s official names present under the data root (or, for MedMNIST, the medmnist package's)."""
    source = _source(name)
    candidates = _candidates(name, size)
    root = resolve_root(data_root)
    roots = [root, medmnist.PACKAGE_ROOT] if name in medmnist.CLASSES else [root]
    for folder in roots:
        for candidate in candidates:
            if (folder / candidate).exists():
                return folder / candidate
    names = ", ".join(candidates) or "(no default name)"
    downloadable = source.url or name in medmnist.CLASSES
    raise DataError(
        f"{name}: no data file under '{root}' (looked for {names}). Get {source.where}, "
        f"then pass --data-root DIR (or set {DATA_ROOT_ENV})"
        + (f", or run `qkt data download {name}{f' --size {size}' if size else ''} --data-root DIR`." if downloadable else ".")
    )


def _source(name: str) -> Source:
    if name not in DATASETS:
        raise DataError(f"unknown data set '{name}'; choose one of: {', '.join(dataset_names())}")
    return DATASETS[name]


def load_dataset(name: str, data_root: str | os.PathLike | None = None, path: str | os.PathLike | None = None,
                 size: int | None = None) -> DataSet:
    """Load a registry data set, decoding its file once and caching the arrays.

    Parameters
    ----------
    name:
        ``digits``, ``cifar10``, ``cifar100``, ``cinic10``, a MedMNIST name such as
        ``bloodmnist``, ``imagefolder`` for a user's own image folder, or ``npz`` for a
        user's own file.
    data_root:
        Folder holding the official files; defaults to ``$QKT_DATA_ROOT`` or ``./data``.
    path:
        An explicit file or folder, which overrides the lookup under ``data_root``.
    size:
        Image side in pixels: picks a MedMNIST file of that size (28, 64, 128, 224;
        default 28), or resizes every image of an ``imagefolder``.
    """
    if name == "digits":
        if path is not None:  # data.name defaults to digits: a forgotten name must not quietly replace the user's file
            raise DataError(f"digits is bundled and reads no file, so '{path}' would be ignored; "
                            "for your own .npz set data.name: npz")
        if size is not None:
            raise DataError("digits comes in one size (8×8); data.size applies to MedMNIST and imagefolder data sets")
        return digits.load()
    source = _source(name)
    _candidates(name, size)
    decode = partial(imagefolder.decode, splits=SPLIT_FOLDERS, size=size) if name == "imagefolder" else source.decode
    if path is not None:
        file = Path(path).expanduser()
        if not file.exists():
            raise DataError(f"{name}: '{file}' does not exist. Expected {source.where}.")
    elif not source.candidates:
        raise DataError(f"{name}: give the file or folder with data.path in the config (or --data-path)")
    else:
        file = find_file(name, data_root, size)
    try:
        arrays = cached(name if size is None else f"{name}{size}", file, decode)
    except DataError:
        raise
    # MemoryError: a pickled CIFAR batch, too, can claim an array of terabytes
    except (OSError, EOFError, ValueError, KeyError, tarfile.TarError, zipfile.BadZipFile, pickle.UnpicklingError, MemoryError) as exc:
        raise DataError(f"{name}: cannot read '{file}' ({type(exc).__name__}: {exc}); it may be corrupt or cut short. Expected {source.where}.") from None
    classes = arrays.pop("classes", None)
    if classes is not None and classes.ndim != 1:
        raise DataError(f"{name}: 'classes' in {file} has shape {classes.shape}; it lists one name per class, "
                        "as np.array(['cat', 'dog']) does")
    names = tuple(str(c) for c in classes) if classes is not None else source.classes
    return validate_arrays(name, file, arrays, names)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(name: str, data_root: str | os.PathLike | None = None, size: int | None = None) -> Path:
    """Fetch the official file of ``name`` into the data root (only on this explicit call) and check its MD5.

    CIFAR's checksums are those the Toronto page publishes; a MedMNIST file's address
    and checksum (any ``size`` it ships) come from the ``medmnist`` package. A file
    whose checksum differs is deleted, never loaded.
    """
    if name == "digits":
        raise DataError("digits comes with scikit-learn; there is nothing to download")
    source = _source(name)
    file_name = _candidates(name, size)[0] if source.candidates else None
    if name in medmnist.CLASSES:
        url, md5 = medmnist.official_file(name, size)
    elif source.url:
        url, md5 = source.url, source.md5
    else:
        raise DataError(f"{name}: qkt cannot download it; get {source.where}")
    root = resolve_root(data_root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / file_name
    tmp = target.with_name(target.name + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
        got = _md5(tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{name}: download from {url} failed ({exc})") from None
    if got != md5:
        tmp.unlink()
        raise DataError(f"{name}: the file from {url} has MD5 {got}, not the official {md5}: it was cut short or changed; "
                        "nothing was saved, try again")
    os.replace(tmp, target)
    return target
