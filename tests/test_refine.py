"""Phase 2 re-fits the head only: the feature extractor is left bit for bit as Phase 1 made it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qkt.config import QueryConfig
from qkt.models import build_model
from qkt.query.phase2 import align_weights, refine_head
from qkt.query.transfer import TransferSet


def test_phase2_changes_the_head_and_nothing_else():
    model = build_model("cnn", (1, 8, 8), 4)
    x = torch.randn(64, 1, 8, 8)
    targets = torch.softmax(torch.randn(64, 4), dim=1)
    transfer = TransferSet(x, targets, torch.randint(0, 4, (64,)), torch.ones(64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refine_head(model, transfer, QueryConfig(phase2_epochs=3), progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}


def test_weight_aligning_gives_the_query_rows_the_mean_norm_of_the_local_rows_and_leaves_the_rest():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 5))
    head = model[2]
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 9.0, 0], [0.5, 0, 0, 0], [7.0, 7, 7, 7]]))
    before = head.weight.clone()
    factor = align_weights(model, query=[3], local=[0, 1])
    norms = head.weight.norm(dim=1)
    assert factor == pytest.approx(7.0)
    assert norms[3].item() == pytest.approx(norms[[0, 1]].mean().item())
    assert torch.equal(head.weight[[0, 1, 2, 4]], before[[0, 1, 2, 4]])  # classes outside Q and L untouched
