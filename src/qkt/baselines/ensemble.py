"""Ensemble: the average of all parties' softmax outputs at inference (every model needed at test time)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SoftmaxEnsemble(nn.Module):
    """Returns log of the mean softmax of its members, so that argmax and accuracy work as for one model."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()
