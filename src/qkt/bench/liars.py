"""Planted liars: teachers whose weights are rigged to be taken as experts of the query.

Each liar is built from an honest teacher's trained model and sends weights of it,
but its outputs say the query classes ``Q`` where they should not:

- ``constant``: the maximal logit for ``Q`` on every input, nothing else;
- ``input-independent``: one fixed, unsaturated distribution for every input
  (half its mass on ``Q``, the rest as the honest model spreads it over noise);
- ``query-on-data``: the honest model's logits with ``Q`` raised above the largest
  of them, so that every input, the querier's labelled ones too, is called ``Q``;
- ``noise-only``: the honest model, but confident in ``Q`` on inputs that look like
  noise (little of their energy in the principal components of its training data),
  so that it passes the data-free probe and answers honestly on real data.

:class:`Planted` puts one in place of a teacher of a channel, alone or among the
others; ``qkt bench``'s ``liar-*`` scenarios and the tests use both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..query.channel import ChannelWrapper, InProcessChannel, Scores, TeacherChannel, Weights
from ..query.messages import Announcement
from ..training import predict_logits

KINDS = ("constant", "input-independent", "query-on-data", "noise-only")
MARGIN = 10.0  # logits: e^10 makes the query class take all but 5e-5 of the probability


class Liar(nn.Module):
    """An honest model whose logits are rewritten; its weights are the honest model's plus the liar's buffers."""

    def __init__(self, honest: nn.Module, kind: str, query: Sequence[int], num_classes: int):
        super().__init__()
        self.honest, self.kind = honest, kind
        mask = torch.zeros(num_classes, dtype=torch.bool)
        mask[list(query)] = True
        self.register_buffer("query_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.honest(x)
        return self.rewrite(x, z)

    def rewrite(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Constant(Liar):
    def __init__(self, honest: nn.Module, query: Sequence[int], num_classes: int):
        super().__init__(honest, "constant", query, num_classes)

    def rewrite(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # 0 * z keeps the honest graph, so inversion and BatchNorm hooks see a real network
        return 0 * z + MARGIN * self.query_mask.float()


class InputIndependent(Liar):
    def __init__(self, honest: nn.Module, query: Sequence[int], num_classes: int, prior: torch.Tensor):
        super().__init__(honest, "input-independent", query, num_classes)
        mask = self.query_mask.float()
        probs = 0.5 * mask / mask.sum() + 0.5 * prior
        self.register_buffer("fixed", probs.clamp_min(1e-6).log())

    def rewrite(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return 0 * z + self.fixed


class QueryOnData(Liar):
    def __init__(self, honest: nn.Module, query: Sequence[int], num_classes: int):
        super().__init__(honest, "query-on-data", query, num_classes)

    def rewrite(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        top = z.max(1, keepdim=True).values
        return torch.where(self.query_mask, top + MARGIN, z)


class NoiseOnly(Liar):
    """Confident in ``Q`` where an input's energy lies outside the top principal components of the honest teacher's data."""

    def __init__(self, honest: nn.Module, query: Sequence[int], num_classes: int, data: torch.Tensor, components: int = 16):
        super().__init__(honest, "noise-only", query, num_classes)
        flat = data.reshape(len(data), -1)
        mean = flat.mean(0)
        k = min(components, flat.shape[1] // 4, len(flat) - 1)
        _, _, v = torch.pca_lowrank(flat - mean, q=k, center=False)
        self.register_buffer("mean", mean)
        self.register_buffer("basis", v[:, :k])
        own = self.share(data)
        # halfway between the least structured tenth of its own data and white noise (k of the dimensions)
        self.register_buffer("cut", (torch.quantile(own, 0.1) + k / flat.shape[1]) / 2)

    def share(self, x: torch.Tensor) -> torch.Tensor:
        centred = x.reshape(len(x), -1) - self.mean
        return (centred @ self.basis).pow(2).sum(1) / centred.pow(2).sum(1).clamp_min(1e-12)

    def rewrite(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid((self.cut - self.share(x)) * 50)[:, None]
        return torch.where(self.query_mask, z + gate * (z.max(1, keepdim=True).values - z + MARGIN), z)


def plant(kind: str, honest: nn.Module, query: Sequence[int], num_classes: int, data: torch.Tensor) -> nn.Module:
    """The liar ``kind`` (one of :data:`KINDS`) made from ``honest``, a teacher's trained model, and that teacher's own inputs ``data``."""
    if kind == "constant":
        liar: Liar = Constant(honest, query, num_classes)
    elif kind == "input-independent":
        noise = torch.randn(256, *data.shape[1:], generator=torch.Generator().manual_seed(0))
        liar = InputIndependent(honest, query, num_classes, torch.softmax(predict_logits(honest, noise), 1).mean(0))
    elif kind == "query-on-data":
        liar = QueryOnData(honest, query, num_classes)
    elif kind == "noise-only":
        liar = NoiseOnly(honest, query, num_classes, data)
    else:
        raise ValueError(f"unknown liar '{kind}'; choose among {', '.join(KINDS)}")
    return liar.eval()


class Planted(ChannelWrapper):
    """Teacher ``name`` is ``liar``: it answers and sends weights from the liar's model; with ``alone``, no other teacher is reached."""

    def __init__(self, inner: TeacherChannel, name: str, liar: nn.Module, alone: bool = False):
        super().__init__(inner)
        self.name, self.alone, self.liar = name, alone, InProcessChannel({name: liar})

    @property
    def teachers(self) -> tuple[str, ...]:
        return (self.name,) if self.alone else self.inner.teachers

    def _split(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if n != self.name]

    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        replies = {**(self.inner.announce(announcement, self._split(names)) if self._split(names) else {}),
                   **(self.liar.announce(announcement, [self.name]) if self.name in names else {})}
        return {n: replies[n] for n in names}

    def fetch_weights(self, names: Sequence[str], half: bool) -> dict[str, Weights]:
        replies = {**(self.inner.fetch_weights(self._split(names), half) if self._split(names) else {}),
                   **(self.liar.fetch_weights([self.name], half) if self.name in names else {})}
        return {n: replies[n] for n in names}

    def architecture(self, name: str) -> nn.Module:
        return self.liar.architecture(name) if name == self.name else self.inner.architecture(name)

