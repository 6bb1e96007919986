"""The public API on a user's own models: a query that learns the missing class and keeps the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qkt
from qkt.training import fit, per_class_accuracy

C = 4


def _blobs(classes, n, seed):
    """Four well-separated Gaussian blobs in 6 dimensions."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0, 0], [0, 0, 0, 3.0, 0, 0]])
    y = torch.tensor(classes).repeat_interleave(n)
    return centres[y] + torch.randn(len(y), 6, generator=g), y


class UserNet(nn.Module):
    """A model qkt did not build: the head is called 'classifier'."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.classifier = nn.Linear(32, C)

    def forward(self, x):
        return self.classifier(self.body(x))


def _trained(classes, seed):
    torch.manual_seed(seed)
    return fit(UserNet(), _blobs(classes, 100, seed), epochs=15, seed=seed, progress=False)


@pytest.fixture(scope="module")
def parties():
    return {"querier": _trained([0, 1], 0), "teacher_a": _trained([2, 3], 1), "teacher_b": _trained([0, 1], 2)}


def test_query_on_user_models(parties):
    local = _blobs([0, 1], 100, 0)
    config = qkt.QueryConfig(phase1_epochs=10, inversion={"samples_per_class": 128, "steps": 100})
    model, report = qkt.query(parties["querier"], {"a": parties["teacher_a"], "b": parties["teacher_b"]}, [2], local, config,
                              head="classifier", progress=False)
    x_test, y_test = _blobs([0, 1, 2, 3], 200, 9)
    before = per_class_accuracy(parties["querier"], x_test, y_test, C)
    after = per_class_accuracy(model, x_test, y_test, C)
    assert report.experts == {2: ["a"]}
    assert before[2] == 0 and after[2] >= 0.9
    assert after[[0, 1]].mean() >= before[[0, 1]].mean() - 0.03
    # Only the expert's weights crossed the wire; the non-expert sent |Q| scores and nothing more.
    weights = [m for m in report.messages if m.get("kind") == "weights"]
    assert [m["from"] for m in weights] == ["a"]
    assert report.bytes_received == weights[0]["bytes"] + 2 * 4
    assert set(report.seconds) >= {"probe", "transfer", "synthesis", "phase1", "phase2", "total"}


def test_student_is_not_modified(parties):
    local = _blobs([0, 1], 50, 0)
    before = {k: v.clone() for k, v in parties["querier"].state_dict().items()}
    qkt.query(parties["querier"], [parties["teacher_a"]], [3], local, qkt.QueryConfig(phase1_epochs=1, phase2_epochs=1), progress=False)
    assert all(torch.equal(v, parties["querier"].state_dict()[k]) for k, v in before.items())


def test_same_seed_same_model(parties):
    local = _blobs([0, 1], 50, 0)
    config = qkt.QueryConfig(phase1_epochs=2, phase2_epochs=2, inversion={"samples_per_class": 32, "steps": 20})
    a, _ = qkt.query(parties["querier"], [parties["teacher_a"]], [3], local, config, progress=False)
    b, _ = qkt.query(parties["querier"], [parties["teacher_a"]], [3], local, config, progress=False)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_teacher_with_wrong_output_size_is_named(parties):
    wrong = nn.Sequential(nn.Linear(6, 7))
    with pytest.raises(qkt.QueryError, match="teacher 'bad' outputs 7 classes but the label space has 4"):
        qkt.query(parties["querier"], {"bad": wrong}, [2], _blobs([0, 1], 10, 0), progress=False)


def test_a_student_of_another_size_or_dtype_is_named(parties):
    local = _blobs([0, 1], 10, 0)
    with pytest.raises(qkt.QueryError, match="the student outputs 4 classes but the label space has 5"):
        qkt.query(parties["querier"], [parties["teacher_a"]], [2], local, num_classes=5, progress=False)
    half = UserNet().half()
    with pytest.raises(qkt.QueryError, match=r"the student has parameters of float16; a query needs float32 or float64 .* model.float\(\)"):
        qkt.query(half, [parties["teacher_a"]], [2], local, progress=False)


def test_querying_a_class_already_held_warns(parties):
    with pytest.warns(UserWarning, match="already holds 100 samples of query class 0"):
        qkt.query(parties["querier"], [parties["teacher_b"]], [0], _blobs([0, 1], 100, 0),
                  qkt.QueryConfig(phase1_epochs=1, phase2_epochs=1, inversion={"samples_per_class": 8, "steps": 5}), progress=False)


def test_light_halves_the_weight_bytes(parties):
    local = _blobs([0, 1], 50, 0)
    config = qkt.QueryConfig(phase1_epochs=1, phase2_epochs=1, inversion={"samples_per_class": 8, "steps": 5})
    _, full = qkt.query(parties["querier"], [parties["teacher_a"]], [2], local, config, progress=False)
    _, light = qkt.query(parties["querier"], [parties["teacher_a"]], [2], local, config.model_copy(update={"light": True}), progress=False)
    assert light.bytes_received < 0.6 * full.bytes_received
    assert np.isclose(sum(light.seconds[k] for k in ("probe", "transfer", "synthesis", "phase1", "phase2")), light.seconds["total"])


def test_light_leaves_frozen_blocks_as_they_were(parties):
    """QKT Light trains only the head of UserNet: its body, BatchNorm statistics included, must come back unchanged."""
    config = qkt.QueryConfig(phase1_epochs=2, phase2_epochs=1, light=True, inversion={"samples_per_class": 8, "steps": 5})
    model, _ = qkt.query(parties["querier"], [parties["teacher_a"]], [2], _blobs([0, 1], 50, 0), config, head="classifier",
                         progress=False)
    before, after = parties["querier"].body.state_dict(), model.body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(parties["querier"].classifier.weight, model.classifier.weight)
