"""The 'self' probe outside the Python API: each party keeps part of its data out of training and scores itself on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qkt.cli import main
from qkt.config import parse_config
from qkt.errors import ConfigError
from qkt.experiment import build_world
from qkt.partition import hold_out

SELF = """methods = ["local", "qkt"]
[partition]
num_parties = 4
alpha = 0.2
holdout = {holdout}
[training]
epochs = 10
[query]
phase1_epochs = 2
phase2_epochs = 5
[query.probe]
kind = "self"
[query.inversion]
samples_per_class = 64
steps = 40
"""


def test_each_party_keeps_a_share_of_every_class_it_holds_twice_out_of_training():
    labels = np.array([0] * 20 + [1] * 10 + [2] * 1 + [3] * 40)
    parts = [np.arange(0, 31), np.arange(31, 71)]
    train, held = hold_out(labels, parts, 0.1, seed=0)
    for part, t, h in zip(parts, train, held, strict=True):
        assert not np.intersect1d(t, h).size and np.array_equal(np.sort(np.concatenate([t, h])), part)
    assert np.bincount(labels[held[0]], minlength=4).tolist() == [2, 1, 0, 0]  # the class held once stays in training
    assert np.bincount(labels[held[1]], minlength=4).tolist() == [0, 0, 0, 4]
    # another party's samples changing (a querier losing its few samples of Q) leaves this party's split alone
    assert np.array_equal(hold_out(labels, [parts[0][:-5], parts[1]], 0.1, seed=0)[1][1], held[1])
    untouched, nothing = hold_out(labels, parts, 0.0, seed=0)
    assert all(t is p for t, p in zip(untouched, parts, strict=True)) and not any(len(h) for h in nothing)


def test_the_self_probe_needs_a_holdout():
    with pytest.raises(ConfigError, match="set partition.holdout"):
        parse_config({"query": {"probe": {"kind": "self"}}})


def test_the_world_trains_each_party_without_its_held_out_samples(monkeypatch):
    from qkt import partition

    splits = []
    monkeypatch.setattr(partition, "hold_out", lambda *args: splits.append(args) or hold_out(*args))
    config = parse_config({"partition": {"num_parties": 4, "alpha": 0.2, "holdout": 0.2}, "training": {"epochs": 1}})
    world = build_world(config, progress=False)
    assert len(splits) == 1  # the same split serves training and the 'self' probe
    for k, part in enumerate(world.scenario.parts):
        x, y = world.held_out(k)
        assert 0 < len(y) < len(part) and set(world.holdouts[k]) <= set(part)


def test_qkt_run_with_the_self_probe_finds_the_holders_of_q(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(SELF.format(holdout=0.1))
    assert main(["run", "--config", str(config), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    report = summary["reports"]["qkt"]
    assert report["experts"] and not report.get("lost")
    assert summary["methods"]["qkt"]["query_accuracy"] > summary["methods"]["local"]["query_accuracy"]
