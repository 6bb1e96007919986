"""A teacher's own policy on a SuperNode: the ClientApp's handlers, driven in-process with real Flower messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qkt.config import QueryConfig
from qkt.errors import ConfigError
from qkt.query import Announcement, answer_probe
from qkt.query.teacher import ANSWERS_PER_RUN, Refused, TeacherPolicy

flwr = pytest.importorskip("flwr")

import yaml  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from qkt.config import parse_config  # noqa: E402
from qkt.flower import client_app, wire  # noqa: E402
from qkt.flower.party import blank_model, load_party  # noqa: E402

WORLD = {"data": {"name": "digits"}, "partition": {"num_parties": 4, "alpha": 0.1, "seed": 0},
         "training": {"arch": "mlp", "epochs": 3}}
RUN_CONFIG = {"qkt-config": yaml.safe_dump(WORLD), "reply-timeout": 30.0, "min-supernodes": 0, "threads": 1}
CONFIG = parse_config(WORLD)
QUERIER = load_party(CONFIG).scenario.querier
TEACHER = next(k for k in range(4) if k != QUERIER)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    # A Message built outside a running ClientApp needs the ids Flower would give the task.
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def context(node_config=None):
    return Context(run_id=1, node_id=100 + TEACHER, node_config={"partition-id": TEACHER, "num-partitions": 4, **(node_config or {})},
                   state=RecordDict(), run_config=dict(RUN_CONFIG))


def message(content, kind):
    return Message(content, dst_node_id=100 + TEACHER, message_type=kind)


def announce(ctx, announcement=None, raw=None) -> ConfigRecord:
    """The teacher's reply to an announcement (or to raw bytes in its place): its scores, or why it refused."""
    blob = raw if raw is not None else announcement.to_bytes()
    return client_app.probe(message(RecordDict({"announce": ConfigRecord({"announcement": blob})}), wire.PROBE), ctx).content["scores"]


def ask_weights(ctx, announcement) -> RecordDict:
    request = ConfigRecord({"half": False, "query": wire.query_id(announcement)})
    return client_app.weights(message(RecordDict({"request": request}), wire.WEIGHTS), ctx).content


def recipe(**changes) -> Announcement:
    return Announcement(**{"query": (1,), "num_classes": 10, "input_shape": (64,), "probe_kind": "noise", "probe_samples": 64,
                           "probe_steps": 0, "probe_scales": (1.0,), **changes})


@pytest.mark.parametrize(("node_config", "trains"), [
    ({}, True),
    ({"qkt-classes": "9"}, False),
    ({"qkt-noise": "laplace", "qkt-max-epsilon": 0.1}, False),
    ({"qkt-classes": "9", "qkt-federated": "true"}, True),
    ({"qkt-federated": "false"}, False),
])
def test_a_party_with_a_privacy_policy_hands_no_trained_model_to_a_federated_round_unless_it_opts_in(node_config, trains):
    party = load_party(CONFIG, TEACHER)
    content = RecordDict({"arrays": ArrayRecord(blank_model(CONFIG, party, QUERIER).state_dict()),
                          "config": ConfigRecord({"server-round": 1, "local-epochs": 1})})
    reply = client_app.train(message(content, "train"), context(node_config))
    assert reply.has_content() is trains and reply.has_error() is not trains
    if not trains:  # an error reply, which Flower's strategies leave out of the average
        assert "qkt-federated=true" in reply.error.reason


def test_a_teacher_sends_weights_only_at_or_above_its_own_floor():
    everything = announce(context(), recipe(query=tuple(range(9))))["scores"]
    weakest = int(np.argmin(everything))
    assert everything[weakest] < 0.1, "9 of 10 mean probabilities: the smallest is below uniform"
    ctx = context()
    below = recipe(query=(weakest,))
    assert announce(ctx, below)["scores"] == pytest.approx([everything[weakest]])
    assert ask_weights(ctx, below)["refused"]["reason"] == "its scores did not make it an expert of the query"
    assert "threshold" not in json.loads(below.to_bytes())  # the querier's λ is its own: a liar would learn what to claim
    strongest = recipe(query=(int(np.argmax(everything)),))
    ctx = context()
    announce(ctx, strongest)
    assert "weights" in ask_weights(ctx, strongest)
    ctx = context({"qkt-min-expert-score": 0.99})
    announce(ctx, strongest)
    assert "refused" in ask_weights(ctx, strongest)
    # at uniform, an expert as the querier's own rule (s ≥ λ/|C|, λ = 1) would count it, so that both sides agree
    assert TeacherPolicy().is_expert(Announcement((1,), 10, (64,)), [0.1])
    assert not TeacherPolicy().is_expert(Announcement((1,), 10, (64,)), [0.0999])


@pytest.mark.parametrize(("policy", "epsilon"), [
    (TeacherPolicy(noise="laplace"), math.inf),
    (TeacherPolicy(noise="laplace"), math.nan),
    (TeacherPolicy(), math.inf),
    (TeacherPolicy(), 0.0),
    (TeacherPolicy(), -1.0),
    (TeacherPolicy(), math.nan),
])
def test_laplace_noise_of_an_infinite_or_meaningless_epsilon_is_refused(policy, epsilon):
    model = torch.nn.Linear(4, 3)
    with pytest.raises(Refused, match="Laplace noise needs a positive, finite ε"):
        answer_probe(model, Announcement((0,), 3, (4,), probe_kind="noise", probe_samples=8, noise="laplace", epsilon=epsilon),
                     policy=policy)


@pytest.mark.parametrize(("node_config", "says"), [
    ({"qkt-max-epsilon": 0.5}, "qkt-max-epsilon and qkt-noise contradict"),
    ({"qkt-noise": "laplace", "qkt-max-epsilon": -1}, "qkt-max-epsilon is -1; it must be positive"),
    ({"qkt-noise": "Laplace"}, "qkt-noise is 'Laplace'; choose among none, laplace"),
    ({"qkt-noise": " laplace"}, "qkt-noise is ' laplace'"),
    ({"qkt-max-query-share": -0.5}, "qkt-max-query-share is -0.5; it must be in"),
    ({"qkt-max-query-share": 7}, "qkt-max-query-share is 7; it must be in"),
    ({"qkt-max-query-share": "nan"}, "qkt-max-query-share is nan; it must be in"),
    ({"qkt-max-query-share": "most"}, "qkt-max-query-share must be a number, not 'most'"),
    ({"qkt-classes": "1,1,2"}, r"qkt-classes \[1, 1, 2\] must be distinct"),
    ({"qkt-classes": "1,-3"}, r"qkt-classes \[1, -3\] must be distinct class indices ≥ 0"),
    ({"qkt-classes": "1,99"}, r"qkt-classes names 99, outside the label space 0..9"),
    ({"qkt-max-answers": 0}, "qkt-max-answers is 0; it must be at least 1"),
    ({"qkt-federated": "yes"}, "node config qkt-federated is 'yes'; choose true or false"),
    ({"threads": 0}, "this SuperNode's node config 'threads' must be 1..1024, not 0"),
    ({"threads": "x"}, "this SuperNode's node config 'threads' must be a whole number, not 'x'"),
])
def test_a_supernode_with_an_invalid_policy_says_which_node_config_key_in_one_line(node_config, says):
    with pytest.raises(ConfigError, match=says) as caught:
        client_app.train(message(RecordDict(), "train"), context(node_config))
    assert "\n" not in str(caught.value)


def test_the_queries_of_one_run_together_stay_within_the_share_a_teacher_answers():
    ctx = context({"qkt-max-query-share": 0.3})
    assert "scores" in announce(ctx, recipe(query=(0, 1, 2)))
    assert "scores" in announce(ctx, recipe(query=(1, 2)))  # classes it has answered already
    assert announce(ctx, recipe(query=(3, 4, 5)))["refused"] == (
        "the query names 6 of 10 classes with the 3 it answered earlier in this run; the teacher answers at most 3")
    assert "refused" in announce(ctx, recipe(query=(9,)))


def test_a_teacher_answers_a_bounded_number_of_announcements_in_a_run():
    ctx = context({"qkt-noise": "laplace", "qkt-max-epsilon": 1.0})
    noisy = recipe(query=(5,), noise="laplace", epsilon=1.0)
    replies = [announce(ctx, noisy) for _ in range(ANSWERS_PER_RUN + 3)]
    assert sum("scores" in r for r in replies) == ANSWERS_PER_RUN
    assert replies[-1]["refused"] == f"the teacher answers at most {ANSWERS_PER_RUN} announcement(s) in a run, and has answered them"
    ctx = context({"qkt-max-answers": 1})
    announce(ctx, recipe())
    assert "at most 1 announcement(s)" in announce(ctx, recipe())["refused"]


GOOD = json.loads(recipe().to_bytes())


@pytest.mark.parametrize(("raw", "says"), [
    ({**GOOD, "x": 1}, "malformed: x: Unexpected keyword argument"),
    ([1, 2], "malformed: the top level: Input should be an object"),
    ({**GOOD, "query": "1"}, "malformed: query: Input should be a valid array"),
    ({**GOOD, "query": [1.0]}, "malformed: query.0: Input should be a valid integer"),
    ({**GOOD, "query": [[1]]}, "malformed: query.0"),
    ({**GOOD, "query": [True]}, "malformed: query.0"),
    ({**GOOD, "probe_scales": 2.0}, "malformed: probe_scales"),
    ({**GOOD, "probe_samples": 1.5}, "malformed: probe_samples"),
    ({**GOOD, "num_classes": "ten"}, "malformed: num_classes"),
    ({**GOOD, "noise": "laplace", "epsilon": "1"}, "malformed: epsilon"),
    ({**GOOD, "probe_seed": 2**70}, "the probe seed must be in 0..2**63 - 1"),
    ({**GOOD, "input_shape": [-5]}, "the input shape [-5] is not a shape of inputs"),
    ({**GOOD, "input_shape": [257, 2**20], "probe_samples": 1}, "would hold more than 268,435,456 numbers"),
    ({**GOOD, "probe_kind": "self"}, "the 'self' probe needs each teacher's held-out data"),
    ({**GOOD, "num_classes": 11, "query": [10]}, "outputs 10 classes but the label space has 11"),
])
def test_a_malformed_announcement_gets_a_refusal_with_the_reason_not_an_exception(raw, says):
    reply = announce(context(), raw=json.dumps(raw).encode())
    assert "scores" not in reply and says in reply["refused"]


@pytest.mark.parametrize("content", [RecordDict(), RecordDict({"announce": ConfigRecord({"other": b""})})], ids=["no-record", "no-key"])
def test_a_probe_message_without_an_announcement_gets_a_refusal(content):
    reply = client_app.probe(message(content, wire.PROBE), context()).content["scores"]
    assert "scores" not in reply and reply["refused"].startswith("the announcement is malformed: no announce.announcement")


def test_a_probe_seed_every_teacher_would_refuse_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="query.probe.seed: Input should be less than or equal to 9223372036854775807"):
        parse_config({"query": {"probe": {"seed": 2**63}}})
    TeacherPolicy().check(Announcement.from_config((1,), 8, (64,), parse_config({"query": {"probe": {"seed": 2**63 - 1}}}).query))


def test_the_default_probe_of_full_size_rgb_images_is_within_a_teachers_default_bounds():
    for shape in ((3, 224, 224), (1, 28, 28), (3, 32, 32)):
        TeacherPolicy().check(Announcement.from_config((1,), 8, shape, QueryConfig()))


def test_a_refusal_names_a_long_list_of_classes_in_a_few_words():
    with pytest.raises(Refused) as caught:
        TeacherPolicy().check(Announcement(tuple(range(10**6)), 10, (64,)))
    assert str(caught.value) == "the query [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, …] (1000000 classes) is not distinct classes of 0..9"
    with pytest.raises(Refused, match=r"class\(es\) \[1, 2, .*\] \(999 classes\)$"):
        TeacherPolicy(classes=(0,), max_query_share=math.inf).check(Announcement(tuple(range(1000)), 1000, (64,)))
