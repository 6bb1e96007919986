"""QKT Light: half the bytes on the wire and a fraction of Phase 1's compute (SPEC §2, step 6).

Experts send float16 weights (:data:`WIRE_DTYPE`), and Phase 1 trains only the
last block of the feature extractor and the head (:func:`light_parameters`); the
earlier blocks stay frozen whole, BatchNorm statistics included (see
:func:`qkt.training.keep_frozen_statistics`). Its accuracy cost is measured as a
method of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import find_head, last_block

WIRE_DTYPE = torch.float16


def light_parameters(model: nn.Module, head_name: str | None = None) -> list[nn.Parameter]:
    """The parameters Phase 1 of QKT Light trains: the last feature block (if the model exposes one) and the head."""
    params = list(find_head(model, head_name).parameters())
    block = last_block(model)
    if block is not None:
        params = list(block.parameters()) + params
    return params
