"""The teacher side of a query: answer the announcement, and send the model when asked (SPEC §2, steps 2-3).

A teacher only ever computes on its own model (and, for the ``self`` probe, its own
held-out data); what leaves it is ``|Q|`` scores, and its weights if it is an expert.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import PROBE_SEEDS
from ..errors import QueryError
from ..inputs import as_tensors, class_indices
from ..methods import METHODS
from . import light, privacy, probe
from .messages import Announcement

NOISES = ("none", "laplace")
PROBE_KINDS = ("statistics", "noise", "self")


class Refused(QueryError):
    """A teacher's refusal of an announcement its own policy does not allow; the querier records it with the reason."""


class InvalidPolicy(QueryError):
    """A teacher's policy that cannot be enforced as written; ``fields`` name the settings at fault."""

    def __init__(self, fields: tuple[str, ...], problem: str):
        self.fields, self.problem = fields, problem
        super().__init__(f"a teacher's policy is invalid: {self.naming(str)}")

    def naming(self, name: Callable[[str], str]) -> str:
        """The problem, each field called by ``name`` (a SuperNode's node config calls them otherwise)."""
        return f"{' and '.join(map(name, self.fields))} {self.problem}"


SHOWN_CLASSES = 10  # a refusal names at most this many classes: a querier's list of 10**6 classes is no reason to echo


def shown(classes: Sequence[int]) -> str:
    """``classes`` for a refusal's reason, cut to its first :data:`SHOWN_CLASSES`."""
    classes = list(classes)
    if len(classes) <= SHOWN_CLASSES:
        return str(classes)
    return f"[{', '.join(map(str, classes[:SHOWN_CLASSES]))}, …] ({len(classes)} classes)"


@dataclass(frozen=True)
class Answered:
    """What a teacher has answered in one run: how many announcements, and the union of the classes they named."""

    count: int = 0
    classes: frozenset[int] = frozenset()

    def plus(self, announcement: Announcement) -> Answered:
        return Answered(self.count + 1, self.classes | set(announcement.query))


NOTHING_ANSWERED = Answered()


# A run announces its one query once per query method it runs; a teacher answers that many by default.
ANSWERS_PER_RUN = sum(m.runner == "query" and m.flower and not m.settings.get("public_pool") for m in METHODS.values())


@dataclass(frozen=True)
class TeacherPolicy:
    """What a teacher agrees to answer: its own decision, never the querier's.

    Attributes
    ----------
    noise, max_epsilon:
        The least privacy a reply must have: with ``noise = "laplace"`` the announcement must
        ask for Laplace noise with ε at most ``max_epsilon`` (a bound that needs ``noise = "laplace"``).
        A Laplace announcement with ε not positive and finite is refused whatever the policy.
    classes:
        The classes it answers for (None: any); ``max_query_share`` bounds ``|Q| / |C|``, and
        the queries of one run never name every class together, so that no querier learns a
        teacher's whole label distribution (``inf``: no bound at all).
    min_expert_score:
        The score one of its replies must reach for it to send its weights, if above uniform
        ``1/|C|``: a score below uniform is no expertise (the querier's own rule, ``s ≥ λ/|C|`` with
        ``λ ≥ 1``, never asks for less); the querier's λ is its own and is not announced.
    max_answers:
        Announcements it answers in one run (:class:`Answered`; the Flower app keeps the count).
    max_probe_samples, max_probe_steps, max_probe_scales, max_probe_elements:
        Bounds on the probe's work: inputs per scale, refinement steps, scales, and numbers
        in all the probe's inputs together (samples × scales × input size).
    """

    noise: str = "none"
    max_epsilon: float = math.inf
    classes: tuple[int, ...] | None = None
    max_query_share: float = 1.0
    min_expert_score: float = 0.0
    max_answers: int = ANSWERS_PER_RUN
    max_probe_samples: int = 4096
    max_probe_steps: int = 1000
    max_probe_scales: int = 8
    max_probe_elements: int = 2**28  # 1 GiB of float32: the default probe of 224-pixel RGB images holds 231 million

    def __post_init__(self) -> None:
        if self.noise not in NOISES:
            raise InvalidPolicy(("noise",), f"is '{self.noise}'; choose among {', '.join(NOISES)}")
        if not self.max_epsilon > 0:
            raise InvalidPolicy(("max_epsilon",), f"is {self.max_epsilon:g}; it must be positive")
        if self.max_epsilon != math.inf and self.noise != "laplace":
            raise InvalidPolicy(("max_epsilon", "noise"), f"contradict: a bound on Laplace noise's ε ({self.max_epsilon:g}) "
                                f"without Laplace noise ('{self.noise}')")
        if self.classes is not None and (len(set(self.classes)) != len(self.classes) or any(c < 0 for c in self.classes)):
            raise InvalidPolicy(("classes",), f"{shown(self.classes)} must be distinct class indices ≥ 0")
        if not (0 < self.max_query_share <= 1 or self.max_query_share == math.inf):
            raise InvalidPolicy(("max_query_share",), f"is {self.max_query_share:g}; it must be in (0, 1], or inf for no bound")
        if not 0 <= self.min_expert_score <= 1:
            raise InvalidPolicy(("min_expert_score",), f"is {self.min_expert_score:g}; it must be in [0, 1]")
        if self.max_answers < 1:
            raise InvalidPolicy(("max_answers",), f"is {self.max_answers}; it must be at least 1")

    def check(self, a: Announcement, answered: Answered = NOTHING_ANSWERED) -> None:
        """Raise :class:`Refused`, with why, for an announcement outside this policy (or malformed),
        given what the teacher has ``answered`` earlier in the run."""
        if a.noise not in NOISES:
            raise Refused(f"unknown noise '{a.noise}'; choose among {', '.join(NOISES)}")
        if a.probe_kind not in PROBE_KINDS:
            raise Refused(f"unknown probe kind '{a.probe_kind}'")
        if a.noise == "laplace" and not 0 < a.epsilon < math.inf:
            raise Refused(f"Laplace noise needs a positive, finite ε (asked: ε = {a.epsilon:g})")
        if self.noise == "laplace" and (a.noise != "laplace" or a.epsilon > self.max_epsilon):
            raise Refused(f"the teacher answers only with Laplace noise of ε ≤ {self.max_epsilon:g} "
                          f"(asked: noise '{a.noise}', ε = {a.epsilon:g})")
        query = list(a.query)
        if not query or len(set(query)) != len(query) or any(not 0 <= c < a.num_classes for c in query):
            raise Refused(f"the query {shown(query)} is not distinct classes of 0..{a.num_classes - 1}")
        named = answered.classes | set(query)
        most = a.num_classes if math.isinf(self.max_query_share) else max(1, min(a.num_classes - 1, int(self.max_query_share * a.num_classes)))
        if len(named) > most:
            earlier = f" with the {len(answered.classes)} it answered earlier in this run" if answered.classes else ""
            raise Refused(f"the query names {len(named)} of {a.num_classes} classes{earlier}; the teacher answers at most {most}")
        if self.classes is not None and set(query) - set(self.classes):
            raise Refused(f"the teacher does not answer for class(es) {shown(sorted(set(query) - set(self.classes)))}")
        if answered.count >= self.max_answers:
            raise Refused(f"the teacher answers at most {self.max_answers} announcement(s) in a run, and has answered them")
        if not (0 < a.probe_samples <= self.max_probe_samples and 0 <= a.probe_steps <= self.max_probe_steps
                and 0 < len(a.probe_scales) <= self.max_probe_scales and all(map(math.isfinite, a.probe_scales))):
            raise Refused(f"the probe asks for {a.probe_samples} samples × {len(a.probe_scales)} scales and {a.probe_steps} steps; "
                          f"the teacher allows at most {self.max_probe_samples} × {self.max_probe_scales} and {self.max_probe_steps}")
        if not a.input_shape or any(d < 1 for d in a.input_shape):
            raise Refused(f"the input shape {shown(a.input_shape)} is not a shape of inputs")
        elements = a.probe_samples * len(a.probe_scales)
        for size in a.input_shape:  # stops as soon as it is too many: the product of 10**6 sizes would take minutes
            elements *= size
            if elements > self.max_probe_elements:
                raise Refused(f"the probe's inputs of shape {shown(a.input_shape)} would hold more than {self.max_probe_elements:,} "
                              "numbers, the teacher's bound")
        if not 0 <= a.probe_seed < PROBE_SEEDS:
            raise Refused(f"the probe seed must be in 0..2**63 - 1 (asked: {a.probe_seed:.3g})")

    def is_expert(self, a: Announcement, scores: Sequence[float]) -> bool:
        """Whether its reply ``scores`` to ``a`` make this teacher an expert, by its own floor: a score of at least
        uniform ``1/|C|`` and ``min_expert_score``."""
        floor = max(1.0 / a.num_classes, self.min_expert_score)
        return any(s >= floor for s in scores)


# Simulations whose teachers compute every class's score once (CachedScores): no other party's policy is at stake.
UNLIMITED = TeacherPolicy(max_query_share=math.inf, max_probe_samples=2**62, max_probe_steps=2**62, max_probe_scales=2**62,
                          max_probe_elements=2**62)


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
                 rng: np.random.Generator | None = None, policy: TeacherPolicy | None = None,
                 answered: Answered = NOTHING_ANSWERED) -> np.ndarray:
    """The scores ``s[k, Q]`` (one float32 per query class), computed on the teacher's own model.

    With ``announcement.noise == "laplace"`` the reply is ε-differentially private
    (:mod:`qkt.query.privacy`); ``rng`` seeds that noise (default: fresh entropy).
    An announcement outside ``policy`` (default: :class:`TeacherPolicy`'s limits), given what the
    teacher ``answered`` earlier in the run, raises :class:`Refused`.
    """
    (policy or TeacherPolicy()).check(announcement, answered)
    reply = probe_scores(model, announcement, holdout)[list(announcement.query)].astype(np.float32)
    return privacy.privatize(reply, announcement.epsilon, rng) if announcement.noise == "laplace" else reply


def export_weights(model: nn.Module, half: bool = False) -> dict[str, np.ndarray]:
    """The model's state as arrays, floats cast to float16 for QKT Light."""
    dtype = light.WIRE_DTYPE if half else None
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).cpu().numpy() for k, v in model.state_dict().items()}
