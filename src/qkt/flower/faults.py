"""Rehearse a teacher's failure on a real deployment: SuperNode option ``qkt-fault``.

Start one SuperNode with ``--node-config '... qkt-fault="nan"'`` to check, before
relying on a federation, that the querier survives that failure and names the
culprit. The fault strikes when the querier asks the party for its weights:

- ``die``: the SuperNode process is killed (and with it its SuperExec and this
  ClientApp), as when the machine goes down (Linux only: found through /proc);
- ``hang``: the party never answers;
- ``nan``: the weights hold NaN values;
- ``shape``: one weight tensor has the wrong shape.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from ..query.channel import misshapen_weights, nan_weights
from .federation import parent_pid

FAULTS = ("", "die", "hang", "nan", "shape")


def strike(fault: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Apply ``fault`` to the weights about to be sent (or to the process sending them)."""
    if fault not in FAULTS:
        raise ValueError(f"unknown qkt-fault '{fault}'; choose among {', '.join(f for f in FAULTS if f)}")
    if fault == "die":
        # ClientApp ← SuperExec ← SuperNode: take the SuperNode down, then ourselves; no reply leaves.
        os.kill(parent_pid(os.getppid()), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "hang":
        while True:
            time.sleep(60)
    if fault == "nan":
        return nan_weights(arrays)
    if fault == "shape":
        return misshapen_weights(arrays)
    return arrays
