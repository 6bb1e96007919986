"""One benchmark's tables from the methods of several ``qkt bench`` runs on the same queries.

    python benchmarks/merge_runs.py qkt-output/qkt/cifar10/bench.json \\
        qkt-output/federated/cifar10/bench.json:fedavg,fedprox,fedgen --output docs/results/bench/full-cifar10

A change to QKT's settings changes only the methods that use them (QKT, QKT Light, KD); the
federated baselines, which cost as much again, need not run again to be compared. The first
run gives every query and its methods; each later one adds the methods named after its
colon, query by query. Several later runs may give the same methods for parts of the
queries (one run per seed, say, run side by side with ``qkt bench --seed``)::

    python benchmarks/merge_runs.py full-cifar10/bench.json \
        seed0/bench.json:fedavg_converged seed1/bench.json:fedavg_converged seed2/bench.json:fedavg_converged --output merged

``@SEED,SEED`` after the methods takes them from those seeds' queries of that run only: a
run whose other seeds were re-run gives the rest (``old/bench.json:qkt_gated@1``).

Each method named must reach every query of the first run from exactly one later run, with
the same query classes, profile and data size.

Runs of other queries (a long profile's seeds, each run whole in its own folder beside the
others) join the first run with ``--queries-from``: their queries the first run lacks are
added with all their methods; a query both hold must score the same in the methods both
hold (a seed's folder that started from a copy of the first run's ``bench.json``)::

    python benchmarks/merge_runs.py seed0/bench.json --queries-from seed1/bench.json \\
        --queries-from seed2/bench.json --output merged

The output folder gets ``bench.json``, ``bench.md``, ``bench.csv``, ``headline.md`` and
``bench.png``, as ``qkt bench`` writes them.

Runs on other machines train the parties with other float rounding, so the methods of two
runs are on the same queries but not always on the same models: ``merged_from`` records,
for each run (for a merged one, each run it was merged from), its file, the methods
taken, start, machine, wall time and settings, and on how many queries each method both
runs hold (Local, say) scored differently. Paired statistics (``benchmarks/paired.py``)
across methods of two runs compare queries, not models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paired import read_bench

from qkt.bench import write_outputs
from qkt.diagnostics import recovered_share
from qkt.errors import QKTError
from qkt.files import check_output
from qkt.methods import ABLATIONS, BASELINES, METHODS, QKT


def query_key(record: dict) -> tuple:
    return record["dataset"], record["scenario"], record["seed"], record["querier"], tuple(record["query"])


def scores(result: dict) -> tuple:
    """What a method's record says of the model it left, not of the run's seconds."""
    return tuple(result.get(k) for k in ("query_accuracy", "local_accuracy", "overall_accuracy", "forgetting"))


def same_protocol(name: str, run: dict, base: dict) -> None:
    for key in ("profile", "whole_dataset"):
        if run.get(key, False) != base.get(key, False):
            raise SystemExit(f"{name} ran {key} = {run.get(key, False)}, the first run {base.get(key, False)}")


def join_queries(base: dict, runs: list[tuple[str, dict]]) -> tuple[dict, list[list[str]]]:
    """``base`` with the queries of ``runs`` it lacks, whole; and, per run, the methods those queries hold."""
    records, methods = list(base["records"]), []
    known = {query_key(r): r for r in records}
    for name, run in runs:
        same_protocol(name, run, base)
        new = []
        for record in run["records"]:
            key = query_key(record)
            held = known.get(key)
            if held is None:
                known[key] = record
                new.append(record)
            elif any(scores(held["methods"][m]) != scores(record["methods"][m]) for m in set(held["methods"]) & set(record["methods"])):
                raise SystemExit(f"{name} holds query {key} with other results than the run before it; give each query once")
        if not new:
            raise SystemExit(f"{name} holds no query that the runs before it lack")
        records += new
        methods.append(sorted({m for r in new for m in r["methods"]}))
    datasets = list(dict.fromkeys([*base["datasets"], *(d for _, run in runs for d in run["datasets"])]))
    return dict(base, records=records, datasets=datasets), methods


def merge(base: dict, additions: list[tuple[str, dict, list[str]]]) -> tuple[list[dict], list[dict[str, int]]]:
    """``base``'s records, each with the named methods of the same query from each named run of ``additions``.

    Also, per addition: on how many queries each method that both runs hold scored differently there.
    """
    for name, run in [("the first run", base), *((name, run) for name, run, _ in additions)]:
        if any("teacher_seconds" not in result for r in run["records"] for result in r["methods"].values()):
            raise SystemExit(f"{name} does not record its teachers' seconds (a run of an older qkt bench, whose QKT seconds left "
                             "out the teachers' replies): run it again")
    records = [dict(r, methods=dict(r["methods"])) for r in base["records"]]
    givers: dict[tuple, dict[str, list[str]]] = {query_key(r): {} for r in records}
    differing = []
    for name, run, methods in additions:
        same_protocol(name, run, base)
        by_query = {query_key(r): r for r in run["records"]}
        if not set(by_query) & set(givers):
            raise SystemExit(f"{name} holds none of the first run's queries")
        counts: dict[str, int] = {}
        for record in records:
            other = by_query.get(query_key(record))
            if other is None:
                continue
            for m in methods:
                givers[query_key(record)].setdefault(m, []).append(name)
            missing = [m for m in methods if m not in other["methods"]]
            if missing:
                raise SystemExit(f"{name} has no {', '.join(missing)} for query {query_key(record)}")
            for m in set(record["methods"]) & set(other["methods"]) - set(methods):
                counts[m] = counts.get(m, 0) + (scores(record["methods"][m]) != scores(other["methods"][m]))
            record["methods"].update({m: other["methods"][m] for m in methods})
        differing.append(counts)
    for m in dict.fromkeys(m for _, _, methods in additions for m in methods):
        for key, given in givers.items():
            if len(given.get(m, [])) != 1:
                raise SystemExit(f"query {key} of the first run gets {m} from {len(given.get(m, []))} runs"
                                 f"{' (' + ', '.join(given[m]) + ')' if given.get(m) else ''}; each method needs exactly one")
    order = {m: i for i, m in enumerate(BASELINES + QKT + ABLATIONS)}
    for record in records:  # the tables list methods as a run of every method does
        record["methods"] = dict(sorted(record["methods"].items(), key=lambda item: order.get(item[0], len(order))))
        share_of_oracle(record["methods"])
    return records, differing


def share_of_oracle(methods: dict[str, dict]) -> None:
    """Each query method's share of the oracle's gain, from the merged record: its run may have had no oracle, or another."""
    if "oracle" not in methods or "local" not in methods:
        return
    for name, result in methods.items():
        if name in METHODS and METHODS[name].runner == "query":
            share = recovered_share(result["overall_accuracy"], methods["local"]["overall_accuracy"], methods["oracle"]["overall_accuracy"])
            methods[name] = dict(result, details={**result.get("details", {}), "recovered_share": share})


def provenance(path: str, methods: list[str], run: dict, counts: dict[str, int]) -> list[dict]:
    """Where ``methods`` of ``run`` come from: the run itself, or, for a merged run, the runs it was merged from."""
    if "merged_from" in run:
        return [dict(origin, methods=kept) for origin in run["merged_from"] if (kept := [m for m in origin["methods"] if m in methods])]
    return [{"file": path, "methods": methods, "started": run["started"], "machine": run["machine"], "wall_seconds": run["wall_seconds"],
             "settings": run.get("settings"), "queries_scored_differently_than_the_first_run": counts}]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="bench.json of the run that gives the queries and its methods")
    parser.add_argument("additions", nargs="*",
                        help="OTHER/bench.json:METHOD,METHOD,...[@SEED,SEED,...] methods taken from another run (of the seeds named only)")
    parser.add_argument("--queries-from", type=Path, action="append", default=[], metavar="BENCH_JSON",
                        help="a run of other queries on the same profile (another seed): the queries the first run lacks "
                             "join it with all their methods (repeatable)")
    parser.add_argument("--output", type=Path, required=True, help="folder of the merged outputs")
    args = parser.parse_args(argv)
    if not args.additions and not args.queries_from:
        parser.error("nothing to merge: name methods of another run, or --queries-from")
    try:
        check_output(args.output)
    except QKTError as exc:
        parser.error(str(exc))
    first = read_bench(args.base)
    joined = [(str(path), read_bench(path)) for path in args.queries_from]
    base, joined_methods = join_queries(first, joined)
    additions = []
    for spec in args.additions:
        path, _, names = spec.rpartition(":")
        names, _, seeds = names.partition("@")
        methods = [m.strip() for m in names.split(",") if m.strip()]
        seed_texts = [s.strip() for s in seeds.split(",")] if seeds else []
        if not path or not methods or not all(s.isdigit() for s in seed_texts):
            parser.error(f"'{spec}': expected PATH:METHOD[,METHOD...][@SEED[,SEED...]]")
        run = read_bench(Path(path))
        if seed_texts:
            chosen = {int(s) for s in seed_texts}
            run = dict(run, records=[r for r in run["records"] if r["seed"] in chosen])
        additions.append((path, run, methods))
    records, differing = merge(base, additions)
    taken = {m for _, _, methods in additions for m in methods}
    if not any("qkt" in r["methods"] for r in records):
        parser.error("no run gives 'qkt', which every table compares with")
    sources = [(str(args.base), sorted({m for r in first["records"] for m in r["methods"]} - taken), first, {})]
    sources += [(path, sorted(set(methods) - taken), run, {}) for (path, run), methods in zip(joined, joined_methods, strict=True)]
    sources += [(path, methods, run, counts) for (path, run, methods), counts in zip(additions, differing, strict=True)]
    origins = [origin for source in sources for origin in provenance(*source)]
    state = {key: base[key] for key in ("profile", "datasets", "started", "wall_seconds", "cpu_seconds")}
    state.update(whole_dataset=base.get("whole_dataset", False), records=records,
                 machine=f"merged from {len(origins)} runs (merged_from)", merged_from=origins,
                 command=" ".join(["python3", "benchmarks/merge_runs.py", *argv]))
    for path, _, _, counts in sources[1:]:
        if any(counts.values()):
            print(f"{path}: methods both runs hold scored differently on "
                  + ", ".join(f"{m} on {n}" for m, n in sorted(counts.items())) + " of the queries it holds (other models?)")
    args.output.mkdir(parents=True, exist_ok=True)
    write_outputs(state, args.output)
    print(f"wrote {args.output}/bench.json and its tables: {len(state['records'])} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
