"""A method that did not run says so: a failed query in `qkt run`'s table, results.md, results.json and chart, and in bench tables."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from qkt.bench import format_tables, summarize
from qkt.bench.output import format_csv, format_headline
from qkt.cli import main

# Class 6 has 4 training samples in 1,500: no teacher holds enough of it for the probe to find an expert.
RARE, CLASSES, FEATURES = 6, 7, 12


def test_a_query_that_finds_no_expert_is_named_as_failed_in_the_printed_table_and_results_md(tmp_path, capsys):
    tmp = tmp_path
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4, size=(CLASSES, FEATURES))
    y_train = np.concatenate([rng.integers(0, RARE, 1496), np.full(4, RARE)])
    y_test = rng.integers(0, CLASSES, 700)
    np.savez(tmp / "rare.npz", x_train=centres[y_train] + rng.normal(size=(len(y_train), FEATURES)), y_train=y_train,
             x_test=centres[y_test] + rng.normal(size=(len(y_test), FEATURES)), y_test=y_test)
    config = tmp / "config.toml"
    config.write_text(f'methods = ["local", "qkt"]\n[data]\nname = "npz"\npath = "{tmp / "rare.npz"}"\n'
                      "[partition]\nnum_parties = 4\nalpha = 0.5\n"
                      f"[scenario]\nquerier = 0\nquery = [{RARE}]\nmin_expert_samples = 1\n"
                      "[training]\narch = \"mlp\"\nepochs = 5\n")
    output = tmp / "out"
    assert main(["run", "--config", str(config), "--output", str(output), "--quiet"]) == 2  # a failed query is no success
    printed = capsys.readouterr()
    md = (output / "results.md").read_text()
    for text in (printed.out, md):
        row = next(line for line in text.splitlines() if line.startswith("| QKT |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1].startswith(f"failed — no expert found for class {RARE}: best teacher")
        assert cells[2:] == ["—"] * 7  # no figure that reads as the query's result
    summary = json.loads((output / "results.json").read_text())
    details = summary["methods"]["qkt"]["details"]
    assert details["failed"].startswith(f"no expert found for class {RARE}") and details["scored_as"] == "local"
    failed = summary["methods"]["qkt"]  # the announcement went out and every teacher answered: that cost is counted
    assert failed["bytes_sent"] > 0 and failed["bytes_received"] > 0 and failed["seconds"] > 0 and failed["teacher_seconds"] > 0
    assert (output / "per_class_accuracy.png").stat().st_size > 0


def _record(querier: int, qkt: dict, fedavg: dict | None = None) -> dict:
    def result(overall: float, details: dict | None = None) -> dict:
        return {"query_accuracy": overall / 2, "local_accuracy": overall, "overall_accuracy": overall, "forgetting": 0.0,
                "bytes_sent": 0, "bytes_received": 0, "seconds": 1.0, "teacher_seconds": 0.0, "details": details or {}}

    methods = {"local": result(0.5), "ensemble": result(0.6), "qkt": result(**qkt)}
    if fedavg is not None:
        methods["fedavg"] = fedavg
    return {"dataset": "digits", "scenario": "single", "seed": 0, "querier": querier, "query": [3], "false_expert": None,
            "methods": methods}


def test_bench_tables_count_failed_queries_and_say_they_score_as_local():
    records = [_record(0, {"overall": 0.9}),
               _record(1, {"overall": 0.5, "details": {"failed": "no expert found for class 3", "scored_as": "local"}})]
    summary = summarize(records)
    row = summary["digits"]["single"]["rows"]["qkt"]
    assert row["failed"] == 1 and row["queries"] == 2
    assert row["overall_accuracy"][0] == pytest.approx(0.7)  # the failed query counts as Local's 0.5
    tables = format_tables(summary)
    assert "| QKT (1 of 2 failed) |" in tables
    assert "QKT in 1 of 2. A failed query leaves the querier its own model, so the means above count it as Local" in tables
    assert "(1 of 2 failed, scored as Local)" in format_headline(summary)
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(format_csv(summary)))}
    assert {m: r["failed_queries"] for m, r in rows.items()} == {"local": "0", "ensemble": "0", "qkt": "1"}
    assert "no bytes and no seconds (what its probe cost before it failed is not recorded)" in tables  # records of an older qkt
    records[1]["methods"]["qkt"]["bytes_sent"] = 120  # today's records carry the failed exchange's cost
    assert "with the bytes and seconds its exchange cost before it stopped" in format_tables(summarize(records))


def test_bench_tables_show_a_method_that_cannot_run_as_n_a_with_its_reason_and_leave_it_out_of_the_gains():
    reason = "one global model needs one architecture; the parties use cnn, mlp, resnet"
    nan = float("nan")
    fedavg = {"query_accuracy": nan, "local_accuracy": nan, "overall_accuracy": nan, "forgetting": nan, "bytes_sent": 0,
              "bytes_received": 0, "seconds": 0.0, "teacher_seconds": 0.0, "details": {"not_applicable": reason}}
    summary = summarize([_record(0, {"overall": 0.9}, fedavg), _record(1, {"overall": 0.8}, fedavg)])
    s = summary["digits"]["single"]
    assert s["rows"]["fedavg"] == {"queries": 2, "not_applicable": reason}
    assert "fedavg" not in s["gain_over"] and s["best_collaborative"] == "ensemble"
    assert s["gain_over_collaborative_mean"] == pytest.approx(100 * (0.85 - 0.6))
    tables = format_tables(summary)
    assert f"| FedAvg | n/a — {reason} |" in tables and "nan" not in tables
    assert "collaborative methods that ran (Ensemble)" in tables
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(format_csv(summary)))}
    assert rows["fedavg"]["not_applicable"] == reason and rows["fedavg"]["overall_accuracy_mean"] == ""
