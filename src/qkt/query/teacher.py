"""The teacher side of a query: answer the announcement, and send the model when asked (SPEC §2, steps 2-3).

A teacher only ever computes on its own model (and, for the ``self`` probe, its own
held-out data); what leaves it is ``|Q|`` scores, and its weights if it is an expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import QueryError
from . import light, privacy, probe
from .messages import Announcement


@dataclass
class Teacher:
    """A teacher as the in-process API sees it: its model and, for the 'self' probe, its own held-out data."""

    model: nn.Module
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None


def answer_probe(model: nn.Module, announcement: Announcement, holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """The scores ``s[k, Q]`` (one float32 per query class), computed on the teacher's own model.

    With ``announcement.noise == "laplace"`` the reply is ε-differentially private
    (:mod:`qkt.query.privacy`); ``rng`` seeds that noise (default: fresh entropy).
    """
    if announcement.probe_kind == "self":
        if holdout is None:
            raise QueryError("the 'self' probe needs each teacher's held-out data")
        scores = probe.self_scores(model, holdout[0], holdout[1], announcement.num_classes)
    else:
        probes = probe.noise_probes(announcement.input_shape, announcement.probe_samples, announcement.probe_scales, announcement.probe_seed)
        if announcement.probe_kind == "statistics":
            probes = probe.statistics_probes(model, probes, announcement.probe_steps)
        scores = probe.noise_scores(model, probes)
    if len(scores) != announcement.num_classes:
        raise QueryError(f"the teacher's model outputs {len(scores)} classes but the label space has {announcement.num_classes}")
    reply = scores[list(announcement.query)].astype(np.float32)
    return privacy.privatize(reply, announcement.epsilon, rng) if announcement.noise == "laplace" else reply


def export_weights(model: nn.Module, half: bool = False) -> dict[str, np.ndarray]:
    """The model's state as arrays, floats cast to float16 for QKT Light."""
    dtype = light.WIRE_DTYPE if half else None
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).cpu().numpy() for k, v in model.state_dict().items()}
