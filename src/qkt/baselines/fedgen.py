"""FedGen (Zhu, Hong and Zhou 2021): data-free federated distillation with a server-side generator.

After each FedAvg round the server trains a conditional generator of *feature-space*
inputs (what the classification head sees) so that the parties' heads, weighted by
how many samples of each label a party holds, classify ``G(z, y)`` as ``y``. In the
next round every party regularises its local training with generated features of
all labels, which carries knowledge of classes it lacks without any data exchange.
The losses and defaults follow the authors' code (``serverpFedGen``/``userpFedGen``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import find_head, num_bytes
from ..training import BatchLoss, model_device
from .fedavg import FedAvg, Party


class Generator(nn.Module):
    """``G(z, y)``: uniform noise and a one-hot label to a feature vector of the classification head's input size."""

    def __init__(self, num_classes: int, feature_dim: int, noise_dim: int = 32, hidden: int = 256):
        super().__init__()
        self.num_classes = num_classes
        self.noise_dim = noise_dim
        self.body = nn.Sequential(nn.Linear(noise_dim + num_classes, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Linear(hidden, feature_dim))

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features for labels ``y`` and the noise they were made from."""
        eps = torch.rand(len(y), self.noise_dim, generator=generator).to(y.device)  # drawn on the CPU: the same on any device
        return self.body(torch.cat([eps, F.one_hot(y, self.num_classes).float()], dim=1)), eps


def diversity_loss(noise: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``exp(-mean(d_noise · d_features))``: small when different noises give different features (mode-collapse guard)."""
    d_features = (features[:, None] - features[None]).abs().mean(2)
    d_noise = (noise[:, None] - noise[None]).pow(2).mean(2)
    return torch.exp(-(d_noise * d_features).mean())


def label_weights(parties: Sequence[Party], num_classes: int) -> torch.Tensor:
    """``w[k, c]``: party ``k``'s share of all samples of class ``c`` (how much its head is trusted on ``c``)."""
    counts = torch.stack([torch.bincount(y, minlength=num_classes) for _, y in parties]).float()
    return counts / counts.sum(0, keepdim=True).clamp_min(1)


def generator_step(generator: Generator, optimizer: torch.optim.Optimizer, heads: Sequence[nn.Module],
                   weights: torch.Tensor, labels: torch.Tensor, batch_size: int, diversity: float,
                   rng: torch.Generator) -> float:
    """One server update of the generator against the parties' frozen heads; returns the loss.

    Labels are drawn from ``labels`` (those some party holds); the teacher loss is
    each head's cross-entropy on the generated features, weighted per sample by that
    party's share ``weights[k, y]`` of the label.
    """
    generator.train()
    y = labels[torch.randint(len(labels), (batch_size,), generator=rng)]
    features, eps = generator(y, rng)
    teacher = sum((F.cross_entropy(head(features), y, reduction="none") * weights[k, y]).mean() for k, head in enumerate(heads))
    loss = teacher + diversity * diversity_loss(eps, features)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


class FedGen(FedAvg):
    """FedAvg whose parties learn from a generator the server trains on their heads.

    The models must expose a ``head`` (``nn.Linear``) applied to the output of the
    rest of the network; the generator produces inputs for it.
    """

    name = "FedGen"

    def start(self, model: nn.Module, parties: Sequence[Party]) -> None:
        c = self.config
        head = find_head(model)
        device = model_device(model)
        self.generator = Generator(head.out_features, head.in_features, c.gen_noise_dim, c.gen_hidden).to(device)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=c.gen_lr, weight_decay=1e-2)
        self.weights = label_weights(parties, head.out_features).to(device)
        self.labels = torch.nonzero(self.weights.sum(0) > 0).flatten()
        self.rng = torch.Generator().manual_seed(self.training.seed)
        self.trained = False

    def local_loss(self, global_model: nn.Module, party: int, round_: int) -> BatchLoss:
        """Cross-entropy, plus (once the generator has trained) FedGen's two generator terms with decaying weights."""
        if not self.trained:
            return super().local_loss(global_model, party, round_)
        c = self.config
        alpha = c.gen_alpha * c.gen_decay ** round_
        beta = c.gen_beta * c.gen_decay ** round_
        ratio = c.gen_batch_size / self.training.batch_size
        generator, labels, rng = self.generator.eval(), self.labels, self.rng

        def loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            x, y = batch[0], batch[1]
            head = find_head(model)
            logits = model(x)
            with torch.no_grad():
                features, _ = generator(y, rng)
                target = torch.softmax(head(features), dim=1)
                sampled = labels[torch.randint(len(labels), (c.gen_batch_size,), generator=rng)]
                generated, _ = generator(sampled, rng)
            latent = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
            teacher = F.cross_entropy(head(generated), sampled)
            return F.cross_entropy(logits, y) + ratio * alpha * teacher + beta * latent

        return loss

    def after_round(self, global_model: nn.Module, local_models: Sequence[nn.Module], round_: int) -> None:
        heads = [find_head(m).requires_grad_(False) for m in local_models]
        for _ in range(self.config.gen_steps):
            generator_step(self.generator, self.optimizer, heads, self.weights, self.labels,
                           self.config.gen_batch_size, self.config.gen_diversity, self.rng)
        self.trained = True

    def extra_bytes(self) -> int:
        return (self.rounds - 1) * num_bytes(self.generator)  # broadcast from the second round on
