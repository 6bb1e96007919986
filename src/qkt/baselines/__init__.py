"""Methods QKT is compared with; each shares the data handling and training loop of the query."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..config import RunConfig, TrainingConfig
from ..methods import METHODS
from ..models import build_model
from ..training import train_as_party
from .fedavg import FedAvg, FederatedResult
from .fedgen import FedGen
from .fedprox import FedProx

FEDERATED: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedgen": FedGen}


def federated_training(config: RunConfig, method: str) -> TrainingConfig:
    """The parties' training settings in federated row ``method``: ``training``, its epochs the row's whole local-epoch budget.

    At the parties' own budget that is ``training.epochs``; at convergence
    ``federated.converged_rounds`` rounds of ``federated.local_epochs``.
    """
    if METHODS[method].rounds == "equal":
        return config.training
    return config.training.model_copy(update={"epochs": config.federated.converged_rounds * config.federated.local_epochs})


def train_global(method: str, config: RunConfig, input_shape: Sequence[int], num_classes: int, x: torch.Tensor,
                 y: torch.Tensor, parts: Sequence[np.ndarray], progress: bool = True) -> FederatedResult:
    """Train the global model of federated row ``method`` (e.g. ``fedavg``, ``fedprox_converged``) over ``parts``.

    Every party uses ``config.training.arch`` (federated averaging needs one architecture),
    the settings of :func:`federated_training` and of ``config.federated``.
    """
    algorithm = FEDERATED[METHODS[method].algorithm](config.federated, federated_training(config, method))
    parties = [(x[torch.as_tensor(p)], y[torch.as_tensor(p)]) for p in parts]
    return algorithm.fit(lambda: build_model(config.training.arch, input_shape, num_classes), parties, progress)


def fine_tune(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], training: TrainingConfig, seed: int) -> nn.Module:
    """A copy of ``model`` trained on ``data`` as a party trains its own model (``training``), from ``model``'s weights.

    Personalised FedAvg's last step: the querier adapts the global model to its own data.
    """
    tuned = copy.deepcopy(model).train()
    train_as_party(tuned, data, training, seed)
    return tuned.eval()
