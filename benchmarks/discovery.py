"""Expert discovery, measured: every probe kind and λ against the parties that really hold the query class.

    python benchmarks/discovery.py --threads 1 --data-root DATA
        [--datasets digits npz pathmnist cifar10] [--accuracy digits npz] [--output docs/results/discovery]

The worlds are those of ``qkt bench --profile quick``'s single-class scenario (K = 10,
Dirichlet α = 0.1, the profile's seed and settings per data set), with every eligible
querier of each seed as the bench picks them (``querier_queries``), not only the
profile's first two. For each probe kind (``noise``, ``statistics``, and ``self`` in the
bench's ``self-probe`` world, where each party keeps 10% of each class out of its
training) every party's probe scores over all classes are computed once: they do not
depend on λ. For each λ the querier's rule (``probe.expert_masks``, with its fallback to
the best teacher above uniform) then gives the experts of each query, scored against the
true holders (the other parties holding at least ``scenario.min_expert_samples`` samples
of the class; ``diagnostics.expert_discovery``). No query is trained for this part.

For the data sets given to ``--accuracy`` QKT itself runs (``experiment.run_methods``,
methods Local and QKT, the default probe) for each λ on every query: its overall
accuracy, forgetting and the queries that failed: no expert found, or every expert
distrusted by the querier's checks (scored as the querier's unchanged model, as the
bench scores them).

``npz`` is a synthetic tabular set made here, deterministically, with scikit-learn:
``make_classification(n_samples=8000, n_features=20, n_informative=12, n_redundant=4,
n_classes=8, n_clusters_per_class=2, random_state=0)``, the first 6,000 rows for
training and the last 2,000 for testing (float32 features, int64 labels), written to
``<work>/tabular.npz`` and loaded as data name ``npz`` with ``data.path``. Its parties
train the MLP of the quick profile's digits settings (30 epochs), since a CNN does not
apply to feature vectors.

Parties are checkpointed under ``<work>/checkpoints`` (``--work``; a folder of a bench
run's checkpoints copied there is reused where the settings match). Writes
``discovery.json`` (every query's scores, experts and figures), ``discovery.csv``,
``accuracy.csv``, ``discovery.md`` and ``discovery.png`` to ``--output``.

``--join EARLIER LATER`` measures nothing: it writes EARLIER's records with LATER's in
place of the rows LATER measured (its data sets and probe kinds, its accuracy data sets),
and names LATER's command and date in the records' ``reruns``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from qkt import diagnostics, experiment, partition
from qkt.bench import PROFILES, SCENARIOS
from qkt.bench.catalogue import Profile, querier_queries, run_config
from qkt.bench.output import machine  # also puts matplotlib on its file-only backend
from qkt.config import RunConfig
from qkt.data import DataSet, load_dataset
from qkt.files import atomic_write
from qkt.query import Announcement, CachedScores, InProcessChannel, Reply, Teacher
from qkt.query.probe import expert_masks, experts_by_class
from qkt.query.teacher import UNLIMITED
from qkt.report import save_figure
from qkt.training import set_threads

DATASETS = ("digits", "npz", "pathmnist", "cifar10")
KINDS = ("noise", "statistics", "self")
LAMBDAS = (1.1, 1.25, 1.5, 2.0, 3.0)
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "discovery"
TABULAR = {"n_samples": 8000, "n_features": 20, "n_informative": 12, "n_redundant": 4, "n_classes": 8,
           "n_clusters_per_class": 2, "random_state": 0}
TABULAR_TRAIN = 6000


def tabular_npz(path: Path) -> Path:
    """Write the synthetic tabular set (module docstring) to ``path``, once."""
    if not path.exists():
        from sklearn.datasets import make_classification

        x, y = make_classification(**TABULAR)
        buffer = io.BytesIO()
        np.savez(buffer, x_train=x[:TABULAR_TRAIN].astype(np.float32), y_train=y[:TABULAR_TRAIN].astype(np.int64),
                 x_test=x[TABULAR_TRAIN:].astype(np.float32), y_test=y[TABULAR_TRAIN:].astype(np.int64))
        atomic_write(path, buffer.getvalue())
    return path


def quick_profile() -> Profile:
    """The quick profile, with the tabular set on its digits settings (the MLP)."""
    quick = PROFILES["quick"]
    return dataclasses.replace(quick, settings={**quick.settings, "npz": quick.settings["digits"]})


def load(name: str, profile: Profile, data_root: str | None, work: Path) -> tuple[DataSet, str | None]:
    """The data set as the bench subsamples it, and its ``data.path`` (the tabular file; None for registry sets)."""
    path = str(tabular_npz(work / "tabular.npz")) if name == "npz" else None
    data = profile.config(name).get("data", {})
    return load_dataset(name, data_root, path).subsample(data.get("max_train"), data.get("max_test"), 0), path


def world_config(profile: Profile, dataset: DataSet, kind: str, seed: int, data_root: str | None, path: str | None) -> RunConfig:
    """The bench's single-class config for probe ``kind`` (``self``: the ``self-probe`` scenario's, with its holdout)."""
    config = run_config(profile, dataset, SCENARIOS["self-probe" if kind == "self" else "single"], seed, data_root, ("local", "qkt"))
    probe = config.query.probe.model_copy(update={"kind": kind})
    return config.model_copy(update={"data": config.data.model_copy(update={"path": path}),
                                     "query": config.query.model_copy(update={"probe": probe})})


class Seed:
    """One seed's world as ``qkt bench`` builds it: the partition, every party trained on its training share, the queries."""

    def __init__(self, config: RunConfig, dataset: DataSet, checkpoints: Path):
        self.config, self.dataset, self.checkpoints = config, dataset, checkpoints
        self.tensors = dataset.normalized()
        self.parts = experiment.make_partition(config, dataset.y_train)
        whole = partition.Scenario(-1, (), (), tuple(self.parts), 0)
        self.models = experiment.train_parties(config, self.tensors[:2], whole, dataset,
                                               experiment.training_shares(config, dataset, whole)[0], checkpoints, progress=False)
        # the teachers' scores over every class, once per probe recipe (CachedScores), whatever λ
        self.score_cache: dict = {}
        s = config.scenario
        self.queries = [partition.make_scenario(dataset.y_train, self.parts, q, s.query_size, config.partition.seed,
                                                dataset.num_classes, s.max_query_samples, s.min_expert_samples, query)
                        for q, query in querier_queries(config, dataset, self.parts, SCENARIOS["single"], None)]

    def world(self, scenario: partition.Scenario, retrain: bool = False) -> experiment.World:
        """The world of one query; ``retrain`` retrains the querier without the few samples of ``Q`` it lost, as the bench does."""
        models = list(self.models)
        shares, holdouts = experiment.training_shares(self.config, self.dataset, scenario)
        if retrain and scenario.removed:
            models[scenario.querier] = experiment.train_parties(self.config, self.tensors[:2], scenario, self.dataset, shares,
                                                                self.checkpoints, False)[scenario.querier]
        return experiment.World(self.dataset, *self.tensors, scenario, models, holdouts)

    def probe_scores(self) -> tuple[dict[str, np.ndarray], float]:
        """Every party's probe scores over all classes, and the mean seconds of one party's reply."""
        whole = self.world(partition.Scenario(-1, (), (), tuple(self.parts), 0))
        c = self.dataset.num_classes
        channel = InProcessChannel({str(k): Teacher(m, holdout=whole.held_out(k), policy=UNLIMITED) for k, m in enumerate(self.models)})
        announcement = Announcement.from_config(tuple(range(c)), c, self.dataset.input_shape, self.config.query)
        replies = channel.announce(announcement, channel.teachers)
        failed = {k: r.reason for k, r in replies.items() if not isinstance(r, Reply)}
        if failed:
            raise SystemExit(f"probe '{announcement.probe_kind}' failed at {failed}")
        return {k: np.asarray(r.value, dtype=float) for k, r in replies.items()}, float(np.mean([r.seconds for r in replies.values()]))


def discovery_records(name: str, kind: str, seed: int, world: Seed, lambdas: tuple[float, ...]) -> list[dict]:
    """Per query: every teacher's score of the query class (× |C|), the true holders, and per λ the experts found."""
    scores, seconds = world.probe_scores()
    c = world.dataset.num_classes
    records = []
    for scenario in world.queries:
        query = list(scenario.query)
        replies = {k: s[query] for k, s in scores.items() if int(k) != scenario.querier}
        truth = experiment.true_experts(world.world(scenario), world.config)
        by_lam = {}
        for lam in lambdas:
            found = experts_by_class(expert_masks(replies, scenario.query, c, lam), scenario.query)
            by_lam[str(lam)] = {"experts": {str(q): v for q, v in found.items()}, "no_expert": [q for q, v in found.items() if not v],
                                **diagnostics.expert_discovery(found, truth)}
        records.append({"dataset": name, "probe": kind, "seed": seed, "querier": scenario.querier, "query": query,
                        "true_experts": {str(q): v for q, v in truth.items()}, "probe_seconds": seconds,
                        "scores_x_uniform": {k: [round(float(v) * c, 4) for v in s] for k, s in replies.items()}, "lambda": by_lam})
    return records


def accuracy_records(name: str, seed: int, world: Seed, scenario: partition.Scenario, lambdas: tuple[float, ...]) -> list[dict]:
    """QKT (and Local) on one query, for each λ."""
    records = []
    w = world.world(scenario, retrain=True)
    for lam in lambdas:
        config = world.config.model_copy(update={"query": world.config.query.model_copy(update={"lam": lam})})
        results, _ = experiment.run_methods(w, config, progress=False, channel=lambda inner: CachedScores(inner, world.score_cache))
        qkt, local = results["qkt"], results["local"]
        records.append({"dataset": name, "probe": config.query.probe.kind, "seed": seed, "querier": scenario.querier,
                        "query": list(scenario.query), "lambda": lam, "local_overall_accuracy": local.overall_accuracy,
                        **{k: getattr(qkt, k) for k in ("query_accuracy", "local_accuracy", "overall_accuracy", "forgetting", "seconds")},
                        "failed": qkt.details.get("failed"), "experts": qkt.details.get("experts"),
                        "discovery": qkt.details.get("diagnostics", {}).get("probe")})
    return records


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(discovery: list[dict], accuracy: list[dict], lambdas: tuple[float, ...]) -> tuple[list[dict], list[dict]]:
    """Per data set, probe kind and λ: mean precision (over queries that found an expert), mean recall, queries without one;
    per data set and λ: QKT's mean overall accuracy, forgetting and failed queries (no expert, or every expert distrusted)."""
    found_rows = []
    for name in dict.fromkeys(r["dataset"] for r in discovery):
        for kind in dict.fromkeys(r["probe"] for r in discovery if r["dataset"] == name):
            sel = [r for r in discovery if r["dataset"] == name and r["probe"] == kind]
            for lam in lambdas:
                cells = [r["lambda"][str(lam)] for r in sel]
                found_rows.append({"dataset": name, "probe": kind, "lambda": lam, "queries": len(sel),
                                   "precision": mean([x["precision"] for x in cells]), "recall": mean([x["recall"] for x in cells]),
                                   "no_expert": sum(bool(x["no_expert"]) for x in cells),
                                   "experts_found": mean([sum(map(len, x["experts"].values())) for x in cells]),
                                   "true_experts": mean([sum(map(len, r["true_experts"].values())) for r in sel])})
    accuracy_rows = []
    for name in dict.fromkeys(r["dataset"] for r in accuracy):
        for lam in lambdas:
            sel = [r for r in accuracy if r["dataset"] == name and r["lambda"] == lam]
            accuracy_rows.append({"dataset": name, "lambda": lam, "queries": len(sel), "failed": sum(r["failed"] is not None for r in sel),
                                  **{k: mean([r[k] for r in sel]) for k in ("local_overall_accuracy", "overall_accuracy",
                                                                            "query_accuracy", "local_accuracy", "forgetting")}})
    return found_rows, accuracy_rows


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(found_rows: list[dict], accuracy_rows: list[dict], lambdas: tuple[float, ...]) -> str:
    lines = ["Expert discovery per data set and probe kind: mean precision / recall of the experts each single-class query's "
             "probe finds, against the parties holding at least 10 samples of the class (precision over the queries that "
             "found an expert); *n none*: queries that found no expert.", "",
             "| data set | probe | queries | true experts / query | " + " | ".join(f"λ = {lam:g}" for lam in lambdas) + " |",
             "|---|---|---:|---:|" + "---:|" * len(lambdas)]
    for name in dict.fromkeys(r["dataset"] for r in found_rows):
        for kind in dict.fromkeys(r["probe"] for r in found_rows if r["dataset"] == name):
            sel = [r for r in found_rows if r["dataset"] == name and r["probe"] == kind]
            cells = [f"{fmt(r['precision'])} / {fmt(r['recall'])}" + (f", {r['no_expert']} none" if r["no_expert"] else "") for r in sel]
            lines.append(f"| {name} | {kind} | {sel[0]['queries']} | {fmt(sel[0]['true_experts'], '.1f')} | " + " | ".join(cells) + " |")
    if accuracy_rows:
        lines += ["", "QKT (statistics probe) for each λ: mean overall accuracy (Local's beside it), forgetting in points, and "
                  "the queries that failed, finding no expert or only experts the querier's checks distrust (scored as the "
                  "querier's unchanged model, as the bench scores them).", "",
                  "| data set | λ | queries | Local overall | QKT overall | QKT query acc | forgetting | failed |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in accuracy_rows:
            lines.append(f"| {r['dataset']} | {r['lambda']:g} | {r['queries']} | {fmt(r['local_overall_accuracy'], '.3f')} | "
                         f"{fmt(r['overall_accuracy'], '.3f')} | {fmt(r['query_accuracy'], '.3f')} | "
                         f"{fmt(None if r['forgetting'] is None else 100 * r['forgetting'], '+.1f')} | {r['failed']} |")
    return "\n".join(lines) + "\n"


def plot(found_rows: list[dict], accuracy_rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in found_rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False, sharey=True)
    colors = dict(zip(KINDS, ("tab:orange", "tab:blue", "tab:green"), strict=True))
    for ax, name in zip(axes[0], names, strict=True):
        for kind in KINDS:
            sel = [r for r in found_rows if r["dataset"] == name and r["probe"] == kind]
            if not sel:
                continue
            lam = [r["lambda"] for r in sel]
            ax.plot(lam, [np.nan if r["recall"] is None else r["recall"] for r in sel], "-o", color=colors[kind], label=f"{kind}: recall")
            ax.plot(lam, [np.nan if r["precision"] is None else r["precision"] for r in sel], "--s", color=colors[kind],
                    label=f"{kind}: precision", markersize=4)
        acc = [r for r in accuracy_rows if r["dataset"] == name]
        if acc:
            ax.plot([r["lambda"] for r in acc], [r["overall_accuracy"] for r in acc], "-^", color="black", label="QKT overall acc (statistics)")
        ax.set_xscale("log")
        ax.set_xticks(LAMBDAS, [f"{lam:g}" for lam in LAMBDAS])
        ax.minorticks_off()
        ax.set_title(name)
        ax.set_xlabel("λ")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("precision, recall, accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    save_figure(fig, path)


def write_csv(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue().encode())


RUN_KEYS = ("command", "machine", "finished", "wall_seconds", "cpu_seconds")


def write_results(state: dict, output: Path) -> None:
    found_rows, accuracy_rows = summarize(state["queries"], state["accuracy"], LAMBDAS)
    state = {**state, "summary": found_rows, "accuracy_summary": accuracy_rows}
    atomic_write(output / "discovery.json", json.dumps(state, indent=1).encode())
    write_csv(found_rows, output / "discovery.csv")
    write_csv(accuracy_rows, output / "accuracy.csv")
    atomic_write(output / "discovery.md", markdown(found_rows, accuracy_rows, LAMBDAS).encode())
    plot(found_rows, accuracy_rows, output / "discovery.png")


def join(earlier: dict, later: dict) -> dict:
    """EARLIER's records with LATER's in place of the rows LATER measured, in the order of a run of both."""
    measured = {(r["dataset"], r["probe"]) for r in later["queries"]}
    measured_accuracy = {r["dataset"] for r in later["accuracy"]}
    queries = [r for r in earlier["queries"] if (r["dataset"], r["probe"]) not in measured] + later["queries"]
    accuracy = [r for r in earlier["accuracy"] if r["dataset"] not in measured_accuracy] + later["accuracy"]
    return {**earlier, "queries": sorted(queries, key=lambda r: (DATASETS.index(r["dataset"]), KINDS.index(r["probe"]))),
            "accuracy": sorted(accuracy, key=lambda r: DATASETS.index(r["dataset"])),
            "reruns": [*earlier.get("reruns", []), {k: later[k] for k in RUN_KEYS}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, help="data sets to measure (default: all)")
    parser.add_argument("--accuracy", nargs="*", default=["digits", "npz"], choices=DATASETS,
                        help="data sets on which QKT runs for each λ (default: digits npz; none: discovery only)")
    parser.add_argument("--accuracy-queries", type=int, default=None, help="where the parties train the CNN (the image data sets but digits), QKT on the first N queries of a seed only, "
                             "as the quick profile runs 2 (default: all)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="probe kinds (default: all)")
    parser.add_argument("--data-root", default=os.environ.get("QKT_DATA_ROOT"), help="folder of the data files (default: $QKT_DATA_ROOT)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the results go (default: docs/results/discovery)")
    parser.add_argument("--work", type=Path, default=Path("qkt-output/discovery"),
                        help="the tabular file and the parties' checkpoints (default: qkt-output/discovery)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $OMP_NUM_THREADS, else every core)")
    parser.add_argument("--join", nargs=2, type=Path, metavar=("EARLIER", "LATER"),
                        help="measure nothing: write EARLIER discovery.json's records with LATER's rows in place of the ones LATER re-measured")
    args = parser.parse_args()
    if args.join:
        earlier, later = (json.loads(path.read_text()) for path in args.join)
        write_results(join(earlier, later), args.output)
        print(f"wrote {args.output}")
        return
    set_threads(args.threads)
    profile = quick_profile()
    discovery: list[dict] = []
    accuracy: list[dict] = []
    wall, cpu = time.perf_counter(), time.process_time()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    def write() -> None:
        """Everything measured so far: an interrupted run keeps what it finished."""
        write_results({"command": command, "machine": machine(), "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                       "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                       "profile": "quick", "lambdas": list(LAMBDAS), "tabular": {**TABULAR, "train": TABULAR_TRAIN},
                       "queries": discovery, "accuracy": accuracy}, args.output)

    for name in args.datasets:
        dataset, path = load(name, profile, args.data_root, args.work)
        for seed in range(profile.seeds):
            for kind in tqdm(args.kinds, desc=f"{name} seed {seed}: discovery", unit="probe kind"):
                world = Seed(world_config(profile, dataset, kind, seed, args.data_root, path), dataset, args.work / "checkpoints")
                discovery += discovery_records(name, kind, seed, world, LAMBDAS)
                write()
            if name in args.accuracy:
                world = Seed(world_config(profile, dataset, "statistics", seed, args.data_root, path), dataset, args.work / "checkpoints")
                if world.config.training.arch == "cnn":  # a query there takes minutes
                    world.queries = world.queries[:args.accuracy_queries]
                with tqdm(total=len(world.queries) * len(LAMBDAS), desc=f"{name} seed {seed}: QKT per λ", unit="run") as bar:
                    for scenario in world.queries:
                        accuracy += accuracy_records(name, seed, world, scenario, LAMBDAS)
                        bar.update(len(LAMBDAS))
                        write()
    print(markdown(*summarize(discovery, accuracy, LAMBDAS), LAMBDAS))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
