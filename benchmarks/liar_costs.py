"""What a planted liar costs each method, query by query, from a ``qkt bench`` run of its scenarios.

    python benchmarks/liar_costs.py docs/results/bench/liars-full-digits/bench.json --liar noise-only \\
        --methods qkt qkt_gated qkt_gated_budget
    python benchmarks/liar_costs.py docs/results/bench/liars-digits/bench.json --by-kind

The run must hold, for the same queries, the single-class scenario and the liar's
``liar-<kind>-alone`` and ``liar-<kind>-beside`` scenarios (``qkt bench --scenario single
--scenario liar-<kind>-alone --scenario liar-<kind>-beside``). A method's *cost* on a query,
in points of the querier's local accuracy: alone, against its model before the query
(Local); beside the honest teachers, against the same method with the honest teachers only
(the single-class scenario). A query the liar makes fail leaves the querier its own model
and costs nothing. Prints a markdown table: per method and teachers, the mean accuracies,
the mean and worst cost and how many queries cost more than ``--bound`` points.

With ``--by-kind``, one table per method over every liar kind the run holds: in how many
queries the liar was kept out (distrusted or never an expert), the mean accuracies and
forgetting, and the mean and worst cost; then the same queries with the honest teachers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from paired import read_bench

from qkt.bench.liars import KINDS
from qkt.methods import METHODS

TEACHERS = {"single": "honest only", "alone": "the liar alone", "beside": "the liar beside the honest ones"}


ACCURACIES = ("query_accuracy", "local_accuracy", "overall_accuracy")


def by_query(records: list[dict]) -> dict[tuple, dict]:
    """Each record's methods under (scenario, seed, querier)."""
    return {(r["scenario"], r["seed"], r["querier"]): r["methods"] for r in records}


def costs(runs: dict, liar: str, place: str, method: str, queries: list[tuple]) -> np.ndarray:
    """Points of local accuracy the liar costs ``method`` on each query: alone against Local, beside against ``method``
    with the honest teachers only (the single-class scenario)."""
    against, scenario = ("local", f"liar-{liar}-alone") if place == "alone" else (method, "single")
    before = np.array([runs[(scenario, s, q)][against]["local_accuracy"] for s, q in queries])
    return 100 * (before - np.array([runs[(f"liar-{liar}-{place}", s, q)][method]["local_accuracy"] for s, q in queries]))


def mean_accuracies(rows: list[dict]) -> str:
    return " | ".join(f"{np.mean([r[k] for r in rows]):.3f}" for k in ACCURACIES)


def cost_table(records: list[dict], liar: str, methods: list[str], bound: float) -> str:
    scenarios = {"single": "single", "alone": f"liar-{liar}-alone", "beside": f"liar-{liar}-beside"}
    runs = by_query(records)
    queries = sorted({(seed, q) for scenario, seed, q in runs if scenario == scenarios["alone"]})
    missing = [(s, q) for s, q in queries for scenario in scenarios.values() if (scenario, s, q) not in runs]
    if not queries or missing:
        raise SystemExit(f"the run lacks the liar '{liar}' or its single-class queries: {missing[:3] or 'no query'}")
    lines = [f"| method | teachers | query acc | local acc | overall acc | cost: mean, worst | queries costing > {bound:g} points |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for method in methods:
        for place, teachers in TEACHERS.items():
            rows = [runs[(scenarios[place], s, q)][method] for s, q in queries]
            if place == "single":
                forgetting = 100 * np.array([r["forgetting"] for r in rows])
                cost, over = f"(forgetting {forgetting.mean():.1f}, {forgetting.max():.1f} worst)", "—"
            else:
                cost_points = costs(runs, liar, place, method, queries)
                cost, over = f"{cost_points.mean():.1f}, {cost_points.max():.1f}", f"{int((cost_points > bound).sum())} of {len(queries)}"
            lines.append(f"| {METHODS[method].display} | {teachers} | {mean_accuracies(rows)} | {cost} | {over} |")
    return "\n".join(lines)


def kind_table(records: list[dict], method: str) -> str:
    display = METHODS[method].display
    runs = by_query(records)
    lines = [f"| liar | teachers | queries | kept out | {display} query acc | {display} local acc | {display} overall acc | forgetting | local-accuracy cost (points): mean, worst |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in KINDS:
        for place, teachers in (("alone", "alone"), ("beside", "beside the honest ones")):
            planted = [r for r in records if r["scenario"] == f"liar-{kind}-{place}"]
            if not planted:
                continue
            results = [r["methods"][method] for r in planted]
            kept_out = sum(all(str(r["false_expert"]) not in experts for experts in result["details"].get("experts", {}).values())
                           for r, result in zip(planted, results, strict=True))
            cost = costs(runs, kind, place, method, [(r["seed"], r["querier"]) for r in planted])
            forgetting = np.mean([r["forgetting"] for r in results])
            lines.append(f"| {kind} | {teachers} | {len(planted)} | {kept_out} of {len(planted)} | {mean_accuracies(results)} | {forgetting:+.3f} | {cost.mean():+.1f}, {cost.max():+.1f} |")
    if len(lines) == 2:
        raise SystemExit("the run holds no planted liar's scenario (qkt bench --scenario liars)")
    honest = [methods[method] for (scenario, _, _), methods in runs.items() if scenario == "single"]
    means = ", ".join(f"{label} {np.mean([r[k] for r in honest]):.3f}" for label, k in zip(("query acc", "local acc", "overall"), ACCURACIES, strict=True))
    lines.append(f"\nWithout a liar (the same queries, honest teachers): {display} {means}, forgetting {np.mean([r['forgetting'] for r in honest]):+.3f}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a qkt bench run's bench.json")
    parser.add_argument("--liar", default="noise-only", help="the planted liar's kind (qkt.bench.liars.KINDS)")
    parser.add_argument("--methods", nargs="+", default=["qkt"], help="the run's methods to tabulate")
    parser.add_argument("--bound", type=float, default=2.0, help="the cost in points a query is counted above")
    parser.add_argument("--by-kind", action="store_true", help="one table per method over every liar kind the run holds")
    args = parser.parse_args()
    records = read_bench(args.run)["records"]
    missing = [m for m in args.methods if not any(m in r["methods"] for r in records)]
    if missing:
        raise SystemExit(f"error: the run holds no method {', '.join(missing)}; it holds "
                         + ", ".join(dict.fromkeys(m for r in records for m in r["methods"])))
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    for dataset in datasets:  # a query's key holds no data set: one table per data set
        chosen = [r for r in records if r["dataset"] == dataset]
        if len(datasets) > 1:
            print(f"\n{dataset}:\n")
        if args.by_kind:
            print("\n\n".join(kind_table(chosen, method) for method in args.methods))
        else:
            print(cost_table(chosen, args.liar, args.methods, args.bound))


if __name__ == "__main__":
    main()
