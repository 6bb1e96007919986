"""The yardstick of a benchmark: the oracle learns exactly the experts' real samples of Q; expert discovery and the recovered share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qkt import diagnostics, experiment, partition, training
from qkt.config import DEMO, parse_config
from qkt.training import set_threads

CONFIG = parse_config({**DEMO, "training": {"arch": "mlp", "epochs": 2}, "methods": ["local", "oracle"]})


@pytest.fixture(scope="module")
def world():
    set_threads(1)
    return experiment.build_world(CONFIG, progress=False)


def _fit_inputs(world, monkeypatch, experts):
    seen = {}
    real_fit = training.fit

    def recording_fit(model, tensors, *args, **kwargs):
        seen["x"], seen["y"] = tensors
        return real_fit(model, tensors, *args, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)  # train_as_party trains through it
    _, (_, details) = experiment.train_oracle(world, CONFIG, experts)
    return seen, details


def test_the_oracle_trains_on_the_querier_data_plus_exactly_the_experts_samples_of_q(world, monkeypatch):
    s = world.scenario
    c = s.query[0]
    y = world.y_train.numpy()
    holders = [k for k in range(len(s.parts)) if k != s.querier and (y[s.parts[k]] == c).sum() > 0]
    expert = max(holders, key=lambda k: (y[s.parts[k]] == c).sum())
    seen, details = _fit_inputs(world, monkeypatch, {c: [str(expert)]})

    local_x, local_y = world.querier_data
    wanted = s.parts[expert][y[s.parts[expert]] == c]
    assert len(seen["x"]) == len(local_x) + len(wanted) == len(local_x) + details["query_samples"]
    assert torch.equal(seen["x"][: len(local_x)], local_x)
    assert torch.equal(seen["x"][len(local_x):], world.x_train[torch.as_tensor(wanted)])
    assert set(seen["y"][len(local_x):].tolist()) == {c}  # nothing of the expert's other classes
    assert details["experts_from"] == "qkt" and details["bytes"] == world.x_train[torch.as_tensor(wanted)].numel() * 4


def test_without_found_experts_the_oracle_takes_the_parties_that_really_hold_q(world, monkeypatch):
    s = world.scenario
    seen, details = _fit_inputs(world, monkeypatch, None)
    counts = partition.class_counts(world.y_train.numpy(), list(s.parts), world.dataset.num_classes)
    holders = [k for k in range(len(s.parts)) if k != s.querier and counts[k, s.query[0]] >= CONFIG.scenario.min_expert_samples]
    assert details["experts_from"] == "holders" and details["experts"] == {str(s.query[0]): [str(k) for k in holders]}
    assert details["query_samples"] == sum(counts[k, s.query[0]] for k in holders)


def test_run_methods_scores_the_oracle_and_the_share_of_its_gain_qkt_recovers(world):
    config = parse_config({**DEMO, "training": {"arch": "mlp", "epochs": 2}, "methods": ["local", "qkt", "oracle"],
                           "query": {"phase1_epochs": 1, "phase2_epochs": 1, "inversion": {"samples_per_class": 8, "steps": 5},
                                     "probe": {"num_samples": 32, "steps": 5}}})
    results, _ = experiment.run_methods(world, config, progress=False)
    oracle, qkt, local = results["oracle"], results["qkt"], results["local"]
    assert oracle.details["experts_from"] == "qkt"
    assert oracle.details["experts"] == qkt.details["experts"]
    assert qkt.details["recovered_share"] == diagnostics.recovered_share(qkt.overall_accuracy, local.overall_accuracy,
                                                                         oracle.overall_accuracy)
    found = qkt.details["diagnostics"]
    assert set(found) == {"true_experts", "probe", "after_checks", "expert_query_mass"}
    assert 0.0 <= found["expert_query_mass"] <= 1.0


def test_expert_discovery_counts_class_expert_pairs():
    truth = {3: ["1", "2"], 7: ["4"]}
    assert diagnostics.expert_discovery({3: ["1"], 7: ["4", "5"]}, truth) == {"precision": 2 / 3, "recall": 2 / 3}
    assert diagnostics.expert_discovery({3: [], 7: []}, truth) == {"precision": None, "recall": 0.0}
    counts = np.array([[0, 9], [5, 0], [30, 1]])  # party 0 is the querier
    assert diagnostics.true_experts(counts, [0, 1], querier=0, min_samples=5) == {0: ["1", "2"], 1: []}


def test_the_recovered_share_is_undefined_when_the_oracle_gains_nothing():
    assert diagnostics.recovered_share(0.6, 0.4, 0.8) == pytest.approx(0.5)
    assert diagnostics.recovered_share(0.3, 0.4, 0.8) == pytest.approx(-0.25)
    assert diagnostics.recovered_share(0.6, 0.4, 0.405) is None
