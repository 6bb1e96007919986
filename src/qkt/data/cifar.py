"""CIFAR-10 and CIFAR-100 in their official pickled-batch format (``cifar-10-python.tar.gz``)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from ..errors import DataError


def _to_images(flat: np.ndarray) -> np.ndarray:
    return np.asarray(flat, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _read_members(source: Path, wanted: set[str]) -> dict[str, dict]:
    """Unpickle the named batch files from the tarball or the extracted folder."""
    found: dict[str, dict] = {}
    if source.is_dir():
        for name in wanted:
            path = source / name
            if path.exists():
                with open(path, "rb") as f:
                    found[name] = pickle.load(f, encoding="latin1")
    else:
        with tarfile.open(source) as tar:
            for member in tar:
                base = Path(member.name).name
                if member.isfile() and base in wanted:
                    found[base] = pickle.load(tar.extractfile(member), encoding="latin1")
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
