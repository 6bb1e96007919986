"""A gate between the querier's original model and the query-trained one, a lever against forgetting.

The query-trained model learns ``Q`` but forgets part of the querier's own classes. The
gated result keeps both: an input goes to the new model only where that model puts more
than a threshold of its probability on ``Q``, and to the original otherwise, so the
original's accuracy on its own classes is lost only on the inputs the gate sends away
(its false positives). The threshold is fitted on what the querier holds: its own
inputs, which belong to the original, and the synthetic inputs of ``Q``, which belong to
the new model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QueryError
from ..training import fast_layout, model_device, predict_logits
from .synth import Mixed


class GatedModel(nn.Module):
    """``original`` for the querier's classes, ``new`` where ``new`` sees the query classes.

    Parameters
    ----------
    original, new:
        The querier's model before the query and the query-trained one; both map inputs to logits over ``C``.
    query:
        The query classes ``Q``.
    num_classes:
        ``|C|``.
    threshold:
        An input goes to ``new`` iff ``new``'s softmax mass on ``Q`` exceeds it.

    The output is the routed model's log-probabilities (finite logits over ``C``). The
    query classes and the threshold are buffers: the state dict holds both models and
    the gate, saves and loads like any module's and moves with ``.to(device)``.
    """

    def __init__(self, original: nn.Module, new: nn.Module, query: Sequence[int], num_classes: int, threshold: float = 0.5):
        super().__init__()
        self.original, self.new = original, new
        query_mask = torch.zeros(num_classes, dtype=torch.bool)
        query_mask[list(query)] = True
        self.register_buffer("query", query_mask)
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def query_mass(self, logits: torch.Tensor) -> torch.Tensor:
        """The gate's score: the softmax mass of ``logits`` on the query classes."""
        return torch.softmax(logits, dim=1)[:, self.query].sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.new(fast_layout(x, self.new))
        original = self.original(fast_layout(x, self.original))
        routed = (self.query_mass(new) > self.threshold)[:, None]
        return torch.where(routed, F.log_softmax(new, dim=1), F.log_softmax(original, dim=1))


def fit_threshold(own: np.ndarray, query: np.ndarray) -> float:
    """The threshold on a score that best separates inputs that must score below it (``own``) from those that must score above (``query``).

    It minimises the balanced error, the mean of the two groups' shares on the wrong side;
    among equally good thresholds it takes the middle one, as far as it can from both
    groups, because the inputs to be routed later (unseen data of either kind) score less
    extremely than those the models were trained on.
    """
    own, query = np.sort(np.asarray(own, dtype=np.float64)), np.sort(np.asarray(query, dtype=np.float64))
    values = np.unique(np.concatenate([own, query]))
    cuts = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    false_new = 1 - np.searchsorted(own, cuts, side="right") / len(own)
    false_original = np.searchsorted(query, cuts, side="right") / len(query)
    error = (false_new + false_original) / 2
    best = np.flatnonzero(error <= error.min() + 1e-12)
    return float(cuts[best[len(best) // 2]])


def gate(original: nn.Module, new: nn.Module, x: torch.Tensor | Mixed, num_local: int, num_synthetic: int,
         query: Sequence[int], num_classes: int) -> GatedModel:
    """The gated model of ``original`` and ``new``, its threshold fitted on the transfer inputs ``x``.

    ``x`` begins with the querier's ``num_local`` own inputs, then the ``num_synthetic``
    synthetic inputs of ``Q``. Raises :class:`~qkt.errors.QueryError` without synthetic
    inputs: nothing would then show the gate what an input of ``Q`` looks like.
    """
    if not num_synthetic:
        raise QueryError("query.gate needs synthetic inputs of the query classes to fit its threshold: enable query.inversion")
    model = GatedModel(original, new, query, num_classes).to(model_device(new))
    head = x.first(num_local + num_synthetic) if isinstance(x, Mixed) else x[: num_local + num_synthetic]
    scores = model.query_mass(predict_logits(new, head)).cpu().numpy()
    model.threshold.fill_(fit_threshold(scores[:num_local], scores[num_local:]))
    return model.eval()
