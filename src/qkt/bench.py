"""``qkt bench``: every method of SPEC §4 under the scenarios of SPEC §5, as paper-style tables.

For each data set, scenario and seed the parties are trained once (checkpointed)
and so are the global models of the federated baselines; then every eligible
party queries once and every method is scored on its query. Rows are means ± std
over queriers × seeds. Results are written atomically after each query, so
``--resume`` continues an interrupted run where it stopped.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import os
import platform
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from . import experiment, partition  # noqa: E402
from .baselines import FEDERATED, train_global  # noqa: E402
from .baselines.fedavg import FederatedResult  # noqa: E402
from .config import RunConfig, parse_config  # noqa: E402
from .data import DATASETS, DataSet, find_file, load_dataset  # noqa: E402
from .errors import DataError, QKTError  # noqa: E402
from .models import build_model  # noqa: E402
from .query import protocol  # noqa: E402
from .report import METHOD_NAMES, atomic_write, human_bytes, save_figure  # noqa: E402
from .training import checkpoint_key, load_checkpoint, save_checkpoint  # noqa: E402

BASELINES = ["local", "fedavg", "fedprox", "fedgen", "ensemble", "kd"]
QKT_METHODS = ["qkt", "qkt_light"]
ABLATIONS = list(experiment.ABLATIONS)
# The existing ways of collaborating that the paper's headline compares QKT with: every baseline but Local.
COLLABORATIVE = [m for m in BASELINES if m != "local"]
NAMES = {**METHOD_NAMES, "qkt_no_masks": "QKT, no masks",
         "qkt_no_phase2": "QKT, no Phase 2", "qkt_merged": "QKT, phases merged", "qkt_no_mixup": "QKT, no mixup",
         "qkt_short_phase1": "QKT, short Phase 1 epochs", "qkt_phase2_mixups": "QKT, mixups in Phase 2 only",
         "qkt_whole_first_epoch": "QKT, whole student in Phase 1's first epoch only"}
METRICS = ["query_accuracy", "local_accuracy", "overall_accuracy", "forgetting", "bytes", "seconds"]


@dataclass(frozen=True)
class BenchScenario:
    """A named query scenario: the partition it needs and how each querier's query is chosen."""

    name: str
    description: str
    query_size: str = "single"  # "single": |Q| = 1; "multi": |Q| = 3 for 10 classes, scaled with |C|
    partition: str = "dirichlet"  # "dirichlet" (SPEC §5), "one-holder" or "three-holders" (k classes per party)
    query_from_one_teacher: bool = False
    forged_teacher: bool = False
    ablations: bool = False


SCENARIOS = {s.name: s for s in [
    BenchScenario("single", "Dirichlet(α) label skew; |Q| = 1 drawn among classes the querier holds < 10 samples of (SPEC §5)", ablations=True),
    BenchScenario("multi", "as single, |Q| = 3 for 10 classes (scaled with |C|)", query_size="multi"),
    BenchScenario("one-teacher-many-classes", "every class held by one party (|C|/2 parties × 2 classes); Q = both classes of one other party, "
                  "so one teacher is the expert of several query classes", partition="one-holder", query_from_one_teacher=True),
    BenchScenario("many-teachers-one-class", "|C| parties × 3 classes, every class held by 3 parties; |Q| = 1, "
                  "so several teachers are experts of the same query class", partition="three-holders"),
    BenchScenario("false-expert", "the single-class queries, plus one teacher holding no sample of Q that answers the probe "
                  "claiming full expertise (score 1.0 for every query class)", forged_teacher=True),
]}


@dataclass(frozen=True)
class Profile:
    """How much of the protocol a run covers: seeds, queriers, scenarios and settings per data set.

    ``scenarios`` and ``settings`` (RunConfig overrides) are keyed by data set name,
    with ``"default"`` for the rest.
    """

    seeds: int
    max_queriers: int | None  # None: every eligible party queries once per seed (SPEC §5)
    scenarios: dict[str, tuple[str, ...]]
    settings: dict[str, dict] = field(default_factory=dict)
    ablations: dict[str, bool] = field(default_factory=lambda: {"default": True})  # in the scenarios that have them

    def config(self, dataset: str) -> dict:
        return copy.deepcopy(self.settings.get(dataset, self.settings["default"]))

    def at_full_size(self) -> Profile:
        """The same profile on every training and test image of each data set: its subsets dropped."""
        settings = {name: {**s, "data": {k: v for k, v in s.get("data", {}).items() if k not in ("max_train", "max_test")}}
                    for name, s in self.settings.items()}
        return dataclasses.replace(self, settings=settings)

    def scenarios_for(self, dataset: str) -> tuple[str, ...]:
        return self.scenarios.get(dataset, self.scenarios["default"])

    def ablations_for(self, dataset: str) -> bool:
        return self.ablations.get(dataset, self.ablations["default"])


# Settings per data set, sized for 2 shared CPU cores. QueryConfig's defaults were tuned on
# digits; on images every probe and inversion step is a CNN backward pass over a batch, so
# the teachers refine fewer probes for fewer steps and the querier inverts fewer samples for
# fewer steps. Phase 1 keeps the CNN's first block (its full-resolution convolution) frozen
# and takes a third of the mixups in each epoch, in turn; the time that saves buys 7 epochs
# instead of 5, and the phases take 1.1-1.2x fine-tuning for 7 epochs against 2.3-2.5x for
# every block and every mixup in 5, at the same accuracy over the 119 headline queries
# (docs/performance-log.md). Image data sets are cut to stratified, seeded subsets of 6,000
# training and 2,000 test images so that a seed takes about seven minutes; the federated
# baselines get the same 5-epoch budget as the parties.
_IMAGES = {
    "data": {"max_train": 6000, "max_test": 2000},
    "training": {"arch": "cnn", "epochs": 5},
    "query": {"inversion": {"samples_per_class": 64, "steps": 50}, "probe": {"steps": 30, "num_samples": 256, "scales": [1.0]},
              "phase1_epochs": 7, "phase1_frozen_blocks": 1, "phase1_mixups": 1 / 3, "phase2_epochs": 10},
}
_DIGITS = {"training": {"arch": "mlp", "epochs": 30}}
_STANDARD = ("single", "multi")
PROFILES = {
    "quick": Profile(seeds=1, max_queriers=2, scenarios={"default": _STANDARD},
                     settings={"digits": _DIGITS, "default": _IMAGES}),
    # SPEC §5: every eligible party queries once per seed, three seeds. The first seed's first two
    # queriers are 'quick''s, so a full run resumes from a quick one in the same folder.
    # On images the ablations run in 'quick' (the first seed) only: each costs as much as a query.
    "full": Profile(seeds=3, max_queriers=None, scenarios={"digits": tuple(SCENARIOS), "default": _STANDARD},
                    settings={"digits": _DIGITS, "default": _IMAGES}, ablations={"digits": True, "default": False}),
    # The ablations on every querier of the first seed of 'full' (whose trained parties it shares).
    "ablations": Profile(seeds=1, max_queriers=None, scenarios={"default": ("single",)},
                         settings={"digits": _DIGITS, "default": _IMAGES}),
}


def available_datasets(data_root: str | os.PathLike | None = None) -> list[str]:
    """``digits`` and every registry data set whose file is under the data root."""
    found = ["digits"]
    for name in sorted(DATASETS):
        try:
            find_file(name, data_root)
        except DataError:
            continue
        found.append(name)
    return found


def multi_query_size(num_classes: int) -> int:
    """|Q| for multi-class queries: 3 for 10 classes, scaled with |C| (SPEC §5)."""
    return max(2, round(0.3 * num_classes))


def run_config(profile: Profile, dataset: DataSet, scenario: BenchScenario, seed: int, data_root: str | None,
               methods: Sequence[str] | None = None) -> RunConfig:
    """The RunConfig of one scenario and seed: the profile's settings, the scenario's partition, its methods (default: every one)."""
    raw = profile.config(dataset.name)
    c = dataset.num_classes
    raw["data"] = {**raw.get("data", {}), "name": dataset.name, "root": None if data_root is None else str(data_root)}
    raw["partition"] = {"num_parties": 10, "kind": "dirichlet", "alpha": 0.1, "seed": seed}
    if scenario.partition == "one-holder":
        raw["partition"] = {"num_parties": c // 2, "kind": "k_classes", "classes_per_party": 2, "seed": seed}
    elif scenario.partition == "three-holders":
        raw["partition"] = {"num_parties": c, "kind": "k_classes", "classes_per_party": 3, "seed": seed}
    raw["scenario"] = {"query_size": multi_query_size(c) if scenario.query_size == "multi" else 1}
    raw["training"] = {**raw.get("training", {}), "seed": seed}
    raw["query"] = {**raw.get("query", {}), "seed": seed}
    raw["methods"] = list(methods) if methods else BASELINES + QKT_METHODS + (
        ABLATIONS if scenario.ablations and profile.ablations_for(dataset.name) else [])
    return parse_config(raw, f"bench {dataset.name}/{scenario.name}")


def querier_queries(config: RunConfig, dataset: DataSet, parts: list[np.ndarray], scenario: BenchScenario,
                    max_queriers: int | None) -> list[tuple[int, tuple[int, ...] | None]]:
    """Each querier with its fixed query (``None``: drawn by :func:`partition.make_scenario`)."""
    s = config.scenario
    c = dataset.num_classes
    if scenario.query_from_one_teacher:
        counts = partition.class_counts(dataset.y_train, parts, c)
        pairs = []
        for q in range(len(parts)):
            teacher = (q + 1) % len(parts)
            query = tuple(int(k) for k in np.flatnonzero((counts[teacher] >= s.min_expert_samples) & (counts[q] < s.max_query_samples)))
            if query:
                pairs.append((q, query))
    else:
        eligible = partition.eligible_queriers(dataset.y_train, parts, c, s.query_size, s.max_query_samples, s.min_expert_samples)
        pairs = [(q, None) for q in eligible]
    return pairs[:max_queriers] if max_queriers else pairs


def false_expert(scenario: partition.Scenario, labels: np.ndarray, num_classes: int) -> int:
    """The teacher that will lie: of those holding fewest samples of Q, the one holding most samples overall."""
    counts = partition.class_counts(labels, list(scenario.parts), num_classes)
    teachers = [k for k in range(len(counts)) if k != scenario.querier]
    return min(teachers, key=lambda k: (counts[k, list(scenario.query)].sum(), -counts[k].sum()))


@contextmanager
def teacher_replies(cache: weakref.WeakKeyDictionary, liar: torch.nn.Module | None = None) -> Iterator[None]:
    """Teachers answer the probe through ``cache``; ``liar`` claims score 1.0 for every query class.

    A teacher's probe scores do not depend on the query (the reply is the full score
    vector restricted to ``Q``), so each teacher computes them once per probe recipe
    and every query of a seed reuses them, as a real teacher would. The seconds spent
    are kept in the cache under ``"seconds"`` per teacher.
    """
    honest = protocol.answer_probe

    def answer(model, announcement, holdout=None):
        every_class = dataclasses.replace(announcement, query=tuple(range(announcement.num_classes)))
        recipe = every_class.to_bytes()
        entry = cache.setdefault(model, {})
        if recipe not in entry:
            start = time.perf_counter()
            entry[recipe] = honest(model, every_class, holdout)
            entry["seconds"] = time.perf_counter() - start
        scores = entry[recipe][list(announcement.query)]
        return np.ones_like(scores) if model is liar else scores

    protocol.answer_probe = answer
    try:
        yield
    finally:
        protocol.answer_probe = honest


def global_model(method: str, config: RunConfig, dataset: DataSet, tensors: tuple[torch.Tensor, torch.Tensor],
                 parts: list[np.ndarray], checkpoints: Path, progress: bool) -> FederatedResult:
    """Train (or reload) the global model of a federated baseline for one partition and seed."""
    key = checkpoint_key(method, dataset.name, dataset.digest, config.training.model_dump(), config.federated.model_dump(), *parts)
    path, meta = checkpoints / f"global-{method}-{key}.pt", checkpoints / f"global-{method}-{key}.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        model = build_model(config.training.arch, dataset.input_shape, dataset.num_classes)
        if load_checkpoint(model, path):
            return FederatedResult(model, **info)
    result = train_global(method, config, dataset.input_shape, dataset.num_classes, *tensors, parts, progress)
    save_checkpoint(result.model, path)
    atomic_write(meta, json.dumps({k: getattr(result, k) for k in ("rounds", "seconds", "bytes_sent", "bytes_received")}).encode())
    return result


def _record(dataset: str, scenario: str, seed: int, world: experiment.World, results: dict, liar: int | None) -> dict:
    s = world.scenario
    return {
        "dataset": dataset, "scenario": scenario, "seed": seed, "querier": s.querier, "query": list(s.query),
        "local_classes": list(s.local_classes), "removed_query_samples": s.removed, "false_expert": liar,
        "methods": {k: {m: getattr(v, m) for m in ("query_accuracy", "local_accuracy", "overall_accuracy", "forgetting",
                                                   "bytes_sent", "bytes_received", "seconds", "details")}
                    for k, v in results.items()},
    }


def run_scenario(dataset: DataSet, scenario: BenchScenario, seed: int, profile: Profile, data_root: str | None,
                 checkpoints: Path, done: set, on_record, progress: bool, methods: Sequence[str] | None = None) -> None:
    """Every querier of one scenario and seed; ``on_record`` receives each query's record as soon as it is scored."""
    config = run_config(profile, dataset, scenario, seed, data_root, methods)
    parts = experiment.make_partition(config, dataset.y_train)
    x_train, y_train, x_test, y_test = dataset.normalized()
    pairs = [(q, query) for q, query in querier_queries(config, dataset, parts, scenario, profile.max_queriers)
             if (dataset.name, scenario.name, seed, q) not in done]
    if not pairs:
        return
    whole = partition.Scenario(-1, (), (), tuple(parts), 0)
    base_models = experiment.train_parties(config, (x_train, y_train), whole, dataset, checkpoints, progress)
    global_models = {m: global_model(m, config, dataset, (x_train, y_train), parts, checkpoints, progress)
                     for m in FEDERATED if m in config.methods}
    test_probs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # shared: fixed models are evaluated once per seed
    probes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    every_class = protocol.Announcement.from_config(tuple(range(dataset.num_classes)), dataset.num_classes,
                                                    tuple(dataset.input_shape), config.query)
    with teacher_replies(probes):  # every teacher answers once, before any query is timed
        for model in tqdm(base_models, desc="teachers' probes", unit="teacher", leave=False, disable=not progress):
            protocol.answer_probe(model, every_class)
    bar = tqdm(pairs, desc=f"{dataset.name} {scenario.name} seed {seed}", unit="query", disable=not progress)
    for q, query in bar:
        s = config.scenario
        scen = partition.make_scenario(dataset.y_train, parts, q, s.query_size, seed, dataset.num_classes,
                                       s.max_query_samples, s.min_expert_samples, query)
        models = list(base_models)
        if scen.removed:  # the querier lost its few samples of Q: retrain it alone, from its own checkpoint if any
            models[q] = experiment.train_parties(config, (x_train, y_train), scen, dataset, checkpoints, False)[q]
        world = experiment.World(dataset, x_train, y_train, x_test, y_test, scen, models, global_models, test_probs)
        liar = false_expert(scen, dataset.y_train, dataset.num_classes) if scenario.forged_teacher else None
        with teacher_replies(probes, models[liar] if liar is not None else None):
            results, _ = experiment.run_methods(world, config, progress=False)
        record = _record(dataset.name, scenario.name, seed, world, results, liar)
        record["teacher_probe_seconds"] = float(np.mean([e["seconds"] for e in probes.values()])) if len(probes) else 0.0
        on_record(record)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(np.nanmean(a)), float(np.nanstd(a))


def summarize(records: list[dict]) -> dict:
    """Per data set and scenario: mean and std of every metric per method, and QKT's gains in points."""
    out: dict = {}
    for rec in records:
        out.setdefault(rec["dataset"], {}).setdefault(rec["scenario"], []).append(rec)
    summary: dict = {}
    for ds, by_scenario in out.items():
        for name, recs in by_scenario.items():
            methods = list(dict.fromkeys(m for r in recs for m in r["methods"]))
            rows = {}
            for m in methods:
                results = [r["methods"][m] for r in recs if m in r["methods"]]  # a resumed run may add methods
                values = {k: [v[k] for v in results] for k in ("query_accuracy", "local_accuracy", "overall_accuracy", "forgetting", "seconds")}
                values["bytes"] = [v["bytes_sent"] + v["bytes_received"] for v in results]
                rows[m] = {k: _mean_std(v) for k, v in values.items()}
                rows[m]["queries"] = len(results)
                rows[m]["failed"] = sum("failed" in v["details"] for v in results)
            entry = summary.setdefault(ds, {})[name] = {"queries": len(recs), "seeds": sorted({r["seed"] for r in recs}), "rows": rows}
            if "qkt" not in rows:  # a run of baselines alone, to merge with a run of QKT (benchmarks/merge_runs.py)
                continue
            qkt = rows["qkt"]["overall_accuracy"][0]
            entry.update(gain_over={m: 100 * (qkt - rows[m]["overall_accuracy"][0]) for m in methods if m != "qkt"},
                         qkt_forgetting_points=100 * rows["qkt"]["forgetting"][0])
            collaborative = [m for m in COLLABORATIVE if m in rows]
            if collaborative:  # a run of chosen methods (--methods) may have none
                best = max(collaborative, key=lambda m: rows[m]["overall_accuracy"][0])
                entry.update({
                    "gain_over_collaborative_mean": 100 * (qkt - float(np.mean([rows[m]["overall_accuracy"][0] for m in collaborative]))),
                    "best_collaborative": best,
                    "gain_over_best_collaborative": 100 * (qkt - rows[best]["overall_accuracy"][0]),
                })
    return summary


def _cell(metric: str, mean: float, std: float) -> str:
    if metric == "bytes":
        return human_bytes(mean)
    if metric == "seconds":
        return f"{mean:.1f}"
    sign = "+" if metric == "forgetting" else ""
    return f"{mean:{sign}.3f} ± {std:.3f}"


def format_tables(summary: dict) -> str:
    """Markdown: one table per data set and scenario, and QKT's headline gains."""
    lines = []
    for ds, scenarios in summary.items():
        for name, s in scenarios.items():
            lines += [f"### {ds} — {name}", "", f"{SCENARIOS[name].description}. {s['queries']} queries "
                      f"(queriers × seeds {s['seeds']}); mean ± std; Δ = QKT's overall accuracy minus the method's, in points.", "",
                      "| method | query acc | local acc | overall acc | forgetting | bytes | seconds | Δ overall |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for m, row in s["rows"].items():
                gain = f"{s['gain_over'][m]:+.1f}" if m in s.get("gain_over", {}) else "—"
                count = "" if row["queries"] == s["queries"] else f" ({row['queries']} queries)"
                lines.append(f"| {NAMES.get(m, m)}{count} | " + " | ".join(_cell(k, *row[k]) for k in METRICS) + f" | {gain} |")
            failed = [f"{NAMES.get(m, m)} in {row['failed']}" for m, row in s["rows"].items() if row["failed"]]
            if failed:
                lines += ["", "Queries that failed (no expert found; scored as the querier's unchanged model): " + ", ".join(failed) + "."]
            against = (f"QKT vs the mean of the collaborative methods ({', '.join(NAMES[m] for m in COLLABORATIVE if m in s['rows'])}): "
                       f"{s['gain_over_collaborative_mean']:+.1f} points; vs the best of them ({NAMES[s['best_collaborative']]}): "
                       f"{s['gain_over_best_collaborative']:+.1f} points; " if "best_collaborative" in s else "")
            forgets = f"QKT forgets {s['qkt_forgetting_points']:.1f} points." if "qkt_forgetting_points" in s else "QKT did not run."
            lines += ["", f"{against}{forgets}", ""]
    return "\n".join(lines)


def format_headline(summary: dict) -> str:
    """The paper-style headline: QKT's overall accuracy against the collaborative methods, per data set and query kind."""
    lines = ["| data set | queries | QKT overall acc | mean of collaborative | best collaborative | QKT − mean | QKT − best | QKT forgetting |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for ds, scenarios in summary.items():
        for name in ("single", "multi"):
            if name not in scenarios or "best_collaborative" not in scenarios[name]:
                continue
            s = scenarios[name]
            rows = s["rows"]
            mean_collab = rows["qkt"]["overall_accuracy"][0] - s["gain_over_collaborative_mean"] / 100
            best = s["best_collaborative"]
            lines.append(f"| {ds} | {'single-class' if name == 'single' else 'multi-class'} | {rows['qkt']['overall_accuracy'][0]:.3f} | "
                         f"{mean_collab:.3f} | {rows[best]['overall_accuracy'][0]:.3f} ({NAMES[best]}) | "
                         f"{s['gain_over_collaborative_mean']:+.1f} | {s['gain_over_best_collaborative']:+.1f} | "
                         f"{s['qkt_forgetting_points']:.1f} pts |")
    return "\n".join(lines) if len(lines) > 2 else "No collaborative method ran (qkt bench --methods)."


def format_csv(summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "scenario", "queries", "method"] + [f"{m}_{k}" for m in METRICS for k in ("mean", "std")]
                    + ["qkt_gain_overall_points"])
    for ds, scenarios in summary.items():
        for name, s in scenarios.items():
            for m, row in s["rows"].items():
                writer.writerow([ds, name, s["queries"], m] + [f"{v:.6g}" for k in METRICS for v in row[k]]
                                + [f"{s['gain_over'][m]:.3f}" if m in s.get("gain_over", {}) else ""])
    return buffer.getvalue()


def plot(summary: dict, path: Path) -> None:
    """Overall accuracy (mean ± std) of every method, one panel per data set, one bar group per scenario."""
    datasets = list(summary)
    fig, axes = plt.subplots(len(datasets), 1, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets, strict=True):
        scenarios = list(summary[ds])
        methods = list(dict.fromkeys(m for s in scenarios for m in summary[ds][s]["rows"]))
        width = 0.85 / len(methods)
        for i, m in enumerate(methods):
            means = [summary[ds][s]["rows"].get(m, {}).get("overall_accuracy", (np.nan, 0))[0] for s in scenarios]
            stds = [summary[ds][s]["rows"].get(m, {}).get("overall_accuracy", (0, 0))[1] for s in scenarios]
            ax.bar(np.arange(len(scenarios)) + (i - (len(methods) - 1) / 2) * width, means, width, yerr=stds,
                   label=NAMES.get(m, m), capsize=2)
        ax.set_xticks(np.arange(len(scenarios)), scenarios, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("overall accuracy")
        ax.set_title(ds, fontsize=10)
    axes[0, 0].legend(ncol=6, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.35), frameon=False)
    fig.tight_layout()
    save_figure(fig, path)


def write_outputs(state: dict, output: Path) -> None:
    """``bench.json`` (every query), ``bench.md`` and ``bench.csv`` (the tables), ``headline.md`` and ``bench.png``."""
    summary = summarize(state["records"])
    state["summary"] = summary
    atomic_write(output / "bench.json", json.dumps(state, indent=1).encode())
    if not summary:
        return
    scale = " --whole-dataset" if state["whole_dataset"] else ""
    header = (f"qkt bench --profile {state['profile']}{scale} ({', '.join(state['datasets'])}); {state['started']}; "
              f"{state['machine']}; wall {state['wall_seconds']:.0f} s, CPU {state['cpu_seconds']:.0f} s\n\n")
    atomic_write(output / "bench.md", (header + "## Headline\n\n" + format_headline(summary) + "\n\n" + format_tables(summary)).encode())
    atomic_write(output / "headline.md", (format_headline(summary) + "\n").encode())
    atomic_write(output / "bench.csv", format_csv(summary).encode())
    plot(summary, output / "bench.png")


def check_resumed_settings(before: dict, settings: dict[str, dict], path: Path) -> None:
    """Refuse to resume a run whose finished queries ran under other settings than the profile's now.

    A profile's settings change between versions of qkt (the image Phase 1 did on 2026-12-04);
    resuming across such a change would put queries of two methods under one name in one table.
    """
    held = before.get("settings")
    names = sorted({r["dataset"] for r in before["records"]} & set(settings))
    if names and held is None:
        raise QKTError(f"{path} does not record the settings its queries ran under (a run of qkt before 2026-12-05), "
                       "so they cannot be checked against the profile's: choose another --output")
    for name in names:
        then, now = dotted(held.get(name, {})), dotted(settings[name])
        changed = [f"{key} {then.get(key, 'unset')} -> {now.get(key, 'unset')}" for key in sorted(then.keys() | now.keys())
                   if then.get(key) != now.get(key)]
        if changed:
            raise QKTError(f"{path} ran {name} under other settings than the profile's now ({'; '.join(changed)}): "
                           "its queries and the rest would not be one method; choose another --output")


def dotted(settings: dict, prefix: str = "") -> dict[str, object]:
    """Nested settings as ``{"query.phase1_epochs": 7, ...}``."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def processor() -> str:
    """The CPU's model name: the same code on two x86_64 machines of two cores can time 1.4x apart."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPU cores ({processor()}), {memory:.0f} GB RAM, {platform.machine()}, torch {torch.__version__}, "
            "no GPU used")


def run_bench(profile_name: str, datasets: Sequence[str] | None, output: Path, data_root: str | None = None,
              scenarios: Sequence[str] | None = None, resume: bool = False, progress: bool = True,
              methods: Sequence[str] | None = None, whole_dataset: bool = False) -> dict:
    """Run a benchmark profile and write its outputs to ``output``; returns the final state (as in ``bench.json``).

    Parameters
    ----------
    profile_name:
        ``quick`` (one seed, two queriers, single- and multi-class), ``full`` (three seeds,
        every eligible querier; on digits also the reviewers' scenarios) or ``ablations``
        (every ablation on every single-class querier of the first seed).
    datasets:
        Registry names; default: ``digits`` and every data set whose file is under ``data_root``.
    scenarios:
        A subset of the profile's scenarios (names in :data:`SCENARIOS`).
    resume:
        Keep the queries already in ``output/bench.json`` and run only the missing ones.
    methods:
        Only these methods (default: the profile's). Every Δ is against ``qkt``; a run without it,
        of baselines whose settings a change to QKT's leaves alone, has tables without Δ and is
        for ``benchmarks/merge_runs.py`` to join to a run of QKT on the same queries.
    whole_dataset:
        Every training and test image of each data set instead of the profile's subsets
        (SPEC §5's scale: on CIFAR-10 each query takes about three times as long).
    """
    if profile_name not in PROFILES:
        raise QKTError(f"unknown profile '{profile_name}'; choose one of: {', '.join(PROFILES)}")
    profile = PROFILES[profile_name].at_full_size() if whole_dataset else PROFILES[profile_name]
    scenarios = list(dict.fromkeys(scenarios or ()))  # a name given twice would run, and count, its queries twice
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise QKTError(f"unknown scenario(s) {unknown}; choose from: {', '.join(SCENARIOS)}")
    methods = list(dict.fromkeys(methods or ()))
    datasets = list(dict.fromkeys(datasets or available_datasets(data_root)))
    if "npz" in datasets:
        raise QKTError("qkt bench runs the registry data sets; for your own .npz file use `qkt run` with data.name: npz and data.path")
    for name in datasets:  # a missing file must stop the bench before hours of other data sets, not after
        if name != "digits":
            find_file(name, data_root)
    # As written to bench.json, so that a resumed run compares like with like.
    settings = json.loads(json.dumps({name: profile.config(name) for name in datasets}))
    previous = output / "bench.json"
    records: list[dict] = []
    spent = (0.0, 0.0)
    if resume and previous.exists():
        before = json.loads(previous.read_text())
        if before.get("whole_dataset", False) != whole_dataset:
            held, flag = ("the subsets", "without") if whole_dataset else ("whole data sets", "with")
            raise QKTError(f"{previous} holds a run on {held}: resume it {flag} --whole-dataset, or choose another --output")
        records, spent = before["records"], (before["wall_seconds"], before["cpu_seconds"])
        check_resumed_settings(before, settings, previous)
        settings = {**before.get("settings", {}), **settings}  # of its data sets this run leaves out, too
    done = {(r["dataset"], r["scenario"], r["seed"], r["querier"]) for r in records}
    state = {"profile": profile_name, "datasets": datasets, "settings": settings, "machine": machine(),
             "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "whole_dataset": whole_dataset, "wall_seconds": 0.0, "cpu_seconds": 0.0,
             "records": records}
    wall, cpu = time.perf_counter() - spent[0], time.process_time() - spent[1]

    def on_record(record: dict) -> None:
        records.append(record)
        state["wall_seconds"] = time.perf_counter() - wall
        state["cpu_seconds"] = time.process_time() - cpu
        write_outputs(state, output)

    for name in datasets:
        data = profile.config(name).get("data", {})
        # One seeded subset for every seed: seeds vary the partition and the training, not the data.
        dataset = load_dataset(name, data_root).subsample(data.get("max_train"), data.get("max_test"), 0)
        for seed in range(profile.seeds):
            for scenario in scenarios or profile.scenarios_for(name):
                run_scenario(dataset, SCENARIOS[scenario], seed, profile, data_root, output / "checkpoints", done, on_record,
                             progress, methods)
    state["wall_seconds"] = time.perf_counter() - wall
    state["cpu_seconds"] = time.process_time() - cpu
    write_outputs(state, output)
    return state

