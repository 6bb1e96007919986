"""What leaves a party during a query (docs/privacy.md): every outgoing payload inspected, and the probe's Laplace noise."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from qkt.config import DEMO, QueryConfig, parse_config
from qkt.errors import ConfigError
from qkt.experiment import build_world
from qkt.query import Announcement, CachedScores, InProcessChannel, NoisyScores, Recorder, Teacher, answer_probe, run_query
from qkt.query.privacy import laplace_scale, privatize
from qkt.query.teacher import UNLIMITED
from qkt.training import set_threads

FAST = {"probe": {"num_samples": 128, "steps": 30}, "inversion": {"samples_per_class": 64, "steps": 50},
        "phase1_epochs": 2, "phase2_epochs": 4}
CONFIG = parse_config({**DEMO, "training": {"arch": "mlp", "epochs": 15}, "query": FAST})


def _query(world, channel, config):
    s = world.scenario
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_query(world.models[s.querier], channel, s.query, world.querier_data, config,
                         num_classes=world.dataset.num_classes, progress=False)


@pytest.fixture(scope="module")
def wire():
    """One query of the demo world with every payload a teacher sends, as it was sent."""
    set_threads(1)
    world = build_world(CONFIG, progress=False)
    recorder = Recorder(InProcessChannel({k: Teacher(m) for k, m in world.teachers.items()}))
    _, report = _query(world, recorder, CONFIG.query)
    sent = [(kind, reply.value) for _, kind, reply in recorder.replies]
    return world, report, sent, [a.to_bytes() for a in recorder.announcements]


def test_the_announcement_holds_the_query_and_the_probe_recipe_only(wire):
    world, report, _, announcements = wire
    fields = json.loads(announcements[0])
    assert set(fields) == {"query", "num_classes", "input_shape", "probe_kind", "probe_samples", "probe_steps", "probe_scales",
                           "probe_seed", "noise", "epsilon"}
    assert fields["query"] == list(world.scenario.query) and len(announcements[0]) < 300
    assert [m["bytes"] for m in report.messages if m["kind"] == "announce"] == [len(announcements[0])] * len(world.teachers)


def test_a_teacher_replies_with_one_number_per_query_class(wire):
    world, report, sent, _ = wire
    teacher_replies = [p for kind, p in sent if kind == "scores"]
    assert len(teacher_replies) == len(world.teachers)
    assert all(r.shape == (len(world.scenario.query),) and r.dtype == np.float32 for r in teacher_replies)
    assert [m["bytes"] for m in report.messages if m["kind"] == "scores"] == [r.nbytes for r in teacher_replies]


def test_only_experts_send_weights_and_weights_hold_no_sample(wire):
    world, report, sent, _ = wire
    weights = [p for kind, p in sent if kind == "weights"]
    asked = [m["from"] for m in report.messages if m["kind"] == "weights"]
    assert sorted(asked) == sorted({k for v in report.experts.values() for k in v} | set(report.distrusted))
    assert [m["bytes"] for m in report.messages if m["kind"] == "weights"] == [sum(a.nbytes for a in w.values()) for w in weights]
    for name, arrays in zip(asked, weights, strict=True):
        teacher = world.teachers[name]
        assert set(arrays) == set(teacher.state_dict()), "a payload holds something besides the model's own state"
        assert all(a.shape == tuple(teacher.state_dict()[k].shape) for k, a in arrays.items())
        # No array holds a per-sample axis, and no row of any array is one of the teacher's training inputs.
        n = len(world.scenario.parts[int(name)])
        assert all(n not in a.shape for a in arrays.values())
        x = world.x_train[torch.as_tensor(world.scenario.parts[int(name)])].flatten(1).numpy()
        for a in arrays.values():
            if a.size % x.shape[1] == 0:
                rows = a.reshape(-1, x.shape[1]).astype(np.float32)
                assert not (np.abs(rows[:, None, :] - x[None]).max(-1) < 1e-6).any()


def test_laplace_scale_is_sensitivity_over_epsilon():
    assert laplace_scale(1, 1.0) == 1.0  # one score in [0, 1]: it can move by 1
    assert laplace_scale(3, 2.0) == 1.0  # a sub-vector of a probability vector moves by at most 2 in L1
    assert laplace_scale(2, 4.0) == 0.5


def test_noise_is_laplace_of_that_scale_and_clipped():
    draws = np.stack([privatize(np.array([0.5], dtype=np.float32), 10.0, np.random.default_rng(i)) for i in range(4000)])[:, 0]
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    centred = draws - 0.5  # scale 0.1: clipping at ±0.5 touches only e^-5 of the mass
    assert abs(np.median(centred)) < 0.01 and abs(np.abs(centred).mean() - 0.1) < 0.01


def test_noisy_replies_are_reproducible_only_from_the_teachers_own_seed():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    announcement = Announcement(query=(0, 2), num_classes=3, input_shape=(4,), probe_kind="noise", probe_samples=16,
                                noise="laplace", epsilon=1.0)
    a = answer_probe(model, announcement, rng=np.random.default_rng(7))
    assert np.array_equal(a, answer_probe(model, announcement, rng=np.random.default_rng(7)))
    exact = answer_probe(model, dataclasses.replace(announcement, noise="none"))
    assert not np.allclose(a, exact)


def test_the_noise_option_is_validated():
    assert QueryConfig(probe={"noise": "laplace", "epsilon": 0.5}).probe.epsilon == 0.5
    with pytest.raises(ConfigError, match="probe.noise: Input should be 'none' or 'laplace'"):
        QueryConfig(probe={"noise": "gaussian"})


def test_with_noisy_replies_the_trust_checks_drop_the_false_experts_noise_lets_in(wire):
    world, clean, _, _ = wire
    config = CONFIG.query.model_copy(update={"probe": CONFIG.query.probe.model_copy(update={"noise": "laplace", "epsilon": 10.0})})
    # simulated teachers that score every class once: a real one's policy would refuse that
    exact = CachedScores(InProcessChannel({k: Teacher(m, policy=UNLIMITED) for k, m in world.teachers.items()}))
    false_experts = 0
    for seed in range(3):
        _, report = _query(world, NoisyScores(exact, np.random.default_rng(seed)), config)
        asked = {m["from"] for m in report.messages if m["kind"] == "weights"}
        kept = {k for v in report.experts.values() for k in v}
        false_experts += len(asked - kept)
        assert kept <= {k for v in clean.experts.values() for k in v}, "a teacher the clean probe rejects was kept"
        assert asked - kept == set(report.distrusted)
    assert false_experts, "at ε = 10 some non-expert should pass the threshold by noise alone"
