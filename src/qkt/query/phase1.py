"""Phase 1: query-focused masked distillation of the student on the transfer set (SPEC §2, step 4).

Phase 1 runs in stages. The first trains the whole student but its leading
``query.phase1_frozen_blocks`` feature blocks; the second (QKT Light's only stage,
or the epochs after ``Variant.whole_epochs``) trains its last block and head. A
stage's frozen blocks compute the same outputs in every epoch, so they run once
and the stage trains on their outputs. Each epoch takes the local, synthetic and
public-pool inputs and a share of the mixups (``query.phase1_mixups``), in turn.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..config import QueryConfig
from ..errors import QKTError
from ..models import FeaturesHead, block_indices
from ..training import Amp, predict_logits
from .light import light_parameters
from .synth import Mixed
from .transfer import TransferSet, train_on_transfer
from .variant import Variant


def phase1_inputs(transfer: TransferSet, config: QueryConfig, variant: Variant, num_local: int,
                  num_unmixed: int) -> tuple[TransferSet, int | None, int]:
    """Phase 1's inputs, how many it draws per epoch and how many of the first ones are in every epoch (see :func:`qkt.training.epoch_orders`).

    The transfer set holds the ``num_unmixed`` local, synthetic and public-pool inputs, then the
    mixups. A share of the mixups (``config.phase1_mixups`` between 0 and 1) keeps the
    unmixed inputs in every epoch and takes that share of the mixups in turn; no share
    (0) leaves the mixups out; otherwise an epoch is one pass over the transfer set,
    or, with ``variant.short_epochs``, as many of its inputs as the querier holds.
    """
    share = config.phase1_mixups
    if not share:
        transfer = transfer.first(num_unmixed)
    if variant.short_epochs and num_local:
        return transfer, num_local, 0
    if 0 < share < 1:
        return transfer, num_unmixed + round(share * (len(transfer) - num_unmixed)), num_unmixed
    return transfer, None, 0


def stages(config: QueryConfig, variant: Variant) -> list[tuple[int | None, int]]:
    """Phase 1's stages as (leading blocks kept frozen, epochs); ``None`` freezes all but the last block, as QKT Light does."""
    whole = 0 if config.light else config.phase1_epochs if variant.whole_epochs is None else min(variant.whole_epochs, config.phase1_epochs)
    return [(frozen, epochs) for frozen, epochs in ((config.phase1_frozen_blocks, whole), (None, config.phase1_epochs - whole)) if epochs]


def trained_part(model: nn.Module, x: torch.Tensor | Mixed, head_name: str | None = None,
                 frozen_blocks: int | None = None) -> tuple[nn.Module, torch.Tensor, list[nn.Parameter] | None]:
    """What a Phase 1 stage trains, the inputs it trains on, and the parameters to train (None: all of them).

    ``frozen_blocks``: how many leading parameterised blocks of ``model.features`` stay
    frozen; None freezes all but the last. The frozen blocks of one of qkt's models
    compute the same outputs on every epoch (evaluation mode, fixed transfer inputs, no
    augmentation), so they run once here and the returned tail, which shares the trained
    blocks and the head with ``model``, trains on their outputs: each step of Phases 1 and
    2 then costs only the tail's work. The outputs are the same to the bit as the frozen
    blocks give batch by batch. A user's own model may compute more than
    ``head(features(x))``, so it trains whole on ``x`` with only the unfrozen parameters
    moving.
    """
    if frozen_blocks == 0:
        return model, x, None
    blocks = block_indices(model)
    if frozen_blocks is None:
        if not isinstance(model, FeaturesHead):
            return model, x, light_parameters(model, head_name)
        start = blocks[-1] if blocks else len(model.features)
    else:
        if not blocks:
            raise QKTError("query.phase1_frozen_blocks needs a student whose feature blocks are an nn.Sequential named "
                           "'features', as qkt's models have")
        start = blocks[frozen_blocks] if frozen_blocks < len(blocks) else len(model.features)
        if not isinstance(model, FeaturesHead):
            frozen = {id(p) for p in model.features[:start].parameters()}
            return model, x, [p for p in model.parameters() if id(p) not in frozen]
    # The frozen blocks are a plain Sequential, which predict_logits would not give the fast layout: x gets the model's.
    outputs = predict_logits(model.features[:start], x, layout=model)
    return FeaturesHead(model.features[start:], model.head), outputs, None


def run_phase1(student: nn.Module, transfer: TransferSet, config: QueryConfig, variant: Variant, num_local: int,
               num_unmixed: int, head: str | None = None, progress: bool = True,
               amp: Amp | None = None) -> tuple[nn.Module, TransferSet]:
    """Train ``student`` in place through Phase 1's stages; returns the last stage's model and inputs, for Phase 2.

    The transfer set begins with ``num_unmixed`` inputs, the ``num_local`` local ones first,
    then the synthetic and public-pool ones; the mixups follow.

    Each stage trains a tail of the last one's (sharing its modules with ``student``, so
    training it trains ``student``) on the outputs of the blocks it freezes.
    """
    trained, inputs = student, transfer
    for frozen_blocks, epochs in stages(config, variant):
        trained, x, params = trained_part(trained, inputs.x, head, frozen_blocks)
        inputs = replace(inputs, x=x)
        chosen, epoch_size, keep_first = phase1_inputs(inputs, config, variant, num_local, num_unmixed)
        train_on_transfer(trained, chosen.balanced() if variant.merged else chosen, config, epochs, config.lr, params=params,
                          epoch_size=epoch_size, keep_first=keep_first, desc="phase 1 (distill)", progress=progress, amp=amp)
    return trained, inputs
