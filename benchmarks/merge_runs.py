"""One benchmark's tables from the methods of several ``qkt bench`` runs on the same queries.

    python benchmarks/merge_runs.py qkt-output/headline-7/cifar10/bench.json \\
        docs/results/bench/full-cifar10/bench.json:fedavg,fedprox,fedgen --output docs/results/bench/headline-cifar10

A change to QKT's settings changes only the methods that use them (QKT, QKT Light, KD); the
federated baselines, which cost as much again, need not run again to be compared. The first
run gives every query and its methods; each later one adds the methods named after its
colon, query by query. Every query of the first run must be in the others, with the same
query classes. The output folder gets ``bench.json`` (with ``merged_from``: each run's
file, methods, start, machine and wall time), ``bench.md``, ``bench.csv``, ``headline.md`` and
``bench.png``, as ``qkt bench`` writes them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qkt import bench


def query_key(record: dict) -> tuple:
    return record["dataset"], record["scenario"], record["seed"], record["querier"], tuple(record["query"])


def merge(base: dict, additions: list[tuple[dict, list[str]]]) -> list[dict]:
    """``base``'s records, each with the named methods of the same query in every run of ``additions``."""
    records = [dict(r, methods=dict(r["methods"])) for r in base["records"]]
    for run, methods in additions:
        by_query = {query_key(r): r for r in run["records"]}
        for record in records:
            other = by_query.get(query_key(record))
            if other is None:
                raise SystemExit(f"query {query_key(record)} is in the first run but not in {run['started']}'s")
            missing = [m for m in methods if m not in other["methods"]]
            if missing:
                raise SystemExit(f"{run['started']}'s run has no {', '.join(missing)} for query {query_key(record)}")
            record["methods"].update({m: other["methods"][m] for m in methods})
    order = {m: i for i, m in enumerate(bench.BASELINES + bench.QKT_METHODS + bench.ABLATIONS)}
    for record in records:  # the tables list methods as a run of every method does
        record["methods"] = dict(sorted(record["methods"].items(), key=lambda item: order.get(item[0], len(order))))
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="bench.json of the run that gives the queries and its methods")
    parser.add_argument("additions", nargs="+", help="OTHER/bench.json:METHOD,METHOD,... methods taken from another run")
    parser.add_argument("--output", type=Path, required=True, help="folder of the merged outputs")
    args = parser.parse_args()
    base = json.loads(args.base.read_text())
    sources = [(args.base, sorted({m for r in base["records"] for m in r["methods"]}), base)]
    additions = []
    for spec in args.additions:
        path, _, names = spec.rpartition(":")
        if not path or not names:
            parser.error(f"'{spec}': expected PATH:METHOD[,METHOD...]")
        run, methods = json.loads(Path(path).read_text()), names.split(",")
        sources.append((Path(path), methods, run))
        additions.append((run, methods))
    state = {key: base[key] for key in ("profile", "datasets", "started", "wall_seconds", "cpu_seconds")}
    state.update(whole_dataset=base.get("whole_dataset", False), records=merge(base, additions),
                 machine=f"merged from {len(sources)} runs (merged_from)",
                 merged_from=[{"file": str(path), "methods": methods, "started": run["started"], "machine": run["machine"],
                               "wall_seconds": run["wall_seconds"]} for path, methods, run in sources],
                 command=" ".join(["python3", *sys.argv]))
    args.output.mkdir(parents=True, exist_ok=True)
    bench.write_outputs(state, args.output)
    print(f"wrote {args.output}/bench.json and its tables: {len(state['records'])} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
