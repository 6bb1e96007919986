"""A user's own data: one ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import read_npz

KEYS = ("x_train", "y_train", "x_test", "y_test")


def decode(source: Path) -> dict[str, np.ndarray]:
    return read_npz(source, KEYS, "a qkt npz (as np.savez writes it)", optional=("classes",))
