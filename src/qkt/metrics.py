"""The metrics of SPEC §3, computed on the global held-out test set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


def group_accuracy(per_class: np.ndarray, test_counts: np.ndarray, classes: Sequence[int]) -> float:
    """Accuracy over the test samples whose label is in ``classes`` (weighting each class by its test samples); NaN if there are none."""
    classes = list(classes)
    weights = test_counts[classes].astype(float)
    if not weights.sum():
        return float("nan")
    return float(np.nansum(per_class[classes] * weights) / weights.sum())


@dataclass
class MethodResult:
    """One method's figures for one query (SPEC §3)."""

    method: str
    query_accuracy: float
    local_accuracy: float
    overall_accuracy: float
    forgetting: float
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0  # wall time, with every party on its own machine where the method has several parties at work at once
    teacher_seconds: float = 0.0  # the teachers' compute time for this method's replies, added up (QKT's probe and weights)
    per_class_accuracy: list[float] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @classmethod
    def not_applicable(cls, method: str, why: str) -> MethodResult:
        """A row for a method that cannot run here: no figures, and why."""
        return cls(method, *[float("nan")] * 4, details={"not_applicable": why})

    def to_dict(self) -> dict:
        return asdict(self)


def score(method: str, per_class: np.ndarray, local_before: float, test_counts: np.ndarray,
          query: Sequence[int], local: Sequence[int], **costs) -> MethodResult:
    """Query, local and overall accuracy and forgetting, from per-class test accuracy."""
    local_acc = group_accuracy(per_class, test_counts, local)
    return MethodResult(
        method=method,
        query_accuracy=group_accuracy(per_class, test_counts, query),
        local_accuracy=local_acc,
        overall_accuracy=group_accuracy(per_class, test_counts, sorted(set(local) | set(query))),
        forgetting=local_before - local_acc,
        per_class_accuracy=[float(a) for a in per_class],
        **costs,
    )
