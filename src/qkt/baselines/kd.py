"""KD: plain multi-teacher distillation into the querier, from all teachers, with no masks, in one phase.

It uses the querier's local data widened by mixup, the same loss, training loop and
epochs as QKT's Phase 1, so the comparison isolates the masks, the synthesis from the
experts and Phase 2. It trains the whole student on every mixup in each epoch: a share
of the mixups per epoch and frozen blocks are QKT's ways of paying for its synthetic
inputs, which KD does not have.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..config import QueryConfig
from ..query.synth import with_mixups
from ..query.transfer import TransferSet, softmax_outputs, train_on_transfer
from ..training import Amp, model_device


def distill_all(student: nn.Module, teachers: Sequence[nn.Module], local_x: torch.Tensor, local_y: torch.Tensor,
                config: QueryConfig, progress: bool = True, amp: Amp | None = None) -> nn.Module:
    """A copy of ``student`` distilled from the mean softmax of ``teachers`` (Hinton et al. 2015), on the student's device."""
    device = model_device(student)
    x = with_mixups([local_x], config.mixup, config.mixup_alpha, config.seed, device)
    targets = torch.stack([softmax_outputs(t, x, config.temperature).to(device) for t in teachers]).mean(0)
    new = copy.deepcopy(student)
    return train_on_transfer(new, TransferSet.querier_first(x, targets, local_y), config,
                             config.phase1_epochs, config.lr, desc="KD", progress=progress, amp=amp)
