"""CIFAR-10 and CIFAR-100 in their official pickled-batch format (``cifar-10-python.tar.gz``)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import DataError


def _to_images(flat: np.ndarray) -> np.ndarray:
    return np.asarray(flat, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


ARRAY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}
"""The only callables a CIFAR batch's pickle names: those that rebuild NumPy arrays and scalars (NumPy 1 and 2 module
paths, any pickle protocol) and bytes (``_codecs.encode``, in Python 3's protocol 2). Everything else in a batch is a
dict, list, string or number, which pickle builds without calling anything."""


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that refuses every callable but :data:`ARRAY_GLOBALS`: a pickle can name any function to run."""

    def __init__(self, file: IO[bytes], where: str):
        super().__init__(file, encoding="latin1")  # the official batches were pickled by Python 2
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) not in ARRAY_GLOBALS:
            raise DataError(f"{self.where} is not a CIFAR batch: its pickle calls {module}.{name}, and qkt runs no code "
                            "from a data file (a batch holds only arrays, lists and strings)")
        return super().find_class(module, name)


def _unpickle(file: IO[bytes], where: str) -> dict:
    batch = _BatchUnpickler(file, where).load()
    if not isinstance(batch, dict):
        raise DataError(f"{where} is not a CIFAR batch: it holds a {type(batch).__name__}, not a dict")
    return batch


def _read_members(source: Path, wanted: set[str]) -> dict[str, dict]:
    """Unpickle the named batch files from the tarball or the extracted folder."""
    found: dict[str, dict] = {}
    if source.is_dir():
        for name in wanted:
            path = source / name
            if path.exists():
                with open(path, "rb") as f:
                    found[name] = _unpickle(f, f"'{path}'")
    else:
        with tarfile.open(source) as tar:
            for member in tar:
                base = Path(member.name).name
                if member.isfile() and base in wanted:
                    found[base] = _unpickle(tar.extractfile(member), f"'{member.name}' in '{source}'")
    missing = wanted - found.keys()
    if missing:
        raise DataError(f"{source} lacks {', '.join(sorted(missing))}: it is not a complete official CIFAR archive")
    return found


def decode_cifar10(source: Path) -> dict[str, np.ndarray]:
    names = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
    batches = _read_members(source, names)
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "x_train": _to_images(np.concatenate([b["data"] for b in train])),
        "y_train": np.concatenate([np.asarray(b["labels"]) for b in train]).astype(np.int64),
        "x_test": _to_images(batches["test_batch"]["data"]),
        "y_test": np.asarray(batches["test_batch"]["labels"], dtype=np.int64),
        "classes": np.asarray(batches["batches.meta"]["label_names"]),
    }


def decode_cifar100(source: Path) -> dict[str, np.ndarray]:
    batches = _read_members(source, {"train", "test", "meta"})
    return {
        "x_train": _to_images(batches["train"]["data"]),
        "y_train": np.asarray(batches["train"]["fine_labels"], dtype=np.int64),
        "x_test": _to_images(batches["test"]["data"]),
        "y_test": np.asarray(batches["test"]["fine_labels"], dtype=np.int64),
        "classes": np.asarray(batches["meta"]["fine_label_names"]),
    }
