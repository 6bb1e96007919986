"""The Flower app's pieces that need no running federation: records, run config, faults, a FedAvg/FedProx round."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("flwr")

import tomli_w  # noqa: E402  (comes with flwr)
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict  # noqa: E402

from qkt import training  # noqa: E402
from qkt.cli import main  # noqa: E402
from qkt.config import parse_config  # noqa: E402
from qkt.errors import ConfigError, QKTError, QueryError  # noqa: E402
from qkt.flower import (  # noqa: E402
    faults,
    wire,
)
from qkt.flower.client_app import train_round  # noqa: E402
from qkt.flower.federation import APP_DIR, querier_settings, run_config  # noqa: E402
from qkt.flower.party import Settings, blank_model, load_party, partition_id, read_querier_file, read_settings  # noqa: E402
from qkt.models import build_model  # noqa: E402
from qkt.query import export_weights, import_weights  # noqa: E402
from qkt.training import fit  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def model():
    return build_model("mlp", (64,), 10)


@pytest.mark.parametrize("half", [False, True])
def test_weights_survive_the_records_with_every_shape_and_dtype(model, half):
    arrays = export_weights(model, half=half)
    back, seconds = wire.read_weights(wire.weights_content(arrays, 0.25))
    assert seconds == 0.25
    assert {k: (v.shape, v.dtype) for k, v in back.items()} == {k: (v.shape, v.dtype) for k, v in arrays.items()}
    restored = import_weights(model, back)
    x = torch.randn(8, 64)
    assert torch.allclose(restored(x), model.eval()(x), atol=1e-2 if half else 0)


@pytest.mark.parametrize(("fault", "message"), [("nan", "NaN"), ("shape", "has shape")])
def test_a_corrupt_teacher_is_rejected_with_a_clear_message(model, fault, message):
    sent, _ = wire.read_weights(wire.weights_content(faults.strike(fault, export_weights(model))))
    with pytest.raises(QueryError, match=message):
        import_weights(model, sent)


def _npy_bomb() -> Array:
    """About 150 bytes whose .npy header claims 10**12 float32s: np.load would allocate 3.6 TiB before reading."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    return Array(dtype="float32", shape=(10**12,), stype="numpy.ndarray", data=header.getvalue() + bytes(16))


@pytest.mark.parametrize(("reply", "says"), [
    (lambda arrays: RecordDict({"weights": ConfigRecord({k: 1.0 for k in arrays})}), "its weights are a ConfigRecord"),
    (lambda arrays: RecordDict({"refused": ConfigRecord({})}), "its weights reply is malformed (KeyError('reason'))"),
    (lambda arrays: RecordDict({"refused": ArrayRecord({})}), "its weights reply is malformed"),
    (lambda arrays: RecordDict({"weights": ArrayRecord({**{k: Array(v) for k, v in arrays.items()}, "head.bias": _npy_bomb()})}),
     "weight 'head.bias': its header claims shape (1000000000000,) of float32 (4,000,000,000,000 bytes) in 16 bytes of data"),
    (lambda arrays: wire.weights_content({**arrays, "head.bias": np.full(arrays["head.bias"].shape, "ab")}),
     "weight 'head.bias' is <U2, not numbers"),
    (lambda arrays: wire.weights_content(arrays, -1e9), "it says it spent -1000000000.0 s, outside 0..600 s"),
    (lambda arrays: wire.weights_content(arrays, float("nan")), "it says it spent nan s"),
    (lambda arrays: wire.weights_content(arrays, 1e300), "it says it spent 1e+300 s"),
], ids=["config-record", "refusal-without-reason", "refusal-of-arrays", "npy-header-bomb", "strings", "negative-seconds", "nan-seconds",
        "seconds-beyond-the-wait"])
def test_a_weights_reply_that_cannot_be_read_costs_its_teacher_one_query_error(model, reply, says):
    """Not a crash of the whole query, nor terabytes allocated for a reply of a few bytes, nor a lie in the query's time."""
    with pytest.raises(QueryError) as info:
        wire.read_weights(reply(export_weights(model)), waited=600.0)
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), 601.0])
def test_a_probe_reply_that_says_it_took_longer_than_the_wait_is_refused(seconds):
    with pytest.raises(QueryError, match="outside 0..600 s, the querier's wait for the reply"):
        wire.read_scores(wire.scores_content("4", np.array([0.5], dtype=np.float32), seconds), waited=600.0)


@pytest.mark.parametrize(("weight", "says"), [
    (lambda ref: (ref + 1j * np.nan).astype(np.complex64), "is complex64, expected torch.float32"),
    (lambda ref: np.full(ref.shape, "ab"), "is <U2, expected torch.float32"),
    (lambda ref: np.full(ref.shape, 1e300), r"holds NaN or infinite values \(as torch.float32\)"),
], ids=["complex", "finite-as-float64-only", "strings"])
def test_received_weights_are_checked_as_the_model_holds_them(model, weight, says):
    arrays = export_weights(model)
    arrays["head.weight"] = weight(arrays["head.weight"])
    with pytest.raises(QueryError, match=says):
        import_weights(model, arrays)


def test_an_unknown_fault_is_refused(model):
    with pytest.raises(ValueError, match="unknown qkt-fault"):
        faults.strike("explode", export_weights(model))


def test_scores_and_announcement_round_trip():
    from qkt.query import Announcement

    announcement = Announcement((3, 5), 10, (64,), probe_seed=7)
    assert wire.read_announcement(wire.announce_content(announcement)) == announcement
    party, scores, seconds = wire.read_scores(wire.scores_content("4", np.array([0.25, 0.5], dtype=np.float32), 1.5))
    assert party == "4" and scores.tolist() == [0.25, 0.5] and seconds == 1.5
    assert wire.read_scores(wire.scores_content("2", None)) == ("2", None, 0.0)


def test_a_score_reply_that_cannot_be_read_is_refused():
    with pytest.raises(QueryError, match="malformed"):
        wire.read_scores(RecordDict({"other": ConfigRecord({"party": "4"})}))


def test_probe_replies_that_do_not_fit_lose_their_node_not_the_query():
    from qkt.flower.channel import read_probe_replies

    def reply(party, scores):
        return wire.scores_content(party, None if scores is None else np.array(scores, dtype=np.float32))

    replies = {1: reply("2", [0.5]), 2: reply("1", [0.3]), 3: reply("1", [0.9]), 4: reply("x", [0.1]), 5: reply("0", [0.1]),
               7: reply("0", None), 8: "did not answer within 5 s"}
    scores, node_of, own, strangers = read_probe_replies(replies, teachers=["1", "2", "3"])
    assert list(scores) == ["1", "2"] and node_of == {"1": 2, "2": 1} and own == {7}  # party order, first answer kept
    assert set(strangers) == {"node 3", "node 4", "node 5", "node 8"}
    assert "has answered already" in strangers["node 3"] and "party 'x'" in strangers["node 4"] and "party '0'" in strangers["node 5"]
    assert strangers["node 8"] == "did not answer within 5 s"


def test_what_a_peer_says_reaches_the_report_cut_short():
    """A reason or a party name of megabytes is no reason to log."""
    from qkt.flower.channel import read_probe_replies

    replies = {1: RecordDict({"scores": ConfigRecord({"party": "1", "seconds": "x" * 100_000})}),
               2: wire.scores_content("x" * 100_000, np.array([0.5], dtype=np.float32)),
               3: wire.refusal_content("1", "no" * 100_000)}
    scores, _, _, strangers = read_probe_replies(replies, teachers=["1"])
    assert all(len(reason) < 700 for reason in strangers.values()) and len(scores["1"][0]) < 700


def test_run_config_round_trips_through_toml(tmp_path):
    config = parse_config({"partition": {"num_parties": 7}, "methods": ["local", "qkt", "kd", "fedprox"],
                           "federated": {"local_epochs": 4}, "training": {"epochs": 10}})
    text = tomli_w.dumps(run_config(config, reply_timeout=30.0), multiline_strings=True)
    settings = read_settings(tomllib.loads(text), querier_settings(config, tmp_path))
    assert settings.config == config
    assert settings.methods == ["local", "qkt", "fedprox"] and settings.skipped == ["kd"]
    assert settings.rounds == 3 and settings.reply_timeout == 30.0 and settings.output_dir == tmp_path.resolve()


def test_a_party_receives_the_shared_world_and_none_of_the_queriers_own_settings(tmp_path):
    config = parse_config({"partition": {"num_parties": 5}, "methods": ["local", "qkt"],
                           "query": {"lam": 1.7, "trust": {"min_output_spread": 0.2}}})
    flower_config = run_config(config, reply_timeout=30.0)
    text = tomli_w.dumps(flower_config, multiline_strings=True)
    assert str(tmp_path) not in text and "output-dir" not in flower_config
    assert set(yaml.safe_load(flower_config["qkt-config"])) <= {"data", "partition", "scenario", "training", "federated"}
    party = read_settings(tomllib.loads(text))  # what a ClientApp reads
    assert party.config.partition == config.partition and party.config.query != config.query


def test_the_querier_reads_its_own_settings_from_its_file(tmp_path, monkeypatch):
    config = parse_config({"methods": ["local", "qkt"], "query": {"lam": 1.7}})
    path = tmp_path / "querier.yaml"
    path.write_text(yaml.safe_dump(querier_settings(config, tmp_path / "out")))
    monkeypatch.setenv("QKT_QUERIER_CONFIG", str(path))
    settings = read_settings(run_config(config), read_querier_file())
    assert settings.config == config and settings.output_dir == (tmp_path / "out").resolve()
    path.write_text("query: {}\nseed: 3\n")
    with pytest.raises(ConfigError, match="takes query, methods, output-dir"):
        read_querier_file()


@pytest.mark.parametrize(("run", "message"), [
    ({"qkt-config": "partition: [unclosed"}, "not valid YAML"),
    ({"qkt-config": "partition: {num_partys: 3}"}, "num_partys: unknown key"),
    ({"reply-timeout": 0.0}, "must be positive"),
    ({"qkt-config": "query: {lam: 2.0}"}, "holds query, which every party would receive"),
    ({"qkt-config": "methods: [qkt]\noutput: x"}, "holds methods, output"),
    ({"qkt-config": "partition: {num_parties: 4}", "min-supernodes": 5}, "'min-supernodes' is 5: the run has 4 parties"),
    ({"reply-timeout": "30s"}, "'reply-timeout' must be positive seconds, not '30s'"),
    ({"reply-timeout": float("inf")}, "'reply-timeout' must be positive seconds, not inf"),
    ({"reply-timeout": float("nan")}, "'reply-timeout' must be positive seconds, not nan"),
    ({"min-supernodes": "all"}, "'min-supernodes' must be a whole number, not 'all'"),
    ({"min-supernodes": 2.9}, "'min-supernodes' must be a whole number, not 2.9"),
    ({"threads": "many"}, "'threads' must be a whole number, not 'many'"),
    ({"threads": 10**9}, "'threads' must be 1..1024, not 1000000000"),
    ({"party-nodes": "1=5,1=6"}, "'party-nodes' binds party 1 twice"),
    ({"party-nodes": "42=5"}, r"'party-nodes' binds party 42; the run has parties 0..9"),
    ({"party-nodes": "0=5,1=5"}, r"'party-nodes' binds node\(s\) \[5\] to more than one party"),
    ({"party-nodes": "1:5"}, "'party-nodes' must read like"),
])
def test_bad_run_config_names_the_key(run, message):
    """Read where Flower hands the app its run config (``flwr run --run-config``), which ``qkt flower run-config`` does not check."""
    with pytest.raises(ConfigError, match=message):
        read_settings(run)


def test_integer_settings_written_on_a_command_line_are_read_as_integers():
    settings = read_settings({"min-supernodes": "3", "threads": "2", "reply-timeout": "30", "party-nodes": "1=5, 2=6"})
    assert (settings.min_supernodes, settings.threads, settings.reply_timeout, dict(settings.party_nodes)) == (3, 2, 30.0, {"1": 5, "2": 6})


def test_the_app_declares_every_key_its_run_config_reads():
    """Flower refuses a run config key the app does not declare: an undeclared one cannot be set in a deployment."""
    declared = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == {"qkt-config", "reply-timeout", "min-supernodes", "threads", "party-nodes"}
    assert read_settings(declared).party_nodes == {}


def test_a_querier_file_that_cannot_work_is_refused():
    with pytest.raises(ConfigError, match="held-out data"):
        read_settings({}, {"query": {"probe": {"kind": "self"}}})


def test_a_supernode_must_match_the_partition():
    config = parse_config({"partition": {"num_parties": 4}})
    assert partition_id({"partition-id": 3, "num-partitions": 4}, config) == 3
    with pytest.raises(ConfigError, match="num-partitions=5"):
        partition_id({"partition-id": 3, "num-partitions": 5}, config)
    with pytest.raises(ConfigError, match="partition-id"):
        partition_id({}, config)
    assert partition_id({"partition-id": "2", "num-partitions": "4"}, config) == 2
    with pytest.raises(ConfigError, match="this SuperNode's node config 'partition-id' must be a whole number, not 1.9"):
        partition_id({"partition-id": 1.9}, config)  # would play party 1
    with pytest.raises(ConfigError, match="'partition-id' must be a whole number, not 'one'"):
        partition_id({"partition-id": "one"}, config)


def test_a_flower_client_keeps_the_local_epoch_budget_over_its_rounds(tmp_path, monkeypatch):
    config = parse_config({"partition": {"num_parties": 4}, "training": {"epochs": 5}, "federated": {"local_epochs": 2}})
    settings, party = Settings(config, tmp_path, 30.0), load_party(config, 1)
    trained = []

    def recording_fit(model, data, epochs, *args, **kwargs):
        trained.append(epochs)
        return fit(model, data, epochs, *args, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)  # train_as_party trains through it
    state = blank_model(config, party, party.scenario.querier).state_dict()
    for server_round in range(1, settings.rounds + 1):
        model = train_round(settings, party, state, server_round, config.federated.local_epochs)
        assert any(not torch.equal(state[k], v) for k, v in model.state_dict().items())  # it trained from the global weights
        state = model.state_dict()
    assert settings.rounds == 3 and trained == [2, 2, 1]  # 5 epochs in all, as in-process FedAvg


@pytest.mark.parametrize(("argv", "says"), [
    (["run-config", "--parties", "0"], "partition.num_parties: Input should be greater than or equal to 2 (got 0)"),
    (["run-config", "--min-supernodes", "11"], "'min-supernodes' is 11: the run has 10 parties, 9 besides the querier"),
])
def test_a_run_config_that_cannot_work_is_refused(capsys, argv, says):
    assert main(["flower", *argv]) == 2
    assert says in capsys.readouterr().err


def test_a_partition_that_cannot_work_fails_before_flower_starts(tmp_path, capsys):
    assert main(["flower", "simulate", "--parties", "100", "--output", str(tmp_path / "out")]) == 2
    assert "use fewer parties or a larger alpha" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no SuperLink, no logs


def test_the_data_root_reaches_every_party_as_an_absolute_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run-config writes querier.yaml here
    assert main(["flower", "run-config", "--data-root", "data"]) == 0
    assert read_settings(tomllib.loads(capsys.readouterr().out)).config.data.root == str(tmp_path.resolve() / "data")


def test_cli_prints_a_run_config_flwr_accepts(tmp_path, capsys):
    querier = tmp_path / "querier.yaml"
    argv = ["run-config", "--parties", "5", "--output", str(tmp_path), "--min-supernodes", "4", "--querier-file", str(querier)]
    assert main(["flower", *argv]) == 0
    out, err = capsys.readouterr()
    settings = read_settings(tomllib.loads(out), read_querier_file(querier))
    assert settings.config.partition.num_parties == 5 and settings.min_supernodes == 4 and settings.output_dir == tmp_path.resolve()
    assert str(tmp_path) not in out and "QKT_QUERIER_CONFIG" in err


def test_qkt_core_never_imports_flower():
    import subprocess

    code = "import sys, qkt, qkt.cli, qkt.experiment; qkt.cli.build_parser(); assert 'flwr' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_flower_commands_say_how_to_install_flower(monkeypatch, capsys):
    import qkt.cli.flower

    monkeypatch.setattr(qkt.cli.flower.importlib.util, "find_spec", lambda name: None)
    assert main(["flower", "simulate"]) == 2
    assert 'pip install "qkt[flower]"' in capsys.readouterr().err


def test_a_failed_start_stops_what_it_had_started(tmp_path, monkeypatch):
    from qkt.flower.federation import LocalFederation

    started = []

    def start_then_time_out(self, timeout=60.0):
        started.append(self.spawn("superlink", ["sleep", "600"]))
        raise QKTError("the SuperLink did not listen within 60 s")

    monkeypatch.setattr(LocalFederation, "start", start_then_time_out)
    with pytest.raises(QKTError, match="did not listen"), LocalFederation(tmp_path):
        pass
    assert started[0].poll() is not None  # no SuperLink outlives a failed start


def test_a_flower_party_keeps_out_what_in_process_training_keeps_out_and_scores_itself_on_it():
    from qkt.experiment import load_scenario, training_shares
    from qkt.query.messages import Announcement
    from qkt.query.teacher import answer_probe

    config = parse_config({"partition": {"num_parties": 4, "alpha": 0.2, "holdout": 0.1}, "training": {"epochs": 1},
                           "query": {"probe": {"kind": "self"}}})
    dataset, scenario = load_scenario(config)
    shares, held = training_shares(config, dataset, scenario)
    teacher = next(k for k in range(4) if k != scenario.querier)
    party = load_party(config, teacher)
    assert len(party.training[1]) == len(shares[teacher]) and len(party.holdout[1]) == len(held[teacher])
    assert len(party.y) == len(scenario.parts[teacher])  # the whole share stays the party's data
    announcement = Announcement.from_config(scenario.query, dataset.num_classes, dataset.input_shape, config.query)
    scores = answer_probe(blank_model(config, party), announcement, party.holdout)
    assert scores.shape == (len(scenario.query),)
