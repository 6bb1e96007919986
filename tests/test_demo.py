"""`qkt demo` end to end, as a user sees it: a table, a results file and a chart, and a query that works."""

from __future__ import annotations

import json

import pytest

from qkt.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo")
    return output, main(["demo", "--output", str(output), "--quiet"])


def test_demo_prints_the_table(demo, capsys):
    output, code = demo
    assert code == 0
    summary = json.loads((output / "results.json").read_text())
    printed = (output / "results.md").read_text()
    for name in ("Local", "Ensemble", "KD (all teachers)", "QKT", "QKT Light"):
        assert f"| {name} |" in printed
    assert "query acc" in printed and "experts found" in printed
    assert summary["scenario"]["query"] and summary["reports"]["qkt"]["experts"]


def test_demo_query_learns_the_missing_class_without_forgetting(demo):
    output, _ = demo
    methods = json.loads((output / "results.json").read_text())["methods"]
    assert methods["local"]["query_accuracy"] <= 0.05
    assert methods["qkt"]["query_accuracy"] >= 0.70
    assert methods["qkt"]["forgetting"] <= 0.03
    assert methods["kd"]["query_accuracy"] < methods["qkt"]["query_accuracy"]
    for entry in methods.values():
        assert {"query_accuracy", "local_accuracy", "overall_accuracy", "forgetting", "bytes_sent", "bytes_received", "seconds"} <= entry.keys()


def test_demo_chart_is_a_png(demo):
    output, _ = demo
    assert (output / "per_class_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
