"""Expert discovery: teacher-side probe scores and the querier's masks (SPEC §2, step 2).

Over-confident networks push inputs they have never seen towards the classes
they were trained on. Feeding seeded noise through a teacher and averaging its
softmax therefore reveals, without any data, which classes it knows. Only the
scores of the query classes leave the teacher.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import QueryError
from ..training import predict_logits, to_model
from .synth import BatchNormStatistics, frozen, input_prior


def noise_probes(input_shape: Sequence[int], num_samples: int, scales: Sequence[float], seed: int) -> torch.Tensor:
    """The seeded probe inputs: Gaussian noise at each scale, identical at every teacher for one seed.

    Drawn on the CPU, so that they are the same whichever device a teacher computes on.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([scale * torch.randn(num_samples, *input_shape, generator=generator) for scale in scales])


def noise_scores(model: nn.Module, probes: torch.Tensor) -> np.ndarray:
    """``s[c]``: mean softmax probability of each class over the probe inputs."""
    return torch.softmax(predict_logits(model, probes), dim=1).mean(0).cpu().numpy()


def statistics_probes(model: nn.Module, probes: torch.Tensor, steps: int, lr: float = 0.1) -> torch.Tensor:
    """Refine noise probes until the model's BatchNorm layers see the statistics of its training data.

    No class is asked for, so the refined probes spread over the classes the way the
    teacher's own data did, and their mean softmax estimates its label distribution.
    A model without BatchNorm gets its noise probes back unchanged.
    """
    x = to_model(probes, model).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    with frozen(model), BatchNormStatistics(model) as stats:
        if not stats.handles:
            return probes
        for _ in range(steps):
            model(x)
            loss = stats.pop() + input_prior(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return x.detach()


def self_scores(model: nn.Module, x_holdout: torch.Tensor, y_holdout: torch.Tensor, num_classes: int) -> np.ndarray:
    """``s[c]``: the teacher's recall on its own held-out samples of class ``c`` (0 for classes it has none of).

    Exact rather than data-free; the samples never leave the teacher, only the scores do.
    """
    pred = predict_logits(model, x_holdout).argmax(1).cpu()
    y_holdout = y_holdout.cpu()
    correct = torch.bincount(y_holdout[pred == y_holdout], minlength=num_classes).double()
    total = torch.bincount(y_holdout, minlength=num_classes).double()
    return torch.where(total > 0, correct / total.clamp_min(1), torch.zeros_like(total)).numpy()


def expert_masks(scores: Mapping[str, Sequence[float]], query: Sequence[int], num_classes: int, lam: float) -> dict[str, np.ndarray]:
    """The querier's rule: ``m[k, c] = 1`` iff ``s[k, c] >= lam / |C|``.

    ``scores[k]`` holds teacher ``k``'s reply, one score per query class in the
    order of ``query``. Fallback: a query class no teacher reaches the threshold
    for goes to the single teacher scoring it highest, provided that score is above
    uniform (``1/|C|``); a class nobody scores above uniform has no expert.
    """
    threshold = lam / num_classes
    masks = {k: np.asarray(s, dtype=float) >= threshold for k, s in scores.items()}
    if not scores:
        return masks
    names = list(scores)
    matrix = np.array([scores[k] for k in names], dtype=float).reshape(len(names), len(query))
    for j in range(len(query)):
        if not any(masks[k][j] for k in names):
            best = int(np.argmax(matrix[:, j]))
            if matrix[best, j] > 1.0 / num_classes:
                masks[names[best]][j] = True
    return masks


def experts_by_class(masks: Mapping[str, np.ndarray], query: Sequence[int]) -> dict[int, list[str]]:
    return {c: [k for k, m in masks.items() if m[j]] for j, c in enumerate(query)}


def no_expert_message(scores: Mapping[str, Sequence[float]], query: Sequence[int], num_classes: int, lam: float, missing: Sequence[int]) -> str:
    """Explain which classes found no expert and what the best teacher scored."""
    parts = []
    for c in missing:
        j = list(query).index(c)
        best_name, best = max(((k, float(s[j])) for k, s in scores.items()), key=lambda kv: kv[1], default=("-", 0.0))
        ratio = best * num_classes
        if not np.isfinite(best):
            parts.append(f"class {c}: best teacher '{best_name}' scores {best} (its outputs are not finite)")
            continue
        parts.append(
            f"class {c}: best teacher '{best_name}' scores {best:.3f} = {ratio:.2f}× uniform (λ={lam} needs {lam:.2f}×"
            + (f"; λ ≤ {ratio:.2f} would accept it)" if ratio >= 1 else "; that is below uniform, so probably nobody knows it)")
        )
    return "no expert found for " + "; ".join(parts) + ". Try a smaller λ (query.lam), the 'self' probe, or more teachers."


def check_query(query: Sequence[int] | int, num_classes: int) -> tuple[int, ...]:
    """The query classes ``Q``, sorted, checked against the label space.

    ``query`` is a sequence (or 1-D array) of integer class indices, or a single integer
    for a query of one class. Strings, booleans and floats are refused, also inside the
    sequence, rather than coerced: ``"12"`` is not the classes 1 and 2, ``True`` not class 1.
    """
    if isinstance(query, torch.Tensor | np.ndarray):
        query = query.tolist()
    if is_index(query):
        query = [query]
    if isinstance(query, str | bytes) or not isinstance(query, Sequence):
        raise QueryError(f"query classes must be a list of integer class indices, not {_described(query)}")
    wrong = [c for c in query if not is_index(c)]
    if wrong:
        raise QueryError(f"query classes must be integer class indices; got {_described(wrong[0])}")
    query = tuple(int(c) for c in query)
    if not query:
        raise QueryError("the query is empty: name at least one class to ask for")
    outside = [c for c in query if not 0 <= c < num_classes]
    if outside:
        raise QueryError(f"query class(es) {outside} are outside the label space 0..{num_classes - 1}")
    if len(set(query)) != len(query):
        raise QueryError(f"the query {list(query)} names a class twice")
    return tuple(sorted(query))


def is_index(value: object) -> bool:
    """Whether ``value`` is an integer as given (a bool is not: ``True`` would read as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _described(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"[:80]
