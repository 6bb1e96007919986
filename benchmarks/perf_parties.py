"""A query's cost against the number of parties, K = 10, 50, 100, with the experts held fixed: time, bytes, memory.

    python benchmarks/perf_parties.py --threads 2 --quiet       # the benchmark's 6,000 images; docs/results/perf-parties.json and .png
    python benchmarks/perf_parties.py --whole-dataset --quiet   # all 50,000; docs/results/perf-parties-50k.json and .png
    python benchmarks/perf_parties.py --quick --threads 1       # K = 10, 20 on a smoke world in under a minute, under qkt-output/perf

On the world of :mod:`perf_common` (CIFAR-10, K = 10, α = 0.1), the querier asks the
K = 10 parties and K − 10 more, each of which trained a CNN briefly on two classes
outside the query, so that no probe takes them for experts (the experts found are
recorded for each K). Every teacher computes its probe scores once, before any query
is timed (:class:`~qkt.query.CachedScores`), and every query is charged their time:
``seconds`` is the report's total with the teachers answering in parallel (the
querier's work plus the slowest reply of each exchange); ``querier_seconds`` the
querier's own work as measured here; ``seconds_in_one_process`` that plus every
teacher's time, as if all replies were computed one after another in this process.
Bytes are the querier's, by message kind. Peak memory is the process's resident peak
during the query, reset before it (``/proc/self/clear_refs``); the process holds every
party's model, as the in-process simulation does. Each K keeps the fastest of
``--repeats`` queries.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from perf_common import Setup, memory, parse, parser, reset_peak, target
from tqdm.auto import tqdm

from qkt.config import RunConfig
from qkt.models import build_model, num_bytes
from qkt.query import CachedScores, Recorder, Reply
from qkt.report import save_figure
from qkt.training import fit


def extra_party(setup: Setup, index: int, samples: int, epochs: int) -> torch.nn.Module:
    """A CNN trained briefly on ``samples`` images of two classes drawn outside the query."""
    world, t = setup.world, setup.config.training
    rng = np.random.default_rng(index)
    others = [c for c in range(world.dataset.num_classes) if c not in world.scenario.query]
    classes = torch.as_tensor(rng.choice(others, size=2, replace=False))
    pool = torch.nonzero(torch.isin(world.y_train, classes)).flatten()
    idx = pool[torch.as_tensor(rng.choice(len(pool), size=min(samples, len(pool)), replace=False))]
    torch.manual_seed(index)
    model = build_model(t.arch, world.dataset.input_shape, world.dataset.num_classes)
    return fit(model, (world.x_train[idx], world.y_train[idx]), epochs, t.lr, t.batch_size, t.weight_decay, seed=index, progress=False).eval()


def measured(setup: Setup, party: dict[str, torch.nn.Module], cache: dict) -> dict:
    """The fastest of ``repeats`` queries among ``party``, the teachers' probe scores taken from ``cache``."""
    runs = []
    for _ in range(setup.args.repeats):
        reset_peak()
        before = memory()["rss_bytes"]
        channel = Recorder(CachedScores(setup.teachers(party), cache))
        _, report, wall = setup.query(channel)
        # The experts export their weights within the query; the querier's own work is the rest.
        exports = sum(r.seconds for _, kind, r in channel.replies if kind == "weights" and isinstance(r, Reply))
        runs.append({"report": report, "querier_seconds": wall - exports, "rss_before": before, "peak": memory()["peak_rss_bytes"]})
    best = min(runs, key=lambda r: r["report"].seconds["total"])
    return {**best, "seconds_each_repeat": [round(r["report"].seconds["total"], 2) for r in runs], "peak": max(r["peak"] for r in runs)}


def row(setup: Setup, k: int, party: dict[str, torch.nn.Module], run: dict) -> dict:
    report = run["report"]
    by_kind: dict[str, int] = {}
    for m in report.messages:
        by_kind[m["kind"]] = by_kind.get(m["kind"], 0) + m["bytes"]
    replies = list(report.teacher_seconds.values())
    return {
        "parties": k,
        "experts": report.experts,
        "experts_among_extra_parties": sorted({n for v in report.experts.values() for n in v} - set(setup.world.teachers)),
        "seconds": round(report.seconds["total"], 2),
        "seconds_each_repeat": run["seconds_each_repeat"],
        "querier_seconds": round(run["querier_seconds"], 2),
        "seconds_in_one_process": round(run["querier_seconds"] + report.seconds["teachers"], 2),
        "seconds_per_phase": {name: round(v, 3) for name, v in report.seconds.items()},
        "teacher_seconds": {"max": round(max(replies), 2), "median": round(float(np.median(replies)), 2), "sum": round(sum(replies), 2)},
        "bytes_by_message_kind": by_kind,
        "discovery_bytes": by_kind.get("announce", 0) + by_kind.get("scores", 0),
        "transfer_bytes": by_kind.get("request_weights", 0) + by_kind.get("weights", 0),
        "rss_before_query_bytes": run["rss_before"],
        "peak_rss_bytes": run["peak"],
        "peak_rss_increase_bytes": run["peak"] - run["rss_before"],
        "models_held_in_process_bytes": sum(num_bytes(m) for m in [setup.student, *party.values()]),
    }


def scaling(setup: Setup) -> dict:
    """A whole query among K parties for each K of ``--parties``, the experts held fixed."""
    args, world = setup.args, setup.world
    announcement = setup.announcement()
    teachers, cache, rows = dict(world.teachers), {}, []
    can_reset = reset_peak()
    for k in args.parties:
        new = range(len(world.models) + len(teachers) - len(world.teachers), k)
        for i in tqdm(new, desc=f"K={k}: extra parties", unit="party", disable=not args.progress or not len(new)):
            teachers[str(i)] = extra_party(setup, i, args.extra_samples, args.extra_epochs)
        party = {name: teachers[name] for name in list(teachers)[: k - 1]}
        warm = CachedScores(setup.teachers(party), cache)
        for name in tqdm(party, desc=f"K={k}: teachers' scores", unit="teacher", leave=False, disable=not args.progress):
            warm.announce(announcement, [name])  # computed and timed once; each query below is charged the time
        rows.append(row(setup, k, party, measured(setup, party, cache)))
    first, last = rows[0], rows[-1]
    return {
        "how": (f"the {len(world.models)} parties of the scenario plus parties trained for {args.extra_epochs} epoch(s) on "
                f"{args.extra_samples} images of two classes outside the query; every teacher computed its probe scores once "
                "before the queries were timed, and each query is charged their time"),
        "peak_reset_per_query": can_reset,
        "grows_with": {
            "parties": "announcements and scores (bytes_by_message_kind), the querier's expert selection (seconds_per_phase.probe) "
                       "and the teachers' replies, each computed by its own teacher",
            "experts": "weight requests and weights, the querier's checks of each expert (seconds_per_phase.transfer), "
                       "its inversion and its outputs on the transfer set (synthesis)",
        },
        "rows": rows,
        "experts_fixed": all(r["experts"] == first["experts"] for r in rows),
        "growth": {key: round(last[key] / first[key], 3) for key in
                   ("seconds", "querier_seconds", "seconds_in_one_process", "discovery_bytes", "transfer_bytes", "peak_rss_bytes")},
    }


def plot(rows: list[dict], path: Path) -> None:
    ks = [r["parties"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    ax.plot(ks, [r["seconds_in_one_process"] for r in rows], "o-", label="all in one process (replies one after another)")
    ax.plot(ks, [r["seconds"] for r in rows], "o-", label="teachers answer in parallel")
    ax.plot(ks, [r["querier_seconds"] for r in rows], "o-", label="the querier's own work")
    ax.set_ylabel("seconds")
    ax.set_title("query time", fontsize=10)
    ax = axes[1]
    ax.plot(ks, [r["discovery_bytes"] for r in rows], "o-", label="discovery (announcements + scores)")
    ax.plot(ks, [r["transfer_bytes"] for r in rows], "o-", label="experts' weights (+ requests)")
    ax.set_yscale("log")
    ax.set_ylabel("bytes at the querier")
    ax.set_title("communication", fontsize=10)
    ax = axes[2]
    ax.plot(ks, [r["peak_rss_bytes"] / 2**20 for r in rows], "o-", label="peak during the query")
    ax.plot(ks, [r["rss_before_query_bytes"] / 2**20 for r in rows], "o-", label="before the query")
    ax.set_ylabel("resident MiB (whole process)")
    ax.set_title("memory (the process holds all K models)", fontsize=10)
    experts = sorted({n for v in rows[0]["experts"].values() for n in v})
    for ax in axes:
        ax.set_xlabel("parties K")
        ax.set_xticks(ks)
        ax.legend(fontsize=7)
    for ax in (axes[0], axes[2]):
        ax.set_ylim(bottom=0)
    fig.suptitle(f"One query among K parties with the same {len(experts)} expert(s) (party {', '.join(experts)})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> int:
    p = parser(__doc__, "parties")
    p.add_argument("--parties", type=int, nargs="+", help="values of K (default: 10 50 100; quick: 10 20)")
    p.add_argument("--extra-samples", type=int, help="images each extra party trains on (default: 256; quick: 64)")
    p.add_argument("--extra-epochs", type=int, default=5, help="epochs each extra party trains for (default: %(default)s)")
    args = parse(p)
    args.parties = sorted(args.parties or ([10, 20] if args.quick else [10, 50, 100]))
    args.extra_samples = args.extra_samples or (64 if args.quick else 256)

    def check(config: RunConfig) -> None:
        if args.parties[0] < config.partition.num_parties:
            p.error(f"--parties must be at least the scenario's {config.partition.num_parties}")

    setup = Setup.start(args, check)
    section = scaling(setup)
    growth = section["growth"]
    targets = [target(f"query time, K={args.parties[-1]} / K={args.parties[0]}, experts fixed", growth["seconds"], 1.5,
                      f"teachers answering in parallel; the querier's own work alone: {growth['querier_seconds']}; "
                      f"every reply computed in one process: {growth['seconds_in_one_process']}")]
    wall = setup.finish("a query among K parties, the experts held fixed", {"parties": section}, targets)
    plot(section["rows"], setup.plot_path)
    print(f"wrote {args.output} and {setup.plot_path.name} beside it in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
