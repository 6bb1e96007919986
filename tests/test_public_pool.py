"""The public-pool lever: unlabelled inputs the querier holds join the transfer set, the experts speaking on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import qkt
from qkt import experiment
from qkt.bench import runner
from qkt.bench.catalogue import PROFILES, SCENARIOS, run_config
from qkt.config import DEMO, QueryConfig, parse_config
from qkt.data import DataSet, load_dataset
from qkt.errors import ConfigError, QueryError
from qkt.models import build_model
from qkt.query import Lesson, learn, phase1
from qkt.query.synth import Mixed
from qkt.query.transfer import build_transfer_set, combine_targets, expert_depth, origins, softmax_outputs
from qkt.training import fit

C, D = 5, 8
QUERY = (3, 4)
# Two experts of one query class each: under expert_depth an expert of part of Q must keep its whole say on a pool input.
MASKS = {"e3": np.array([True, False]), "e4": np.array([False, True])}


def _lesson(num_public: int = 6) -> tuple[torch.nn.Module, Lesson]:
    torch.manual_seed(0)
    student = build_model("mlp", (D,), C).eval()
    experts = {name: build_model("mlp", (D,), C).eval() for name in MASKS}
    local_x, local_y = torch.randn(20, D), torch.arange(20) % 3
    return student, Lesson(experts, MASKS, QUERY, local_x, local_y, torch.randn(num_public, D) + 2.0)


def _config(**settings) -> QueryConfig:
    return QueryConfig(inversion={"samples_per_class": 4, "steps": 2}, phase1_epochs=1, phase2_epochs=1, **settings)


@pytest.mark.parametrize("depth", ["none", "agreement"])
def test_pool_inputs_follow_the_inversions_unlabelled_and_the_experts_speak_for_q_on_them(depth):
    student, lesson = _lesson()
    config = _config(expert_depth=depth)
    transfer, num_synthetic = build_transfer_set(student, lesson, config, progress=False)
    start, end = 20 + num_synthetic, 20 + num_synthetic + 6
    assert num_synthetic == 8  # the inversions alone: 4 per query class
    assert len(transfer) == 2 * end  # mixup 1.0: as many mixups as unmixed inputs, the pool's among them
    assert torch.equal(transfer.x[start:end], lesson.public_x)
    assert torch.equal(transfer.labels[:20], lesson.local_y) and (transfer.labels[20:] == -1).all()
    pool = lesson.public_x
    experts = {k: softmax_outputs(m, pool, config.temperature) for k, m in lesson.experts.items()}
    said = combine_targets(softmax_outputs(student, pool, config.temperature), experts, MASKS, QUERY)
    # Each expert's whole say on its query class, with or without expert_depth.
    assert torch.allclose(transfer.targets[start:end], said, atol=1e-6)
    if depth == "agreement":  # the same experts lose their say on the querier's own inputs, of classes they never saw
        without = build_transfer_set(student, lesson, _config(), progress=False)[0]
        assert not torch.allclose(transfer.targets[:20, list(QUERY)], without.targets[:20, list(QUERY)])


def test_a_pool_input_is_made_of_no_class_of_the_querier_so_an_out_of_depth_expert_keeps_its_say_on_it():
    # Four classes, Q = (2,): a class-0 input of the querier, a pool input, and their even mixup.
    x = Mixed([torch.zeros(1, 1), torch.zeros(1, 1)], torch.tensor([0]), torch.tensor([1]), torch.tensor([0.5], dtype=torch.float64),
              torch.device("cpu"))
    origin = origins(torch.tensor([0]), x, 4)
    assert origin.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0.5, 0, 0, 0]]
    stranger = torch.tensor([[0.0, 0.0, 0.8, 0.2]] * 3)  # never saw class 0: it calls the querier's class-0 input a 2
    depth = expert_depth(origin, torch.tensor([0]), {"stranger": stranger}, {"stranger": np.array([True])}, (2,))
    assert depth["stranger"].tolist() == [0.0, 1.0, 0.5]


def test_phase1_keeps_the_pool_in_every_epoch_beside_the_local_and_synthetic_inputs(monkeypatch):
    student, lesson = _lesson()
    kept = []
    train = phase1.train_on_transfer
    monkeypatch.setattr(phase1, "train_on_transfer", lambda *a, **k: kept.append(k["keep_first"]) or train(*a, **k))
    _, _, transfer, num_synthetic = learn(student, lesson, _config(phase1_mixups=0.5), progress=False)
    assert kept == [20 + num_synthetic + 6]
    assert len(transfer) == 2 * kept[0]


def _blobs(classes, n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat_interleave(n)
    return 3.0 * torch.eye(4, 6)[y] + torch.randn(len(y), 6, generator=g), y


@pytest.fixture(scope="module")
def parties():
    def trained(classes, seed):
        torch.manual_seed(seed)
        return fit(build_model("mlp", (6,), 4), _blobs(classes, 50, seed), epochs=15, seed=seed, progress=False)
    return trained([0, 1], 0), {"a": trained([2, 3], 1), "b": trained([0, 1], 2)}


def test_a_query_given_a_public_pool_learns_from_it_and_reports_its_size(parties):
    student, teachers = parties
    config = {"phase1_epochs": 1, "phase2_epochs": 1, "inversion": {"samples_per_class": 8, "steps": 5},
              "probe": {"num_samples": 32, "steps": 5}}
    pool = torch.randn(30, 6).numpy()  # a NumPy array is taken as a tensor would be
    model, report = qkt.query(student, teachers, [2], _blobs([0, 1], 50, 0), config, progress=False, public_inputs=pool)
    assert report.num_public == 30 and report.to_dict()["num_public"] == 30
    assert report.num_transfer_inputs == 2 * (100 + report.num_synthetic + 30)
    assert report.experts == {2: ["a"]}
    _, without = qkt.query(student, teachers, [2], _blobs([0, 1], 50, 0), config, progress=False)
    assert without.num_public == 0 and without.bytes_received == report.bytes_received  # not a byte more on the wire



@pytest.mark.parametrize("gate", [{"gate": "query_mass"}, {"gate": "query_mass", "gate_budget": 0.1}])
def test_a_gated_query_takes_a_public_pool(parties, gate):
    student, teachers = parties
    config = {"phase1_epochs": 1, "phase2_epochs": 1, "inversion": {"samples_per_class": 8, "steps": 5},
              "probe": {"num_samples": 32, "steps": 5}, **gate}
    model, report = qkt.query(student, teachers, [2], _blobs([0, 1], 50, 0), config, progress=False,
                              public_inputs=torch.randn(30, 6))
    assert report.num_public == 30 and type(model).__name__ == "GatedModel"
    assert torch.isfinite(model.threshold).all()

@pytest.mark.parametrize(("pool", "config", "message"), [
    (torch.randn(5, 7), {}, r"^public inputs have shape \(7,\) per input, the local inputs \(6,\)"),
    (torch.full((5, 6), float("nan")), {}, "^public inputs hold 30 non-finite value"),
    (torch.ones(5, 6, dtype=torch.long), {}, "^public inputs are torch.int64"),
    (None, {"public_pool": 10}, "^query.public_pool = 10 but no public inputs were given"),
])
def test_a_public_pool_the_query_cannot_use_is_a_one_line_error(parties, pool, config, message):
    student, teachers = parties
    with pytest.raises(QueryError, match=message) as caught:
        qkt.query(student, teachers, [2], _blobs([0, 1], 10, 0), config, progress=False, public_inputs=pool)
    assert "\n" not in str(caught.value)


def test_a_pool_of_another_shape_than_the_data_set_is_a_config_error_naming_both(monkeypatch):
    config = parse_config({**DEMO, "data": {"name": "digits", "public_pool": "cifar10"}, "methods": ["local", "qkt_public_pool"]})
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(experiment, "load_dataset", lambda name, root=None: DataSet(name, images, np.arange(4) % 2, images,
                                                                                     np.arange(4) % 2, ("a", "b")))
    with pytest.raises(ConfigError, match=r"cifar10 has inputs of shape \(3, 32, 32\), data.name digits \(1, 8, 8\)"):
        experiment.load_public_pool(config, load_dataset("digits"))
    # No method drawing from the pool: it is never read.
    assert experiment.load_public_pool(parse_config({**DEMO, "data": {"name": "digits", "public_pool": "cifar10"}}),
                                       load_dataset("digits")) is None


def test_a_pool_smaller_than_asked_for_or_unreadable_is_a_config_error_before_any_party_trains(monkeypatch, tmp_path):
    config = parse_config({**DEMO, "data": {"name": "digits", "public_pool": "cifar10"}, "methods": ["local", "qkt_public_pool"]})
    images = np.zeros((4, 8, 8, 1), dtype=np.uint8)
    monkeypatch.setattr(experiment, "load_dataset", lambda name, root=None: DataSet(name, images, np.arange(4) % 2, images,
                                                                                     np.arange(4) % 2, ("a", "b")))
    with pytest.raises(ConfigError, match="query.public_pool = 1000 but data.public_pool cifar10 has 4 training inputs"):
        experiment.load_public_pool(config, load_dataset("digits"))
    monkeypatch.undo()
    monkeypatch.setattr(experiment, "train_parties", lambda *a, **k: pytest.fail("parties trained"))
    with pytest.raises(ConfigError, match="^data.public_pool cifar10: cifar10: no data file under"):
        experiment.build_world(config.model_copy(update={"data": config.data.model_copy(update={"root": str(tmp_path)})}),
                               dataset=load_dataset("digits"))


def test_a_pool_drawn_by_run_is_seeded_and_standardised_as_the_data_set(monkeypatch):
    config = parse_config({**DEMO, "data": {"name": "digits", "public_pool": "cifar10"}, "query": {"public_pool": 50},
                           "methods": ["local", "qkt"]})
    digits = load_dataset("digits")
    monkeypatch.setattr(experiment, "load_dataset", lambda name, root=None: digits)  # a stand-in pool of the same shape
    pool = experiment.load_public_pool(config, digits)
    assert pool.shape == (50, 1, 8, 8) and torch.equal(pool, experiment.load_public_pool(config, digits))
    x_train = digits.normalized()[0]
    assert any(torch.allclose(pool[0], row) for row in x_train)


@pytest.mark.parametrize(("raw", "message"), [
    ({"query": {"public_pool": 100}}, "query.public_pool = 100 draws from data.public_pool, which names no data set"),
    ({"data": {"name": "digits", "public_pool": "digits"}}, "data.public_pool must name another data set than data.name"),
])
def test_a_pool_the_config_cannot_draw_is_refused(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**DEMO, **raw})


def test_the_flower_app_refuses_a_public_pool_in_one_line():
    pytest.importorskip("flwr")
    from qkt.flower.party import read_settings

    with pytest.raises(ConfigError, match="^the Flower app cannot pass a public pool to the query: qkt_public_pool draw") as caught:
        read_settings({"qkt-config": "data: {name: digits, public_pool: cifar10}"}, {"methods": ["local", "qkt_public_pool"]})
    assert "\n" not in str(caught.value)


def test_each_image_data_set_has_a_pool_and_on_digits_the_pool_levers_say_why_they_do_not_apply(tmp_path, monkeypatch):
    digits = load_dataset("digits")
    assert run_config(PROFILES["quick"], digits, SCENARIOS["single"], 0, None).data.public_pool is None
    cifar = DataSet("cifar10", np.zeros((20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10, np.zeros((10, 32, 32, 3), dtype=np.uint8),
                    np.arange(10), tuple("abcdefghij"))
    assert run_config(PROFILES["quick"], cifar, SCENARIOS["single"], 0, None).data.public_pool == "cifar100"
    # Untrained parties: the rows say n/a before any query could run.
    monkeypatch.setattr(experiment, "train_parties", lambda config, data, scenario, dataset, *a, **k: [
        build_model("mlp", dataset.input_shape, dataset.num_classes).eval() for _ in scenario.parts])
    methods = ["local", "qkt_public_pool", "qkt_public_pool_out_of_depth"]
    runner.run_bench("quick", ["digits"], tmp_path, scenarios=["single"], progress=False, methods=methods)
    rows = json.loads((tmp_path / "bench.json").read_text())["summary"]["digits"]["single"]["rows"]
    assert list(rows) == methods
    for method in methods[1:]:
        assert rows[method]["not_applicable"] == "no public pool for digits: data.public_pool names none"
    assert "| QKT, public pool | n/a — no public pool for digits" in (tmp_path / "bench.md").read_text()
