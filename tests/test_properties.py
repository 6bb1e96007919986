"""Properties that hold for every input: partitions assign each sample once, the mask rule of SPEC §2, and
`qkt run` and `qkt.query` either work or fail with one clear error, whatever they are given."""

from __future__ import annotations

import copy
import json
import typing
import warnings

import numpy as np
import pydantic
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import qkt
from qkt.cli import main as cli_main
from qkt.config import QueryConfig, RunConfig
from qkt.models import build_model
from qkt.partition import class_counts, dirichlet, k_classes, make_scenario
from qkt.query.probe import expert_masks
from qkt.training import fit

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def labelled(draw):
    """Labels over 2-12 classes, 20-120 samples each, in shuffled order."""
    num_classes = draw(st.integers(2, 12))
    sizes = draw(st.lists(st.integers(20, 120), min_size=num_classes, max_size=num_classes))
    labels = np.repeat(np.arange(num_classes), sizes)
    return np.random.default_rng(draw(st.integers(0, 2**16))).permutation(labels), num_classes


def _exact_cover(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


@PROPERTY
@given(labelled(), st.integers(2, 8), st.floats(0.05, 100.0), st.integers(0, 10**6))
def test_dirichlet_assigns_every_sample_once_and_reproduces(data, num_parties, alpha, seed):
    labels, _ = data
    parts = dirichlet(labels, num_parties, alpha, seed, min_samples=1, max_tries=1000)
    assert len(parts) == num_parties and _exact_cover(parts, len(labels))
    assert all(len(p) >= 1 for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, dirichlet(labels, num_parties, alpha, seed, min_samples=1, max_tries=1000), strict=True))


@PROPERTY
@given(labelled(), st.integers(1, 10), st.integers(1, 12), st.integers(0, 10**6))
def test_k_classes_holdings(data, num_parties, k, seed):
    labels, num_classes = data
    k = min(k, num_classes)
    parts = k_classes(labels, num_parties, k, seed)
    counts = class_counts(labels, parts, num_classes)
    held = counts > 0
    assert (held.sum(1) <= k).all()
    if num_parties * k >= num_classes:  # every class has a holder, so every sample is assigned, once
        assert _exact_cover(parts, len(labels)) and held.any(0).all()
        assert (held.sum(1) == k).all()
    assert all(np.array_equal(a, b) for a, b in zip(parts, k_classes(labels, num_parties, k, seed), strict=True))


@PROPERTY
@given(labelled(), st.integers(3, 8), st.integers(0, 1000))
def test_a_scenario_leaves_the_querier_none_of_its_query(data, num_parties, seed):
    labels, num_classes = data
    parts = k_classes(labels, num_parties, max(1, num_classes // 2), seed)
    lacking = [c for c in range(num_classes) if class_counts(labels, [parts[0]], num_classes)[0, c] == 0
               and class_counts(labels, parts[1:], num_classes)[:, c].max() >= 10]
    if not lacking:
        return
    s = make_scenario(labels, parts, 0, 1, seed, num_classes)
    assert s.query[0] in lacking and not np.isin(labels[s.parts[0]], s.query).any()
    assert all(np.array_equal(a, b) for a, b in zip(s.parts[1:], parts[1:], strict=True))


@st.composite
def replies(draw):
    """Probe replies of 1-6 teachers over a query of 1-4 classes of a 2-20 class label space."""
    num_classes = draw(st.integers(2, 20))
    q = draw(st.integers(1, min(4, num_classes)))
    teachers = draw(st.integers(1, 6))
    scores = draw(arrays(np.float64, (teachers, q), elements=st.floats(0, 1)))
    return {str(k): scores[k] for k in range(teachers)}, list(range(q)), num_classes


@PROPERTY
@given(replies(), st.floats(1.0, 10.0), st.floats(1.0, 10.0))
def test_mask_rule_threshold_fallback_and_monotonic_in_lambda(reply, lam_a, lam_b):
    scores, query, num_classes = reply
    low, high = sorted((lam_a, lam_b))
    masks = expert_masks(scores, query, num_classes, low)
    stricter = expert_masks(scores, query, num_classes, high)
    matrix = np.stack([scores[k] for k in scores])
    for j in range(len(query)):
        experts = [k for k in scores if masks[k][j]]
        best = matrix[:, j].max()
        # Threshold: every teacher at or above λ/|C| is an expert ...
        assert all(masks[k][j] for k in scores if scores[k][j] >= low / num_classes)
        # ... and the fallback adds at most the single best, and only when it is above uniform.
        over = [k for k in experts if scores[k][j] < low / num_classes]
        assert len(over) <= 1 and all(scores[k][j] == best and best > 1 / num_classes for k in over)
        assert bool(experts) == (best >= low / num_classes or best > 1 / num_classes)
        # A larger λ never adds an expert.
        assert all(masks[k][j] for k in scores if stricter[k][j])


# --- `qkt run` and `qkt.query` on anything a user might write: a result, or one QKTError line -------------

ANY = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(), st.text(max_size=6),
                st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
HUGE_LIST = st.sampled_from([[0] * 2_000, [0.5] * 2_000, ["mlp"] * 2_000])


def _leaf_values(annotation, default, huge: bool = True) -> st.SearchStrategy:
    """Values of a config field's own type, in range or not (negative, zero, NaN, ±inf, huge unless not ``huge``), or of another type.

    Without ``huge`` an integer is at most 3 (or hugely negative): a count of epochs or steps then costs nothing.
    """
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    if choices:
        own = st.sampled_from(choices)
    elif isinstance(default, bool):
        own = st.booleans()
    elif isinstance(default, int):
        own = st.integers(-3, 3) | st.sampled_from([-10**9, 10**9] if huge else [-10**9])
    elif isinstance(default, float):
        own = st.floats() | st.sampled_from([0.0, -1.0, 1e-300, 1e300])
    elif isinstance(default, list):
        own = st.lists(st.sampled_from(default), max_size=3) | HUGE_LIST if default else st.lists(st.integers(-2, 12), max_size=3)
    else:
        own = st.text(max_size=6) | st.integers(-3, 12)
    return st.one_of(own, own, own, ANY)  # mostly the field's own type, so that some configs are valid


def _fields(model: type[pydantic.BaseModel], prefix: tuple[str, ...] = (), huge: bool = True) -> dict[tuple[str, ...], st.SearchStrategy]:
    """A strategy per leaf of the config schema, by its path."""
    out: dict[tuple[str, ...], st.SearchStrategy] = {}
    for name, field in model.model_fields.items():
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, pydantic.BaseModel):
            out.update(_fields(inner, (*prefix, name), huge))
        else:
            args = [a for a in typing.get_args(inner) if a is not type(None)]  # Optional[X]: draw X's values
            out[(*prefix, name)] = _leaf_values(args[0] if len(args) == 1 else inner, field.default, huge)
    return out


def _edited(base: dict, fields: dict[tuple[str, ...], st.SearchStrategy], draw) -> dict:
    """``base`` with one to three of its settings drawn from ``fields``."""
    config = copy.deepcopy(base)
    for path in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True)):
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = draw(fields[path])
    return config


RUN_FIELDS = _fields(RunConfig)
# A world that builds in a second: the bundled digits cut down, three parties, one epoch each.
TINY_RUN = {"data": {"max_train": 300, "max_test": 100}, "partition": {"num_parties": 3, "alpha": 1.0},
            "training": {"epochs": 1}, "methods": ["local", "qkt"],
            "query": {"phase1_epochs": 1, "phase2_epochs": 1, "probe": {"steps": 2, "num_samples": 16},
                      "inversion": {"samples_per_class": 8, "steps": 2}}}


@st.composite
def run_configs(draw) -> dict:
    """The tiny world's config with one to three of its settings drawn from the schema's types and beyond."""
    return _edited(TINY_RUN, RUN_FIELDS, draw)


class Trained(Exception):
    """Raised in place of training the parties: everything before it accepted the config."""


def _cli(argv: list[str], capsys) -> tuple[int | None, str]:
    """``qkt`` in this process: its exit code (None if it reached training) and its stderr."""
    try:
        code = cli_main(argv)
    except Trained:
        code = None
    return code, capsys.readouterr().err


def _one_error(err: str) -> None:
    """Exit 2's stderr: one `error:` line (a config error lists each bad setting below it, indented), no traceback."""
    lines = err.rstrip("\n").splitlines()
    assert lines and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(line.startswith("  - ") for line in lines[1:]), err


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_configs())
def test_qkt_run_accepts_a_config_or_exits_2_with_one_error(tmp_path, capsys, monkeypatch, config):
    def trained(*args, **kwargs):
        raise Trained

    monkeypatch.setattr("qkt.experiment.train_parties", trained)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    code, err = _cli(["run", "--config", str(path), "--output", str(tmp_path / "out"), "--quiet"], capsys)
    assert code in (None, 2), err
    if code == 2:
        _one_error(err)


@pytest.mark.parametrize("changes", [{}, {"query": {"light": True}, "methods": ["local", "qkt_light", "ensemble"]}],
                         ids=["qkt", "light"])
def test_qkt_run_on_a_tiny_world(tmp_path, capsys, changes):
    config = copy.deepcopy(TINY_RUN)
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, err = _cli(["run", "--config", str(path), "--output", str(tmp_path / "out"), "--quiet"], capsys)
    if code == 2:  # a tiny world may leave no expert to ask: that is a QKTError too
        _one_error(err)
    else:
        assert code == 0 and "Traceback" not in err
        assert set(json.loads((tmp_path / "out" / "results.json").read_text())["methods"]) == set(config["methods"])


QUERY_FIELDS = _fields(QueryConfig, huge=False)


@st.composite
def query_configs(draw) -> dict:
    """One to three settings of a query drawn from the schema's types and beyond (counts stay small)."""
    return _edited({}, QUERY_FIELDS, draw)


@pytest.fixture(scope="module")
def tiny_parties():
    """A querier holding classes 0 and 1 of four, a teacher holding 2 and 3, and the querier's data."""
    def data(classes, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.tensor(classes).repeat(30)
        return torch.randn(len(y), 8, generator=g) + y[:, None], y

    torch.manual_seed(0)
    local = data([0, 1], 0)
    return (fit(build_model("mlp", (8,), 4), local, epochs=30, progress=False),
            fit(build_model("mlp", (8,), 4), data([2, 3], 1), epochs=30, progress=False), local)


def mostly(usual: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly ``usual``, sometimes ``other``: enough calls get far enough to run a query."""
    return st.integers(0, 4).flatmap(lambda i: other if i == 4 else usual)


SCALARS = st.one_of(st.integers(-2, 6), st.floats(), st.booleans(), st.text(max_size=3), st.none())
QUERY_CLASSES = mostly(st.sampled_from([[2], [3], [2, 3], 2]),
                       st.one_of(st.lists(st.integers(-2, 6), max_size=4), st.lists(SCALARS, max_size=3), SCALARS,
                                 arrays(np.int64, st.integers(0, 3), elements=st.integers(-1, 5)),
                                 arrays(np.float64, st.integers(1, 2), elements=st.floats(-1, 5))))
LOCAL_DATA = {
    "tensors": lambda x, y: (x, y),
    "numpy": lambda x, y: (x.numpy(), y.numpy()),
    "float64": lambda x, y: (x.double(), y),
    "wrong-width": lambda x, y: (x[:, :5], y),
    "images": lambda x, y: (x[:, None, None, :], y),
    "nan": lambda x, y: (x.masked_fill(x > 2, float("nan")), y),
    "float-labels": lambda x, y: (x, y.float()),
    "labels-outside": lambda x, y: (x, y + 10),
    "short-labels": lambda x, y: (x, y[:-1]),
    "empty": lambda x, y: (x[:0], y[:0]),
    "one-sample": lambda x, y: (x[:1], y[:1]),
    "not-a-pair": lambda x, y: x,
    "lists": lambda x, y: (x.tolist(), y.tolist()),
}


def cheap(config: dict | None) -> dict:
    """The drawn settings over cheap ones: a query with the defaults takes seconds."""
    base = {"phase1_epochs": 1, "phase2_epochs": 1, "probe": {"steps": 2, "num_samples": 16},
            "inversion": {"samples_per_class": 8, "steps": 2}}
    config = config or {}
    return {**base, **config, "probe": {**base["probe"], **config.get("probe", {})},
            "inversion": {**base["inversion"], **config.get("inversion", {})}}


@settings(max_examples=40, deadline=None, derandomize=True)
@given(QUERY_CLASSES, mostly(st.just("tensors"), st.sampled_from(sorted(LOCAL_DATA))), mostly(st.none(), query_configs()),
       mostly(st.just("dict"), st.sampled_from(["list", "int-keys"])), mostly(st.none(), SCALARS))
def test_qkt_query_answers_or_raises_one_qkt_error(tiny_parties, query_classes, local, config, teachers, num_classes):
    student, teacher, (x, y) = tiny_parties
    named = {"dict": {"t": teacher}, "list": [teacher], "int-keys": {0: teacher}}[teachers]
    settings_ = cheap(config)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the notes of a query that works are not under test here
            model, report = qkt.query(student, named, query_classes, LOCAL_DATA[local](x, y), settings_, num_classes=num_classes,
                                      progress=False)
    except qkt.QKTError as exc:
        assert str(exc) and "\n" not in str(exc), str(exc)
    else:
        assert isinstance(model, nn.Module) and report.query and set(report.query) <= set(range(4))


PUBLIC_INPUTS = {
    "pool": lambda x: torch.randn(12, 8),
    "numpy": lambda x: torch.randn(12, 8).numpy(),
    "empty": lambda x: x[:0],
    "wrong-width": lambda x: x[:, :5],
    "unscaled": lambda x: x * 255,
    "labels": lambda x: torch.arange(12),
}


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({}, optional={
    "public_inputs": st.sampled_from(sorted(PUBLIC_INPUTS)),
    "amp": st.one_of(st.sampled_from(["bf16", "fp16", "bfloat16"]), SCALARS),
    "device": st.one_of(st.sampled_from(["cpu", "auto", "cuda", "gpu", torch.device("cpu"), torch.device("cuda")]), SCALARS),
}), mostly(st.none(), query_configs()), st.sampled_from(["float32", "float64"]))
def test_the_options_of_qkt_query_work_or_raise_one_qkt_error(tiny_parties, options, config, teacher_type):
    """A well-formed query with the keyword options drawn: a public pool, mixed precision, a device; and a teacher of either float type."""
    student, teacher, (x, y) = tiny_parties
    if "public_inputs" in options:
        options = {**options, "public_inputs": PUBLIC_INPUTS[options["public_inputs"]](x)}
    teacher = teacher if teacher_type == "float32" else copy.deepcopy(teacher).double()
    settings_ = cheap(config)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, report = qkt.query(student, {"t": teacher}, [2], (x, y), settings_, progress=False, **options)
    except qkt.QKTError as exc:
        assert str(exc) and "\n" not in str(exc), str(exc)
    else:
        assert isinstance(model, nn.Module) and report.query == (2,)
