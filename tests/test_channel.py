"""The teacher channel: what its wrappers change, what a query counts, and that nothing patches qkt's modules."""

from __future__ import annotations

import ast
import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qkt.config import QueryConfig
from qkt.models import build_model
from qkt.query import (
    Announcement,
    CachedScores,
    Failure,
    Faults,
    ForgedScores,
    InProcessChannel,
    Reply,
    Teacher,
    query,
    run_query,
)
from qkt.query.teacher import UNLIMITED
from qkt.training import fit

ROOT = Path(__file__).resolve().parents[1]
C = 4
FAST = QueryConfig(probe={"kind": "noise", "num_samples": 32}, inversion={"samples_per_class": 8, "steps": 5},
                   phase1_epochs=1, phase2_epochs=1, trust={"enabled": False})


def _trained(classes, seed):
    """An MLP on 8-d inputs that learnt ``classes`` (each a Gaussian blob)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat_interleave(40)
    x = torch.randn(len(y), 8, generator=generator) * 0.3 + torch.nn.functional.one_hot(y, 8).float() * 3
    torch.manual_seed(seed)
    return fit(build_model("mlp", (8,), C), (x, y), 5, progress=False).eval(), (x, y)


@pytest.fixture(scope="module")
def world():
    student, local = _trained([0, 1], 0)
    teachers = {"a": _trained([2, 3], 1)[0], "b": _trained([2, 3], 2)[0], "c": _trained([1, 2], 3)[0]}
    return student, local, teachers


def _channel(teachers):
    return InProcessChannel({k: Teacher(m) for k, m in teachers.items()})


ANNOUNCEMENT = Announcement((2, 3), C, (8,), probe_kind="noise", probe_samples=16)


def test_a_forged_teacher_claims_every_query_class_and_the_others_answer_honestly(world):
    _, _, teachers = world
    honest = _channel(teachers).announce(ANNOUNCEMENT, ["a", "b"])
    forged = ForgedScores(_channel(teachers), "b").announce(ANNOUNCEMENT, ["a", "b"])
    assert forged["b"].value.tolist() == [1.0, 1.0] and honest["b"].value.max() < 1.0
    assert np.array_equal(forged["a"].value, honest["a"].value)


def test_cached_scores_are_computed_once_and_every_query_is_charged_for_them(world):
    _, _, teachers = world
    calls = []

    class Counting(InProcessChannel):
        def announce(self, announcement, names):
            calls.append((announcement.query, tuple(names)))
            return super().announce(announcement, names)

    cache: dict = {}
    # simulated teachers: a real one's policy refuses to score every class at once
    simulated = {k: Teacher(m, policy=UNLIMITED) for k, m in teachers.items()}
    first = CachedScores(Counting(simulated), cache).announce(ANNOUNCEMENT, ["a", "b"])
    again = CachedScores(Counting(simulated), cache).announce(
        Announcement((3,), C, (8,), probe_kind="noise", probe_samples=16), ["a", "b", "c"])
    assert calls == [((0, 1, 2, 3), ("a", "b")), ((0, 1, 2, 3), ("c",))]  # every class once per teacher
    assert again["a"].value.tolist() == [first["a"].value[1]] and again["a"].seconds == first["a"].seconds > 0
    assert first["a"].received == 8 and again["a"].received == 4  # the reply holds |Q| scores, not the cached |C|


def test_cached_scores_serve_every_lambda_of_a_sweep(world):
    _, _, teachers = world
    calls = []

    class Counting(InProcessChannel):
        def announce(self, announcement, names):
            calls.append(announcement)
            return super().announce(announcement, names)

    channel = CachedScores(Counting({k: Teacher(m, policy=UNLIMITED) for k, m in teachers.items()}))
    replies = [channel.announce(Announcement.from_config((2, 3), C, (8,), FAST.model_copy(update={"lam": lam})), ["a"])
               for lam in (1.1, 1.5, 3.0)]
    assert len(calls) == 1  # λ is not in the announcement, and the scores do not depend on it: the teacher computes them once
    assert all(np.array_equal(r["a"].value, replies[0]["a"].value) for r in replies)


def test_a_silent_teacher_is_lost_and_broken_weights_are_distrusted(world):
    student, local, teachers = world
    channel = Faults(_channel(teachers), {"a": "silent", "c": "nan"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, report = run_query(student, channel, [2, 3], local, FAST.model_copy(update={"lam": 1.0}), num_classes=C, progress=False)
    assert report.lost == {"a": "did not answer"} and "NaN" in report.distrusted["c"][0]
    assert any("teacher 'a' was lost" in w for w in report.warnings)
    assert {k for names in report.experts.values() for k in names} == {"b"}


def test_a_teacher_whose_model_raises_is_lost_not_the_query(world):
    student, local, teachers = world

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("out of memory")

    with pytest.warns(UserWarning, match="teacher 'x' was lost: failed to answer: RuntimeError: out of memory"):
        replies = _channel({**teachers, "x": Broken()}).announce(ANNOUNCEMENT, ["a", "x"])
        assert isinstance(replies["a"], Reply) and isinstance(replies["x"], Failure)
        run_query(student, _channel({**teachers, "x": Broken()}), [2, 3], local, FAST, num_classes=C, progress=False)


def test_a_teacher_that_cannot_answer_the_announcement_refuses_it_as_over_flower(world):
    _, _, teachers = world
    channel = _channel({**teachers, "wide": build_model("mlp", (8,), C + 1)})
    reply = channel.announce(ANNOUNCEMENT, ["wide"])["wide"]
    assert isinstance(reply, Failure) and reply.reason.startswith("refused: ") and f"{C + 1} classes" in reply.reason


def test_a_querys_seconds_include_its_teachers_replies(world):
    """Teachers answer in parallel: the query waits for the slowest, and their summed time is reported apart."""
    student, local, teachers = world

    class Slow(nn.Module):
        def __init__(self, model, pause):
            super().__init__()
            self.model, self.pause = model, pause

        def forward(self, x):
            time.sleep(self.pause)
            return self.model(x)

    slow = {"a": Slow(teachers["a"], 0.3), "b": Slow(teachers["b"], 0.1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, report = query(student, slow, [2, 3], local, FAST, progress=False)
    assert report.teacher_seconds["a"] >= 0.3 and report.teacher_seconds["b"] >= 0.1
    assert report.seconds["probe"] >= 0.3  # the slowest teacher's reply; its teacher_seconds add sending its weights
    assert report.seconds["total"] >= report.seconds["probe"] + report.seconds["transfer"]
    assert report.seconds["teachers"] == pytest.approx(sum(report.teacher_seconds.values()))
    # The replies ran one after the other here; the wall time counts only the slowest of them.
    assert report.seconds["probe"] < report.teacher_seconds["a"] + report.teacher_seconds["b"]


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a name inside a module, not a submodule
        return False


def _module_aliases(tree: ast.Module, package: str | None) -> set[str]:
    """Names bound to a module of qkt in a file of ``package`` (``import qkt.x as y``, ``from ..query import channel``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "qkt"}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level and package:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{parent}.{module}" if module else parent
            if module.split(".")[0] == "qkt":
                names |= {a.asname or a.name for a in node.names if _is_module(f"{module}.{a.name}")}
    return names


def test_no_code_assigns_to_an_attribute_of_a_qkt_module():
    """Behaviour is changed through the channel's wrappers, never by replacing a qkt function at module level."""
    found = []
    for path in [*ROOT.glob("src/qkt/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        inside = path.relative_to(ROOT / "src").parent.parts if path.is_relative_to(ROOT / "src") else ()
        modules = _module_aliases(tree, ".".join(inside) or None)
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
            for target in targets:
                base = target
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(target, ast.Attribute) and isinstance(base, ast.Name) and base.id in modules:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args:
                if isinstance(node.args[0], ast.Name) and node.args[0].id in modules:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"module-level patching of qkt at {found}"
