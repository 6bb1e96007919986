"""Real Flower processes on loopback: a SuperLink, one SuperNode per party, ``flwr run``; and the simulation runtime.

Each test starts its own federation on free ports and stops every process it
started, whatever happens. Digits and a small MLP keep each run under a minute
or two on two cores.
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("flwr")

from qkt.cli import main  # noqa: E402
from qkt.config import parse_config  # noqa: E402
from qkt.experiment import run  # noqa: E402
from qkt.flower.federation import LocalFederation, querier_settings, read_results, run_config  # noqa: E402
from qkt.flower.party import load_party  # noqa: E402
from qkt.partition import class_counts  # noqa: E402
from qkt.training import set_threads  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's executables are not on PATH")

QUICK = {
    "data": {"name": "digits"},
    "partition": {"num_parties": 4, "alpha": 0.1, "seed": 0},
    "training": {"arch": "mlp", "epochs": 20},
    "query": {"probe": {"steps": 30, "num_samples": 128}, "inversion": {"samples_per_class": 32, "steps": 30},
              "phase1_epochs": 3, "phase2_epochs": 5},
    "methods": ["local", "qkt"],
}
METRICS = ("query_accuracy", "local_accuracy", "overall_accuracy", "forgetting")


def deploy(tmp_path, config, faults=None, reply_timeout=120.0, secure=False, intruder=False):
    """Run ``config`` on a loopback deployment: one SuperNode per teacher; return the querier's results.

    With ``intruder``, a SuperNode with an unregistered key also tries to join; return its exit code too.
    """
    faults = faults or {}
    querier = load_party(config).scenario.querier
    teachers = [k for k in range(config.partition.num_parties) if k != querier]
    with LocalFederation(tmp_path / "federation", secure=secure) as federation:
        for k in teachers:
            federation.add_supernode(k, config.partition.num_parties, **({"qkt_fault": faults[k]} if k in faults else {}))
        rogue = federation.add_supernode(teachers[0], config.partition.num_parties, registered=False) if intruder else None
        options = {"min_supernodes": len(teachers), "reply_timeout": reply_timeout}
        federation.run(run_config(config, **options), querier_settings(config, tmp_path / "out"), timeout=600)
        refused = rogue.wait(60) if rogue else None
    return read_results(tmp_path / "out"), teachers, refused


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("ssh-keygen")), reason="needs openssl and ssh-keygen for the credentials")
def test_a_query_across_authenticated_supernodes_over_tls_matches_the_in_process_run(tmp_path):
    config = parse_config(QUICK)
    set_threads(1)  # as every party of the federation
    expected = run(config, None, progress=False)
    got, teachers, refused = deploy(tmp_path, config, secure=True, intruder=True)

    assert refused != 0 and got["flower"]["supernodes"] == len(teachers)  # the unregistered SuperNode was turned away
    assert got["scenario"]["querier"] == expected["scenario"]["querier"]
    assert got["reports"]["qkt"]["experts"] == expected["reports"]["qkt"]["experts"]
    assert got["reports"]["qkt"]["lost"] == {}
    for method in ("local", "qkt"):
        for metric in METRICS:
            assert got["methods"][method][metric] == pytest.approx(expected["methods"][method][metric], abs=0.01), (method, metric)
    assert got["methods"]["qkt"]["query_accuracy"] > 0.5

    # Every teacher hears the announcement; only the experts are asked for, and send, their weights.
    messages = got["reports"]["qkt"]["messages"]
    experts = {k for names in got["reports"]["qkt"]["experts"].values() for k in names}
    # The report's messages are the engine's, the same kinds as in-process, with their sizes on Flower's wire.
    assert [m["kind"] for m in messages] == [m["kind"] for m in expected["reports"]["qkt"]["messages"]]
    assert sorted(m["to"] for m in messages if m["kind"] == "announce") == sorted(str(k) for k in teachers)
    assert {m["from"] for m in messages if m["kind"] == "weights"} == experts
    weights = sum(m["bytes"] for m in messages if m["kind"] == "weights")
    assert weights > 0.9 * got["methods"]["qkt"]["bytes_received"]


def test_lost_and_corrupt_teachers_are_dropped_and_named(tmp_path):
    # A fault strikes when a teacher's weights are asked for, which a teacher allows only as an expert: in this world
    # the 'self' probe finds five experts of Q among the six teachers.
    probe = {**QUICK["query"]["probe"], "kind": "self"}
    config = parse_config({**QUICK, "query": {**QUICK["query"], "probe": probe},
                           "partition": {"num_parties": 7, "alpha": 0.5, "seed": 0, "holdout": 0.2}, "methods": ["local", "qkt"]})
    party = load_party(config)
    held = class_counts(party.dataset.y_train, list(party.scenario.parts), party.dataset.num_classes)[:, party.scenario.query].sum(1)
    # The faults strike the experts holding least of Q, so that the one holding most can still teach it.
    experts = sorted((k for k in range(7) if k != party.scenario.querier), key=lambda k: held[k])[1:]
    faults = dict(zip(experts, ["die", "hang", "nan", "shape"], strict=False))
    got, _, _ = deploy(tmp_path, config, faults, reply_timeout=60.0)

    report = got["reports"]["qkt"]
    name = {fault: str(k) for k, fault in faults.items()}
    # Gone or silent teachers are lost; teachers whose weights do not fit are distrusted, with the reason.
    assert set(report["lost"]) == {name["die"], name["hang"]}
    assert "did not answer" in report["lost"][name["hang"]] and "did not answer" in report["lost"][name["die"]]
    assert "NaN" in report["distrusted"][name["nan"]][0] and "has shape" in report["distrusted"][name["shape"]][0]
    healthy = {str(k) for k in experts if k not in faults}
    assert {k for names in report["experts"].values() for k in names} <= healthy
    assert all(any(f"teacher '{name[f]}' was lost" in w for w in report["warnings"]) for f in ("die", "hang"))
    assert all(any(f"teacher '{name[f]}' distrusted" in w for w in report["warnings"]) for f in ("nan", "shape"))
    assert got["methods"]["qkt"]["query_accuracy"] > got["methods"]["local"]["query_accuracy"]


def test_simulation_runs_the_query_and_flowers_own_fedavg(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    import yaml

    config.write_text(yaml.safe_dump({**QUICK, "methods": ["local", "qkt", "fedavg"], "federated": {"local_epochs": 5}}))
    assert main(["flower", "simulate", "--config", str(config), "--output", str(tmp_path / "out"), "--timeout", "600"]) == 0
    assert "QKT" in capsys.readouterr().out
    got = read_results(tmp_path / "out")
    assert got["flower"]["supernodes"] == 4 and got["flower"]["rounds"] == 4
    qkt, fedavg = got["methods"]["qkt"], got["methods"]["fedavg"]
    assert qkt["query_accuracy"] > 0.5
    # FedAvg ships the whole model to and from every party each round; QKT, one model from each expert.
    assert fedavg["bytes_sent"] + fedavg["bytes_received"] > 5 * (qkt["bytes_sent"] + qkt["bytes_received"])
