"""FedProx (Li et al. 2020): FedAvg whose parties add a proximal term keeping them near the global model.

The proximal term ``μ/2 · ||w - w_global||²`` limits how far label-skewed local
training drifts from the round's global model; aggregation is FedAvg's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..training import BatchLoss, cross_entropy_loss
from .fedavg import FedAvg


def proximal_term(model: nn.Module, anchor: Sequence[torch.Tensor]) -> torch.Tensor:
    """``½ Σ ||w - w_anchor||²`` over the trainable parameters, in ``model.parameters()`` order."""
    return 0.5 * sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True))


def proximal_loss(anchor: Sequence[torch.Tensor], mu: float) -> BatchLoss:
    """FedProx's local objective, ``CE + μ/2 · ||w - w_anchor||²``; ``anchor`` is the round's global weights.

    In-process FedProx and the Flower ClientApp both train with it.
    """

    def loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return cross_entropy_loss(model, batch) + mu * proximal_term(model, anchor)

    return loss


class FedProx(FedAvg):
    """FedAvg with the proximal local objective ``CE + μ/2 ||w - w_global||²`` (μ = ``config.prox_mu``).

    For the algorithm to be correct every party must measure the term against the
    global model of the *current* round, which :meth:`local_loss` snapshots.
    """

    name = "FedProx"

    def local_loss(self, global_model: nn.Module, party: int, round_: int) -> BatchLoss:
        return proximal_loss([p.detach().clone() for p in global_model.parameters()], self.config.prox_mu)
