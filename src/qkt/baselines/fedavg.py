"""FedAvg (McMahan et al. 2017): rounds of local training at every party, then a weighted average.

This module also holds the federated driver that FedProx and FedGen extend: one
hook for the parties' local loss and one for the server's work after averaging.
Local training goes through :func:`qkt.training.fit`, the loop every party and
every method uses, so the federated baselines differ from the others in the
algorithm only.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import FederatedConfig, TrainingConfig
from ..models import num_bytes
from ..training import BatchLoss, cross_entropy_loss, resolve_device, train_as_party

Party = tuple[torch.Tensor, torch.Tensor]


def average_states(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of model states (FedAvg's server step).

    Parameters
    ----------
    states:
        ``state_dict()`` of each party's model after local training.
    weights:
        Each party's weight, its number of training samples in FedAvg; normalised here.

    Floating-point tensors (weights and BatchNorm statistics) are averaged; integer
    buffers (BatchNorm's batch counters) take the largest value, as they count, not estimate.
    """
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    w = w / w.sum()
    out = {}
    for key, ref in states[0].items():
        stacked = torch.stack([s[key] for s in states])
        if ref.is_floating_point():
            # float64 is not on every device (MPS has none): the mean is taken in it on the CPU.
            mean = (stacked.cpu().double() * w.view(-1, *([1] * ref.ndim))).sum(0)
            out[key] = mean.to(device=ref.device, dtype=ref.dtype)
        else:
            out[key] = stacked.max(0).values
    return out


def num_rounds(budget: int, per_round: int) -> int:
    """Rounds of ``per_round`` local epochs that spend a budget of ``budget`` local epochs (the last one may be shorter)."""
    return math.ceil(budget / per_round)


def round_epochs(budget: int, per_round: int, round_index: int) -> int:
    """Local epochs of round ``round_index`` (from 0): ``per_round``, and in the last round what is left of ``budget``."""
    return min(per_round, budget - round_index * per_round)


@dataclass
class FederatedResult:
    """The global model of a federated run and what it cost one party (the querier)."""

    model: nn.Module
    rounds: int
    seconds: float
    bytes_sent: int
    bytes_received: int


class FedAvg:
    """Federated averaging with full participation.

    Parameters
    ----------
    config:
        The federated section: ``local_epochs`` per round and the algorithms' own settings.
    training:
        The parties' local training; its ``epochs`` is the total local-epoch budget,
        so ``rounds = ceil(epochs / local_epochs)``, and its optimiser settings are reused.
    """

    name = "FedAvg"

    def __init__(self, config: FederatedConfig, training: TrainingConfig):
        self.config = config
        self.training = training

    @property
    def rounds(self) -> int:
        return num_rounds(self.training.epochs, self.config.local_epochs)

    def start(self, model: nn.Module, parties: Sequence[Party]) -> None:
        """Called once before the first round (FedGen builds its generator here)."""

    def local_loss(self, global_model: nn.Module, party: int, round_: int) -> BatchLoss:
        """The loss party ``party`` minimises in round ``round_``: plain cross-entropy for FedAvg."""
        return cross_entropy_loss

    def after_round(self, global_model: nn.Module, local_models: Sequence[nn.Module], round_: int) -> None:
        """Server work after averaging (FedGen trains its generator here)."""

    def extra_bytes(self) -> int:
        """Bytes the server broadcasts to a party over the whole run besides the global models."""
        return 0

    def fit(self, make_model: Callable[[], nn.Module], parties: Sequence[Party], progress: bool = True) -> FederatedResult:
        """Train one global model over ``parties`` (inputs, labels) on ``training.device`` and return it with its cost."""
        start = time.perf_counter()
        t = self.training
        torch.manual_seed(t.seed)
        global_model = make_model().to(resolve_device(t.device))
        sizes = [len(y) for _, y in parties]
        self.start(global_model, parties)
        bar = tqdm(range(self.rounds), desc=self.name, unit="round", leave=False, disable=not progress)
        for r in bar:
            epochs = round_epochs(t.epochs, self.config.local_epochs, r)
            local_models = []
            for k, (x, y) in enumerate(parties):
                local = copy.deepcopy(global_model)
                train_as_party(local, (x, y), t, seed=t.seed * 1000 + r * 100 + k, epochs=epochs,
                               loss_fn=self.local_loss(global_model, k, r))
                local_models.append(local)
            global_model.load_state_dict(average_states([m.state_dict() for m in local_models], sizes))
            self.after_round(global_model, local_models, r)
        model_bytes = num_bytes(global_model)
        return FederatedResult(global_model.eval(), self.rounds, time.perf_counter() - start,
                               bytes_sent=self.rounds * model_bytes,
                               bytes_received=self.rounds * model_bytes + self.extra_bytes())
