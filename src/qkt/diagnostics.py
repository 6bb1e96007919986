"""What a query's outcome can be measured against when the truth is known, as in a benchmark.

A benchmark knows who holds what, so it can say how well the probe found the parties
that really hold the query classes, how much the experts lean towards the query classes
on the querier's own data (the source of multi-class forgetting, docs/method.md), and
how much of the best possible gain a query recovered: that of the oracle, the querier's
model trained on its own data plus the experts' real samples of ``Q``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .training import predict_logits

# Below this gain of the oracle over Local (in accuracy) a recovered share is noise over noise.
MIN_ORACLE_GAIN = 0.01


def true_experts(counts: np.ndarray, query: Sequence[int], querier: int, min_samples: int) -> dict[int, list[str]]:
    """Per query class, the parties other than the querier holding at least ``min_samples`` of it (``counts[k, c]``)."""
    return {int(c): [str(k) for k in np.flatnonzero(counts[:, c] >= min_samples) if k != querier] for c in query}


def expert_discovery(found: Mapping[int, Iterable[str]], truth: Mapping[int, Iterable[str]]) -> dict[str, float | None]:
    """Precision and recall of the (class, expert) pairs a query found against the true ones; ``None`` where undefined."""
    found_pairs = {(int(c), str(k)) for c, names in found.items() for k in names}
    true_pairs = {(int(c), str(k)) for c, names in truth.items() for k in names}
    hits = len(found_pairs & true_pairs)
    return {"precision": hits / len(found_pairs) if found_pairs else None,
            "recall": hits / len(true_pairs) if true_pairs else None}


def query_mass(experts: Sequence[nn.Module], inputs: torch.Tensor, query: Sequence[int]) -> float | None:
    """The experts' mean softmax probability on the query classes, over ``inputs`` (the querier's own data); ``None`` without experts."""
    if not experts:
        return None
    q = list(query)
    return float(np.mean([torch.softmax(predict_logits(m, inputs), dim=1)[:, q].sum(1).mean().item() for m in experts]))


def recovered_share(method: float, local: float, oracle: float) -> float | None:
    """``(method − Local) / (Oracle − Local)`` in overall accuracy; ``None`` when the oracle gains less than :data:`MIN_ORACLE_GAIN`."""
    gain = oracle - local
    return (method - local) / gain if gain >= MIN_ORACLE_GAIN else None
