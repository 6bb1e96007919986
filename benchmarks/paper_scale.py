"""One query with ResNet-18 on all of CIFAR-10 and CIFAR-100, against FedAvg trained to the same accuracy.

    python benchmarks/paper_scale.py                        # every image, on the best device present (CUDA, MPS, else CPU)
    python benchmarks/paper_scale.py --device cuda --fedavg-rounds 200
    python benchmarks/paper_scale.py --fraction 0.05 --epochs 5 --fedavg-rounds 8 --threads 1 --quiet \\
        --output docs/results/paper-scale-reduced.json     # the reduced run committed from a 2-core CPU

Each data set is split over K = 10 parties by Dirichlet α = 0.1 label skew (``qkt bench``'s
single-class scenario, seed 0, the querier ``qkt run`` picks), every party trains its
ResNet-18 for ``--epochs`` epochs, and the querier runs one query with the benchmark's
image settings for QKT, every teacher answering in this process. FedAvg then trains one
ResNet-18 over the same parties, one local epoch a round, for up to ``--fedavg-rounds``
rounds, scored after each: the script reports the first round at which the querier's
overall accuracy with FedAvg's model reaches the query's, with its time, or that it did
not within the rounds run.

The ResNet-18 is torchvision's where torchvision imports, else qkt's ``resnet18`` (the same
layout and 11.7 M weights); the output says which. Peak memory is the process's peak
resident memory during each step (Linux), and on CUDA also the device's peak allocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from perf_common import RESULTS, Setup, memory, reset_peak
from perf_query import fedavg_curve

from qkt import experiment
from qkt.bench import PROFILES, SCENARIOS
from qkt.bench.catalogue import run_config
from qkt.bench.output import machine
from qkt.config import RunConfig, parse_config
from qkt.data import DataSet, load_dataset
from qkt.errors import QKTError
from qkt.files import atomic_write
from qkt.models import block_indices, build_model
from qkt.query import run_query
from qkt.training import resolve_device, set_threads

GiB = 2**30


def resolve(name: str) -> str:
    """The device ``--device`` names (``auto``: CUDA, else Apple's MPS, else the CPU); one line if this machine lacks it."""
    try:
        return resolve_device(name).type
    except QKTError as exc:
        raise SystemExit(f"--device {name}: {exc}") from None


def resnet18(requested: str | None) -> tuple[str, str]:
    """The architecture to build and a sentence saying which ResNet-18 it is."""
    if requested:
        return requested, f"{requested} (--arch)"
    try:
        build_model("torchvision:resnet18", (3, 32, 32), 10)
        return "torchvision:resnet18", "torchvision's resnet18"
    except QKTError as exc:
        return "resnet18", f"qkt's resnet18, torchvision's layout (torchvision:resnet18 unavailable here: {exc})"


def world_config(name: str, args: argparse.Namespace, arch: str, device: str) -> tuple[RunConfig, DataSet]:
    """``qkt bench``'s single-class CIFAR scenario, seed 0, on ResNet-18 and ``--fraction`` of every split; and the data set."""
    dataset = load_dataset(name, args.data_root)
    raw = run_config(PROFILES["full"], dataset, SCENARIOS["single"], 0, args.data_root).model_dump()
    fraction = args.fraction if args.fraction < 1 else None
    raw["data"].update(max_train=fraction and round(fraction * len(dataset.y_train)),
                       max_test=fraction and round(fraction * len(dataset.y_test)))
    raw["training"].update(arch=arch, epochs=args.epochs, device=device)
    if not block_indices(build_model(arch, dataset.input_shape, dataset.num_classes)):
        raw["query"]["phase1_frozen_blocks"] = 0  # torchvision's ResNet has no 'features' Sequential to freeze a block of
    raw["methods"] = ["local", "qkt"]
    return parse_config(raw, f"paper scale {name}"), dataset


def peak(device: str) -> dict:
    """Peak resident memory since the last :func:`start_peak`, and the device's peak allocation on CUDA."""
    out = {"peak_rss_gib": round(memory()["peak_rss_bytes"] / GiB, 3)}
    if device == "cuda":
        out["peak_cuda_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
    return out


def start_peak(device: str) -> None:
    reset_peak()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def one_data_set(name: str, args: argparse.Namespace, arch: str, device: str) -> dict:
    """Build the world of ``name``, run the query and FedAvg; their time, memory and accuracies."""
    start_peak(device)
    started = time.perf_counter()
    config, dataset = world_config(name, args, arch, device)
    world = experiment.build_world(config, args.work / "checkpoints", args.progress, dataset=dataset)
    del dataset  # the world keeps only its subset
    setup = Setup(args, config, world, time.perf_counter() - started, os.getloadavg(), started, time.process_time())
    setup_figures = {"seconds": round(setup.setup_seconds, 1), **peak(device)}

    s = world.scenario
    start_peak(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report carries them
        started = time.perf_counter()
        model, report = run_query(setup.student, setup.teachers(), s.query, world.querier_data, config.query,
                                  num_classes=world.dataset.num_classes, progress=args.progress, device=device)
        wall = time.perf_counter() - started
    query = {"seconds": round(report.seconds["total"], 1), "seconds_in_one_process": round(wall, 1),
             "teacher_seconds": round(report.seconds["teachers"], 1), "experts": report.experts,
             **peak(device), **setup.accuracies(model)}

    start_peak(device)
    curve, _ = fedavg_curve(setup, args.fedavg_rounds)
    reached = next((r for r in curve if r["overall_accuracy"] >= query["overall_accuracy"]), None)
    best = max(curve, key=lambda r: r["overall_accuracy"])
    fedavg = {"rounds_run": len(curve), "seconds_all_rounds": round(curve[-1]["seconds"], 1), **peak(device),
              "reached_query_accuracy": reached is not None,
              "round_reaching_it": reached and reached["round"], "seconds_to_reach_it": reached and round(reached["seconds"], 1),
              "best_overall_accuracy": best["overall_accuracy"], "best_round": best["round"],
              "per_round": [{"round": r["round"], "seconds": round(r["seconds"], 1), "overall_accuracy": r["overall_accuracy"]}
                            for r in curve]}
    return {"train_images": len(world.y_train), "test_images": len(world.y_test), "classes": world.dataset.num_classes,
            "querier": s.querier, "query": list(s.query), "local_samples": len(world.querier_data[1]),
            "querier_local_accuracy_before": round(setup.local_before, 4),
            "world": setup_figures, "qkt_query": query, "fedavg": fedavg}


def summary(results: dict) -> str:
    """The printed table: one row per data set."""
    lines = ["| data set | images (train/test) | QKT query s | peak RSS (query) | QKT overall acc | FedAvg: round reaching it "
             "(s) | FedAvg best acc (round) | peak RSS (FedAvg) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        q, f = r["qkt_query"], r["fedavg"]
        reached = (f"{f['round_reaching_it']} ({f['seconds_to_reach_it']} s)" if f["reached_query_accuracy"]
                   else f"not in {f['rounds_run']} rounds ({f['seconds_all_rounds']} s)")
        lines.append(f"| {name} | {r['train_images']:,}/{r['test_images']:,} | {q['seconds_in_one_process']} | "
                     f"{q['peak_rss_gib']} GiB | {q['overall_accuracy']:.3f} | {reached} | "
                     f"{f['best_overall_accuracy']:.3f} ({f['best_round']}) | {f['peak_rss_gib']} GiB |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="where to train and query (default: %(default)s)")
    p.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"], choices=["cifar10", "cifar100"])
    p.add_argument("--fraction", type=float, default=1.0,
                   help="share of every split to use, a seeded stratified subset (default: 1, every image)")
    p.add_argument("--epochs", type=int, default=20, help="local training epochs of each party (default: %(default)s)")
    p.add_argument("--fedavg-rounds", type=int, default=100, help="most FedAvg rounds, one local epoch each (default: %(default)s)")
    p.add_argument("--arch", default=None, help="another model than ResNet-18, as a config names it (e.g. resnet18)")
    p.add_argument("--data-root", default=os.environ.get("QKT_DATA_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "data")),
                   help="folder holding CIFAR-10 and CIFAR-100 (default: $QKT_DATA_ROOT, else ../shared/data beside the repository)")
    p.add_argument("--threads", type=int, help="torch threads (default: $OMP_NUM_THREADS, else every core)")
    p.add_argument("--work", type=Path, default=Path("qkt-output/paper-scale"), help="checkpoints of the parties' models")
    p.add_argument("--output", type=Path, default=RESULTS / "paper-scale.json", help="JSON file (default: %(default)s)")
    p.add_argument("--note", default="", help="free text stored in the JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args()
    if not 0 < args.fraction <= 1:
        p.error("--fraction must be in (0, 1]")
    args.progress = not args.quiet
    set_threads(args.threads)
    device = resolve(args.device)
    arch, which = resnet18(args.arch)
    print(f"device: {device}; model: {which}")
    started, load = time.perf_counter(), os.getloadavg()
    try:
        results = {name: one_data_set(name, args, arch, device) for name in args.datasets}
    except QKTError as exc:  # e.g. a --fraction so small that no class can be queried
        raise SystemExit(f"error: {exc}") from None
    table = summary(results)
    print(table)
    out = {"what": "one query with ResNet-18 against FedAvg to the same accuracy (benchmarks/paper_scale.py)",
           "command": f"{Path(sys.executable).name} {shlex.join(sys.argv)}",
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": machine().replace("no GPU used", f"device {device}"),
           "device": device, "model": which, "arch": arch,
           "torch_threads": torch.get_num_threads(),
           "load_average": {"start": [round(x, 2) for x in load], "end": [round(x, 2) for x in os.getloadavg()]},
           "note": args.note, "fraction": args.fraction, "party_epochs": args.epochs, "fedavg_max_rounds": args.fedavg_rounds,
           "wall_seconds": round(time.perf_counter() - started, 1), "results": results, "table": table}
    atomic_write(args.output, (json.dumps(out, indent=1) + "\n").encode())
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
