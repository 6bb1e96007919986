"""How fast a query is, against fine-tuning and FedAvg, and how its cost grows with the parties.

    python benchmarks/perf.py            # 20-30 minutes on 2 idle cores; docs/results/perf.json, perf_vs_parties.png, perf_vs_fedavg.png
    python benchmarks/perf.py --whole-dataset   # 90-120 minutes; docs/results/perf-50k.json and its plots
    python benchmarks/perf.py --quick    # a smaller smoke run of the same, written under qkt-output/perf
    python benchmarks/perf.py --phases-only --output docs/results/perf-phases.json   # section 1 alone, a few minutes

All three measurements use the CIFAR-10 single-class scenario of ``qkt bench`` (seed 0:
K = 10 parties, Dirichlet α = 0.1, its 6,000 training and 2,000 test images, the 3-block
CNN and the benchmark's query settings); the querier is the one ``qkt run`` picks, the
eligible party with the most samples. ``--whole-dataset`` partitions all 50,000 training
images instead (SPEC §5's scale; the benchmark subsamples to fit its many queries on two
cores): FedAvg's rounds and fine-tuning grow with the data, the probe does not.

1. **Phases 1 + 2 against plain fine-tuning.** ``learn``'s Phase 1 and Phase 2 seconds
   against :func:`qkt.training.fit` with cross-entropy on the querier's local data, with
   Phase 1's optimiser, batch size and number of epochs. Phase 2 re-fits only the linear
   head on features computed once, so its epochs are not fine-tuning epochs: it is counted
   on QKT's side only. Synthesis (inverting the experts) is reported apart. The transfer
   set is the local data widened with synthetic inputs and as many mixups; the phases are
   timed with each Phase 1 of :data:`PHASE1_VARIANTS`: the benchmark's (every block but the
   first, on the first block's outputs computed once, with the local and synthetic inputs
   and the next third of the mixups in each of 7 epochs), the one it replaced (the whole
   student on every transfer input in each of 5 epochs), and QKT Light's (the last block
   and the head, on the outputs of the blocks before them). Each is compared with
   fine-tuning for as many epochs as its Phase 1 has.
2. **A whole query against FedAvg.** ``qkt.query``, and again with QKT Light, with every
   teacher answering the probe in this process, one after the other, against FedAvg over
   the same parties with its configured budget (``training.epochs`` local epochs in rounds of ``federated.local_epochs``,
   as in ``qkt bench``) and after ``--fedavg-rounds`` rounds (40), closer to what FedAvg
   needs under this label skew, both read off one run; each timed up to the first round whose accuracy reaches its final one (the querier's overall
   accuracy, as every table reports), evaluation excluded. Bytes are the querier's. Both
   run every party's computation in one process; the ``parallel`` figures add up only the
   slowest party of each step, as when every party computes on its own machine.
3. **Parties, K = 10, 50, 100, with the experts held fixed.** The K = 10 parties above plus
   K − 10 parties that each trained a CNN briefly on two classes outside the query, so no
   probe takes them for experts (the experts found are recorded for each K). Each teacher
   answers the probe once, timed, before any query is timed (as ``qkt bench`` does); the
   query then costs the querier its own work plus the wait for the slowest reply, since
   teachers answer in parallel. Peak memory is the process's resident peak during the
   query, reset before it (``/proc/self/clear_refs``); the process holds every party's
   model, as the in-process simulation does.

Every section keeps the fastest of ``--repeats`` interleaved runs: on a shared machine the
other load only ever adds time.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import shlex
import sys
import time
import warnings
import weakref
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from qkt import bench, experiment  # noqa: E402
from qkt.baselines.fedavg import FedAvg, FederatedResult  # noqa: E402
from qkt.config import RunConfig, parse_config  # noqa: E402
from qkt.data import load_dataset  # noqa: E402
from qkt.metrics import MethodResult, score  # noqa: E402
from qkt.models import build_model, num_bytes  # noqa: E402
from qkt.query import protocol, query  # noqa: E402
from qkt.report import atomic_write, human_bytes, save_figure  # noqa: E402
from qkt.training import fit, per_class_accuracy, set_threads  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
# The Phases 1 + 2 timed against fine-tuning: the benchmark's (the first block frozen, a third of the mixups in
# each of 7 epochs), the schedule it replaced (every block and every mixup in each of 5 epochs), and QKT Light's,
# which trains the last block and the head throughout, on the benchmark's inputs and epochs.
PHASE1_VARIANTS = {"default": {},
                   "every_block_every_mixup_5_epochs": {"phase1_epoch": "transfer", "phase1_whole_epochs": None,
                                                        "phase1_frozen_blocks": 0, "phase1_mixups": 1.0, "phase1_epochs": 5},
                   "light": {"light": True}}
# A smaller world for --quick: fewer images, probe and inversion steps, epochs of a query, parties.
QUICK = {
    "data": {"max_train": 2000, "max_test": 500},
    "query": {"probe": {"steps": 10, "num_samples": 64}, "inversion": {"samples_per_class": 16, "steps": 10},
              "phase1_epochs": 2, "phase2_epochs": 2},
}


def merged(base: dict, updates: dict) -> dict:
    out = dict(base)
    for key, value in updates.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def memory() -> dict[str, int]:
    """Resident bytes now and at the peak since the last :func:`reset_peak`."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_bytes": int(fields["VmRSS"].split()[0]) * 1024, "peak_rss_bytes": int(fields["VmHWM"].split()[0]) * 1024}


def reset_peak() -> bool:
    """Hand freed memory back to the system, then restart the peak at the live memory; False if the kernel refuses."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # qkt.training.set_threads has glibc keep freed memory, which would count as resident
    except (OSError, AttributeError):
        pass  # no glibc: nothing kept
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def accuracy(world: experiment.World, model: torch.nn.Module, local_before: float) -> MethodResult:
    s = world.scenario
    counts = np.bincount(world.dataset.y_test, minlength=world.dataset.num_classes)
    return score("", per_class_accuracy(model, world.x_test, world.y_test, world.dataset.num_classes), local_before,
                 counts, s.query, s.local_classes)


def accuracies(result: MethodResult) -> dict[str, float]:
    return {k: round(getattr(result, k), 4) for k in ("query_accuracy", "local_accuracy", "overall_accuracy", "forgetting")}


class LoggedFedAvg(FedAvg):
    """FedAvg as configured, scored after every round; the scoring is kept off its clock.

    Party ``k``'s local training in a round runs from the call of :meth:`local_loss` for
    ``k`` to that for ``k + 1`` (the last party's, to :meth:`after_round`).
    """

    def __init__(self, config, training, evaluate):
        super().__init__(config, training)
        self.evaluate = evaluate
        self.log: list[dict] = []
        self.marks: list[float] = []
        self.paused = 0.0
        self.start_time = 0.0

    def start(self, model, parties):
        self.start_time = time.perf_counter()
        super().start(model, parties)

    def local_loss(self, global_model, party, round_):
        self.marks.append(time.perf_counter())
        return super().local_loss(global_model, party, round_)

    def after_round(self, global_model, local_models, round_):
        now = time.perf_counter()
        party_seconds = np.diff([*self.marks, now])
        self.marks = []
        result = self.evaluate(global_model)
        self.log.append({"round": round_ + 1, "seconds": now - self.start_time - self.paused,
                         "slowest_party_seconds": float(party_seconds.max()), **accuracies(result)})
        self.paused += time.perf_counter() - now


def world_config(args: argparse.Namespace, dataset) -> RunConfig:
    config = bench.run_config(bench.PROFILES["full"], dataset, bench.SCENARIOS["single"], 0, args.data_root)
    if args.whole_dataset:
        config = config.model_copy(update={"data": config.data.model_copy(update={"max_train": None, "max_test": None})})
    return parse_config(merged(config.model_dump(), QUICK), "perf --quick") if args.quick else config


def fedavg_curve(world: experiment.World, config: RunConfig, rounds: int, local_before: float,
                 progress: bool) -> tuple[list[dict], FederatedResult]:
    """FedAvg over the world's parties for ``rounds`` rounds of ``federated.local_epochs``: its log, scored after each round, and result."""
    s = world.scenario
    training = config.training.model_copy(update={"epochs": rounds * config.federated.local_epochs})
    fedavg = LoggedFedAvg(config.federated, training, lambda m: accuracy(world, m, local_before))
    parties = [(world.x_train[torch.as_tensor(p)], world.y_train[torch.as_tensor(p)]) for p in s.parts]
    result = fedavg.fit(lambda: build_model(config.training.arch, world.dataset.input_shape, world.dataset.num_classes), parties, progress)
    return fedavg.log, result


def stopped_after(curve: list[dict], result: FederatedResult, rounds: int, local_epochs: int) -> dict:
    """FedAvg's figures had it stopped after ``rounds`` rounds of ``curve``.

    Its final accuracy is that round's; it is reached at the first round scoring at least
    that. Each round's training is seeded by the round's index alone, so a shorter run is
    the first rounds of a longer one.
    """
    log = curve[:rounds]
    final = log[-1]["overall_accuracy"]
    reached = next(r for r in log if r["overall_accuracy"] >= final)
    return {"rounds_configured": rounds, "local_epochs_per_round": local_epochs,
            "per_round": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in log],
            "final_overall_accuracy": final, "rounds_to_final": reached["round"], "seconds_to_final": round(reached["seconds"], 2),
            "seconds_all_rounds": round(log[-1]["seconds"], 2),
            "parallel_seconds_to_final": round(sum(r["slowest_party_seconds"] for r in log[:reached["round"]]), 2),
            "bytes_to_final": (result.bytes_sent + result.bytes_received) * reached["round"] // result.rounds,
            "model_bytes": num_bytes(result.model)}


def measured_query(world: experiment.World, config: RunConfig, local_before: float, light: bool,
                   progress: bool) -> tuple[dict, protocol.QueryReport, weakref.WeakKeyDictionary]:
    """One whole query, every teacher computing its probe reply afresh in this process; its figures, report and replies."""
    s = world.scenario
    replies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    settings = config.query.model_copy(update={"light": light})
    with bench.teacher_replies(replies), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report carries them
        (model, report), wall = timed(lambda: query(world.models[s.querier], world.teachers, s.query, world.querier_data, settings,
                                                    progress=progress))
    reply_seconds = [replies[m]["seconds"] for m in world.teachers.values()]
    figures = {"wall_seconds": round(wall, 2), "seconds_per_phase": {k: round(v, 2) for k, v in report.seconds.items()},
               "teacher_reply_seconds": {"each": [round(x, 2) for x in reply_seconds], "sum": round(sum(reply_seconds), 2)},
               "parallel_seconds": round(wall - sum(reply_seconds) + max(reply_seconds), 2),
               "bytes": report.bytes_sent + report.bytes_received, "bytes_sent": report.bytes_sent,
               "bytes_received": report.bytes_received, "experts": report.experts, **accuracies(accuracy(world, model, local_before))}
    return figures, report, replies


def query_vs_fedavg(world: experiment.World, config: RunConfig, local_before: float, long_rounds: int, repeats: int,
                    progress: bool) -> tuple[dict, protocol.QueryReport, weakref.WeakKeyDictionary]:
    """Section 2; also returns the QKT query's report and the teachers' probe replies, which sections 1 and 3 reuse.

    QKT and QKT Light (float16 weights, only the head and last block trained) each run
    a whole query. FedAvg is stopped twice: with the benchmark's budget (the parties' own
    epochs) and after ``long_rounds`` rounds, closer to what FedAvg needs under this label
    skew; one run of the longer gives both. Queries and FedAvg run ``repeats`` times,
    interleaved, and the fastest of each figure's runs is kept, with its ``parallel``
    figure; every run is seeded alike, so the runs differ only in time.
    """
    budget_rounds = config.training.epochs // config.federated.local_epochs
    runs: dict[str, list] = {"qkt": [], "qkt_light": [], "fedavg": [], "fedavg_long": []}
    for _ in tqdm(range(repeats), desc="query vs FedAvg", unit="repeat", disable=not progress):
        for method, light in (("qkt", False), ("qkt_light", True)):
            runs[method].append(measured_query(world, config, local_before, light, progress))
        curve, result = fedavg_curve(world, config, max(budget_rounds, long_rounds), local_before, progress)
        for name, rounds in (("fedavg", budget_rounds), ("fedavg_long", long_rounds)):
            runs[name].append(stopped_after(curve, result, rounds, config.federated.local_epochs))
    fastest = {method: min(runs[method], key=lambda r: r[0]["wall_seconds"]) for method in ("qkt", "qkt_light")}
    section = {method: {**fastest[method][0], "wall_seconds_each_repeat": [r[0]["wall_seconds"] for r in runs[method]],
                        "same_accuracy_and_bytes_every_repeat": len({(r[0]["overall_accuracy"], r[0]["bytes"]) for r in runs[method]}) == 1}
               for method in ("qkt", "qkt_light")}
    _, report, replies = fastest["qkt"]
    for name in ("fedavg", "fedavg_long"):
        fedavg = min(runs[name], key=lambda r: r["seconds_to_final"])
        section[name] = {**fedavg, "seconds_to_final_each_repeat": [r["seconds_to_final"] for r in runs[name]],
                         "same_accuracy_every_repeat": len({r["final_overall_accuracy"] for r in runs[name]}) == 1,
                         "ratios": {method: {"time": round(section[method]["wall_seconds"] / fedavg["seconds_to_final"], 3),
                                             "parallel_time": round(section[method]["parallel_seconds"] / fedavg["parallel_seconds_to_final"], 3),
                                             "bytes": round(section[method]["bytes"] / fedavg["bytes_to_final"], 4)}
                                    for method in ("qkt", "qkt_light")}}
    return section, report, replies


def phases_vs_finetuning(world: experiment.World, config: RunConfig, report: protocol.QueryReport, repeats: int, progress: bool) -> dict:
    """Section 1: the same experts and masks as the query of section 2, learnt again ``repeats`` times."""
    s = world.scenario
    q = config.query
    student = world.models[s.querier]
    local_x, local_y = world.querier_data
    names = sorted({k for v in report.experts.values() for k in v})
    lesson = protocol.Lesson({k: world.teachers[k] for k in names},
                             {k: np.array([k in report.experts[c] for c in s.query]) for k in names}, s.query, local_x, local_y)
    # Each schedule is compared with fine-tuning for as many epochs as its Phase 1 has.
    epochs = {name: q.model_copy(update=update).phase1_epochs for name, update in PHASE1_VARIANTS.items()}
    finetune = {name: "finetune_local" if e == q.phase1_epochs else f"finetune_local_{e}_epochs" for name, e in epochs.items()}
    runs = []
    for _ in tqdm(range(repeats), desc="phases vs fine-tuning", unit="repeat", disable=not progress):
        run = {}
        for name, update in PHASE1_VARIANTS.items():
            _, seconds, transfer, num_synthetic = protocol.learn(student, lesson, q.model_copy(update=update), progress=False)
            run.update({f"{k}_{name}": round(v, 3) for k, v in seconds.items()})
        for name, key in finetune.items():
            if key not in run:
                run[key] = round(timed(lambda e=epochs[name]: fit(copy.deepcopy(student), (local_x, local_y), e, lr=q.lr,
                                                                  batch_size=q.batch_size, weight_decay=0.0, seed=q.seed,
                                                                  progress=False))[1], 3)
        runs.append(run)
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    phases = {name: min(r[f"phase1_{name}"] + r[f"phase2_{name}"] for r in runs) for name in PHASE1_VARIANTS}
    synthesis = best["synthesis_default"]
    return {
        "epochs": {"phase1": q.phase1_epochs, "phase2_head_only": q.phase2_epochs, "finetune": q.phase1_epochs,
                   "phase1_by_schedule": epochs},
        "variants": PHASE1_VARIANTS,
        "inputs": {"local": len(local_y), "transfer": len(transfer), "synthetic": num_synthetic},
        "runs": runs, "fastest": best,
        "phases_seconds": round(phases["default"], 3),
        "ratio": round(phases["default"] / best[finetune["default"]], 3),
        "ratio_by_phase1": {name: round(phases[name] / best[finetune[name]], 3) for name in PHASE1_VARIANTS},
        # The fastest runs above may come from different repeats; these pair each repeat with its own fine-tuning.
        "ratio_by_phase1_each_repeat": {name: [round((r[f"phase1_{name}"] + r[f"phase2_{name}"]) / r[finetune[name]], 3) for r in runs]
                                        for name in PHASE1_VARIANTS},
        "synthesis_over_finetune": round(synthesis / best[finetune["default"]], 3),
        "query_learning_over_finetune": round((phases["default"] + synthesis) / best[finetune["default"]], 3),
    }


def extra_party(world: experiment.World, config: RunConfig, index: int, samples: int, epochs: int) -> torch.nn.Module:
    """A CNN trained briefly on ``samples`` images of two classes drawn outside the query."""
    rng = np.random.default_rng(index)
    others = [c for c in range(world.dataset.num_classes) if c not in world.scenario.query]
    classes = torch.as_tensor(rng.choice(others, size=2, replace=False))
    pool = torch.nonzero(torch.isin(world.y_train, classes)).flatten()
    idx = pool[torch.as_tensor(rng.choice(len(pool), size=min(samples, len(pool)), replace=False))]
    t = config.training
    torch.manual_seed(index)
    model = build_model(t.arch, world.dataset.input_shape, world.dataset.num_classes)
    return fit(model, (world.x_train[idx], world.y_train[idx]), epochs, t.lr, t.batch_size, t.weight_decay, seed=index, progress=False).eval()


def scaling(world: experiment.World, config: RunConfig, replies: weakref.WeakKeyDictionary, args: argparse.Namespace) -> dict:
    """Section 3: discovery and a whole query among K parties, the experts held fixed."""
    s = world.scenario
    student = world.models[s.querier]
    announcement = protocol.Announcement.from_config(tuple(range(world.dataset.num_classes)), world.dataset.num_classes,
                                                     tuple(world.dataset.input_shape), config.query)
    teachers = dict(world.teachers)
    rows = []
    can_reset = reset_peak()
    for k in args.parties:
        new = range(len(world.models) + len(teachers) - len(world.teachers), k)
        for i in tqdm(new, desc=f"K={k}: extra parties", unit="party", disable=not args.progress or not len(new)):
            teachers[str(i)] = extra_party(world, config, i, args.extra_samples, args.extra_epochs)
        party = {name: teachers[name] for name in list(teachers)[: k - 1]}
        with bench.teacher_replies(replies):  # every teacher answers once, before any query is timed
            for model in tqdm(party.values(), desc=f"K={k}: teachers' replies", unit="teacher", leave=False, disable=not args.progress):
                protocol.answer_probe(model, announcement)
        reply_seconds = [replies[m]["seconds"] for m in party.values()]
        runs = []
        for _ in range(args.repeats):
            reset_peak()
            before = memory()["rss_bytes"]
            with bench.teacher_replies(replies), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (_, report), wall = timed(lambda: query(student, party, s.query, world.querier_data, config.query, progress=False))  # noqa: B023 (called at once)
            runs.append((wall, report, before, memory()["peak_rss_bytes"]))
        wall, report, before, _ = min(runs, key=lambda r: r[0])
        by_kind: dict[str, int] = {}
        for m in report.messages:
            by_kind[m["kind"]] = by_kind.get(m["kind"], 0) + m["bytes"]
        rows.append({
            "parties": k,
            "experts": report.experts,
            "experts_among_extra_parties": sorted({n for v in report.experts.values() for n in v} - set(world.teachers)),
            "querier_seconds": round(wall, 2),
            "querier_seconds_per_phase": {name: round(v, 3) for name, v in report.seconds.items()},
            "querier_seconds_each_repeat": [round(r[0], 2) for r in runs],
            "teacher_reply_seconds": {"max": round(max(reply_seconds), 2), "median": round(float(np.median(reply_seconds)), 2),
                                      "sum": round(sum(reply_seconds), 2)},
            "query_seconds_teachers_in_parallel": round(wall + max(reply_seconds), 2),
            "query_seconds_in_one_process": round(wall + sum(reply_seconds), 2),
            "bytes_by_message_kind": by_kind,
            "discovery_bytes": by_kind.get("announce", 0) + by_kind.get("scores", 0),
            "transfer_bytes": by_kind.get("request_weights", 0) + by_kind.get("weights", 0),
            "rss_before_query_bytes": before,
            "peak_rss_bytes": max(r[3] for r in runs),
            "peak_rss_increase_bytes": max(r[3] for r in runs) - before,
            "models_held_in_process_bytes": sum(num_bytes(m) for m in [student, *party.values()]),
        })
    first, last = rows[0], rows[-1]
    return {
        "how": (f"the {len(world.models)} parties of the scenario plus parties trained for {args.extra_epochs} epoch(s) on "
                f"{args.extra_samples} images of two classes outside the query; every teacher answered the probe once before "
                "the queries were timed"),
        "peak_reset_per_query": can_reset,
        "grows_with": {
            "parties": "announcements and scores (bytes_by_message_kind), the querier's expert selection (querier_seconds_per_phase.probe) "
                       "and the teachers' replies, each computed by its own teacher",
            "experts": "weight requests and weights, the querier's checks of each expert (querier_seconds_per_phase.transfer), "
                       "its inversion and its outputs on the transfer set (synthesis)",
        },
        "rows": rows,
        "experts_fixed": all(r["experts"] == first["experts"] for r in rows),
        "growth": {
            "query_seconds_teachers_in_parallel": round(last["query_seconds_teachers_in_parallel"] / first["query_seconds_teachers_in_parallel"], 3),
            "querier_seconds": round(last["querier_seconds"] / first["querier_seconds"], 3),
            "query_seconds_in_one_process": round(last["query_seconds_in_one_process"] / first["query_seconds_in_one_process"], 3),
            "discovery_bytes": round(last["discovery_bytes"] / first["discovery_bytes"], 3),
            "transfer_bytes": round(last["transfer_bytes"] / first["transfer_bytes"], 3),
            "peak_rss": round(last["peak_rss_bytes"] / first["peak_rss_bytes"], 3),
        },
    }


def plot_fedavg(section: dict, path: Path, train_images: int) -> None:
    """The querier's overall accuracy against the querier's bytes and wall seconds: FedAvg round by round, and the query."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    curve = section["fedavg_long"]["per_round"]
    model_bytes = section["fedavg_long"]["model_bytes"]
    for ax, fedavg_x, query_key, label in ((axes[0], [r["seconds"] for r in curve], "wall_seconds", "wall seconds (every party in one process)"),
                                           (axes[1], [2 * model_bytes * r["round"] for r in curve], "bytes", "bytes at the querier")):
        ax.plot(fedavg_x, [r["overall_accuracy"] for r in curve], ".-", label="FedAvg, round by round")
        for method, marker, name in (("qkt", "*", "QKT"), ("qkt_light", "P", "QKT Light")):
            ax.plot([section[method][query_key]], [section[method]["overall_accuracy"]], marker, markersize=12, label=f"{name}, one query")
        ax.set_xlabel(label)
        ax.set_ylabel("querier's overall accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    axes[1].set_xscale("log")
    axes[1].xaxis.set_major_formatter(FuncFormatter(lambda value, _: human_bytes(value)))
    axes[1].xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"A query against FedAvg on the same parties (CIFAR-10, {train_images:,} training images, K = 10, α = 0.1)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot(rows: list[dict], path: Path) -> None:
    ks = [r["parties"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    ax.plot(ks, [r["query_seconds_in_one_process"] for r in rows], "o-", label="all in one process (replies one after another)")
    ax.plot(ks, [r["query_seconds_teachers_in_parallel"] for r in rows], "o-", label="teachers answer in parallel")
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


def target(name: str, measured: float, limit: float, note: str) -> dict:
    return {"name": name, "measured": measured, "target": f"<= {limit}", "met": measured <= limit, "note": note}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run: fewer images, epochs and parties")
    parser.add_argument("--whole-dataset", action="store_true",
                        help="partition all 50,000 training images and test on all 10,000 (default: the benchmark's 6,000 and 2,000)")
    parser.add_argument("--data-root", default=os.environ.get("QKT_DATA_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--parties", type=int, nargs="+", help="values of K (default: 10 50 100; quick: 10 20)")
    parser.add_argument("--repeats", type=int, help="timed runs of each section, fastest kept (default: 3; quick: 1)")
    parser.add_argument("--extra-samples", type=int, help="images each extra party trains on (default: 256; quick: 64)")
    parser.add_argument("--extra-epochs", type=int, default=5, help="epochs each extra party trains for (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: $OMP_NUM_THREADS, else every core; use 1 on a shared machine)")
    parser.add_argument("--work", type=Path, default=Path("qkt-output/perf"),
                        help="checkpoints of the parties' models, reused by the next run on the same thread count")
    parser.add_argument("--output", type=Path, help="JSON file (default: docs/results/perf.json, with --whole-dataset perf-50k.json; "
                                                    "quick: WORK/perf-quick.json); the plots NAME_vs_parties.png and NAME_vs_fedavg.png go beside it")
    parser.add_argument("--fedavg-rounds", type=int, help="rounds of the second, longer FedAvg run (default: 40; quick: 8)")
    parser.add_argument("--note", default="", help="free text stored in the JSON, e.g. that the machine was shared")
    parser.add_argument("--phases-only", action="store_true",
                        help="section 1 alone, after one query that finds the experts (minutes); writes only the JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    args.parties = args.parties or ([10, 20] if args.quick else [10, 50, 100])
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.fedavg_rounds = args.fedavg_rounds or (8 if args.quick else 40)
    args.extra_samples = args.extra_samples or (64 if args.quick else 256)
    args.output = args.output or (args.work / "perf-quick.json" if args.quick
                                  else Path("docs/results/perf-50k.json" if args.whole_dataset else "docs/results/perf.json"))
    args.progress = not args.quiet
    load_start = os.getloadavg()
    set_threads(args.threads)
    wall_start, cpu_start = time.perf_counter(), time.process_time()

    dataset = load_dataset("cifar10", args.data_root)
    config = world_config(args, dataset)
    if min(args.parties) < config.partition.num_parties:
        parser.error(f"--parties must be at least the scenario's {config.partition.num_parties}")
    world, setup = timed(lambda: experiment.build_world(config, args.work / "checkpoints", args.progress, dataset=dataset))
    dataset = None  # frees the whole of CIFAR-10 before memory is measured; the world keeps its subset
    s = world.scenario
    local_before = accuracy(world, world.models[s.querier], 0.0).local_accuracy

    if args.phases_only:
        fedavg_section, scale = {}, {}
        report = measured_query(world, config, local_before, False, args.progress)[1]
    else:
        fedavg_section, report, replies = query_vs_fedavg(world, config, local_before, args.fedavg_rounds, args.repeats, args.progress)
    phases = phases_vs_finetuning(world, config, report, args.repeats, args.progress)
    if not args.phases_only:
        scale = scaling(world, config, replies, args)

    wall = time.perf_counter() - wall_start
    fedavg_targets = []
    for name, runs in (("fedavg", "the benchmark's budget"), ("fedavg_long", f"{args.fedavg_rounds} rounds")) if fedavg_section else ():
        f = fedavg_section[name]
        for method, label in (("qkt", "query"), ("qkt_light", "QKT Light query")):
            ratios, accuracy_reached = f["ratios"][method], fedavg_section[method]["overall_accuracy"]
            fedavg_targets += [
                target(f"{label} wall time / FedAvg time to its final accuracy, {runs}", ratios["time"], 0.2,
                       f"both in one process; with every party computing on its own machine: {ratios['parallel_time']}; FedAvg's "
                       f"final overall accuracy {f['final_overall_accuracy']:.3f}, reached in round {f['rounds_to_final']}; "
                       f"the query's {accuracy_reached:.3f}"),
                target(f"{label} bytes / FedAvg bytes to its final accuracy, {runs}", ratios["bytes"], 0.1,
                       "bytes sent + received by the querier"),
            ]
    targets = [target("Phases 1+2 / fine-tuning on the local data", phases["ratio"], 1.3,
                      f"fine-tuning for Phase 1's {config.query.phase1_epochs} epochs; Phase 1 keeps the student's first "
                      f"{config.query.phase1_frozen_blocks} block(s) frozen and trains on the local and synthetic inputs and "
                      f"{config.query.phase1_mixups:.2f} of the mixups per epoch, {phases['inputs']['transfer']} transfer inputs "
                      f"in all, {phases['inputs']['local']} of them local"),
               target("Phases 1+2 / fine-tuning, every block and every mixup in each of 5 Phase 1 epochs (the benchmark's "
                      "earlier schedule)", phases["ratio_by_phase1"]["every_block_every_mixup_5_epochs"], 1.3,
                      "against fine-tuning for 5 epochs"),
               target("QKT Light's Phases 1+2 / fine-tuning on the local data", phases["ratio_by_phase1"]["light"], 1.3,
                      "the default's transfer inputs and epochs; only the last block and the head are trained, on the "
                      "outputs of the frozen blocks computed once"),
               *fedavg_targets]
    if scale:
        targets.append(target(f"query time, K={args.parties[-1]} / K={args.parties[0]}, experts fixed",
                              scale["growth"]["query_seconds_teachers_in_parallel"], 1.5,
                              f"teachers answering in parallel; the querier's own work alone: {scale['growth']['querier_seconds']}; "
                              f"every reply computed in one process: {scale['growth']['query_seconds_in_one_process']}"))
    result = {
        "what": "speed of a query: Phases 1 + 2 vs fine-tuning, a whole query vs FedAvg, and a query among K parties (benchmarks/perf.py)",
        "command": f"{Path(sys.executable).name} {shlex.join(sys.argv)}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": bench.machine(),
        "torch_threads": torch.get_num_threads(),
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "note": args.note,
        "wall_seconds": round(wall, 1),
        "cpu_share": round((time.process_time() - cpu_start) / wall, 2),
        "quick": args.quick,
        "scenario": {"dataset": "cifar10", "train_images": len(world.y_train), "test_images": len(world.y_test),
                     "parties": len(world.models), "alpha": config.partition.alpha, "arch": config.training.arch,
                     "querier": s.querier, "query": list(s.query), "local_classes": list(s.local_classes),
                     "local_samples": len(world.querier_data[1]), "party_training_epochs": config.training.epochs,
                     "query_config": config.query.model_dump(), "setup_seconds": round(setup, 1)},
        "phases_vs_finetuning": phases,
        "query_vs_fedavg": fedavg_section,
        "parties": scale,
        "targets": targets,
    }
    atomic_write(args.output, (json.dumps(result, indent=1) + "\n").encode())
    for t in result["targets"]:
        print(f"{'met   ' if t['met'] else 'missed'} {t['name']}: {t['measured']} (target {t['target']}; {t['note']})")
    if args.phases_only:
        print(f"wrote {args.output} in {wall:.0f} s")
        return 0
    plots = [args.output.with_name(f"{args.output.stem}_vs_{what}.png") for what in ("parties", "fedavg")]
    plot(scale["rows"], plots[0])
    plot_fedavg(fedavg_section, plots[1], len(world.y_train))
    print(f"wrote {args.output}, {plots[0].name} and {plots[1].name} beside it, in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
