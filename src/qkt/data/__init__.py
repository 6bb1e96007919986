"""Data sets behind one registry.

``load_dataset(name, data_root=None, path=None)`` returns a :class:`DataSet`.
Files are looked up under ``data_root`` (else ``$QKT_DATA_ROOT``, else ``./data``)
by their official names, or taken from ``path``; nothing is ever downloaded
unless :func:`download` is called.
"""

from __future__ import annotations

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
    classes: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)


_CIFAR10_FOLDERS = partial(imagefolder.decode, splits={"train": ("train",), "test": ("test",)})

DATASETS: dict[str, Source] = {
    "cifar10": Source(
        ("cifar-10-python.tar.gz", "cifar-10-batches-py", "cifar10-jpeg.tar.xz", "cifar10.tar.gz", "cifar10"),
        lambda p: cifar.decode_cifar10(p) if _is_cifar_pickle(p) else _CIFAR10_FOLDERS(p),
        "the official cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
        "(or an image folder train/<class>/*, test/<class>/*)",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": Source(
        ("cifar-100-python.tar.gz", "cifar-100-python"),
        cifar.decode_cifar100,
        "the official cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
    "cinic10": Source(
        ("CINIC-10.tar.gz", "cinic-10.tar.gz", "CINIC-10", "cinic10"),
        partial(imagefolder.decode, splits={"train": ("train",), "test": ("test",)}),
        "CINIC-10.tar.gz (train|valid|test/<class>/*.png) from https://datashare.ed.ac.uk/handle/10283/3192",
    ),
    "npz": Source(
        (), npz.decode, "a .npz you made with x_train, y_train, x_test, y_test (give it as data.path / --data-path)"
    ),
}
for _name, _classes in medmnist.CLASSES.items():
    DATASETS[_name] = Source(
        (f"{_name}.npz", f"{_name}_28.npz") + (("bloodcell-28.npz",) if _name == "bloodmnist" else ()),
        medmnist.decode,
        f"the official {_name}.npz of MedMNIST v2 from https://medmnist.com (Zenodo record 10519652)",
        classes=_classes,
    )


def dataset_names() -> list[str]:
    return ["digits", *sorted(DATASETS)]


def _is_cifar_pickle(path: Path) -> bool:
    return path.name.startswith("cifar-10-") or (path.is_dir() and (path / "data_batch_1").exists())


def find_file(name: str, data_root: str | os.PathLike | None = None) -> Path:
    """The first file of ``name``'s official names present under the data root."""
    source = _source(name)
    root = resolve_root(data_root)
    for candidate in source.candidates:
        if (root / candidate).exists():
            return root / candidate
    names = ", ".join(source.candidates) or "(no default name)"
    raise DataError(
        f"{name}: no data file under '{root}' (looked for {names}). Get {source.where}, "
        f"then pass --data-root DIR (or set {DATA_ROOT_ENV})"
        + (f", or run `qkt data download {name} --data-root DIR`." if source.url else ".")
    )


def _source(name: str) -> Source:
    if name not in DATASETS:
        raise DataError(f"unknown data set '{name}'; choose one of: {', '.join(dataset_names())}")
    return DATASETS[name]


def load_dataset(name: str, data_root: str | os.PathLike | None = None, path: str | os.PathLike | None = None) -> DataSet:
    """Load a registry data set, decoding its file once and caching the arrays.

    Parameters
    ----------
    name:
        ``digits``, ``cifar10``, ``cifar100``, ``cinic10``, a MedMNIST name such as
        ``bloodmnist``, or ``npz`` for a user's own file.
    data_root:
        Folder holding the official files; defaults to ``$QKT_DATA_ROOT`` or ``./data``.
    path:
        An explicit file or folder, which overrides the lookup under ``data_root``.
    """
    if name == "digits":
        if path is not None:  # data.name defaults to digits: a forgotten name must not quietly replace the user's file
            raise DataError(f"digits is bundled and reads no file, so '{path}' would be ignored; "
                            "for your own .npz set data.name: npz")
        return digits.load()
    source = _source(name)
    if path is not None:
        file = Path(path).expanduser()
        if not file.exists():
            raise DataError(f"{name}: '{file}' does not exist. Expected {source.where}.")
    elif name == "npz":
        raise DataError("npz: give the file with data.path in the config (or --data-path)")
    else:
        file = find_file(name, data_root)
    try:
        arrays = cached(name, file, source.decode)
    except DataError:
        raise
    except (OSError, EOFError, ValueError, KeyError, tarfile.TarError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise DataError(f"{name}: cannot read '{file}' ({type(exc).__name__}: {exc}); it may be corrupt or cut short. Expected {source.where}.") from None
    classes = arrays.pop("classes", None)
    names = tuple(str(c) for c in classes) if classes is not None else source.classes
    return validate_arrays(name, file, arrays, names)


def download(name: str, data_root: str | os.PathLike | None = None) -> Path:
    """Fetch the official file of ``name`` into the data root (only on this explicit call)."""
    if name == "digits":
        raise DataError("digits comes with scikit-learn; there is nothing to download")
    source = _source(name)
    if not source.url:
        raise DataError(f"{name}: qkt cannot download it; get {source.where}")
    root = resolve_root(data_root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / source.candidates[0]
    tmp = target.with_name(target.name + ".part")
    try:
        urllib.request.urlretrieve(source.url, tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{name}: download from {source.url} failed ({exc})") from None
    os.replace(tmp, target)
    return target
