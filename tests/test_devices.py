"""Devices and dtypes: every step runs where it is told, and the models handed in come back as they were."""

from __future__ import annotations

import copy

import pytest
import torch
from test_api import C, UserNet, _blobs

import qkt
from qkt.cli import main
from qkt.config import DEMO, parse_config
from qkt.errors import QKTError
from qkt.experiment import run
from qkt.training import fit, model_device, per_class_accuracy, resolve_device

CONFIG = qkt.QueryConfig(phase1_epochs=2, phase2_epochs=2, probe={"steps": 5, "num_samples": 64},
                         inversion={"samples_per_class": 16, "steps": 10})


def _trained(classes, seed, dtype=torch.float32):
    torch.manual_seed(seed)
    model = UserNet().to(dtype)
    x, y = _blobs(classes, 100, seed)
    return fit(model, (x.to(dtype), y), epochs=10, seed=seed, progress=False)


@pytest.fixture(scope="module")
def parties():
    return {"querier": _trained([0, 1], 0), "teacher": _trained([2, 3], 1)}


def _state(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: torch.nn.Module, before: dict, device: torch.device, dtype: torch.dtype, training: bool) -> bool:
    state = model.state_dict()
    return (all(torch.equal(v, state[k]) for k, v in before.items()) and model_device(model) == device
            and next(model.parameters()).dtype == dtype and model.training == training
            and all(p.requires_grad for p in model.parameters()))


def test_device_cpu_gives_the_same_model_as_the_default(parties):
    local = _blobs([0, 1], 50, 0)
    a, report_a = qkt.query(parties["querier"], [parties["teacher"]], [2], local, CONFIG, progress=False)
    b, report_b = qkt.query(parties["querier"], [parties["teacher"]], [2], local, CONFIG, progress=False, device="cpu")
    c, _ = qkt.query(parties["querier"], [parties["teacher"]], [2], local, CONFIG, progress=False, device=torch.device("cpu"))
    assert all(torch.equal(v, b.state_dict()[k]) and torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert report_a.experts == report_b.experts == {2: ["0"]}
    assert model_device(b) == torch.device("cpu")


def test_teachers_and_student_come_back_unchanged(parties):
    teacher = copy.deepcopy(parties["teacher"]).train()  # handed over in training mode: it must stay so
    student = parties["querier"]
    before_t, before_s = _state(teacher), _state(student)
    qkt.query(student, {"t": teacher}, [2], _blobs([0, 1], 50, 0), CONFIG, progress=False, device="cpu")
    cpu = torch.device("cpu")
    assert _unchanged(teacher, before_t, cpu, torch.float32, training=True)
    assert _unchanged(student, before_s, cpu, torch.float32, training=False)


def test_float64_models_run_a_query_and_come_back_float64():
    student, teacher = _trained([0, 1], 0, torch.float64), _trained([2, 3], 1, torch.float64)
    before = _state(teacher)
    x, y = _blobs([0, 1], 50, 0)
    model, report = qkt.query(student, [teacher], [2], (x.double(), y), CONFIG, progress=False, device="cpu")
    assert next(model.parameters()).dtype == torch.float64 and report.experts == {2: ["0"]}
    assert _unchanged(teacher, before, torch.device("cpu"), torch.float64, training=False)
    x_test, y_test = _blobs([0, 1, 2, 3], 50, 9)
    # Two short phases: the class is learnt in part, from none at all.
    assert per_class_accuracy(student, x_test.double(), y_test, C)[2] == 0 and per_class_accuracy(model, x_test.double(), y_test, C)[2] > 0.3


def test_bf16_mixed_precision_trains_the_phases(parties):
    model, _ = qkt.query(parties["querier"], [parties["teacher"]], [2], _blobs([0, 1], 50, 0), CONFIG, progress=False,
                         device="cpu", amp="bf16")
    assert next(model.parameters()).dtype == torch.float32  # autocast computes in bfloat16, the weights stay float32
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def test_an_unknown_or_absent_device_is_named():
    with pytest.raises(QKTError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(QKTError, match="device 'cuda' is not available on this machine"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None) is None


def test_training_device_cpu_runs_every_method_as_auto_does(tmp_path):
    """``training.device: cpu`` reaches local training, every baseline, both QKT methods and the evaluation."""
    raw = {**DEMO, "training": {"arch": "mlp", "epochs": 5},
           "query": {"phase1_epochs": 1, "phase2_epochs": 1, "probe": {"steps": 20, "num_samples": 64},
                     "inversion": {"samples_per_class": 8, "steps": 5}},
           "federated": {"gen_steps": 5},
           "methods": ["local", "ensemble", "kd", "fedavg", "fedprox", "fedgen", "qkt", "qkt_light"]}
    on_cpu = run(parse_config({**raw, "training": {**raw["training"], "device": "cpu"}}), progress=False)
    auto = run(parse_config(raw), progress=False) if resolve_device("auto").type == "cpu" else on_cpu
    for method, result in on_cpu["methods"].items():
        assert "failed" not in result["details"], method
        assert result["per_class_accuracy"] == auto["methods"][method]["per_class_accuracy"], method


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_query_runs_on_cuda(parties):
    teacher, student = parties["teacher"], parties["querier"]
    before = _state(teacher)
    x, y = _blobs([0, 1], 50, 0)
    model, report = qkt.query(student, [teacher], [2], (x, y), CONFIG, progress=False, device="cuda")
    assert model_device(model).type == "cuda" and report.experts == {2: ["0"]}
    assert _unchanged(teacher, before, torch.device("cpu"), torch.float32, training=False)
    x_test, y_test = _blobs([0, 1, 2, 3], 50, 9)
    assert per_class_accuracy(model, x_test, y_test, C)[2] > 0.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal is for machines without it")
def test_cli_device_reaches_the_run(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("data: {name: digits}\ntraining: {epochs: 1}\n")
    assert main(["run", "--config", str(config), "--device", "cuda", "--quiet"]) == 2
    assert "device 'cuda' is not available on this machine" in capsys.readouterr().err
