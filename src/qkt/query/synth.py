"""Transfer inputs made at the querier: mixup and model inversion of the experts.

The querier's own data hold no image of the query classes, so distillation on
them alone carries little of the experts' knowledge of those classes. Inverting
each expert — optimising inputs until it predicts a query class while its
BatchNorm layers see the statistics of its training data (DeepInversion, Yin et
al. 2020) — makes such inputs without any data leaving any party.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import InversionConfig
from ..inputs import DatasetRows
from ..training import fast_layout, gradients_only_for, model_device, take, to_model


class Mixed:
    """Inputs ``parts`` one after the other, then mixups of pairs of them, each made when a batch asks for it.

    Stands where a tensor of all of them would (``len``, indexing by a LongTensor or a
    slice, ``shape``, :meth:`first`), so the querier's data are never copied whole and the
    mixups never held: a batch holds the same values the materialised tensor would.
    Mixup ``k`` is ``weight[k] * x[i[k]] + (1 - weight[k]) * x[j[k]]``, ``x`` the parts
    concatenated; batches come on ``device``.
    """

    def __init__(self, parts: Sequence[torch.Tensor | DatasetRows], i: torch.Tensor, j: torch.Tensor, weight: torch.Tensor,
                 device: torch.device):
        self.parts, self.i, self.j, self.weight, self.device = list(parts), i, j, weight, device
        self.num_unmixed = sum(len(p) for p in self.parts)

    def __len__(self) -> int:
        return self.num_unmixed + len(self.i)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.parts[0].shape[1:]))

    def first(self, n: int) -> Mixed:
        """The first ``n`` inputs (at least the unmixed ones): the parts and the first mixups."""
        if n < self.num_unmixed:
            raise ValueError(f"the first {n} inputs would cut into the {self.num_unmixed} unmixed ones")
        k = n - self.num_unmixed
        return Mixed(self.parts, self.i[:k], self.j[:k], self.weight[:k], self.device)

    def _unmixed(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (below ``num_unmixed``) of the parts concatenated."""
        out, start = None, 0
        for part in self.parts:
            inside = (ids >= start) & (ids < start + len(part))
            if inside.any():
                rows = take(part, ids[inside] - start, self.device)
                if out is None:
                    out = torch.empty((len(ids), *rows.shape[1:]), dtype=rows.dtype, device=self.device)
                out[inside.to(self.device)] = rows
            start += len(part)
        return out if out is not None else take(self.parts[0], ids, self.device)

    def __getitem__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        ids = torch.arange(len(self))[idx] if isinstance(idx, slice) else idx.cpu()
        mixed = ids >= self.num_unmixed
        if not mixed.any():
            return self._unmixed(ids)
        k = ids[mixed] - self.num_unmixed
        a, b = self._unmixed(self.i[k]), self._unmixed(self.j[k])
        weight = self.weight[k].to(device=self.device, dtype=a.dtype).view(-1, *([1] * (a.ndim - 1)))
        mixups = weight * a + (1 - weight) * b
        if mixed.all():
            return mixups
        out = torch.empty((len(ids), *a.shape[1:]), dtype=a.dtype, device=self.device)
        mixed = mixed.to(self.device)
        out[mixed] = mixups
        out[~mixed] = self._unmixed(ids[~mixed.cpu()])
        return out


def with_mixups(parts: Sequence[torch.Tensor | DatasetRows], per_input: float, alpha: float, seed: int, device: torch.device) -> Mixed:
    """The inputs ``parts`` followed by ``round(per_input * n)`` convex combinations of random pairs of them (``n`` inputs in all).

    The weights are drawn from Beta(alpha, alpha); everything is reproducible from ``seed``.
    The mixups are made batch by batch (:class:`Mixed`); ``parts`` may be tensors or
    rows such as :class:`qkt.inputs.DatasetRows`.
    """
    n = sum(len(p) for p in parts)
    num = round(per_input * n)
    rng = np.random.default_rng(seed)
    i = torch.from_numpy(rng.integers(n, size=num)) if num else torch.empty(0, dtype=torch.long)
    j = torch.from_numpy(rng.integers(n, size=num)) if num else torch.empty(0, dtype=torch.long)
    weight = torch.from_numpy(rng.beta(alpha, alpha, size=num)) if num else torch.empty(0, dtype=torch.float64)
    return Mixed(parts, i, j, weight, device)


def input_prior(x: torch.Tensor, tv_weight: float = 1e-4, l2_weight: float = 1e-5) -> torch.Tensor:
    """Image priors of DeepInversion: smooth (total variation) and bounded (L2) inputs."""
    loss = l2_weight * x.pow(2).mean()
    if x.ndim == 4:
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
        loss = loss + tv_weight * tv
    return loss


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode with no parameter gradients, restored afterwards: inputs are optimised, not the model.

    Inside, the model sees its inputs in :func:`~qkt.training.fast_layout`: every step of
    an input optimisation is a forward and backward pass, so the layout pays most here.
    """
    was_training = model.training
    model.eval()
    layout = model.register_forward_pre_hook(lambda module, args: (fast_layout(args[0], module), *args[1:]))
    try:
        with gradients_only_for(model, ()):
            yield model
    finally:
        layout.remove()
        model.train(was_training)


class ChannelStatistics(torch.autograd.Function):
    """Per-channel mean and (biased) variance of a batch, with their gradient in one pass over the input.

    On CPU, ``torch.var`` (Welford's one-pass update) ran 2-3× slower than two plain
    passes, mean then squared deviations, and autograd's gradient of ``x.mean`` and
    ``x.var`` walks the activations about six times. Together they were a third of each
    refinement step of a 256-input probe of a CIFAR CNN; written out, the whole probe
    ran 35-38% faster with the same scores. The gradient is ``(g_mean + 2 g_var (x - mean)) / n``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [0, *range(2, x.ndim)]
        mean = x.mean(dims)
        var = (x - mean.view(_channel_shape(x))).square().mean(dims)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx, g_mean: torch.Tensor, g_var: torch.Tensor) -> torch.Tensor:
        x, mean = ctx.saved_tensors
        n, shape = x.numel() // x.shape[1], _channel_shape(x)
        slope = (2 / n) * g_var
        return torch.addcmul((g_mean / n - slope * mean).view(shape), x, slope.view(shape))


def _channel_shape(x: torch.Tensor) -> tuple[int, ...]:
    """The shape that broadcasts one value per channel over ``x``."""
    return (1, -1, *([1] * (x.ndim - 2)))


class BatchNormStatistics:
    """Forward hooks that measure how far a batch's statistics are from a BatchNorm layer's running ones."""

    def __init__(self, model: nn.Module):
        self.losses: list[torch.Tensor] = []
        # A BatchNorm layer built with track_running_stats=False keeps no statistics to match.
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]

    def _hook(self, module: nn.modules.batchnorm._BatchNorm, inputs: tuple[torch.Tensor], _output) -> None:
        mean, var = ChannelStatistics.apply(inputs[0])
        self.losses.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    def pop(self) -> torch.Tensor:
        total = torch.stack(self.losses).sum() if self.losses else torch.zeros(())  # a 0-dim CPU tensor adds to a loss on any device
        self.losses = []
        return total

    def __enter__(self) -> BatchNormStatistics:
        return self

    def __exit__(self, *_exc) -> None:
        for h in self.handles:
            h.remove()


def invert(
    model: nn.Module,
    classes: Sequence[int],
    input_shape: Sequence[int],
    config: InversionConfig,
    seed: int,
    num_per_class: int | None = None,
    desc: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesise inputs that ``model`` classifies as each of ``classes``.

    Returns the inputs and the class each was made for, on the model's device. The model is left unchanged.
    """
    num_per_class = config.samples_per_class if num_per_class is None else num_per_class
    # Drawn on the CPU from a seeded generator, then moved: the same start on every device.
    targets = torch.tensor(list(classes), dtype=torch.long).repeat_interleave(num_per_class).to(model_device(model))
    generator = torch.Generator().manual_seed(seed)
    x = to_model(torch.randn(len(targets), *input_shape, generator=generator), model).requires_grad_(True)
    if not len(targets):
        return x.detach(), targets
    optimizer = torch.optim.Adam([x], lr=config.lr)
    with frozen(model), BatchNormStatistics(model) as stats:
        for _ in tqdm(range(config.steps), desc=desc, leave=False, disable=desc is None, unit="step"):
            loss = F.cross_entropy(model(x), targets) + config.bn_weight * stats.pop()
            loss = loss + input_prior(x, config.tv_weight, config.l2_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return x.detach(), targets
