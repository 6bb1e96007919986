"""QKT Light: half the bytes on the wire and a fraction of Phase 1's compute (SPEC §2, step 6).

Experts send float16 weights, and Phase 1 trains only the last block of the
feature extractor and the head; the measured accuracy cost is reported as its own row.
The earlier blocks stay frozen whole, BatchNorm statistics included (see
:func:`qkt.training.keep_frozen_statistics`). With ``query.phase1_whole_epochs`` set, QKT
trains the same part in the Phase 1 epochs after those.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import QKTError
from ..models import FeaturesHead, block_indices, find_head, last_block
from ..training import fast_layout, predict_logits

WIRE_DTYPE = torch.float16


def light_parameters(model: nn.Module, head_name: str | None = None) -> list[nn.Parameter]:
    """The parameters Phase 1 of QKT Light trains: the last feature block (if the model exposes one) and the head."""
    params = list(find_head(model, head_name).parameters())
    block = last_block(model)
    if block is not None:
        params = list(block.parameters()) + params
    return params


def trained_part(model: nn.Module, x: torch.Tensor, head_name: str | None = None,
                 frozen_blocks: int | None = None) -> tuple[nn.Module, torch.Tensor, list[nn.Parameter] | None]:
    """What a Phase 1 stage trains, the inputs it trains on, and the parameters to train (None: all of them).

    ``frozen_blocks``: how many leading parameterised blocks of ``model.features`` stay
    frozen (``query.phase1_frozen_blocks``); None freezes all but the last, as QKT Light
    (and QKT after its whole-student epochs) does. The frozen blocks of one of qkt's
    models compute the same outputs on every epoch (evaluation mode, fixed transfer
    inputs, no augmentation), so they run once here and the returned tail, which shares
    the trained blocks and the head with ``model``, trains on their outputs: each step of
    Phases 1 and 2 then costs only the tail's work. The outputs are the same to the bit as
    the frozen blocks give batch by batch. A user's own model may compute more than
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
    # The frozen blocks are a plain Sequential, which predict_logits would not give the fast layout: x gets the model's here.
    outputs = predict_logits(model.features[:start], fast_layout(x, model))
    return FeaturesHead(model.features[start:], model.head), outputs, None
