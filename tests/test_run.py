"""`qkt run` on a user's npz, on blood-cell (MedMNIST schema) data and on CIFAR-10, from config files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from qkt.cli import main
from qkt.config import RunConfig, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = """
[partition]
num_parties = 4
alpha = 0.2
[training]
arch = "{arch}"
epochs = {epochs}
[query]
phase1_epochs = 2
phase2_epochs = 5
[query.probe]
num_samples = 128
steps = 30
scales = [1.0]
[query.inversion]
samples_per_class = 64
steps = 40
"""


def _run(tmp_path, toml: str, *extra: str) -> dict:
    config = tmp_path / "config.toml"
    config.write_text('methods = ["local", "qkt"]\n' + toml)
    output = tmp_path / "out"
    assert main(["run", "--config", str(config), "--output", str(output), "--quiet", *extra]) == 0
    return json.loads((output / "results.json").read_text())


@pytest.mark.parametrize("name", ["cifar10.yaml", "bloodmnist.yaml", "own-data.toml"])
def test_example_configs_are_valid(name):
    load_config(EXAMPLES / name)


def test_run_on_a_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4, size=(5, 12))
    y_train, y_test = rng.integers(0, 5, 1500), rng.integers(0, 5, 500)
    np.savez(tmp_path / "mine.npz", x_train=centres[y_train] + rng.normal(size=(1500, 12)), y_train=y_train,
             x_test=centres[y_test] + rng.normal(size=(500, 12)), y_test=y_test)
    toml = '[data]\nname = "npz"\n' + QUICK.format(arch="mlp", epochs=10)
    summary = _run(tmp_path, toml, "--data-path", str(tmp_path / "mine.npz"))
    assert summary["methods"]["qkt"]["query_accuracy"] > summary["methods"]["local"]["query_accuracy"]


def test_a_run_of_baselines_only_writes_its_results_and_chart(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('methods = ["ensemble"]\n[training]\nepochs = 1\n')
    output = tmp_path / "out"
    assert main(["run", "--config", str(config), "--output", str(output), "--quiet"]) == 0
    assert "ensemble" in json.loads((output / "results.json").read_text())["methods"]
    assert (output / "results.md").exists() and (output / "per_class_accuracy.png").exists()


def test_qkt_config_prints_every_option_with_its_meaning(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert parse_config(yaml.safe_load(out)) == RunConfig()  # the comments do not change what it loads as
    assert "  temperature: 2.0  # softmax temperature" in out and "partition:  # How the training data" in out


def test_run_on_blood_cells(tmp_path, data_root):
    toml = '[data]\nname = "bloodmnist"\nmax_train = 2000\nmax_test = 800\n' + QUICK.format(arch="cnn", epochs=3)
    summary = _run(tmp_path, toml, "--data-root", str(data_root))
    assert summary["dataset"] == "bloodmnist" and len(summary["classes"]) == 8
    assert summary["methods"]["qkt"]["query_accuracy"] >= summary["methods"]["local"]["query_accuracy"]


def test_run_on_cifar10(tmp_path, data_root):
    toml = '[data]\nname = "cifar10"\nmax_train = 2000\nmax_test = 500\n' + QUICK.format(arch="cnn", epochs=2)
    summary = _run(tmp_path, toml, "--data-root", str(data_root))
    assert summary["dataset"] == "cifar10" and summary["classes"][0] == "airplane"
    assert (tmp_path / "out" / "per_class_accuracy.png").exists()
