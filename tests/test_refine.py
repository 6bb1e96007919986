"""Phase 2 re-fits the head only: the feature extractor is left bit for bit as Phase 1 made it."""

from __future__ import annotations

import torch

from qkt.config import QueryConfig
from qkt.models import build_model
from qkt.query.phase2 import refine_head
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
