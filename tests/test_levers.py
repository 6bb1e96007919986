"""Levers against forgetting, each on a tiny hand-built case: experts out of their depth, the gate, its budget and its own inversions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from qkt import experiment
from qkt.config import DEMO, QueryConfig, parse_config
from qkt.errors import ConfigError, QueryError
from qkt.inputs import DatasetRows
from qkt.query.gate import HOLDOUT, GatedModel, budget_threshold, fit_threshold, gate, hold_out, own_inversions
from qkt.query.synth import Mixed
from qkt.query.transfer import Lesson, combine_targets, expert_depth, origins

# Four classes: the querier holds 0 and 1 and queries 2. Expert "knows" saw classes 0 and 2,
# expert "stranger" saw only 2 and 3: on the querier's inputs of class 0 it answers 2.
QUERY = (2,)
LOCAL_Y = torch.tensor([0, 0, 1, 1])
OWN = torch.tensor([[0.9, 0.1, 0.0, 0.0]] * 2 + [[0.1, 0.9, 0.0, 0.0]] * 2)
KNOWS = torch.tensor([[0.9, 0.0, 0.1, 0.0]] * 2 + [[0.2, 0.0, 0.7, 0.1]] * 2)
STRANGER = torch.tensor([[0.0, 0.0, 0.8, 0.2]] * 4)
MASKS = {"knows": np.array([True]), "stranger": np.array([True])}


def _query_mass(expert: str, depth: dict | None) -> torch.Tensor:
    outputs = {"knows": KNOWS, "stranger": STRANGER}
    return combine_targets(OWN, {expert: outputs[expert]}, {expert: MASKS[expert]}, QUERY, depth)[:, 2]


def test_an_expert_out_of_its_depth_loses_its_say_on_the_querier_classes_it_never_saw():
    origin = origins(LOCAL_Y, Mixed([torch.zeros(4, 1)], torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                                    torch.empty(0), torch.device("cpu")), 4)
    depth = expert_depth(origin, LOCAL_Y, {"knows": KNOWS, "stranger": STRANGER}, MASKS, QUERY)
    # "knows" labels the querier's class-0 inputs as 0 and its class-1 inputs wrongly; "stranger" labels none right.
    assert depth["knows"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert depth["stranger"].tolist() == [0.0, 0.0, 0.0, 0.0]
    # On a class-0 input the expert that knows class 0 keeps its query-class mass; the stranger's 0.8 falls to the querier's 0.
    assert torch.equal(_query_mass("knows", depth)[:2], _query_mass("knows", None)[:2])
    assert _query_mass("stranger", None)[0] == pytest.approx(0.8)
    assert _query_mass("stranger", depth)[0] == pytest.approx(0.0)
    # The mass taken from Q goes back to the querier's own classes: the targets stay distributions.
    targets = combine_targets(OWN, {"stranger": STRANGER}, {"stranger": MASKS["stranger"]}, QUERY, depth)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert torch.allclose(targets, OWN)


def test_inputs_of_the_query_class_and_mixups_carry_the_expert_depth_of_what_they_are_made_of():
    # A class-0 input of the querier, a synthetic input of class 2, and their even mixup.
    made_for = torch.tensor([0, 2])
    x = Mixed([torch.zeros(1, 1), torch.zeros(1, 1)], torch.tensor([0]), torch.tensor([1]), torch.tensor([0.5], dtype=torch.float64),
              torch.device("cpu"))
    origin = origins(made_for, x, 4)
    assert origin.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0.5, 0, 0.5, 0]]
    stranger = torch.tensor([[0.0, 0.0, 0.8, 0.2]] * 3)
    depth = expert_depth(origin, torch.tensor([0]), {"stranger": stranger}, {"stranger": np.array([True])}, QUERY)
    assert depth["stranger"].tolist() == [0.0, 1.0, 0.5]


def _linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


# Inputs are one-hot over three features: feature 0 is a local class-0 input, feature 1 a local class-1 input,
# feature 2 an input of the query class 2. The original never learnt 2; the new model learnt it but forgot class 1.
ORIGINAL = [[5.0, 0.0, 1.0], [0.0, 5.0, 1.0], [-5.0, -5.0, -5.0]]
NEW = [[5.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 3.0, 5.0]]


def test_the_gate_routes_a_local_input_to_the_original_and_a_query_input_to_the_new_model():
    original, new = _linear(ORIGINAL), _linear(NEW)
    local, query_input = torch.eye(3)[[0, 1]], torch.eye(3)[[2]]
    model = gate(original, new, torch.cat([local, query_input]), num_local=2, num_synthetic=1, query=QUERY, num_classes=3)
    assert isinstance(model, nn.Module)
    with torch.no_grad():
        out = model(torch.eye(3))
        assert torch.allclose(out[:2], torch.log_softmax(original(local), 1))  # the class-1 input the new model forgot is kept
        assert torch.allclose(out[2:], torch.log_softmax(new(query_input), 1))
    assert out.argmax(1).tolist() == [0, 1, 2]
    assert new(local).argmax(1).tolist() == [0, 2]  # without the gate, class 1 is lost


def test_the_gated_model_saves_loads_and_moves_like_any_module():
    model = GatedModel(_linear(ORIGINAL), _linear(NEW), QUERY, 3, threshold=0.42)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = GatedModel(_linear([[0.0] * 3] * 3), _linear([[0.0] * 3] * 3), (0,), 3)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.threshold.item() == pytest.approx(0.42)
    assert fresh.query.tolist() == [False, False, True]
    assert torch.equal(fresh(torch.eye(3)), model(torch.eye(3)))
    assert fresh.to(torch.float64)(torch.eye(3, dtype=torch.float64)).dtype == torch.float64


def test_the_threshold_lies_between_the_two_groups_it_separates():
    assert fit_threshold(np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8, 0.9])) == pytest.approx(0.5)
    # Overlapping groups: the threshold with the fewest inputs on the wrong side, as a share of each group.
    threshold = fit_threshold(np.array([0.1, 0.2, 0.6, 0.3]), np.array([0.5, 0.8, 0.9]))
    assert 0.3 < threshold < 0.5


def test_the_gate_needs_synthetic_query_inputs_to_fit_its_threshold():
    with pytest.raises(QueryError, match="inversion"):
        gate(_linear(ORIGINAL), _linear(NEW), torch.eye(3)[:2], num_local=2, num_synthetic=0, query=QUERY, num_classes=3)


def test_a_budget_keeps_the_share_of_unseen_own_inputs_sent_to_the_new_model_within_it():
    # The new model calls a tenth of the querier's unseen inputs the query class (score 0.9), the rest not (0.1);
    # its synthetic query inputs score 0.5 to 1. Unbounded, the gate sends that tenth away; a 2% budget keeps it.
    own, labels, synthetic = np.r_[np.full(90, 0.1), np.full(10, 0.9)], np.arange(100) % 2, np.linspace(0.5, 1.0, 20)
    assert (own > fit_threshold(own, synthetic)).mean() == pytest.approx(0.1)
    threshold = max(fit_threshold(own, synthetic), budget_threshold(own, labels, 0.02))
    assert (own > threshold).mean() <= 0.02 and (synthetic > threshold).any()
    scores = np.linspace(0, 1, 200)
    assert (scores > budget_threshold(scores, np.zeros(200), 0.05)).mean() == pytest.approx(0.05, abs=0.005)


def test_a_budget_counts_each_own_class_alike_so_the_class_held_least_is_kept():
    # 95 inputs of class 0 score 0.1; class 1, held least, has 5 unseen inputs, and the new model takes two for Q.
    own, labels = np.r_[np.full(95, 0.1), [0.2, 0.3, 0.4, 0.8, 0.9]], np.r_[np.zeros(95), np.ones(5)]
    assert budget_threshold(own, labels, 0.05) == pytest.approx(0.9)  # 2 of all 100 would fit; 1 of class 1's 5 is 10% alone
    assert budget_threshold(own, labels, 0.1) == pytest.approx(0.8)  # one input of class 1 is half the classes' 20%


def test_the_gate_is_fitted_on_a_seeded_fifth_of_each_own_class_the_transfer_set_never_sees():
    x, y = torch.arange(60.0)[:, None], torch.tensor([0] * 40 + [1] * 15 + [2] * 5)
    lesson = Lesson({}, {}, (3,), x, y)
    kept, (held, held_y) = hold_out(lesson, seed=0)
    assert len(held) == int(HOLDOUT * 40) + int(HOLDOUT * 15) + int(HOLDOUT * 5)
    assert torch.bincount(held_y).tolist() == [8, 3, 1] and torch.equal(y[held.flatten().long()], held_y)
    assert set(held.flatten().tolist()).isdisjoint(kept.local_x.flatten().tolist())
    assert len(kept.local_y) + len(held) == 60 and kept.query == (3,)
    assert torch.equal(hold_out(lesson, seed=0)[1][0], held) and not torch.equal(hold_out(lesson, seed=1)[1][0], held)
    with pytest.raises(QueryError, match="gate_budget"):
        hold_out(Lesson({}, {}, (3,), x[:3], y[:3]), seed=0)
    # A user's Dataset stays lazy: the transfer set reads the rows it keeps from it.
    rows, rows_held = hold_out(Lesson({}, {}, (3,), DatasetRows(TensorDataset(x, y)), y), seed=0)
    assert isinstance(rows.local_x, DatasetRows) and torch.equal(rows.local_x[slice(None)], kept.local_x)
    assert torch.equal(rows_held[0], held)


def test_inversions_of_own_classes_lift_the_threshold_above_the_unseen_inputs_the_new_model_takes_for_the_query():
    original, new = _linear(ORIGINAL), _linear(NEW)
    local, query_input = torch.eye(3)[[0, 1]], torch.eye(3)[[2]]
    # An input of class 1 unlike the one the querier trained on: the new model, which forgot class 1, gives Q more of it.
    unseen = torch.tensor([[0.0, 1.0, 0.4]])
    mass = GatedModel(original, new, QUERY, 3).query_mass(new(torch.cat([local, unseen, query_input]))).tolist()
    assert mass[1] < mass[2] < mass[3]
    plain = gate(original, new, torch.cat([local, query_input]), num_local=2, num_synthetic=1, query=QUERY, num_classes=3)
    fitted = gate(original, new, torch.cat([local, query_input]), num_local=2, num_synthetic=1, query=QUERY, num_classes=3,
                  own_synthetic=unseen)
    with torch.no_grad():
        assert plain(unseen).argmax(1).tolist() == [2]  # fitted on the trained-on inputs alone, the gate sends it away
        assert fitted(unseen).argmax(1).tolist() == [1]  # the original keeps it
        assert fitted(torch.eye(3)).argmax(1).tolist() == [0, 1, 2]


def test_own_inversions_are_seeded_inputs_the_original_model_calls_each_of_the_querier_classes_outside_the_query():
    config = QueryConfig(gate="query_mass", gate_inversions=4)
    lesson = Lesson({"expert": _linear(NEW)}, {}, QUERY, torch.eye(3)[[0, 0, 1, 2]], torch.tensor([0, 0, 1, 2]))
    x = own_inversions(_linear(ORIGINAL), lesson, config, progress=False)
    assert x.shape == (8, 3)
    assert _linear(ORIGINAL)(x).argmax(1).tolist() == [0] * 4 + [1] * 4  # class 2 is the query's: none is made for it
    assert torch.equal(own_inversions(_linear(ORIGINAL), lesson, config, progress=False), x)
    assert not torch.equal(own_inversions(_linear(ORIGINAL), lesson, config.model_copy(update={"seed": 1}), progress=False), x)
    # A querier holding only query classes has none to invert: the gate is fitted as without them.
    only_query = Lesson({}, {}, QUERY, torch.eye(3)[[2]], torch.tensor([2]))
    none = own_inversions(_linear(ORIGINAL), only_query, config, progress=False)
    assert len(none) == 0
    plain = gate(_linear(ORIGINAL), _linear(NEW), torch.eye(3), num_local=2, num_synthetic=1, query=QUERY, num_classes=3)
    assert gate(_linear(ORIGINAL), _linear(NEW), torch.eye(3), num_local=2, num_synthetic=1, query=QUERY, num_classes=3,
                own_synthetic=none).threshold == plain.threshold


def test_a_budget_or_own_inversions_without_the_gate_are_refused():
    with pytest.raises(ConfigError, match="gate = 'query_mass'"):
        parse_config({"query": {"gate_budget": 0.02}})
    with pytest.raises(ConfigError, match="gate = 'query_mass'"):
        parse_config({"query": {"gate_inversions": 64}})


def test_the_levers_run_through_a_benchmark_query_and_are_scored():
    config = parse_config({**DEMO, "training": {"arch": "mlp", "epochs": 2}, "methods": ["local", "qkt_out_of_depth", "qkt_gated",
                                                                                          "qkt_gated_budget", "qkt_gated_inverted"],
                           "query": {"phase1_epochs": 1, "phase2_epochs": 1, "inversion": {"samples_per_class": 8, "steps": 5},
                                     "probe": {"num_samples": 32, "steps": 5}}})
    world = experiment.build_world(config, progress=False)
    results, reports = experiment.run_methods(world, config, progress=False)
    assert set(reports) == {"qkt_out_of_depth", "qkt_gated", "qkt_gated_budget", "qkt_gated_inverted"}
    for method in reports:
        assert "failed" not in results[method].details
        assert 0.0 <= results[method].overall_accuracy <= 1.0
