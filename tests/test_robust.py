"""Bad teachers planted into the demo's digits world: the querier distrusts them and learns as if they were absent."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from qkt.config import DEMO, TrustConfig, parse_config
from qkt.errors import QueryError
from qkt.experiment import build_world
from qkt.models import build_model
from qkt.query import ForgedScores, InProcessChannel, Teacher, run_query
from qkt.training import fit, per_class_accuracy, set_threads

FAST = {"probe": {"num_samples": 128, "steps": 30}, "inversion": {"samples_per_class": 64, "steps": 50},
        "phase1_epochs": 5, "phase2_epochs": 10}
CONFIG = parse_config({**DEMO, "training": {"arch": "mlp", "epochs": 15}, "query": FAST})


@pytest.fixture(autouse=True)
def _one_thread():
    set_threads(1)  # small MLPs: a second thread only contends with the other processes on a 2-core machine


@pytest.fixture(scope="module")
def world():
    set_threads(1)
    return build_world(CONFIG, progress=False)


def _run(world, teachers, forged=(), config=CONFIG.query):
    """One query; the teachers named in ``forged`` reply 1.0 for every query class, whatever their model says."""
    channel = InProcessChannel({k: Teacher(m) for k, m in teachers.items()})
    for name in forged:
        channel = ForgedScores(channel, name)
    s = world.scenario
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, report = run_query(world.models[s.querier], channel, s.query, world.querier_data, config,
                                  num_classes=world.dataset.num_classes, progress=False)
    acc = per_class_accuracy(model, world.x_test, world.y_test, world.dataset.num_classes)
    return acc[list(s.query)].mean(), acc[list(s.local_classes)].mean(), report


@pytest.fixture(scope="module")
def clean(world):
    return _run(world, world.teachers)


def _non_expert(world, clean_report):
    """A teacher the honest probe did not pick: the one that gains most by lying."""
    experts = {k for names in clean_report.experts.values() for k in names}
    return next(k for k in world.teachers if k not in experts)


def _permuted(world, clean_report):
    """A teacher retrained on its own data with labels shifted so that its largest class is called the query class."""
    s = world.scenario
    name = _non_expert(world, clean_report)
    idx = torch.as_tensor(s.parts[int(name)])
    y = world.y_train[idx]
    shift = (s.query[0] - int(torch.bincount(y).argmax())) % world.dataset.num_classes
    torch.manual_seed(0)
    model = fit(build_model("mlp", world.dataset.input_shape, world.dataset.num_classes),
                (world.x_train[idx], (y + shift) % world.dataset.num_classes), 15, progress=False)
    return name, model


def _assert_unharmed(clean, planted):
    assert planted[0] >= clean[0] - 0.05, f"query accuracy {planted[0]:.3f} vs clean {clean[0]:.3f}"
    assert planted[1] >= clean[1] - 0.02, f"local accuracy {planted[1]:.3f} vs clean {clean[1]:.3f}"


def test_clean_run_learns_the_query_and_distrusts_nobody(clean):
    query_acc, _, report = clean
    assert query_acc >= 0.7 and report.distrusted == {}


def test_a_teacher_claiming_every_class_is_caught_by_its_own_weights(world, clean):
    liar = _non_expert(world, clean[2])
    planted = _run(world, world.teachers, forged=[liar])
    assert list(planted[2].distrusted) == [liar] and "claimed 1.00" in planted[2].distrusted[liar][0]
    assert all(liar not in names for names in planted[2].experts.values())
    _assert_unharmed(clean, planted)


def test_nan_weights_drop_the_teacher_not_the_query(world, clean):
    name = _non_expert(world, clean[2])
    broken = copy.deepcopy(world.teachers[name])
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")
    planted = _run(world, {**world.teachers, name: broken}, forged=[name])
    assert "NaN" in planted[2].distrusted[name][0]
    _assert_unharmed(clean, planted)


def test_overflowing_outputs_are_caught(world, clean):
    name = _non_expert(world, clean[2])
    broken = copy.deepcopy(world.teachers[name])
    with torch.no_grad():
        broken.head.weight.mul_(1e38)  # finite weights, infinite logits
    planted = _run(world, {**world.teachers, name: broken}, forged=[name])
    assert "NaN or infinite" in planted[2].distrusted[name][0]
    _assert_unharmed(clean, planted)


def test_an_untrained_teacher_claiming_every_class_is_caught(world, clean):
    name = _non_expert(world, clean[2])
    torch.manual_seed(1)
    garbage = build_model("mlp", world.dataset.input_shape, world.dataset.num_classes).eval()
    planted = _run(world, {**world.teachers, name: garbage}, forged=[name])
    assert name in planted[2].distrusted
    _assert_unharmed(clean, planted)


def test_a_teacher_trained_with_permuted_labels_is_caught(world, clean):
    name, permuted = _permuted(world, clean[2])
    teachers = {**world.teachers, name: permuted}
    unchecked = _run(world, teachers, config=CONFIG.query.model_copy(update={"trust": TrustConfig(enabled=False)}))
    assert any(name in names for names in unchecked[2].experts.values()), "the permuted teacher must pass the probe to be a threat"
    assert unchecked[0] < clean[0] - 0.3, f"kept, it must cost query accuracy: {unchecked[0]:.3f} vs clean {clean[0]:.3f}"
    planted = _run(world, teachers)
    assert "permuted labels" in planted[2].distrusted[name][0]
    _assert_unharmed(clean, planted)


def test_only_liars_means_a_clear_error(world, clean):
    liars = {k: m for k, m in world.teachers.items() if k == _non_expert(world, clean[2])}
    with pytest.raises(QueryError, match="no usable expert"):
        _run(world, liars, forged=list(liars))
