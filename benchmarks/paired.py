"""Is one method's accuracy different from QKT's, query by query? Paired statistics over bench.json files.

    python benchmarks/paired.py docs/results/bench/whole-first-epoch-*/bench.json --method qkt_whole_first_epoch
    python benchmarks/paired.py new/bench.json --method qkt --against-run old/bench.json   # one method, two versions

With ``--against-run``, the reference is ``--against`` as another run recorded it for the
same query (data set, scenario, seed, querier and ``Q``): the same method before and after
a change of qkt, on the same parties.

Every query of ``qkt bench`` runs each method on the same parties, so the fair comparison is
the difference per query: its mean, a bootstrap 95% interval of that mean and the Wilcoxon
signed-rank test (scipy >= 1.15, which scikit-learn brings), per data set and scenario and
over all queries. Queries that failed (every expert distrusted) count with the accuracy
they report, the querier's own model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap, wilcoxon

from qkt.bench import read_run
from qkt.errors import QKTError


def read_bench(path: Path) -> dict:
    """A qkt bench run's bench.json; exits with the reason in one line if ``path`` holds none."""
    try:
        return read_run(path)
    except QKTError as exc:
        raise SystemExit(f"error: {exc}") from None


def query_key(record: dict) -> tuple:
    return record["dataset"], record["scenario"], record["seed"], record["querier"], tuple(record["query"])


def differences(paths: list[Path], method: str, against: str, metric: str, against_run: Path | None = None) -> dict[str, np.ndarray]:
    """``method`` minus ``against`` (of the same record, or of ``against_run``'s record of the same query) per query, in points."""
    reference = None if against_run is None else {query_key(r): r["methods"] for r in read_bench(against_run)["records"]}
    groups: dict[str, list[float]] = {}
    for path in paths:
        for record in read_bench(path)["records"]:
            runs = record["methods"]
            base = runs if reference is None else reference.get(query_key(record), {})
            if method in runs and against in base:
                groups.setdefault(f"{record['dataset']} {record['scenario']}", []).append(100 * (runs[method][metric] - base[against][metric]))
    return {k: np.array(v) for k, v in groups.items()}


def interval(diff: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A bootstrap 95% interval of the mean difference (of two queries or more)."""
    low, high = bootstrap((diff,), np.mean, n_resamples=10_000, method="percentile", rng=rng).confidence_interval
    return float(low), float(high)


def summary(diff: np.ndarray, rng: np.random.Generator) -> str:
    counts = f"better / worse {(diff > 0).sum()} / {(diff < 0).sum()}"
    if len(diff) < 2:  # a run still going may hold one query of a scenario: neither statistic exists yet
        return f"{len(diff):4d} query    {diff.mean():+.2f} points  {counts}"
    low, high = interval(diff, rng)
    p = wilcoxon(diff).pvalue if np.any(diff) else 1.0
    return f"{len(diff):4d} queries  {diff.mean():+.2f} points  95% interval {low:+.2f} to {high:+.2f}  Wilcoxon p = {p:.3f}  {counts}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench_json", nargs="+", type=Path, help="bench.json files of qkt bench runs")
    parser.add_argument("--method", required=True, help="the method to compare, e.g. qkt_whole_first_epoch")
    parser.add_argument("--against", default="qkt", help="the reference method (default: qkt)")
    parser.add_argument("--metric", default="overall_accuracy", choices=["overall_accuracy", "query_accuracy", "local_accuracy"])
    parser.add_argument("--against-run", type=Path, default=None,
                        help="bench.json of another run whose --against is the reference, matched query by query")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args()
    groups = differences(args.bench_json, args.method, args.against, args.metric, args.against_run)
    if not groups:
        parser.error(f"no query ran both {args.method} and {args.against}")
    rng = np.random.default_rng(args.seed)
    print(f"{args.method} - {args.against}{'' if args.against_run is None else f' of {args.against_run}'}, {args.metric}:")
    for name, diff in groups.items():
        print(f"  {name:24s} {summary(diff, rng)}")
    print(f"  {'all':24s} {summary(np.concatenate(list(groups.values())), rng)}")


if __name__ == "__main__":
    main()
