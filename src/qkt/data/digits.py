"""scikit-learn's bundled 8×8 handwritten digits: no file needed, the default data set."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .base import DataSet


def load(test_size: float = 0.25, split_seed: int = 0) -> DataSet:
    bunch = load_digits()
    # 0..16 intensities become 8-bit grey images, so digits flow through the same image path as CIFAR.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target.astype(np.int64), test_size=test_size, random_state=split_seed, stratify=bunch.target
    )
    return DataSet("digits", x_train, y_train, x_test, y_test, tuple(str(d) for d in range(10)))
