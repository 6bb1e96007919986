"""The transfer set: the inputs Phases 1 and 2 learn from, their combined targets, and the loss that fits them (SPEC §2, step 4).

The target of an input is built class by class: for a query class, the experts
whose mask bit is set speak; for every other class, the querier's own frozen
model does. Non-experts and the experts' non-query outputs contribute nothing,
which is what keeps the querier's own knowledge and keeps interference out.
The inputs are the querier's own data, inversions of the experts, optionally a
public pool of unlabelled inputs the querier holds, and mixups of all of them;
none comes from another party.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import QueryConfig
from ..inputs import DatasetRows
from ..training import Amp, fit, model_device, predict_logits
from . import synth
from .inputs import input_dtype
from .probe import experts_by_class


def softmax_outputs(model: nn.Module, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """Tempered softmax of a frozen model on fixed inputs, batch by batch; computed once per input and reused every epoch.

    Only the ``(N, C)`` outputs are held, never a copy of the inputs.
    """
    return torch.softmax(predict_logits(model, x) / temperature, dim=1)


def combine_targets(
    own: torch.Tensor,
    experts: Mapping[str, torch.Tensor],
    masks: Mapping[str, np.ndarray],
    query: Sequence[int],
    depth: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The distillation target of SPEC §2, class by class.

    Parameters
    ----------
    own:
        ``(N, C)`` probabilities of the querier's frozen original model.
    experts:
        ``(N, C)`` probabilities of each teacher whose model was received.
    masks:
        ``masks[k][j]`` is True iff teacher ``k`` is an expert in ``query[j]``.
    depth:
        Optional ``(N,)`` weight in ``[0, 1]`` per expert (:func:`expert_depth`): how far
        each input lies within what the expert knows. An expert's probability of ``c``
        then counts for that share, the querier's own for the rest. None: every expert
        counts fully.

    For ``c`` in the query the target is the mean of the experts' probabilities of
    ``c`` (the querier's own if ``c`` has no expert); the remaining mass is shared
    among the other classes in the proportions of the querier's own model.
    """
    query = list(query)
    target = torch.zeros_like(own)
    for j, c in enumerate(query):
        speakers = [experts[k][:, c] if depth is None else depth[k] * experts[k][:, c] + (1 - depth[k]) * own[:, c]
                    for k, m in masks.items() if m[j] and k in experts]
        target[:, c] = torch.stack(speakers).mean(0) if speakers else own[:, c]
    query_mass = target[:, query].sum(1, keepdim=True)
    excess = query_mass.clamp_min(1.0)
    target[:, query] /= excess
    query_mass = query_mass / excess
    rest = torch.ones(own.shape[1], dtype=torch.bool, device=own.device)
    rest[query] = False
    own_rest = own[:, rest]
    target[:, rest] = own_rest / own_rest.sum(1, keepdim=True).clamp_min(1e-12) * (1 - query_mass)
    return target


def origins(classes: torch.Tensor, x: synth.Mixed, num_classes: int) -> torch.Tensor:
    """``(N, C)``: the class each transfer input is made of, from how it was made.

    ``classes`` holds, for the first unmixed inputs of ``x``, the querier's label of each
    own input and the class each synthetic input was inverted for; the unmixed inputs
    after them, a public pool's, are made of no class of ``C`` (a row of zeros). A mixup
    is made of its two inputs in the proportions of its weight.
    """
    unmixed = F.pad(F.one_hot(classes.cpu(), num_classes).float(), (0, 0, 0, x.num_unmixed - len(classes)))
    weight = x.weight.float()[:, None]
    return torch.cat([unmixed, weight * unmixed[x.i] + (1 - weight) * unmixed[x.j]])


def expert_depth(origin: torch.Tensor, local_y: torch.Tensor, experts: Mapping[str, torch.Tensor],
                 masks: Mapping[str, np.ndarray], query: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per expert and transfer input, how far the input lies within what the expert knows, in ``[0, 1]``.

    Parameters
    ----------
    origin:
        ``(N, C)`` class each input is made of (:func:`origins`).
    local_y:
        The querier's labels of its own inputs, the first ``len(local_y)`` of the ``N``.
    experts:
        ``(N, C)`` probabilities of each expert on the same inputs.
    masks, query:
        As for :func:`combine_targets`.

    An expert knows one of the querier's classes as far as it agrees with the querier's
    labels on the querier's own inputs of it (the share it labels alike); it knows a query
    class iff its mask bit is set. An input's weight is that knowledge averaged over the
    classes it is made of (``origin``): an expert's query-class opinion of an input of a
    class it never saw then counts for nothing. The share of an input made of no class of
    ``C`` (a public-pool input, or its part of a mixup) leaves every expert its full say:
    no class of the querier's is there for the expert to be ignorant of.
    """
    n, num_classes = len(local_y), origin.shape[1]
    held = torch.bincount(local_y, minlength=num_classes)
    query = list(query)
    depth = {}
    for name, probs in experts.items():
        agree = probs[:n].argmax(1).cpu() == local_y
        known = torch.bincount(local_y[agree], minlength=num_classes) / held.clamp_min(1)
        known[query] = torch.as_tensor(masks[name], dtype=known.dtype)
        depth[name] = (origin @ known.to(origin) + 1 - origin.sum(1)).clamp(0, 1)
    return depth


@dataclass
class TransferSet:
    """The inputs of Phases 1 and 2 with their targets.

    ``labels`` are the querier's own labels (``-1`` for synthetic and public-pool inputs);
    ``weights`` scale each sample's loss (class balance). ``x`` is a tensor or inputs
    made batch by batch (:class:`~qkt.query.synth.Mixed`); the others are tensors on the
    device of ``targets``.
    """

    x: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def querier_first(cls, x: torch.Tensor, targets: torch.Tensor, local_y: torch.Tensor) -> TransferSet:
        """``x`` begins with the querier's ``len(local_y)`` own samples; the inputs after them are unlabelled; equal weights."""
        labels = torch.cat([local_y.to(targets.device), torch.full((len(x) - len(local_y),), -1, dtype=torch.long, device=targets.device)])
        return cls(x, targets, labels, torch.ones(len(x), device=targets.device))

    def __len__(self) -> int:
        return len(self.x)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.targets, self.labels, self.weights

    def first(self, n: int) -> TransferSet:
        """The first ``n`` inputs: the querier's own, the synthetic and the public-pool ones come before the mixups."""
        x = self.x.first(n) if isinstance(self.x, synth.Mixed) else self.x[:n]
        return TransferSet(x, self.targets[:n], self.labels[:n], self.weights[:n])

    def balanced(self) -> TransferSet:
        """The same set with weights making every class (label, else argmax target) weigh the same."""
        cls = torch.where(self.labels >= 0, self.labels, self.targets.argmax(1))
        counts = torch.bincount(cls, minlength=self.targets.shape[1]).float()
        weights = 1.0 / counts[cls]
        return TransferSet(self.x, self.targets, self.labels, weights * len(weights) / weights.sum())


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                      temperature: float, kd_weight: float) -> torch.Tensor:
    """Cross-entropy on the querier's labels plus the temperature-scaled KL towards the combined target."""
    log_student = F.log_softmax(logits / temperature, dim=1)
    kl = (targets * (targets.clamp_min(1e-12).log() - log_student)).sum(1)
    loss = kd_weight * temperature**2 * (weights * kl).mean()
    labelled = labels >= 0
    if labelled.any():
        ce = F.cross_entropy(logits[labelled], labels[labelled], reduction="none")
        loss = loss + (weights[labelled] * ce).sum() / len(labels)
    return loss


def train_on_transfer(model: nn.Module, transfer: TransferSet, config: QueryConfig, epochs: int, lr: float,
                      params: Iterable[nn.Parameter] | None = None, epoch_size: int | None = None, keep_first: int = 0,
                      desc: str | None = None, progress: bool = True, amp: Amp | None = None) -> nn.Module:
    """Fit ``model`` (or only ``params``) to the transfer set with :func:`distillation_loss`.

    ``epoch_size``: inputs drawn per epoch, the first ``keep_first`` in every one
    (default: one pass over the transfer set). ``amp``: mixed precision (:func:`qkt.training.fit`).
    """

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, targets, labels, weights = batch
        return distillation_loss(net(x), targets, labels, weights, config.temperature, config.kd_weight)

    return fit(model, transfer.tensors(), epochs, lr=lr, batch_size=config.batch_size, weight_decay=0.0,
               seed=config.seed, loss_fn=loss_fn, params=params, epoch_size=epoch_size, keep_first=keep_first, desc=desc,
               progress=progress, amp=amp)


@dataclass(frozen=True)
class Lesson:
    """What Phases 1 and 2 learn from, once the experts are in: their models and mask bits over ``query``, and the querier's data.

    ``public_x`` is an optional public pool of unlabelled inputs the querier holds, of the
    shape of ``local_x``'s (None: none). ``by_class`` is the same masks seen per query class
    (the experts of each), built once here.
    """

    experts: Mapping[str, nn.Module]
    masks: Mapping[str, np.ndarray]
    query: tuple[int, ...]
    local_x: torch.Tensor | DatasetRows
    local_y: torch.Tensor
    public_x: torch.Tensor | None = None
    by_class: dict[int, list[str]] = field(init=False)

    @property
    def num_public(self) -> int:
        """How many public-pool inputs the lesson holds."""
        return 0 if self.public_x is None else len(self.public_x)

    def __post_init__(self) -> None:
        # A caller may hand in a list; the reports and the mask bits rely on one fixed, hashable order.
        object.__setattr__(self, "query", tuple(int(c) for c in self.query))
        object.__setattr__(self, "by_class", experts_by_class(self.masks, self.query))


def build_transfer_set(original: nn.Module, lesson: Lesson, config: QueryConfig, progress: bool = True) -> tuple[TransferSet, int]:
    """Local data, inversions of the experts, the public pool and mixups, each with its combined target; and how many inputs are inversions.

    The transfer set holds the querier's own inputs, the inversions, the public-pool
    inputs (``lesson.public_x``, unlabelled as the inversions are) and then the mixups of
    all of them. The inputs stay where they are and the mixups are made batch by batch
    (:class:`~qkt.query.synth.Mixed`); the targets are computed in batches on ``original``'s device.
    """
    local_x, local_y = lesson.local_x, lesson.local_y
    input_shape = tuple(local_x.shape[1:])
    synthetic, made_for = [], [local_y]
    if config.inversion.enabled and config.inversion.samples_per_class:
        for i, (name, model) in enumerate(lesson.experts.items()):
            classes = [c for c, names in lesson.by_class.items() if name in names]
            per_class = max(1, config.inversion.samples_per_class // max(len(lesson.by_class[c]) for c in classes))
            x, y = synth.invert(model, classes, input_shape, config.inversion, seed=config.seed * 1000 + i,
                                num_per_class=per_class, desc=f"inverting expert {name}" if progress else None)
            synthetic.append(x)
            made_for.append(y.cpu())
    device = model_device(original)
    # an expert of another float type inverts in its own; the transfer inputs are the student's
    x_synth = [torch.cat(synthetic).to(device, input_dtype(original))] if synthetic else []
    pool = [lesson.public_x] if lesson.num_public else []
    x = synth.with_mixups([local_x, *x_synth, *pool], config.mixup, config.mixup_alpha, config.seed, device)
    own = softmax_outputs(original, x, config.temperature)
    outputs = {name: softmax_outputs(model, x, config.temperature).to(device) for name, model in lesson.experts.items()}
    depth = None
    if config.expert_depth == "agreement":
        origin = origins(torch.cat(made_for), x, own.shape[1]).to(device)
        depth = expert_depth(origin, local_y, outputs, lesson.masks, lesson.query)
    targets = combine_targets(own, outputs, lesson.masks, lesson.query, depth)
    return TransferSet.querier_first(x, targets, local_y), sum(len(t) for t in x_synth)
