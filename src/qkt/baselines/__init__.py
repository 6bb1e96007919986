"""Methods QKT is compared with; each shares the data handling and training loop of the query."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..config import RunConfig
from ..models import build_model
from .fedavg import FedAvg, FederatedResult
from .fedgen import FedGen
from .fedprox import FedProx

FEDERATED: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedgen": FedGen}


def train_global(method: str, config: RunConfig, input_shape: Sequence[int], num_classes: int, x: torch.Tensor,
                 y: torch.Tensor, parts: Sequence[np.ndarray], progress: bool = True) -> FederatedResult:
    """Train the global model of a federated baseline (``fedavg``, ``fedprox``, ``fedgen``) over ``parts``.

    Every party uses ``config.training.arch`` (federated averaging needs one architecture)
    and the settings of ``config.training`` and ``config.federated``.
    """
    algorithm = FEDERATED[method](config.federated, config.training)
    parties = [(x[torch.as_tensor(p)], y[torch.as_tensor(p)]) for p in parts]
    return algorithm.fit(lambda: build_model(config.training.arch, input_shape, num_classes), parties, progress)
