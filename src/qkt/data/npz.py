"""A user's own data: one ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import npz_archive

KEYS = ("x_train", "y_train", "x_test", "y_test")


def decode(source: Path) -> dict[str, np.ndarray]:
    with npz_archive(source, f"{', '.join(KEYS)} (as np.savez writes it)") as f:
        missing = [k for k in KEYS if k not in f.files]
        if missing:
            raise DataError(f"{source} lacks {', '.join(missing)}; a qkt npz holds {', '.join(KEYS)} (and optionally 'classes')")
        arrays = {k: f[k] for k in KEYS}
        if "classes" in f.files:
            arrays["classes"] = f["classes"]
    return arrays
