"""Parties of different architectures: QKT, Ensemble and KD run; FedAvg, FedProx and FedGen are rows saying n/a and why."""

from __future__ import annotations

import json

from torch import nn

from qkt import experiment
from qkt.bench import PROFILES, SCENARIOS, Profile
from qkt.bench.catalogue import run_config
from qkt.bench.runner import run_scenario
from qkt.cli import main
from qkt.config import parse_config
from qkt.data import load_dataset

REASON = "one global model needs one architecture; the parties use cnn, mlp"


def test_a_mixed_architecture_run_shows_fedavg_as_n_a_with_the_reason_and_runs_the_rest(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text('methods = ["local", "fedavg", "ensemble", "kd", "qkt"]\n'
                      "[partition]\nnum_parties = 4\nalpha = 0.3\n"
                      '[training]\narch = "mlp"\nteacher_archs = ["cnn", "mlp"]\nepochs = 4\n'
                      "[query]\nphase1_epochs = 2\nphase2_epochs = 3\n[query.probe]\nnum_samples = 128\nsteps = 20\n"
                      "[query.inversion]\nsamples_per_class = 32\nsteps = 20\n")
    output = tmp_path / "out"
    main(["run", "--config", str(config), "--output", str(output), "--quiet"])
    printed = capsys.readouterr().out
    for text in (printed, (output / "results.md").read_text()):
        assert f"| FedAvg | n/a — {REASON} |" in text
        for method in ("Ensemble", "KD (all teachers)"):
            row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
            assert "n/a" not in row and "failed" not in row
    methods = json.loads((output / "results.json").read_text())["methods"]
    assert methods["fedavg"]["details"] == {"not_applicable": REASON} and methods["fedavg"]["overall_accuracy"] is None
    assert methods["ensemble"]["overall_accuracy"] > 0 and "qkt" in methods


def test_the_mixed_architectures_scenario_cycles_the_teachers_and_keeps_the_queriers_model(tmp_path, monkeypatch):
    dataset = load_dataset("digits")
    scenario = SCENARIOS["mixed-architectures"]
    config = run_config(PROFILES["quick"], dataset, scenario, 0, None)
    assert config.training.arch == "mlp" and config.training.teacher_archs == ["cnn", "resnet", "mlp"]
    assert experiment.federated_not_applicable(config, 10) == "one global model needs one architecture; the parties use cnn, mlp, resnet"
    assert experiment.federated_not_applicable(parse_config({}), 10) is None

    worlds = []
    run_methods = experiment.run_methods

    def recorded(world, *args, **kwargs):
        worlds.append(world)
        return run_methods(world, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_methods", recorded)
    profile = Profile(seeds=1, max_queriers=1, scenarios={"default": ("mixed-architectures",)},
                      settings={"default": {"training": {"arch": "mlp", "epochs": 1}}})
    records = []
    run_scenario(dataset, scenario, 1, profile, None, tmp_path, set(), records.append, False, ["local", "fedavg"])
    (world,) = worlds
    q = world.scenario.querier
    # seed 1's first querier held no sample of Q, so only its architecture calls for a model of its own;
    # the cycle gives its place a CNN or a ResNet, not its MLP
    assert world.scenario.removed == 0 and q % 3 != 2
    # an MLP starts with Flatten, the CNN and the ResNet with a convolution block
    assert [type(m.features[0]) for m in world.models] == [nn.Flatten if k == q or k % 3 == 2 else nn.Sequential for k in range(10)]
    assert records[0]["methods"]["fedavg"]["details"]["not_applicable"].startswith("one global model needs one architecture")
    assert not list(tmp_path.glob("global-*"))  # no global model trained for a row that says n/a
