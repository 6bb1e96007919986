"""A gate between the querier's original model and the query-trained one, a lever against forgetting.

The query-trained model learns ``Q`` but forgets part of the querier's own classes. The
gated result keeps both: an input goes to the new model only where that model puts more
than a threshold of its probability on ``Q``, and to the original otherwise, so the
original's accuracy on its own classes is lost only on the inputs the gate sends away
(its false positives). The threshold is fitted on what the querier holds: its own
inputs, which belong to the original, and the synthetic inputs of ``Q``, which belong to
the new model.

With a budget, the querier keeps :data:`HOLDOUT` of each of its classes out of the transfer
set and fits the threshold on those inputs instead: the new model has seen its training
inputs and scores them lower than the inputs it will meet later, so only unseen inputs
tell how many of them the gate would send away. The threshold then also routes at most the
budget's share of them, each class counting alike, which bounds the local accuracy the
query can cost on inputs like them, whatever the experts taught (a teacher that passes the
checks yet teaches the student to call the querier's own inputs ``Q`` included).

Inputs the models trained on hide what the query-trained model does to inputs it never
saw, and a class the querier holds few samples of leaves few of them out. Inversions of
the querier's own classes (:func:`own_inversions`) stand in for such inputs, as many for
each class: the fitted threshold rises above the scores of those the query-trained model
takes for ``Q``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from ..config import QueryConfig
from ..errors import QueryError
from ..inputs import DatasetRows
from ..training import fast_layout, model_device, predict_logits
from .probe import check_query
from .synth import Mixed, invert
from .transfer import Lesson

HOLDOUT = 0.2  # of each of the querier's classes, kept out of the transfer set when the gate has a budget


class GatedModel(nn.Module):
    """``original`` for the querier's classes, ``new`` where ``new`` sees the query classes.

    Parameters
    ----------
    original, new:
        The querier's model before the query and the query-trained one; both map inputs to logits over ``C``.
    query:
        The query classes ``Q`` (a single integer for one class).
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
        query_mask[list(check_query(query, num_classes))] = True
        self.register_buffer("query", query_mask)
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def query_mass(self, logits: torch.Tensor) -> torch.Tensor:
        """The gate's score: the softmax mass of ``logits`` on the query classes."""
        return torch.softmax(logits, dim=1)[:, self.query].sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.new(fast_layout(x, self.new))
        original = self.original(fast_layout(x, self.original))
        for name, logits in (("new", new), ("original", original)):
            if logits.ndim != 2 or logits.shape[1] != self.query.numel():
                raise QueryError(
                    f"GatedModel: the {name} model outputs logits of shape {tuple(logits.shape)}; "
                    f"the gate was built for num_classes={self.query.numel()} (shape (batch, {self.query.numel()}))"
                )
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


def budget_threshold(own: np.ndarray, labels: np.ndarray, budget: float) -> float:
    """The lowest threshold that sends at most ``budget`` of the querier's unseen inputs ``own`` to the new model, each class counting alike.

    ``own`` are the new model's scores of inputs it never trained on and ``labels`` their
    classes. Each class weighs the same, as in an accuracy over a class-balanced test set:
    the classes the querier holds least of are the ones the query-trained model is most
    likely to take for ``Q``, and a share of all inputs would hide them. The threshold is
    never below the largest score of a class whose single input outweighs the budget.
    """
    own, labels = np.asarray(own, dtype=np.float64), np.asarray(labels)
    _, where, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weight = 1.0 / (len(counts) * counts[where])
    order = np.argsort(-own, kind="stable")
    ranked, cumulative = own[order], np.cumsum(weight[order])
    first = np.searchsorted(-ranked, -ranked, side="left")  # where each score's ties begin: the inputs before score above it
    above = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0.0)
    return float(ranked[above <= budget + 1e-12].min())


def hold_out(lesson: Lesson, seed: int) -> tuple[Lesson, tuple[torch.Tensor, torch.Tensor]]:
    """``lesson`` without a seeded :data:`HOLDOUT` of each of the querier's classes, and those inputs with their labels."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(lesson.local_y):
        members = torch.nonzero(lesson.local_y == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[: int(HOLDOUT * len(members))]])
    out = torch.zeros(len(lesson.local_y), dtype=torch.bool)
    out[torch.cat(chosen)] = True
    if not out.any():
        raise QueryError(f"query.gate_budget needs unseen inputs of the querier's own: {len(out)} local samples leave none out "
                         f"({HOLDOUT:.0%} of each class)")
    kept = torch.nonzero(~out).flatten()
    local_x = lesson.local_x
    kept_x = DatasetRows(Subset(local_x.dataset, kept.tolist())) if isinstance(local_x, DatasetRows) else local_x[kept]
    held = torch.nonzero(out).flatten()
    return dataclasses.replace(lesson, local_x=kept_x, local_y=lesson.local_y[kept]), (local_x[held], lesson.local_y[held])


def own_inversions(original: nn.Module, lesson: Lesson, config: QueryConfig, progress: bool = True) -> torch.Tensor:
    """``config.gate_inversions`` inputs per class the querier holds outside ``Q`` that its ``original`` model classifies as that class.

    They are made as the experts' inversions are (``config.inversion``), seeded as one
    more model after the experts, on ``original``'s device.
    """
    own = [c for c in torch.unique(lesson.local_y).tolist() if c not in lesson.query]
    x, _ = invert(original, own, tuple(lesson.local_x.shape[1:]), config.inversion, seed=config.seed * 1000 + len(lesson.experts),
                  num_per_class=config.gate_inversions, desc="inverting the querier's own model" if progress else None)
    return x


def gate(original: nn.Module, new: nn.Module, x: torch.Tensor | Mixed, num_local: int, num_synthetic: int,
         query: Sequence[int], num_classes: int, held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
         budget: float | None = None, own_synthetic: torch.Tensor | None = None) -> GatedModel:
    """The gated model of ``original`` and ``new``, its threshold fitted on the transfer inputs ``x``.

    ``x`` begins with the querier's ``num_local`` own inputs, then the ``num_synthetic``
    synthetic inputs of ``Q``. With ``held_out`` (own inputs and labels kept out of ``x``,
    see :func:`hold_out`) these stand for the querier's inputs instead, and ``budget``
    bounds the share of them sent to ``new`` (:func:`budget_threshold`). ``own_synthetic``
    (:func:`own_inversions`) join the querier's inputs in fitting the threshold, not in
    the budget, which counts real inputs. Raises
    :class:`~qkt.errors.QueryError` without synthetic inputs: nothing would then show the
    gate what an input of ``Q`` looks like.
    """
    if not num_synthetic:
        raise QueryError("query.gate needs synthetic inputs of the query classes to fit its threshold: enable query.inversion")
    model = GatedModel(original, new, query, num_classes).to(model_device(new))

    def mass(inputs: torch.Tensor | Mixed) -> np.ndarray:
        return model.query_mass(predict_logits(new, inputs)).cpu().numpy()

    if held_out is None:
        # the unmixed inputs may end with a public pool, which Mixed.first cannot leave out: scored, then dropped
        scores = mass(x.first(x.num_unmixed) if isinstance(x, Mixed) else x[: num_local + num_synthetic])
        own, synthetic = scores[:num_local], scores[num_local:num_local + num_synthetic]
    else:
        own, synthetic = mass(held_out[0]), mass(x[num_local:num_local + num_synthetic])
    own_side = np.concatenate([own, mass(own_synthetic)]) if own_synthetic is not None and len(own_synthetic) else own
    threshold = fit_threshold(own_side, synthetic)
    if budget is not None:
        if held_out is None:
            raise QueryError("a budget on the gate is measured on own inputs the new model never trained on: pass held_out")
        threshold = max(threshold, budget_threshold(own, held_out[1].numpy(), budget))
    model.threshold.fill_(threshold)
    return model.eval()
