"""The querier's checks of its experts, once their weights arrive and before any output becomes a target.

A teacher's probe reply is only its word: it may be forged (a teacher claiming every
class to be asked for its model), noisy (differential privacy), or honest about a
broken model (NaN weights, labels permuted in training). The weights themselves
can be checked cheaply at the querier, with no message to anyone:

1. **finite outputs** on the querier's own inputs, or the expert is dropped;
2. **the claim**: the querier re-runs the announced probe on the received weights;
   a mask bit the weights do not support (score below the expert threshold, less a
   tolerance) is cleared, whatever the reply said;
3. **agreement on shared classes**: the weights' probe over all of ``C`` says which
   classes the expert knows; on the querier's own labelled samples of those that
   are also its local classes, the expert must be right often enough. A model
   trained with permuted labels, or garbage, knows classes under wrong names;
4. **outputs that depend on the input**: on the querier's inputs and the probe's noise
   inputs the expert's softmax must move away from its mean (by ``min_output_spread``
   in total variation, on average). A model that says the same thing whatever it is
   shown carries no knowledge, only its claim. The noise is there because an honest
   expert may say much the same of every input of classes it never saw.

An expert failing 1, 3 or 4 is dropped whole; 2 clears single mask bits, since the
weights' own scores are what the querier trusts.

What these checks cannot see: a model that names the query class for every input, with
a confidence that moves with the input, looks like an honest party whose data hold
almost nothing but ``Q``. Such parties are common where data are split by a Dirichlet
prior, and their models also call everything ``Q``; they are kept, because as the only
expert of a class they still teach it (``qkt bench``'s ``liar-*`` scenarios measure the
planted liars, docs/privacy.md what an honest one-class expert brings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import TrustConfig
from ..partition import local_classes
from ..training import predict_logits


@dataclass
class Verdict:
    """What the checks decided for one expert: its remaining mask over ``Q`` and why bits were cleared."""

    mask: np.ndarray
    reasons: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return not self.mask.any()


def check_sample(local_x: torch.Tensor, local_y: torch.Tensor, max_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded subset of the querier's data, so that the checks cost the same on a large party."""
    if len(local_x) <= max_samples:
        return local_x, local_y
    idx = torch.randperm(len(local_x), generator=torch.Generator().manual_seed(seed))[:max_samples]
    return local_x[idx], local_y[idx]


def unsupported_claims(claimed: Sequence[float], recomputed: Sequence[float], mask: np.ndarray, query: Sequence[int],
                       threshold: float, tolerance: float) -> tuple[np.ndarray, list[str]]:
    """Clear the mask bits of ``Q`` that the expert's weights do not support.

    A bit is supported when the querier's own probe of the weights scores the class at
    least ``min(claimed, threshold) - tolerance``: at the expert threshold for a claim
    above it, at the claim itself for a class given by the fallback rule.
    """
    keep = mask.copy()
    reasons = []
    for j, c in enumerate(query):
        need = min(float(claimed[j]), threshold) - tolerance
        if mask[j] and recomputed[j] < need:
            keep[j] = False
            reasons.append(f"claimed {float(claimed[j]):.2f} for class {c} but its weights score {float(recomputed[j]):.2f} "
                           f"(at least {need:.2f} needed)")
    return keep, reasons


def shared_class_recall(logits: torch.Tensor, labels: torch.Tensor, known: Sequence[int], num_classes: int) -> dict[int, float]:
    """The expert's recall on the querier's samples of each class both know (the querier's local classes it claims)."""
    counts = np.bincount(labels.numpy(), minlength=num_classes)
    shared = sorted(set(known) & set(local_classes(counts)))
    pred = logits.argmax(1).cpu()
    return {c: float((pred[labels == c] == c).float().mean()) for c in shared}


def output_spread(logits: torch.Tensor) -> float:
    """The mean total-variation distance of each input's softmax from their mean: 0 for a model whose output ignores its input."""
    probs = torch.softmax(logits.double(), dim=1)
    return float(0.5 * (probs - probs.mean(0)).abs().sum(1).mean())


def check_expert(model: nn.Module, claimed: Sequence[float], full_scores: np.ndarray, mask: np.ndarray,
                 query: Sequence[int], local_x: torch.Tensor, local_y: torch.Tensor, lam: float,
                 config: TrustConfig, verify_claims: bool = True, probe_x: torch.Tensor | None = None) -> Verdict:
    """Run the checks on one received expert.

    Parameters
    ----------
    claimed:
        The expert's probe reply, one score per query class.
    full_scores:
        The querier's own data-free probe of the received weights over all of ``C``.
    verify_claims:
        False when ``full_scores`` used another recipe than the reply (the 'self'
        probe needs the teacher's data): then check 2 does not run.
    local_x, local_y:
        The querier's data the checks look at (see :func:`check_sample`).
    probe_x:
        The probe's noise inputs, which check 4 looks at beside ``local_x``.
    """
    logits = predict_logits(model, local_x)
    if not torch.isfinite(logits).all():
        return Verdict(np.zeros_like(mask), ["outputs NaN or infinite values on the querier's inputs"])
    num_classes = logits.shape[1]
    threshold = lam / num_classes
    keep, reasons = mask.copy(), []
    if verify_claims:
        keep, reasons = unsupported_claims(claimed, full_scores[list(query)], mask, query, threshold, config.claim_tolerance)
    known = [int(c) for c in np.flatnonzero(full_scores >= threshold)]
    shown = logits if probe_x is None else torch.cat([logits, predict_logits(model, probe_x)])
    spread = output_spread(shown)
    if not spread >= config.min_output_spread:  # NaN too: a constant softmax of infinite logits
        return Verdict(np.zeros_like(mask), [f"its outputs hardly depend on the input (they move {spread:.3f} from their mean on the "
                                             f"querier's and the probe's inputs, < {config.min_output_spread}): a constant model"])
    for c, recall in shared_class_recall(logits, local_y, known, num_classes).items():
        if recall < config.min_local_agreement:
            reasons.append(f"its weights claim class {c}, one of the querier's own, but label only {recall:.0%} of the querier's "
                           f"samples of it right (< {config.min_local_agreement:.0%}): permuted labels or a broken model")
            keep[:] = False
    return Verdict(keep, reasons)
