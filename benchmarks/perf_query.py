"""A whole query, QKT and QKT Light, against FedAvg over the same parties: wall time, bytes and accuracy.

    python benchmarks/perf_query.py --threads 2 --quiet         # the benchmark's 6,000 images; docs/results/perf-query.json and .png
    python benchmarks/perf_query.py --whole-dataset --quiet     # all 50,000; docs/results/perf-query-50k.json and .png
    python benchmarks/perf_query.py --quick --threads 1         # a smoke run in under a minute, written under qkt-output/perf

On the world of :mod:`perf_common` (CIFAR-10, K = 10, α = 0.1), ``qkt.query``'s engine
runs one whole query with QKT's settings and one with QKT Light's, every teacher
computing its probe reply afresh in this process. Each query's time includes its
teachers' replies: ``seconds`` as if each teacher answered on its own machine (the
querier's work plus the slowest reply of each exchange, the report's
``seconds["total"]``), ``seconds_in_one_process`` as measured here with the replies one
after another, and ``teacher_seconds`` the teachers' time added up.

FedAvg trains over the same parties with the benchmark's budget (``training.epochs``
local epochs in rounds of ``federated.local_epochs``, as in ``qkt bench``) and, read off
the same run, after ``--fedavg-rounds`` rounds (default 40), closer to what FedAvg needs
under this label skew. Each is timed up to the first round whose accuracy reaches its
final one (the querier's overall accuracy, as every table reports), scoring excluded;
its ``parallel`` figures add up only the slowest party of each round, as with every
party on its own machine. Bytes are the querier's, sent and received. Queries and FedAvg
run ``--repeats`` times, interleaved, and the fastest of each is kept: every run is
seeded alike, so on a shared machine the other load only ever adds time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import FuncFormatter, NullFormatter
from perf_common import Setup, parse, parser, target
from tqdm.auto import tqdm

from qkt.baselines.fedavg import FedAvg, FederatedResult
from qkt.experiment import method_settings
from qkt.models import build_model, num_bytes
from qkt.report import human_bytes, save_figure

METHODS = {"qkt": "QKT", "qkt_light": "QKT Light"}


class LoggedFedAvg(FedAvg):
    """FedAvg as configured, scored after every round; the scoring is kept off its clock.

    Party ``k``'s local training in a round runs from the call of :meth:`local_loss` for
    ``k`` to that for ``k + 1`` (the last party's, to :meth:`after_round`).
    """

    def __init__(self, config, training, accuracies):
        super().__init__(config, training)
        self.accuracies = accuracies
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
        self.log.append({"round": round_ + 1, "seconds": now - self.start_time - self.paused,
                         "slowest_party_seconds": float(party_seconds.max()), **self.accuracies(global_model)})
        self.paused += time.perf_counter() - now


def fedavg_curve(setup: Setup, rounds: int) -> tuple[list[dict], FederatedResult]:
    """FedAvg over the world's parties for ``rounds`` rounds of ``federated.local_epochs``: its log, scored after each round, and result."""
    world, config = setup.world, setup.config
    training = config.training.model_copy(update={"epochs": rounds * config.federated.local_epochs})
    fedavg = LoggedFedAvg(config.federated, training, setup.accuracies)
    parties = [(world.x_train[torch.as_tensor(p)], world.y_train[torch.as_tensor(p)]) for p in world.scenario.parts]
    result = fedavg.fit(lambda: build_model(config.training.arch, world.dataset.input_shape, world.dataset.num_classes), parties,
                        setup.args.progress)
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


def measured_query(setup: Setup, method: str) -> dict:
    """One whole query of ``method``, every teacher computing its probe reply afresh in this process; its figures."""
    settings, variant = method_settings(setup.config.query, method)
    model, report, wall = setup.query(setup.teachers(), settings, variant, setup.args.progress)
    return {"seconds": round(report.seconds["total"], 2), "seconds_in_one_process": round(wall, 2),
            "teacher_seconds": {"sum": round(report.seconds["teachers"], 2),
                                "each": {k: round(v, 2) for k, v in report.teacher_seconds.items()}},
            "seconds_per_phase": {k: round(v, 2) for k, v in report.seconds.items()},
            "bytes": report.bytes_sent + report.bytes_received, "bytes_sent": report.bytes_sent,
            "bytes_received": report.bytes_received, "experts": report.experts, **setup.accuracies(model)}


def query_vs_fedavg(setup: Setup, long_rounds: int) -> dict:
    """QKT's and QKT Light's queries, and FedAvg stopped at the benchmark's budget and after ``long_rounds`` rounds."""
    config, repeats = setup.config, setup.args.repeats
    budget_rounds = config.training.epochs // config.federated.local_epochs
    runs: dict[str, list] = {name: [] for name in (*METHODS, "fedavg", "fedavg_long")}
    for _ in tqdm(range(repeats), desc="query vs FedAvg", unit="repeat", disable=not setup.args.progress):
        for method in METHODS:
            runs[method].append(measured_query(setup, method))
        curve, result = fedavg_curve(setup, max(budget_rounds, long_rounds))
        for name, rounds in (("fedavg", budget_rounds), ("fedavg_long", long_rounds)):
            runs[name].append(stopped_after(curve, result, rounds, config.federated.local_epochs))
    section = {method: {**min(runs[method], key=lambda r: r["seconds"]),
                        "seconds_each_repeat": [r["seconds"] for r in runs[method]],
                        "seconds_in_one_process_each_repeat": [r["seconds_in_one_process"] for r in runs[method]],
                        "same_accuracy_and_bytes_every_repeat": len({(r["overall_accuracy"], r["bytes"]) for r in runs[method]}) == 1}
               for method in METHODS}
    for name in ("fedavg", "fedavg_long"):
        fedavg = min(runs[name], key=lambda r: r["seconds_to_final"])
        section[name] = {**fedavg, "seconds_to_final_each_repeat": [r["seconds_to_final"] for r in runs[name]],
                         "same_accuracy_every_repeat": len({r["final_overall_accuracy"] for r in runs[name]}) == 1,
                         "ratios": {method: {"time": round(section[method]["seconds_in_one_process"] / fedavg["seconds_to_final"], 3),
                                             "parallel_time": round(section[method]["seconds"] / fedavg["parallel_seconds_to_final"], 3),
                                             "bytes": round(section[method]["bytes"] / fedavg["bytes_to_final"], 4)}
                                    for method in METHODS}}
    return section


def targets(section: dict, long_rounds: int) -> list[dict]:
    rows = []
    for name, runs in (("fedavg", "the benchmark's budget"), ("fedavg_long", f"{long_rounds} rounds")):
        f = section[name]
        for method, label in METHODS.items():
            ratios, reached = f["ratios"][method], section[method]["overall_accuracy"]
            rows += [
                target(f"{label} query time / FedAvg time to its final accuracy, {runs}", ratios["time"], 0.2,
                       f"both in one process, the teachers' replies and the parties' training one after another; with every "
                       f"party on its own machine: {ratios['parallel_time']}; FedAvg's final overall accuracy "
                       f"{f['final_overall_accuracy']:.3f}, reached in round {f['rounds_to_final']}; the query's {reached:.3f}"),
                target(f"{label} query bytes / FedAvg bytes to its final accuracy, {runs}", ratios["bytes"], 0.1,
                       "bytes sent + received by the querier"),
            ]
    return rows


def plot(section: dict, path: Path, train_images: int) -> None:
    """The querier's overall accuracy against its bytes and the wall seconds: FedAvg round by round, and each query."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    curve = section["fedavg_long"]["per_round"]
    model_bytes = section["fedavg_long"]["model_bytes"]
    for ax, fedavg_x, query_key, label in ((axes[0], [r["seconds"] for r in curve], "seconds_in_one_process",
                                            "wall seconds (every party in one process)"),
                                           (axes[1], [2 * model_bytes * r["round"] for r in curve], "bytes", "bytes at the querier")):
        ax.plot(fedavg_x, [r["overall_accuracy"] for r in curve], ".-", label="FedAvg, round by round")
        for (method, name), marker in zip(METHODS.items(), ("*", "P"), strict=True):
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


def main() -> int:
    p = parser(__doc__, "query")
    p.add_argument("--fedavg-rounds", type=int, help="rounds of the longer FedAvg run (default: 40; quick: 8)")
    args = parse(p)
    args.fedavg_rounds = args.fedavg_rounds or (8 if args.quick else 40)
    setup = Setup.start(args)
    section = query_vs_fedavg(setup, args.fedavg_rounds)
    wall = setup.finish("a whole query, QKT and QKT Light, against FedAvg on the same parties",
                        {"query_vs_fedavg": section}, targets(section, args.fedavg_rounds))
    plot(section, setup.plot_path, len(setup.world.y_train))
    print(f"wrote {args.output} and {setup.plot_path.name} beside it in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
