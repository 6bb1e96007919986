"""Planted liars, the teachers' own privacy policy, weights only to experts, identities bound to nodes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from qkt.bench.liars import Planted, plant
from qkt.config import DEMO, parse_config
from qkt.errors import QueryError
from qkt.experiment import build_world
from qkt.models import build_model
from qkt.query import Announcement, InProcessChannel, Teacher, answer_probe, run_query
from qkt.query.teacher import Refused, TeacherPolicy
from qkt.training import per_class_accuracy, predict_logits, set_threads, train_as_party

FAST = {"probe": {"num_samples": 128, "steps": 30}, "inversion": {"samples_per_class": 64, "steps": 50},
        "phase1_epochs": 5, "phase2_epochs": 10}
CONFIG = parse_config({**DEMO, "training": {"arch": "mlp", "epochs": 15}, "query": FAST})


@pytest.fixture(scope="module")
def world():
    set_threads(1)
    return build_world(CONFIG, progress=False)


def _run(world, channel):
    s = world.scenario
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, report = run_query(world.models[s.querier], channel, s.query, world.querier_data, CONFIG.query,
                                  num_classes=world.dataset.num_classes, progress=False)
    acc = per_class_accuracy(model, world.x_test, world.y_test, world.dataset.num_classes)
    return acc[list(s.local_classes)].mean(), report


@pytest.fixture(scope="module")
def clean(world):
    return _run(world, InProcessChannel(world.teachers))


def _liar(world, clean, kind):
    s = world.scenario
    experts = {k for names in clean[1].experts.values() for k in names}
    name = next(k for k in world.teachers if k not in experts)
    data = world.x_train[torch.as_tensor(s.parts[int(name)])]
    return name, plant(kind, world.teachers[name], s.query, world.dataset.num_classes, data)


@pytest.mark.parametrize("kind", ["constant", "input-independent", "query-on-data"])
def test_a_planted_liar_beside_an_honest_expert_is_distrusted_and_costs_nothing(world, clean, kind):
    name, liar = _liar(world, clean, kind)
    local, report = _run(world, Planted(InProcessChannel(world.teachers), name, liar))
    assert name in report.distrusted and all(name not in names for names in report.experts.values())
    assert local >= clean[0] - 0.02, f"local accuracy {local:.3f} vs {clean[0]:.3f} without the liar"


@pytest.mark.parametrize("kind", ["constant", "query-on-data"])
def test_a_planted_liar_alone_leaves_the_querier_as_it_was(world, clean, kind):
    name, liar = _liar(world, clean, kind)
    with pytest.raises(QueryError, match="no usable expert"):
        _run(world, Planted(InProcessChannel(world.teachers), name, liar, alone=True))


def test_honest_experts_pass_the_new_checks(clean):
    assert clean[1].distrusted == {} and any(clean[1].experts.values())


def test_an_honest_expert_whose_data_hold_only_the_query_class_is_kept_and_teaches_it(world):
    """Under a Dirichlet split a party may hold nearly nothing but one class (the CIFAR-10 headline has such experts):
    its model calls everything by that class, yet as the only expert it still teaches the querier the class."""
    s = world.scenario
    c = s.query[0]
    idx = torch.nonzero(world.y_train == c).flatten()
    model = build_model(CONFIG.training.arch, world.dataset.input_shape, world.dataset.num_classes)
    expert = train_as_party(model, (world.x_train[idx], world.y_train[idx]), CONFIG.training, seed=0)
    named = predict_logits(expert, world.querier_data[0]).argmax(1)
    assert float((named == c).double().mean()) > 0.98, "the expert should call (nearly) everything by its one class"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student, report = run_query(world.models[s.querier], InProcessChannel({"one-class": expert}), s.query, world.querier_data,
                                    CONFIG.query, num_classes=world.dataset.num_classes, progress=False)
    assert report.experts[c] == ["one-class"] and report.distrusted == {}
    acc = per_class_accuracy(student, world.x_test, world.y_test, world.dataset.num_classes)
    before = per_class_accuracy(world.models[s.querier], world.x_test, world.y_test, world.dataset.num_classes)
    assert acc[c] > before[c] + 0.3, f"query accuracy {acc[c]:.3f} against {before[c]:.3f} before the query"


@pytest.mark.parametrize(("announcement", "says"), [
    (Announcement((-1,), 10, (64,)), "not distinct classes"),
    (Announcement(tuple(range(10)), 10, (64,)), "names 10 of 10 classes; the teacher answers at most 9"),
    (Announcement((1,), 10, (64,), probe_samples=10**9), "the probe asks for 1000000000 samples"),
    (Announcement((1,), 10, (64,), noise="gaussian"), "unknown noise 'gaussian'"),
])
def test_a_teacher_refuses_announcements_outside_its_default_limits(world, announcement, says):
    with pytest.raises(Refused, match=says):
        answer_probe(world.models[0], announcement)


def test_a_teachers_own_policy_decides_its_noise_and_the_querier_records_the_refusal(world):
    strict = TeacherPolicy(noise="laplace", max_epsilon=1.0)
    with pytest.raises(Refused, match="Laplace noise of ε ≤ 1"):
        answer_probe(world.models[0], Announcement((1,), 10, (64,), noise="laplace", epsilon=5.0), policy=strict)
    assert answer_probe(world.models[0], Announcement((1,), 10, (64,), probe_kind="noise", noise="laplace", epsilon=0.5),
                        policy=strict).shape == (1,)
    teachers = {k: Teacher(m, policy=strict if k == "1" else TeacherPolicy()) for k, m in world.teachers.items()}
    _, report = _run(world, InProcessChannel(teachers))
    assert report.lost["1"].startswith("refused: the teacher answers only with Laplace noise")
    with pytest.raises(QueryError, match="noise is 'gauss'; choose among none, laplace"):
        TeacherPolicy(noise="gauss")


flwr = pytest.importorskip("flwr")


def test_a_teacher_sends_weights_only_for_a_query_it_answered_as_an_expert():
    from flwr.app import ConfigRecord, RecordDict

    from qkt.flower import wire
    from qkt.flower.client_app import answered, remember_answer, weights_refusal

    state = RecordDict()
    announcement = Announcement((3,), 10, (64,))
    ask = ConfigRecord({"half": False, "query": wire.query_id(announcement)})
    assert weights_refusal(state, ask) == "it answered no announcement of this query"
    remember_answer(state, announcement, TeacherPolicy().is_expert(announcement, [0.05]), answered(state))
    assert weights_refusal(state, ask) == "its scores did not make it an expert of the query"
    remember_answer(state, announcement, TeacherPolicy().is_expert(announcement, [0.5]), answered(state))
    assert weights_refusal(state, ask) is None
    other = ConfigRecord({"half": False, "query": wire.query_id(Announcement((4,), 10, (64,)))})
    assert weights_refusal(state, other) == "it answered no announcement of this query"
    with pytest.raises(QueryError, match="refused to send its weights: its scores"):
        wire.read_weights(wire.weights_refusal("its scores did not make it an expert of the query"))


def test_an_impostor_claiming_a_bound_party_costs_only_its_own_reply():
    from qkt.flower import wire
    from qkt.flower.channel import read_probe_replies

    def reply(party, scores):
        return wire.scores_content(party, np.array(scores, dtype=np.float32))

    replies = {9: reply("1", [1.0]), 2: reply("1", [0.3]), 3: reply("2", [0.4])}  # node 9 answers first, as party 1
    scores, node_of, _, strangers = read_probe_replies(replies, ["1", "2"], nodes={"1": 2, "2": 3})
    assert node_of == {"1": 2, "2": 3} and scores["1"][0].tolist() == pytest.approx([0.3])
    assert "an impostor" in strangers["node 9"]


def test_a_refusal_over_flower_reaches_the_querier_with_its_reason():
    from qkt.flower import wire
    from qkt.flower.channel import read_probe_replies

    scores, node_of, _, _ = read_probe_replies({4: wire.refusal_content("1", "the query names 10 of 10 classes")}, ["1"])
    assert scores["1"][0] == "refused: the query names 10 of 10 classes" and node_of == {"1": 4}
