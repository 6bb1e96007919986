"""``qkt bench``: the quick profile on digits runs every method and writes complete tables; the reviewers' scenarios."""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import io
import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qkt import bench, experiment, partition
from qkt.bench import catalogue, runner
from qkt.cli import main
from qkt.config import QueryConfig
from qkt.data import load_dataset
from qkt.diagnostics import MIN_ORACLE_GAIN
from qkt.errors import QKTError
from qkt.methods import ABLATIONS, BASELINES, COLLABORATIVE, METHODS, QKT, REFERENCES, display

EVERY_METHOD = BASELINES + QKT + ABLATIONS + REFERENCES
WITHOUT_ABLATIONS = BASELINES + QKT + REFERENCES
ROOT = Path(__file__).resolve().parents[1]


def _benchmark_script(name: str):
    """``benchmarks/NAME.py`` as a module; its folder is on the path, as it is for ``python benchmarks/NAME.py``, for the scripts' shared helpers."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MERGE_RUNS = _benchmark_script("merge_runs")


def merge_runs(*args: object) -> SimpleNamespace:
    """``python benchmarks/merge_runs.py ARGS`` in this process (its imports cost seconds a run): exit code, stdout, stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = MERGE_RUNS.main([str(a) for a in args])
        except SystemExit as exc:  # what the script's exit would print and return
            code = exc.code if isinstance(exc.code, int) else 1
            if not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
    return SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


@pytest.fixture(scope="module")
def quick_digits(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--profile", "quick", "--dataset", "digits", "--output", str(output), "--quiet"]) == 0
    return output


def test_quick_profile_scores_every_method_in_every_scenario(quick_digits):
    state = json.loads((quick_digits / "bench.json").read_text())
    summary = state["summary"]["digits"]
    assert set(summary) == {"single", "multi"}
    for name, scenario in summary.items():
        assert list(scenario["rows"]) == (EVERY_METHOD if name == "single" else WITHOUT_ABLATIONS), name
        assert scenario["queries"] == 2
        for method, row in scenario["rows"].items():
            for metric in bench.METRICS:
                assert math.isfinite(row[metric][0]), (name, method, metric)
        assert set(scenario["gain_over"]) == set(scenario["rows"]) - {"qkt"}
    assert all(len(r["query"]) == (1 if r["scenario"] == "single" else 3) for r in state["records"])
    assert state["wall_seconds"] > 0 and state["cpu_seconds"] > 0


def test_quick_profile_writes_complete_tables_csv_and_chart(quick_digits):
    table = (quick_digits / "bench.md").read_text()
    for method in EVERY_METHOD:
        assert f"| {display(method)} |" in table or f"| {display(method)} (" in table  # a federated row names its budget
    assert "## Headline" in table and "nan" not in table
    rows = list(csv.DictReader((quick_digits / "bench.csv").open()))
    assert len(rows) == len(EVERY_METHOD) + len(WITHOUT_ABLATIONS)
    assert all(r["overall_accuracy_mean"] for r in rows)
    assert "| digits | single-class |" in (quick_digits / "headline.md").read_text()
    assert (quick_digits / "bench.png").stat().st_size > 10_000


def test_qkt_beats_local_and_learns_the_query_on_digits(quick_digits):
    rows = json.loads((quick_digits / "bench.json").read_text())["summary"]["digits"]["single"]["rows"]
    assert rows["qkt"]["query_accuracy"][0] > 0.8
    assert rows["local"]["query_accuracy"][0] == 0.0
    assert rows["qkt"]["overall_accuracy"][0] > rows["local"]["overall_accuracy"][0] + 0.15


def test_every_table_says_how_much_of_the_oracle_gain_qkt_recovers_and_how_it_found_its_experts(quick_digits):
    state = json.loads((quick_digits / "bench.json").read_text())
    for name, scenario in state["summary"]["digits"].items():
        share, found = scenario["recovered_share"], scenario["diagnostics"]
        assert share["queries"] == 2 and share["of_means"] > 0.5, name
        assert found["queries"] == 2 and found["after_checks_precision"] > 0.5 and 0 < found["expert_query_mass"] < 1, name
    for record in state["records"]:
        assert record["methods"]["oracle"]["details"]["experts"] == record["methods"]["qkt"]["details"]["experts"]
    table = (quick_digits / "bench.md").read_text()
    assert table.count("QKT recovers") == 2 and table.count("Expert discovery against the parties holding Q") == 2
    assert "oracle's gain recovered" in (quick_digits / "headline.md").read_text()


def test_tables_count_the_queries_where_qkt_is_above_every_collaborative_method(quick_digits):
    state = json.loads((quick_digits / "bench.json").read_text())
    for name, scenario in state["summary"]["digits"].items():
        records = [r["methods"] for r in state["records"] if r["scenario"] == name]
        above = sum(all(m["qkt"]["overall_accuracy"] > m[c]["overall_accuracy"] for c in COLLABORATIVE if c in m)
                    for m in records)
        assert scenario["queries_above_every_collaborative"] == [above, len(records)], name
        assert f"above every one of them on {above} of {len(records)} queries" in (quick_digits / "bench.md").read_text()


def test_resume_keeps_finished_queries(quick_digits, monkeypatch):
    before = json.loads((quick_digits / "bench.json").read_text())["records"]
    monkeypatch.setattr(experiment, "run_methods", lambda *a, **k: pytest.fail("a finished query ran again"))
    state = bench.run_bench("quick", ["digits"], quick_digits, resume=True, progress=False)
    assert state["records"] == before


def test_a_long_profile_runs_in_parts_one_seed_at_a_time(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(runner, "run_scenario", lambda dataset, scenario, seed, *a, **k: ran.append(seed))
    bench.run_bench("full", ["digits"], tmp_path, seeds=[2], progress=False)
    assert set(ran) == {2}
    with pytest.raises(QKTError, match="the full profile has seeds 0 to 2; got \\[3\\]"):
        bench.run_bench("full", ["digits"], tmp_path, seeds=[3], progress=False)


def test_resume_refuses_a_run_of_other_settings_and_names_them(quick_digits, tmp_path, monkeypatch):
    """Resuming after the profile's settings changed would mix two methods under one name."""
    state = json.loads((quick_digits / "bench.json").read_text())
    assert state["settings"]["digits"] == bench.PROFILES["quick"].config("digits")
    monkeypatch.setattr(experiment, "run_methods", lambda *a, **k: pytest.fail("a query ran"))
    state["settings"]["digits"]["training"]["epochs"] = 5
    (tmp_path / "bench.json").write_text(json.dumps(state))
    with pytest.raises(QKTError, match="other settings than the profile's now \\(training.epochs 5 -> 30\\)"):
        bench.run_bench("quick", ["digits"], tmp_path, resume=True, progress=False)
    del state["settings"]
    (tmp_path / "bench.json").write_text(json.dumps(state))
    with pytest.raises(QKTError, match="does not record the settings"):
        bench.run_bench("quick", ["digits"], tmp_path, resume=True, progress=False)


def test_chosen_methods_run_alone_and_score_as_among_every_method(quick_digits, tmp_path):
    shutil.copytree(quick_digits / "checkpoints", tmp_path / "checkpoints")  # the same parties, not trained again
    chosen = ["qkt", "qkt_whole_first_epoch"]
    assert main(["bench", "--profile", "quick", "--dataset", "digits", "--scenario", "single", "--methods", *chosen,
                 "--output", str(tmp_path), "--quiet"]) == 0
    state = json.loads((tmp_path / "bench.json").read_text())
    assert list(state["summary"]["digits"]["single"]["rows"]) == chosen
    every = [r for r in json.loads((quick_digits / "bench.json").read_text())["records"] if r["scenario"] == "single"]
    for alone, among in zip(state["records"], every, strict=True):
        for method in chosen:
            assert alone["methods"][method]["overall_accuracy"] == among["methods"][method]["overall_accuracy"], method
    table = (tmp_path / "bench.md").read_text()
    assert f"| {display('qkt_whole_first_epoch')} |" in table and "collaborative methods (" not in table
    assert "No collaborative method ran" in (tmp_path / "headline.md").read_text()


def test_baselines_run_without_qkt_and_merge_with_a_run_of_it(quick_digits, tmp_path):
    """A change to QKT's settings re-runs QKT alone; the baselines' run joins it query by query."""
    shutil.copytree(quick_digits / "checkpoints", tmp_path / "baselines" / "checkpoints")
    assert main(["bench", "--profile", "quick", "--dataset", "digits", "--methods", "local", "fedavg",
                 "--output", str(tmp_path / "baselines"), "--quiet"]) == 0
    rows = json.loads((tmp_path / "baselines" / "bench.json").read_text())["summary"]["digits"]["single"]["rows"]
    assert list(rows) == ["local", "fedavg"] and "QKT did not run" in (tmp_path / "baselines" / "bench.md").read_text()
    merge = merge_runs(quick_digits / "bench.json", f"{tmp_path / 'baselines' / 'bench.json'}:fedavg", "--output", tmp_path / "merged")
    assert merge.returncode == 0, merge.stderr
    assert "scored differently" not in merge.stdout  # the same parties: Local agrees on every query
    merged = json.loads((tmp_path / "merged" / "bench.json").read_text())
    every = {(r["scenario"], r["querier"]): r for r in json.loads((quick_digits / "bench.json").read_text())["records"]}
    for record in merged["records"]:
        assert record["methods"]["fedavg"]["overall_accuracy"] == every[record["scenario"], record["querier"]]["methods"]["fedavg"]["overall_accuracy"]
    assert merged["merged_from"][1]["methods"] == ["fedavg"]
    # runs side by side, each on part of the queries (one per scenario here, per seed in a long profile), join as one
    whole = json.loads((tmp_path / "baselines" / "bench.json").read_text())
    parts = []
    for scenario in ("single", "multi"):
        part = tmp_path / f"baselines-{scenario}.json"
        part.write_text(json.dumps({**whole, "records": [r for r in whole["records"] if r["scenario"] == scenario]}))
        parts.append(f"{part}:fedavg")

    def merge_parts(*specs):
        return merge_runs(quick_digits / "bench.json", *specs, "--output", tmp_path / "joined")

    assert merge_parts(*parts).returncode == 0
    joined = json.loads((tmp_path / "joined" / "bench.json").read_text())
    assert [r["methods"]["fedavg"] for r in joined["records"]] == [r["methods"]["fedavg"] for r in merged["records"]]
    # a merged run merged again names the runs its methods came from, not the merged file
    assert merge_parts(f"{tmp_path / 'merged' / 'bench.json'}:fedavg").returncode == 0
    again = json.loads((tmp_path / "joined" / "bench.json").read_text())["merged_from"]
    assert [(o["file"], o["methods"]) for o in again[1:]] == [(f"{tmp_path / 'baselines' / 'bench.json'}", ["fedavg"])]
    missing, twice = merge_parts(parts[0]), merge_parts(*parts, parts[0])
    assert missing.returncode and "gets fedavg from 0 runs" in missing.stderr
    assert twice.returncode and "gets fedavg from 2 runs" in twice.stderr
    # a run's methods taken from some of its seeds only (the others re-run elsewhere)
    assert merge_parts(f"{tmp_path / 'baselines' / 'bench.json'}:fedavg@0").returncode == 0
    assert [r["methods"]["fedavg"] for r in json.loads((tmp_path / "joined" / "bench.json").read_text())["records"]] == \
        [r["methods"]["fedavg"] for r in merged["records"]]
    other_seed = merge_parts(f"{tmp_path / 'baselines' / 'bench.json'}:fedavg@1")
    assert other_seed.returncode and "holds none of the first run's queries" in other_seed.stderr
    assert merge_parts(f"{tmp_path / 'baselines' / 'bench.json'}:fedavg@one").returncode == 2


def test_a_qkt_rerun_without_the_oracle_gets_its_share_of_the_merged_oracles_gain(quick_digits, tmp_path):
    every = json.loads((quick_digits / "bench.json").read_text())
    rerun = copy.deepcopy(every)
    for record in rerun["records"]:
        del record["methods"]["oracle"]
        qkt = record["methods"]["qkt"]
        qkt["details"].pop("recovered_share", None)
        qkt["overall_accuracy"] += 0.01
    (tmp_path / "rerun.json").write_text(json.dumps(rerun))
    assert merge_runs(quick_digits / "bench.json", f"{tmp_path / 'rerun.json'}:qkt", "--output", tmp_path / "merged").returncode == 0
    merged = json.loads((tmp_path / "merged" / "bench.json").read_text())
    for record in merged["records"]:
        m = record["methods"]
        gain = m["oracle"]["overall_accuracy"] - m["local"]["overall_accuracy"]
        expected = (m["qkt"]["overall_accuracy"] - m["local"]["overall_accuracy"]) / gain if gain >= MIN_ORACLE_GAIN else None
        assert m["qkt"]["details"]["recovered_share"] == pytest.approx(expected)
    assert "median over" in (tmp_path / "merged" / "bench.md").read_text()


def test_runs_of_other_queries_join_whole(quick_digits, tmp_path):
    """A long profile's seeds, each run in its own folder from a copy of the first, join as one run."""
    every = json.loads((quick_digits / "bench.json").read_text())
    halves = {}
    for scenario in ("single", "multi"):  # a scenario stands for a seed here
        halves[scenario] = tmp_path / f"{scenario}.json"
        halves[scenario].write_text(json.dumps({**every, "records": [r for r in every["records"] if r["scenario"] == scenario]}))

    def join(first, *others):
        return merge_runs(first, *(a for other in others for a in ("--queries-from", other)), "--output", tmp_path / "joined")

    assert join(halves["single"], halves["multi"]).returncode == 0
    joined = json.loads((tmp_path / "joined" / "bench.json").read_text())
    assert joined["records"] == every["records"] and joined["summary"] == every["summary"]
    assert [o["file"] for o in joined["merged_from"]] == [str(halves["single"]), str(halves["multi"])]
    assert join(halves["single"], quick_digits / "bench.json").returncode == 0  # the copied queries agree and are kept once
    assert json.loads((tmp_path / "joined" / "bench.json").read_text())["records"] == every["records"]
    again = join(quick_digits / "bench.json", halves["single"])
    assert again.returncode and "holds no query that the runs before it lack" in again.stderr
    every["records"][0]["methods"]["qkt"]["overall_accuracy"] += 0.1
    (tmp_path / "other.json").write_text(json.dumps(every))
    clash = join(halves["single"], tmp_path / "other.json")
    assert clash.returncode and "with other results than the run before it" in clash.stderr


def test_whole_dataset_drops_the_image_subsets_and_never_resumes_a_subset_run(quick_digits, tmp_path):
    full = bench.PROFILES["full"]
    assert "max_train" not in full.at_full_size().config("cifar10")["data"]
    assert full.config("cifar10")["data"]["max_train"] == 6000  # the profile itself is untouched
    config = catalogue.run_config(full.at_full_size(), SimpleNamespace(name="cifar10", num_classes=10), bench.SCENARIOS["single"], 0, None)
    assert config.data.max_train is None and config.data.max_test is None
    shutil.copy(quick_digits / "bench.json", tmp_path / "bench.json")
    with pytest.raises(QKTError, match="resume it without --whole-dataset"):
        bench.run_bench("quick", ["digits"], tmp_path, resume=True, progress=False, whole_dataset=True)
    state = json.loads((quick_digits / "bench.json").read_text())
    assert (quick_digits / "bench.md").read_text().startswith("qkt bench --profile quick (digits)")
    bench.write_outputs({**state, "whole_dataset": True}, tmp_path)
    assert (tmp_path / "bench.md").read_text().startswith("qkt bench --profile quick --whole-dataset (digits)")


def test_unknown_profile_and_scenario_are_user_errors(tmp_path):
    with pytest.raises(QKTError, match="unknown profile"):
        bench.run_bench("huge", ["digits"], tmp_path)
    with pytest.raises(QKTError, match="unknown scenario"):
        bench.run_bench("quick", ["digits"], tmp_path, scenarios=["nope"])


def test_a_data_set_that_is_missing_stops_the_bench_before_any_query(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_scenario", lambda *a, **k: pytest.fail("a query ran before the data sets were checked"))
    with pytest.raises(QKTError, match="cifar10: no data file"):
        bench.run_bench("quick", ["digits", "cifar10"], tmp_path / "out", data_root=tmp_path, progress=False)
    with pytest.raises(QKTError, match="use `qkt run` with data.name: npz"):
        bench.run_bench("quick", ["npz"], tmp_path / "out", progress=False)


def test_a_scenario_named_twice_runs_once(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(runner, "run_scenario", lambda dataset, scenario, seed, *a, **k: ran.append((dataset.name, scenario.name, seed)))
    bench.run_bench("quick", ["digits", "digits"], tmp_path, scenarios=["single", "single"], progress=False)
    assert ran == [("digits", "single", 0)]


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_every_ablation_is_valid_settings_on_each_profile(dataset):
    """An ablation changes one thing of the profile's QKT; it must not make a combination the config would refuse."""
    query = QueryConfig.model_validate(bench.PROFILES["full"].config(dataset).get("query", {}))
    for method in ABLATIONS:
        config, variant = experiment.method_settings(query, method)
        spec = METHODS[method]
        assert {k: getattr(config, k) for k in spec.settings} == spec.settings and not config.light
        assert {k: getattr(variant, k) for k in spec.variant} == spec.variant
    assert experiment.method_settings(query, "qkt_light")[0].light


def test_multi_class_query_size_scales_with_the_label_space():
    assert [bench.multi_query_size(c) for c in (8, 10, 100)] == [2, 3, 30]


def _queries(scenario_name: str, seed: int = 0):
    data = load_dataset("digits")
    profile = bench.PROFILES["full"]
    scenario = bench.SCENARIOS[scenario_name]
    config = catalogue.run_config(profile, data, scenario, seed, None)
    parts = experiment.make_partition(config, data.y_train)
    counts = partition.class_counts(data.y_train, parts, data.num_classes)
    return catalogue.querier_queries(config, data, parts, scenario, None), counts


def test_one_teacher_scenario_gives_several_query_classes_to_one_expert():
    pairs, counts = _queries("one-teacher-many-classes")
    assert pairs
    for q, query in pairs:
        assert len(query) >= 2
        experts = [k for k in range(len(counts)) if k != q and (counts[k, list(query)] >= 10).all()]
        assert len(experts) == 1


def test_many_teachers_scenario_gives_each_query_class_several_experts():
    pairs, counts = _queries("many-teachers-one-class")
    assert pairs
    for q, _ in pairs:
        lacking = np.flatnonzero(counts[q] < 10)
        assert all((np.delete(counts[:, c], q) >= 10).sum() >= 3 for c in lacking)


def test_the_planted_liar_table_counts_the_queries_that_kept_the_liar_out_and_what_it_cost():
    def result(local_accuracy, experts=None):
        details = {"experts": experts} if experts is not None else {}
        return {"query_accuracy": 0.5, "local_accuracy": local_accuracy, "overall_accuracy": 0.6, "forgetting": 0.0, "details": details}

    def record(scenario, querier, qkt, local=0.9):
        return {"scenario": scenario, "seed": 0, "querier": querier, "false_expert": 7, "methods": {"local": result(local), "qkt": qkt}}

    records = [record("single", 0, result(0.90)), record("single", 1, result(0.80)),
               # query 0: the liar is distrusted; query 1: it is kept as an expert and costs 10 and 20 points
               record("liar-constant-alone", 0, result(0.90, {"3": []})), record("liar-constant-alone", 1, result(0.70, {"3": ["7"]})),
               record("liar-constant-beside", 0, result(0.90, {"3": ["2"]})), record("liar-constant-beside", 1, result(0.60, {"3": ["2", "7"]}))]
    table = _benchmark_script("liar_costs").kind_table(records, "qkt")
    assert "| constant | alone | 2 | 1 of 2 | 0.500 | 0.800 | 0.600 | +0.000 | +10.0, +20.0 |" in table
    assert "| constant | beside the honest ones | 2 | 1 of 2 | 0.500 | 0.750 | 0.600 | +0.000 | +10.0, +20.0 |" in table
    assert "noise-only" not in table


def test_a_discovery_rerun_replaces_only_the_rows_it_measured_and_is_named_in_the_records():
    def run(command, queries, accuracy):
        return {"command": command, "machine": "m", "finished": "f", "wall_seconds": 1.0, "cpu_seconds": 1.0, "queries": queries, "accuracy": accuracy}

    earlier = run("first", [{"dataset": "cifar10", "probe": "statistics", "v": "old"}, {"dataset": "cifar10", "probe": "self", "v": "old"},
                            {"dataset": "digits", "probe": "statistics", "v": "old"}],
                  [{"dataset": "digits", "v": "old"}, {"dataset": "cifar10", "v": "old"}])
    later = run("rerun", [{"dataset": "cifar10", "probe": "statistics", "v": "new"}], [{"dataset": "cifar10", "v": "new"}])
    joined = _benchmark_script("discovery").join(earlier, later)
    assert [(r["dataset"], r["probe"], r["v"]) for r in joined["queries"]] == [
        ("digits", "statistics", "old"), ("cifar10", "statistics", "new"), ("cifar10", "self", "old")]
    assert [(r["dataset"], r["v"]) for r in joined["accuracy"]] == [("digits", "old"), ("cifar10", "new")]
    assert joined["command"] == "first" and [r["command"] for r in joined["reruns"]] == ["rerun"]


@pytest.mark.parametrize("content", ["", "{not json", "[]", "{}", '{"records": [{"seed": 0}], "wall_seconds": 1, "cpu_seconds": 1}'],
                         ids=["empty", "not-json", "list", "no-records", "record-without-keys"])
def test_resume_on_a_file_that_is_no_bench_run_is_one_line(tmp_path, capsys, content):
    (tmp_path / "bench.json").write_text(content)
    assert main(["bench", "--profile", "quick", "--dataset", "digits", "--resume", "--output", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bench.json" in err and "choose another --output, or remove it to start afresh" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("meta", ['{"rounds": 5, "seconds"', '{"rounds": 5}', '{"rounds": "5", "seconds": 1.0, "bytes_sent": 1, '
                                  '"bytes_received": 1}'], ids=["cut-short", "missing-costs", "string-rounds"])
def test_a_global_model_whose_costs_file_is_corrupt_is_retrained_with_a_warning(tmp_path, monkeypatch, meta):
    """As a corrupt checkpoint is: a costs file that cannot be read must not stop every later bench into the folder."""
    from qkt.baselines.fedavg import FederatedResult
    from qkt.config import parse_config
    from qkt.models import build_model

    config = parse_config({"data": {"name": "digits"}, "partition": {"num_parties": 3}, "training": {"arch": "mlp", "epochs": 1}})
    dataset = load_dataset("digits")
    trained = []

    def train_global(method, config, input_shape, num_classes, *rest):
        trained.append(method)
        return FederatedResult(build_model("mlp", input_shape, num_classes), 5, 1.5, 10, 20)

    monkeypatch.setattr(runner, "train_global", train_global)
    parts = [np.arange(0, 100), np.arange(100, 200), np.arange(200, 300)]
    tensors = dataset.normalized()[:2]
    first = runner.global_model("fedavg", config, dataset, tensors, parts, tmp_path, False)
    assert runner.global_model("fedavg", config, dataset, tensors, parts, tmp_path, False).seconds == first.seconds == 1.5
    assert trained == ["fedavg"]
    (costs,) = tmp_path.glob("global-fedavg-*.json")
    costs.write_text(meta)
    with pytest.warns(UserWarning, match="cannot be read .*; its global model is retrained"):
        again = runner.global_model("fedavg", config, dataset, tensors, parts, tmp_path, False)
    assert trained == ["fedavg", "fedavg"] and again.rounds == 5 and json.loads(costs.read_text())["rounds"] == 5


def _first_method(state: dict) -> dict:
    return next(iter(state["records"][0]["methods"].values()))


@pytest.mark.parametrize(("edit", "says"), [
    (lambda s: _first_method(s).pop("details"), r"records\.0\.methods\.\w+\.details: Field required"),
    (lambda s: _first_method(s).update(bytes_sent=None), r"records\.0\.methods\.\w+\.bytes_sent: Input should be a valid integer"),
    (lambda s: s.update(settings="x"), "settings: Input should be a valid dictionary"),
    (lambda s: s["records"][0].update(seed="0"), "records.0.seed: Input should be a valid integer"),
    (lambda s: s["records"].append(s["records"][0]), r"records the query of querier \d+ \(digits/single/0\) twice"),
], ids=["no-details", "null-bytes", "settings-string", "seed-string", "query-twice"])
def test_resume_refuses_a_hand_edited_bench_json_before_any_query(quick_digits, tmp_path, monkeypatch, edit, says):
    """Refused before any query runs: read later, each edit would fail writing the tables after the queries still to do, losing them."""
    state = json.loads((quick_digits / "bench.json").read_text())
    edit(state)
    (tmp_path / "bench.json").write_text(json.dumps(state))
    monkeypatch.setattr(experiment, "run_methods", lambda *a, **k: pytest.fail("a query ran"))
    with pytest.raises(QKTError, match=f"bench.json (is not a qkt bench run's bench.json: )?.*{says}"):
        bench.run_bench("quick", ["digits"], tmp_path, resume=True, progress=False)


def test_resume_refuses_methods_the_kept_queries_did_not_run(quick_digits, tmp_path, monkeypatch):
    """They would run on the queries not yet done only, and the tables would compare them on other queries than QKT."""
    shutil.copy(quick_digits / "bench.json", tmp_path / "bench.json")
    monkeypatch.setattr(experiment, "run_methods", lambda *a, **k: pytest.fail("a query ran"))
    with pytest.raises(QKTError, match="ran local, fedavg, .*; this run asks for local, qkt, which --resume would run only on the "
                                       "queries not yet done"):
        bench.run_bench("quick", ["digits"], tmp_path, resume=True, progress=False, methods=["local", "qkt"])


def test_a_bench_with_no_eligible_query_fails_and_leaves_the_folder_as_it_was(quick_digits, tmp_path, capsys):
    """A user who pointed a new scenario at a finished run's folder without --resume keeps that run."""
    names = ("bench.json", "bench.md", "headline.md", "bench.csv", "bench.png")
    for name in names:
        shutil.copy(quick_digits / name, tmp_path / name)
    # ten query classes of ten: no party lacks them all while others hold them
    assert main(["bench", "--profile", "quick", "--dataset", "digits", "--scenario", "multi-10", "--output", str(tmp_path),
                 "--quiet"]) == 2
    assert f"no query of multi-10 is eligible on digits (no party lacks such a query while others hold it): nothing written to {tmp_path}" \
        in capsys.readouterr().err
    assert all((tmp_path / name).read_bytes() == (quick_digits / name).read_bytes() for name in names)
    assert main(["bench", "--profile", "quick", "--dataset", "digits", "--scenario", "multi-10", "--output", str(tmp_path / "new"),
                 "--quiet"]) == 2
    assert not (tmp_path / "new" / "bench.json").exists()


def test_unknown_methods_and_a_missing_public_pool_stop_the_bench_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "train_parties", lambda *a, **k: pytest.fail("parties trained"))
    with pytest.raises(QKTError, match=r"unknown method\(s\) \['qkt_gated_inversed'\] in --methods"):
        bench.run_bench("quick", ["digits"], tmp_path, methods=["local", "qkt_gated_inversed"], progress=False)
    (tmp_path / "cifar10").mkdir()  # cifar10's data, but not cifar100's, its public pool
    with pytest.raises(QKTError, match="cifar100 is cifar10's public pool, which qkt_public_pool draw from: cifar100: no data file"):
        bench.run_bench("quick", ["cifar10"], tmp_path / "out", data_root=tmp_path, methods=["local", "qkt_public_pool"],
                        progress=False)


def test_benchmark_scripts_refuse_what_is_no_bench_run_in_one_line(tmp_path, quick_digits, monkeypatch):
    (tmp_path / "broken.json").write_text("{not json")
    result = merge_runs(tmp_path / "broken.json", f"{quick_digits / 'bench.json'}:qkt", "--output", tmp_path / "m")
    assert result.returncode == 1 and "broken.json cannot be read as a qkt bench run" in result.stderr
    (tmp_path / "file").write_text("")
    result = merge_runs(quick_digits / "bench.json", f"{quick_digits / 'bench.json'}:qkt", "--output", tmp_path / "file")
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr
    monkeypatch.setattr(sys, "argv", ["liar_costs.py", str(quick_digits / "bench.json"), "--methods", "qkt_gated", "--by-kind"])
    with pytest.raises(SystemExit, match="the run holds no method qkt_gated; it holds local"):
        _benchmark_script("liar_costs").main()
    with pytest.raises(SystemExit, match="oracle did not run on every query"):
        _benchmark_script("levers").table([{**r, "methods": {k: v for k, v in r["methods"].items() if k != "oracle"}}
                                           for r in json.loads((quick_digits / "bench.json").read_text())["records"]],
                                          np.random.default_rng(0))


def test_liar_costs_tabulates_each_data_set_of_a_run_apart(tmp_path, capsys, monkeypatch):
    """Records of two data sets share scenario, seed and querier: costed together, one would stand for the other."""
    def record(dataset, scenario, local):
        methods = {m: {"query_accuracy": 0.5, "local_accuracy": local, "overall_accuracy": 0.5, "forgetting": 0.0,
                      "bytes_sent": 0, "bytes_received": 0, "seconds": 1.0, "details": {}}
                   for m in ("local", "qkt")}
        return {"dataset": dataset, "scenario": scenario, "seed": 0, "querier": 1, "query": [3], "false_expert": 2, "methods": methods}
    records = [record(d, s, local) for d, drop in (("digits", 0.0), ("bloodmnist", 0.2))
               for s, local in (("single", 0.9), ("liar-constant-alone", 0.9 - drop), ("liar-constant-beside", 0.9 - drop))]
    (tmp_path / "bench.json").write_text(json.dumps({"records": records, "wall_seconds": 1, "cpu_seconds": 1}))
    monkeypatch.setattr(sys, "argv", ["liar_costs.py", str(tmp_path / "bench.json"), "--liar", "constant"])
    _benchmark_script("liar_costs").main()
    digits, blood = capsys.readouterr().out.split("bloodmnist:")
    assert "| QKT | the liar beside the honest ones | 0.500 | 0.900 | 0.500 | 0.0, 0.0 | 0 of 1 |" in digits
    assert "| QKT | the liar beside the honest ones | 0.500 | 0.700 | 0.500 | 20.0, 20.0 | 1 of 1 |" in blood


def test_resume_adds_a_seed_with_other_methods_and_leaves_the_kept_seed_as_it_is(quick_digits, tmp_path, monkeypatch):
    state = json.loads((quick_digits / "bench.json").read_text())
    (tmp_path / "bench.json").write_text(json.dumps(state))
    ran = []
    monkeypatch.setattr(runner, "run_scenario", lambda dataset, scenario, seed, *a, **k: ran.append(seed))
    bench.run_bench("full", ["digits"], tmp_path, resume=True, progress=False, methods=["local", "qkt"], seeds=[1])
    assert set(ran) == {1}
