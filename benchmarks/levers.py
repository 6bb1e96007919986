"""What each lever against forgetting gives, against QKT and the oracle on the same queries: one table per data set.

    python benchmarks/levers.py docs/results/bench/levers-full-cifar10/bench.json

Reads a ``qkt bench`` run (or one joined by ``benchmarks/merge_runs.py``) holding Local,
QKT, the oracle and any of the levers (``qkt.methods.LEVERS``). Per method, over every
query: the mean query, local and overall accuracy; forgetting, over all queries and over
those asking for several classes; the share of the oracle's gain over Local recovered (of the means);
on how many queries its overall accuracy is above every collaborative method that ran;
the paired difference from QKT in overall accuracy (mean and bootstrap 95 % interval,
``benchmarks/paired.py``); and its learning seconds (synthesis and Phases 1 and 2: the
teachers' probe replies are cached after the first method of a query, so a query's wall
time is not comparable across methods).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from paired import interval, read_bench

from qkt.bench.statistics import queries_above
from qkt.methods import COLLABORATIVE, LEVERS, display

LEARNING = ("synthesis", "phase1", "phase2")


def table(records: list[dict], rng: np.random.Generator) -> list[str]:
    methods = [m for m in ("local", "qkt", *LEVERS, "oracle") if all(m in r["methods"] for r in records)]
    lacking = [m for m in ("local", "qkt", "oracle") if m not in methods]
    if lacking:
        raise SystemExit(f"error: {', '.join(lacking)} did not run on every query; the table measures the levers between Local "
                         "and the oracle, against QKT (qkt bench --methods local qkt LEVERS oracle)")

    # scenario by scenario, as paired.py groups them: the bootstrap draws the same resamples
    scenarios = list(dict.fromkeys(r["scenario"] for r in records))
    by_scenario = sorted(records, key=lambda r: scenarios.index(r["scenario"]))

    def mean(m: str, key: str) -> float:
        return float(np.mean([r["methods"][m][key] for r in records]))

    local, oracle = mean("local", "overall_accuracy"), mean("oracle", "overall_accuracy")
    lines = ["| method | query acc | local acc | overall acc | forgetting | forgetting, multi-class | recovered "
             "| above every collaborative | paired vs QKT (points) | learning s |", "|---|" + "---:|" * 9]
    for m in methods:
        reference = m in ("local", "oracle")
        share = "—" if reference or oracle == local else f"{100 * (mean(m, 'overall_accuracy') - local) / (oracle - local):.0f} %"
        above = queries_above(records, m, COLLABORATIVE)
        above_cell = f"{above[0]} of {above[1]}" if above[1] and not reference else "—"
        paired = ""
        if m in LEVERS:
            diff = np.array([100 * (r["methods"][m]["overall_accuracy"] - r["methods"]["qkt"]["overall_accuracy"]) for r in by_scenario])
            paired = f"{diff.mean():+.1f}"
            if len(diff) >= 2:  # a run still going may hold one query
                low, high = interval(diff, rng)
                paired += f" ({low:+.1f} to {high:+.1f})"
        learning = "—" if reference else f"{np.mean([sum(r['methods'][m]['details'].get('seconds_per_phase', {}).get(k, 0) for k in LEARNING) for r in records]):.1f}"
        several = [r["methods"][m]["forgetting"] for r in records if len(r["query"]) > 1]
        forgetting_multi = f"{100 * np.mean(several):+.1f}" if several else "—"
        lines.append(f"| {display(m)} | {mean(m, 'query_accuracy'):.3f} | {mean(m, 'local_accuracy'):.3f} | {mean(m, 'overall_accuracy'):.3f} | "
                     f"{100 * mean(m, 'forgetting'):+.1f} | {forgetting_multi} | {share} | {above_cell} | {paired} | {learning} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench_json", nargs="+", type=Path, help="bench.json files of qkt bench runs with QKT, Local, the oracle and levers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for path in args.bench_json:
        records = read_bench(path)["records"]
        for dataset in dict.fromkeys(r["dataset"] for r in records):
            chosen = [r for r in records if r["dataset"] == dataset]
            print(f"\n{dataset}: {len(chosen)} queries ({path})\n")
            print("\n".join(table(chosen, rng)))


if __name__ == "__main__":
    main()
