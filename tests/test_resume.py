"""`qkt run` killed mid-training (Ctrl-C and SIGKILL) and resumed: finished parties are reused, results match."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qkt.config import parse_config
from qkt.experiment import build_world
from qkt.training import set_threads

CONFIG = """
methods = ["local", "qkt"]
[partition]
num_parties = 6
alpha = 0.1
[training]
epochs = 40
[query]
phase1_epochs = 2
phase2_epochs = 4
[query.probe]
num_samples = 64
steps = 10
[query.inversion]
samples_per_class = 32
steps = 20
"""
ACCURACIES = ("query_accuracy", "local_accuracy", "overall_accuracy", "per_class_accuracy")


def _command(config: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qkt.cli", "run", "--config", str(config), "--output", str(output), "--quiet", *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _interrupt(command: list[str], output: Path, sig: int, after: int) -> subprocess.CompletedProcess:
    """Start a run and send ``sig`` once ``after`` parties are checkpointed, before all of them are."""
    # A shell starting pytest in the background (``&``) ignores SIGINT, and children inherit that: undo it, as a terminal would.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(list((output / "checkpoints").glob("*.pt"))) < after:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never checkpointed"
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _stamps(output: Path, folder: str = "checkpoints") -> dict[str, tuple[int, int]]:
    """Each checkpoint's inode and modification time: a party trained again is written anew."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (output / folder).glob("*.pt")}


def _accuracies(output: Path) -> dict:
    methods = json.loads((output / "results.json").read_text())["methods"]
    return {m: {k: r[k] for k in ACCURACIES} for m, r in methods.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    (folder / "config.toml").write_text(CONFIG)
    subprocess.run(_command(folder / "config.toml", folder / "out"), check=True, env=_env(), capture_output=True, timeout=300)
    return folder / "out"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_interrupted_run_resumes_without_retraining(tmp_path, reference, sig):
    (tmp_path / "config.toml").write_text(CONFIG)
    output = tmp_path / "out"
    command = _command(tmp_path / "config.toml", output)
    stopped = _interrupt(command, output, sig, after=2)
    assert stopped.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    if sig == signal.SIGINT:
        assert "interrupted" in stopped.stderr and "Traceback" not in stopped.stderr
        assert not [p.name for p in output.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert not (output / "results.json").exists()
    finished = _stamps(output)
    assert 2 <= len(finished) < 6
    for path in (output / "checkpoints").glob("*.pt"):  # whatever was kept is whole
        torch.load(path, weights_only=True)

    resumed = subprocess.run(command + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = _stamps(output)
    assert {k: after[k] for k in finished} == finished, "a finished party was trained again"
    assert len(after) == 6
    for name in after:
        ours = torch.load(output / "checkpoints" / name, weights_only=True)
        theirs = torch.load(reference / "checkpoints" / name, weights_only=True)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _accuracies(output) == _accuracies(reference)


def test_without_resume_every_party_is_trained_again(tmp_path):
    set_threads(1)
    config = parse_config({"partition": {"num_parties": 3, "alpha": 1.0}, "training": {"epochs": 2},
                           "scenario": {"max_query_samples": 1000}})
    build_world(config, tmp_path, progress=False)
    first = _stamps(tmp_path, "")
    build_world(config, tmp_path, progress=False, resume=True)
    assert _stamps(tmp_path, "") == first
    build_world(config, tmp_path, progress=False, resume=False)
    assert all(_stamps(tmp_path, "")[k] != v for k, v in first.items())


def test_resume_on_edited_data_trains_its_own_parties(tmp_path):
    # Same file name and size, other values: the parties are named by what they were trained on.
    set_threads(1)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = (rng.normal(size=(300, 8)) + y[:, None]).astype(np.float32)
    data = tmp_path / "mine.npz"
    config = parse_config({"data": {"name": "npz", "path": str(data)}, "partition": {"num_parties": 3, "alpha": 1.0},
                           "training": {"epochs": 2}, "scenario": {"max_query_samples": 1000}})
    np.savez(data, x_train=x, y_train=y, x_test=x[:30], y_test=y[:30])
    build_world(config, tmp_path / "run", progress=False)
    first = _stamps(tmp_path / "run", "")
    np.savez(data, x_train=x + 1, y_train=y, x_test=x[:30], y_test=y[:30])
    build_world(config, tmp_path / "run", progress=False, resume=True)
    both = _stamps(tmp_path / "run", "")
    assert len(both) == 2 * len(first) and {k: both[k] for k in first} == first


def test_resume_on_another_thread_count_trains_its_own_parties(tmp_path):
    # The thread count changes training's float rounding, so reusing these parties would mix two runs' weights.
    config = parse_config({"partition": {"num_parties": 3, "alpha": 1.0}, "training": {"epochs": 2},
                           "scenario": {"max_query_samples": 1000}})
    set_threads(1)
    build_world(config, tmp_path, progress=False)
    one_thread = _stamps(tmp_path, "")
    set_threads(2)
    build_world(config, tmp_path, progress=False, resume=True)
    both = _stamps(tmp_path, "")
    assert len(both) == 2 * len(one_thread)
    assert {k: both[k] for k in one_thread} == one_thread
