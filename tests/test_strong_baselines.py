"""The baselines at their strength: FedAvg and FedProx run to convergence, FedAvg + fine-tuning, and the headline against them."""

from __future__ import annotations

import copy

import pytest
import torch

from qkt import experiment
from qkt.baselines import fine_tune
from qkt.bench import catalogue, runner
from qkt.bench.output import format_headline, format_tables
from qkt.bench.statistics import summarize
from qkt.config import RunConfig, parse_config
from qkt.data import load_dataset
from qkt.methods import BASELINES, STRONG_BASELINES
from qkt.training import predict_logits

METHODS = ["local", "fedavg", "fedavg_converged", "fedprox_converged", "fedavg_finetune"]


def _config(**federated) -> RunConfig:
    return parse_config({"training": {"arch": "mlp", "epochs": 2}, "federated": {"converged_rounds": 10, **federated},
                         "methods": METHODS}, "test")


@pytest.fixture(scope="module")
def strong():
    config = _config()
    world = experiment.build_world(config, progress=False)
    calls = []
    train_global = experiment.train_global

    def counted(method, *args, **kwargs):
        calls.append(method)
        return train_global(method, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "train_global", counted)
        results, _ = experiment.run_methods(world, config, progress=False)
    return config, world, results, calls


def _accuracy(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = data
    return (predict_logits(model, x).argmax(1).cpu() == y).float().mean().item()


def test_the_converged_rows_train_more_rounds_and_fit_the_parties_better(strong):
    config, world, results, _ = strong
    equal, converged = results["fedavg"], results["fedavg_converged"]
    assert (equal.details["rounds"], converged.details["rounds"]) == (2, 10)
    assert converged.bytes_sent == 5 * equal.bytes_sent and converged.seconds > equal.seconds
    assert results["fedprox_converged"].details["rounds"] == 10
    # on the querier's own data more rounds help; and on the test set, overall
    assert _accuracy(world.global_models["fedavg_converged"].model, world.querier_data) >= _accuracy(
        world.global_models["fedavg"].model, world.querier_data)
    assert converged.overall_accuracy > equal.overall_accuracy


def test_rows_sharing_a_global_model_train_it_once(strong):
    _, world, results, calls = strong
    assert sorted(calls) == ["fedavg", "fedavg_converged", "fedprox_converged"]  # fedavg_finetune reuses fedavg_converged's
    assert set(world.global_models) == set(calls)
    tuned, converged = results["fedavg_finetune"], results["fedavg_converged"]
    assert tuned.bytes_sent == converged.bytes_sent and tuned.details["rounds"] == converged.details["rounds"]
    assert tuned.seconds > converged.seconds  # the global model's training plus the fine-tuning


def test_fine_tuning_adapts_a_copy_of_the_global_model_to_the_querier(strong):
    config, world, results, _ = strong
    global_model = world.global_models["fedavg_converged"].model
    before = copy.deepcopy(global_model.state_dict())
    tuned = fine_tune(global_model, world.querier_data, config.training, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), global_model.state_dict().values(), strict=True))
    assert all(torch.equal(before[k], v) for k, v in global_model.state_dict().items())  # the shared global model is untouched
    assert _accuracy(tuned, world.querier_data) >= _accuracy(global_model, world.querier_data)
    assert results["fedavg_finetune"].local_accuracy >= results["fedavg_converged"].local_accuracy


def test_tables_name_each_rows_budget_and_the_headline_the_best_row(strong):
    _, world, results, _ = strong
    record = runner._record("digits", "single", 0, world, results, None)
    record["methods"]["qkt"] = dict(record["methods"]["local"])  # stands in for QKT: the headline needs a QKT row
    summary = summarize([record])
    table, headline = format_tables(summary), format_headline(summary)
    assert "| FedAvg (2 rounds of 1 local epoch) |" in table
    assert "| FedAvg, converged (10 rounds of 1 local epoch) |" in table
    assert "| FedProx, converged (10 rounds of 1 local epoch) |" in table
    assert "| FedAvg, converged + fine-tune (10 rounds of 1 local epoch + 2 epochs of fine-tuning) |" in table
    s = summary["digits"]["single"]
    best = max(("local", *METHODS[1:]), key=lambda m: results[m].overall_accuracy)
    assert s["best_row"] == best
    assert s["gain_over_best_row"] == pytest.approx(100 * (results["local"].overall_accuracy - results[best].overall_accuracy))
    assert s["best_collaborative"] == "fedavg"  # the mean and best at the parties' budget stay as they were
    assert f"({s['rows'][best]['budget']})" in headline and "QKT − best row" in headline
    assert "vs the best of every baseline row, at any budget" in table


def test_a_changed_converged_budget_keeps_the_equal_budget_checkpoints(strong, tmp_path, monkeypatch):
    config, world, _, _ = strong
    dataset = world.dataset
    parts = list(world.scenario.parts)
    tensors = (world.x_train, world.y_train)
    runner.global_model("fedavg", config, dataset, tensors, parts, tmp_path, progress=False)
    trained = []
    monkeypatch.setattr(runner, "train_global", lambda method, *args, **kwargs: trained.append(method) or world.global_models[method])
    runner.global_model("fedavg", _config(converged_rounds=20), dataset, tensors, parts, tmp_path, progress=False)
    assert trained == []  # reloaded: converged_rounds does not name the equal-budget global model
    runner.global_model("fedavg_converged", _config(converged_rounds=20), dataset, tensors, parts, tmp_path, progress=False)
    assert trained == ["fedavg_converged"]


def test_only_the_full_profile_runs_the_strong_baselines_by_default():
    digits = load_dataset("digits")
    single = catalogue.SCENARIOS["single"]
    quick = catalogue.run_config(catalogue.PROFILES["quick"], digits, single, 0, None).methods
    full = catalogue.run_config(catalogue.PROFILES["full"], digits, single, 0, None).methods
    assert set(BASELINES) <= set(quick) and not set(STRONG_BASELINES) & set(quick)
    assert set(STRONG_BASELINES) <= set(full)
    assert set(STRONG_BASELINES) == {"fedavg_converged", "fedprox_converged", "fedavg_finetune"}
