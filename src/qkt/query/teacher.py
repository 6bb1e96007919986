"""The teacher side of a query: answer the announcement, and send the model when asked (SPEC §2, steps 2-3).

A teacher only ever computes on its own model (and, for the ``self`` probe, its own
held-out data); what leaves it is ``|Q|`` scores, and its weights if it is an expert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import QueryError
from ..inputs import as_tensors, class_indices
from . import light, privacy, probe
from .messages import Announcement

NOISES = ("none", "laplace")
PROBE_KINDS = ("statistics", "noise", "self")


class Refused(QueryError):
    """A teacher's refusal of an announcement its own policy does not allow; the querier records it with the reason."""


@dataclass(frozen=True)
class TeacherPolicy:
    """What a teacher agrees to answer: its own decision, never the querier's.

    Attributes
    ----------
    noise, max_epsilon:
        The least privacy a reply must have: with ``noise = "laplace"`` the announcement must
        ask for Laplace noise with ε at most ``max_epsilon``.
    classes:
        The classes it answers for (None: any); ``max_query_share`` bounds ``|Q| / |C|``, and
        a query never names every class, so that no querier learns a teacher's whole label
        distribution in one reply.
    max_probe_samples, max_probe_steps, max_probe_scales:
        Bounds on the probe's work: inputs per scale, refinement steps, scales.
    """

    noise: str = "none"
    max_epsilon: float = math.inf
    classes: tuple[int, ...] | None = None
    max_query_share: float = 1.0
    max_probe_samples: int = 4096
    max_probe_steps: int = 1000
    max_probe_scales: int = 8

    def __post_init__(self) -> None:
        if self.noise not in NOISES:
            raise QueryError(f"unknown noise '{self.noise}' in a teacher's policy; choose among {', '.join(NOISES)}")

    def check(self, a: Announcement) -> None:
        """Raise :class:`Refused`, with why, for an announcement outside this policy (or malformed)."""
        if a.noise not in NOISES:
            raise Refused(f"unknown noise '{a.noise}'; choose among {', '.join(NOISES)}")
        if a.probe_kind not in PROBE_KINDS:
            raise Refused(f"unknown probe kind '{a.probe_kind}'")
        if self.noise == "laplace" and (a.noise != "laplace" or not 0 < a.epsilon <= self.max_epsilon):
            raise Refused(f"the teacher answers only with Laplace noise of ε ≤ {self.max_epsilon:g} "
                          f"(asked: noise '{a.noise}', ε = {a.epsilon:g})")
        query = list(a.query)
        if not query or len(set(query)) != len(query) or any(not 0 <= c < a.num_classes for c in query):
            raise Refused(f"the query {query} is not distinct classes of 0..{a.num_classes - 1}")
        most = a.num_classes if math.isinf(self.max_query_share) else max(1, min(a.num_classes - 1, int(self.max_query_share * a.num_classes)))
        if len(query) > most:
            raise Refused(f"the query names {len(query)} of {a.num_classes} classes; the teacher answers at most {most}")
        if self.classes is not None and set(query) - set(self.classes):
            raise Refused(f"the teacher does not answer for class(es) {sorted(set(query) - set(self.classes))}")
        if not (0 < a.probe_samples <= self.max_probe_samples and 0 <= a.probe_steps <= self.max_probe_steps
                and 0 < len(a.probe_scales) <= self.max_probe_scales and all(map(math.isfinite, a.probe_scales))):
            raise Refused(f"the probe asks for {a.probe_samples} samples × {len(a.probe_scales)} scales and {a.probe_steps} steps; "
                          f"the teacher allows at most {self.max_probe_samples} × {self.max_probe_scales} and {self.max_probe_steps}")


# Simulations whose teachers compute every class's score once (CachedScores): no other party's policy is at stake.
UNLIMITED = TeacherPolicy(max_query_share=math.inf, max_probe_samples=2**62, max_probe_steps=2**62, max_probe_scales=2**62)


@dataclass
class Teacher:
    """A teacher as the in-process API sees it: its model, for the 'self' probe its own held-out data, and its policy."""

    model: nn.Module
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None
    policy: TeacherPolicy = field(default_factory=TeacherPolicy)

    def __post_init__(self) -> None:
        if not isinstance(self.policy, TeacherPolicy):
            raise QueryError(f"a teacher's policy must be a qkt.TeacherPolicy, not {type(self.policy).__name__}")
        if self.holdout is not None:
            x, y = as_tensors(self.holdout, what="a teacher's held-out")
            self.holdout = (x, class_indices(y, len(x), "a teacher's held-out"))


def probe_scores(model: nn.Module, recipe: Announcement, holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
                 noise: torch.Tensor | None = None) -> np.ndarray:
    """The scores ``s[k, c]`` of every class ``c`` of the label space under ``recipe``'s probe, exact.

    ``noise``: the recipe's noise probes (:func:`qkt.query.probe.noise_probes`) if the
    caller already drew them; a querier re-probing several experts draws them once.
    """
    if recipe.probe_kind == "self":
        if holdout is None:
            raise QueryError("the 'self' probe needs each teacher's held-out data")
        scores = probe.self_scores(model, holdout[0], holdout[1], recipe.num_classes)
    else:
        if noise is None:
            noise = probe.noise_probes(recipe.input_shape, recipe.probe_samples, recipe.probe_scales, recipe.probe_seed)
        probes = probe.statistics_probes(model, noise, recipe.probe_steps) if recipe.probe_kind == "statistics" else noise
        scores = probe.noise_scores(model, probes)
    if len(scores) != recipe.num_classes:
        raise QueryError(f"the teacher's model outputs {len(scores)} classes but the label space has {recipe.num_classes}")
    return scores


def answer_probe(model: nn.Module, announcement: Announcement, holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
                 rng: np.random.Generator | None = None, policy: TeacherPolicy | None = None) -> np.ndarray:
    """The scores ``s[k, Q]`` (one float32 per query class), computed on the teacher's own model.

    With ``announcement.noise == "laplace"`` the reply is ε-differentially private
    (:mod:`qkt.query.privacy`); ``rng`` seeds that noise (default: fresh entropy).
    An announcement outside ``policy`` (default: :class:`TeacherPolicy`'s limits) raises :class:`Refused`.
    """
    (policy or TeacherPolicy()).check(announcement)
    reply = probe_scores(model, announcement, holdout)[list(announcement.query)].astype(np.float32)
    return privacy.privatize(reply, announcement.epsilon, rng) if announcement.noise == "laplace" else reply


def export_weights(model: nn.Module, half: bool = False) -> dict[str, np.ndarray]:
    """The model's state as arrays, floats cast to float16 for QKT Light."""
    dtype = light.WIRE_DTYPE if half else None
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).cpu().numpy() for k, v in model.state_dict().items()}
