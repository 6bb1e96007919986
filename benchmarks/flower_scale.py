"""Scale: one query among N simulated parties on Flower's simulation runtime; wall time and peak memory.

    python benchmarks/flower_scale.py --parties 100 --output docs/results/flower_scale.json

Runs ``qkt flower simulate``'s code path (a real SuperLink with the simulation
runtime, one virtual SuperNode per party on Ray), with QKT and Flower's FedAvg on
the same parties, and samples the resident memory of every process it started.
A method's ``seconds`` are its wall time in the ServerApp; QKT's ``teacher_seconds``
add up the teachers' own compute time for their replies (probe scores and weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import flwr
import torch

from qkt.config import parse_config
from qkt.flower.federation import descendants, simulate

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> tuple[int, int]:
    """Resident bytes of ``root`` and all its descendants, and of the largest of them."""
    sizes = []
    for pid in {root, *descendants(root)}:
        try:
            sizes.append(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE)
        except (OSError, ValueError, IndexError):
            continue  # ended while we looked
    return sum(sizes), max(sizes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, default=100)
    parser.add_argument("--dataset", default="bloodmnist", help="data set with enough samples for the parties (default: %(default)s)")
    parser.add_argument("--data-root", default=os.environ.get("QKT_DATA_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet α (0.1 leaves some of 100 parties without 10 samples)")
    parser.add_argument("--work", type=Path, default=Path("qkt-output/flower-scale"))
    parser.add_argument("--output", type=Path, default=Path("docs/results/flower_scale.json"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the federation is stopped on the way out

    config = parse_config({
        "data": {"name": args.dataset, "root": args.data_root},
        "partition": {"num_parties": args.parties, "alpha": args.alpha, "seed": 0},
        "training": {"arch": "mlp", "epochs": 20},
        # A lighter probe than the default (512 × 3 inputs, 100 steps) keeps 100 parties under ~10 min on 2 cores.
        "query": {"probe": {"num_samples": 128, "steps": 30}},
        "federated": {"local_epochs": 5},
        "methods": ["local", "qkt", "fedavg"],
    }, "flower_scale")
    peak = {"tree": 0, "largest": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            total, largest = tree_rss(os.getpid())
            peak["tree"], peak["largest"] = max(peak["tree"], total), max(peak["largest"], largest)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    summary = simulate(config, args.work, timeout=7200, reply_timeout=3600.0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()

    qkt, fedavg = summary["methods"]["qkt"], summary["methods"]["fedavg"]
    result = {
        "what": f"one query among {args.parties} simulated parties (Flower simulation runtime, Ray), plus FedAvg on the same parties",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "flwr": flwr.__version__, "torch": torch.__version__, "load_average_at_end": os.getloadavg()},
        "parties": args.parties,
        "dataset": summary["dataset"],
        "scenario": {k: summary["scenario"][k] for k in ("querier", "query", "local_classes")},
        "wall_seconds": round(wall, 1),
        "peak_rss_bytes": {"all_processes": peak["tree"], "largest_process": peak["largest"],
                           "note": "sum of resident memory over every process started (SuperLink, simulation, Ray), sampled every 0.5 s; "
                                   "shared pages are counted once per process, so the sum overstates the machine's use"},
        "query": {"seconds_per_phase": summary["reports"]["qkt"]["seconds"], "experts": summary["reports"]["qkt"]["experts"],
                  "lost": summary["reports"]["qkt"]["lost"], "messages": len(summary["reports"]["qkt"]["messages"])},
        "methods": {m: {k: v[k] for k in ("query_accuracy", "local_accuracy", "overall_accuracy", "forgetting",
                                          "bytes_sent", "bytes_received", "seconds", "teacher_seconds")} for m, v in summary["methods"].items()},
        "bytes_fedavg_over_qkt": round((fedavg["bytes_sent"] + fedavg["bytes_received"]) / (qkt["bytes_sent"] + qkt["bytes_received"]), 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
