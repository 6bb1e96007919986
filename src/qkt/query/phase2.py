"""Phase 2: classification-head refinement (SPEC §2, step 5).

Phase 1 sees many more inputs of the local classes than of the query classes,
which tilts the head. With the feature extractor frozen, re-fitting only the head
on class-balanced targets restores the balance at little cost: the features of
the transfer inputs are computed once and the head is a linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import QueryConfig
from ..models import find_head
from ..training import EVAL_BATCH_SIZE, Amp, fast_layout, to_model
from .synth import Mixed
from .transfer import TransferSet, train_on_transfer


@torch.no_grad()
def head_inputs(model: nn.Module, head: nn.Linear, x: torch.Tensor | Mixed, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """What the head receives for each input: the frozen features, captured by a hook, on the model's device."""
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach()))
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(fast_layout(to_model(x[i : i + batch_size], model), model))
    finally:
        handle.remove()
    return torch.cat(captured)


def refine_head(model: nn.Module, transfer: TransferSet, config: QueryConfig, head_name: str | None = None,
                progress: bool = True, amp: Amp | None = None) -> nn.Module:
    """Re-fit only the classification head of ``model`` in place, class-balanced; the features stay untouched."""
    head = find_head(model, head_name)
    features = TransferSet(head_inputs(model, head, transfer.x), transfer.targets, transfer.labels, transfer.weights)
    train_on_transfer(head, features.balanced(), config, config.phase2_epochs, config.head_lr,
                      desc="phase 2 (head)", progress=progress, amp=amp)
    return model
