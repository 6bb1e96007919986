"""Phase 2: classification-head refinement (SPEC §2, step 5).

Phase 1 sees many more inputs of the local classes than of the query classes,
which tilts the head. With the feature extractor frozen, re-fitting only the head
on class-balanced targets restores the balance at little cost: the features of
the transfer inputs are computed once and the head is a linear layer.
"""

from __future__ import annotations

from collections.abc import Sequence

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


@torch.no_grad()
def align_weights(model: nn.Module, query: Sequence[int], local: Sequence[int], head_name: str | None = None) -> float:
    """Weight aligning: scale the head's rows of ``query`` so that their mean norm equals that of the rows of ``local``; returns the factor.

    A head trained on few inputs of the new classes beside many of the old ones ends with
    rows of unequal norms, and the larger norms win the argmax; aligning the norms removes
    that bias without any data (Zhao et al. 2020, *Maintaining Discrimination and Fairness
    in Class Incremental Learning*).
    """
    weight = find_head(model, head_name).weight
    norms = weight.norm(dim=1)
    old, new = norms[list(local)].mean(), norms[list(query)].mean()
    factor = float(old / new) if len(local) and new > 0 else 1.0
    weight[list(query)] *= factor
    return factor
