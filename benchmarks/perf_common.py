"""What the performance scripts (perf_phases.py, perf_query.py, perf_parties.py) share.

Each measures one thing on the same world: the CIFAR-10 single-class scenario of
``qkt bench`` (seed 0: K = 10 parties, Dirichlet α = 0.1, its 6,000 training and 2,000
test images, the 3-block CNN and the benchmark's query settings), with the querier
``qkt run`` picks, the eligible party holding the most samples. ``--whole-dataset``
partitions all 50,000 training images and tests on all 10,000 (SPEC §5's scale);
``--quick`` shrinks the data, the probe, the inversion and the epochs for a smoke run.

This module builds that world (the parties' models checkpointed under ``--work``, so
the scripts share them), runs and times a query, scores a model, measures the
process's memory, and writes a script's JSON with its command, machine, load and
targets. Every query is timed with its teachers' replies: a report's
``seconds["total"]`` as if each teacher answered on its own machine, in parallel, and
``seconds["teachers"]``, the teachers' time added up.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from qkt import experiment
from qkt.bench import PROFILES, SCENARIOS
from qkt.bench.catalogue import run_config
from qkt.bench.output import machine  # also puts matplotlib on its file-only backend
from qkt.config import QueryConfig, RunConfig, parse_config
from qkt.data import DataSet, load_dataset
from qkt.files import atomic_write
from qkt.metrics import MethodResult, score
from qkt.query import Announcement, InProcessChannel, QueryReport, Teacher, TeacherChannel, Variant, answer_probe, run_query
from qkt.training import per_class_accuracy, set_threads

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
# A smaller world for --quick: fewer images, probe and inversion steps, and epochs of a query.
QUICK = {
    "data": {"max_train": 2000, "max_test": 500},
    "query": {"probe": {"steps": 10, "num_samples": 64}, "inversion": {"samples_per_class": 16, "steps": 10},
              "phase1_epochs": 2, "phase2_epochs": 2},
}

T = TypeVar("T")


def merged(base: dict, updates: dict) -> dict:
    """``base`` with ``updates`` written over it, nested sections merged rather than replaced."""
    out = dict(base)
    for key, value in updates.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


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


def target(name: str, measured: float, limit: float, note: str) -> dict:
    """One row of a script's targets: a ratio measured against the most it may be."""
    return {"name": name, "measured": measured, "target": f"<= {limit}", "met": measured <= limit, "note": note}


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The options every performance script takes; ``name`` names its JSON (``perf-NAME.json``)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.set_defaults(name=name)
    p.add_argument("--quick", action="store_true", help="a small smoke run: fewer images, probe and inversion steps, epochs")
    p.add_argument("--whole-dataset", action="store_true",
                   help="partition all 50,000 training images and test on all 10,000 (default: the benchmark's 6,000 and 2,000)")
    p.add_argument("--data-root", default=os.environ.get("QKT_DATA_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "data")),
                   help="folder holding CIFAR-10 (default: $QKT_DATA_ROOT, else ../shared/data beside the repository)")
    p.add_argument("--repeats", type=int, help="timed runs of each measurement, fastest kept (default: 3; quick: 1)")
    p.add_argument("--threads", type=int, help="torch threads (default: $OMP_NUM_THREADS, else every core; use 1 on a shared machine)")
    p.add_argument("--work", type=Path, default=Path("qkt-output/perf"),
                   help="checkpoints of the parties' models, shared by the perf scripts and reused on the same thread count "
                        "(default: %(default)s)")
    p.add_argument("--output", type=Path, help=f"JSON file (default: docs/results/perf-{name}.json, with --whole-dataset "
                                               f"perf-{name}-50k.json; quick: WORK/perf-{name}-quick.json); its plot goes beside it "
                                               "as a .png of the same name")
    p.add_argument("--note", default="", help="free text stored in the JSON, e.g. that the machine was shared")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """The options with their defaults filled in: repeats, the output file and progress."""
    args = p.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    suffix = "-quick" if args.quick else "-50k" if args.whole_dataset else ""
    args.output = args.output or (args.work if args.quick else RESULTS) / f"perf-{args.name}{suffix}.json"
    args.progress = not args.quiet
    return args


def world_config(args: argparse.Namespace, dataset: DataSet) -> RunConfig:
    """The CIFAR-10 single-class scenario of ``qkt bench``'s full profile, seed 0, sized by ``--whole-dataset`` and ``--quick``."""
    config = run_config(PROFILES["full"], dataset, SCENARIOS["single"], 0, args.data_root)
    if args.whole_dataset:
        config = config.model_copy(update={"data": config.data.model_copy(update={"max_train": None, "max_test": None})})
    return parse_config(merged(config.model_dump(), QUICK), "perf --quick") if args.quick else config


@dataclass
class Setup:
    """One script's run: its options, the world it measures, and the clocks and load at its start."""

    args: argparse.Namespace
    config: RunConfig
    world: experiment.World
    setup_seconds: float
    load_start: tuple[float, float, float]
    wall_start: float
    cpu_start: float
    local_before: float = field(init=False)

    def __post_init__(self) -> None:
        s = self.world.scenario
        self.local_before = self.score(self.world.models[s.querier], 0.0).local_accuracy
        # The process's first probe pays one-time start-up costs; the querier's own model takes them, so no teacher's reply does.
        answer_probe(self.student, self.announcement())

    @classmethod
    def start(cls, args: argparse.Namespace, check: Callable[[RunConfig], None] | None = None) -> Setup:
        """Build the world of ``args``; ``check`` may refuse its config before the parties are trained."""
        load_start = os.getloadavg()
        set_threads(args.threads)
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        dataset = load_dataset("cifar10", args.data_root)
        config = world_config(args, dataset)
        if check is not None:
            check(config)
        # The world keeps only its subset: the whole of CIFAR-10 is dropped with this frame, before memory is measured.
        world, seconds = timed(lambda: experiment.build_world(config, args.work / "checkpoints", args.progress, dataset=dataset))
        return cls(args, config, world, seconds, load_start, wall_start, cpu_start)

    @property
    def student(self) -> nn.Module:
        return self.world.models[self.world.scenario.querier]

    def announcement(self) -> Announcement:
        """What the scenario's query announces to every teacher."""
        w = self.world
        return Announcement.from_config(w.scenario.query, w.dataset.num_classes, tuple(w.querier_data[0].shape[1:]), self.config.query)

    def teachers(self, models: dict[str, nn.Module] | None = None) -> InProcessChannel:
        """A channel to ``models`` (default: the world's teachers), each computing its replies in this process."""
        return InProcessChannel({k: Teacher(m) for k, m in (models or self.world.teachers).items()})

    def score(self, model: nn.Module, local_before: float | None = None) -> MethodResult:
        w = self.world
        counts = np.bincount(w.dataset.y_test, minlength=w.dataset.num_classes)
        return score("", per_class_accuracy(model, w.x_test, w.y_test, w.dataset.num_classes),
                     self.local_before if local_before is None else local_before, counts, w.scenario.query, w.scenario.local_classes)

    def accuracies(self, model: nn.Module) -> dict[str, float]:
        """The querier's query, local and overall accuracy and forgetting with ``model``, as every table reports them."""
        result = self.score(model)
        return {k: round(getattr(result, k), 4) for k in ("query_accuracy", "local_accuracy", "overall_accuracy", "forgetting")}

    def query(self, channel: TeacherChannel, settings: QueryConfig | None = None, variant: Variant | None = None,
              progress: bool = False) -> tuple[nn.Module, QueryReport, float]:
        """One whole query of the scenario over ``channel``: the new model, the report, and the wall seconds in this process."""
        s = self.world.scenario
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report carries them
            (model, report), wall = timed(lambda: run_query(self.student, channel, s.query, self.world.querier_data,
                                                            settings or self.config.query, num_classes=self.world.dataset.num_classes,
                                                            variant=variant, progress=progress))
        return model, report, wall

    def finish(self, what: str, sections: dict, targets: list[dict]) -> float:
        """Write the script's JSON (``sections`` after the run's provenance and scenario) and print its targets; its wall seconds."""
        a, w, s = self.args, self.world, self.world.scenario
        wall = time.perf_counter() - self.wall_start
        result = {
            "what": f"{what} (benchmarks/{Path(sys.argv[0]).name})",
            "command": f"{Path(sys.executable).name} {shlex.join(sys.argv)}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "torch_threads": torch.get_num_threads(),
            "load_average": {"start": [round(x, 2) for x in self.load_start], "end": [round(x, 2) for x in os.getloadavg()]},
            "note": a.note,
            "wall_seconds": round(wall, 1),
            "cpu_share": round((time.process_time() - self.cpu_start) / wall, 2),
            "quick": a.quick,
            "scenario": {"dataset": "cifar10", "train_images": len(w.y_train), "test_images": len(w.y_test),
                         "parties": len(w.models), "alpha": self.config.partition.alpha, "arch": self.config.training.arch,
                         "querier": s.querier, "query": list(s.query), "local_classes": list(s.local_classes),
                         "local_samples": len(w.querier_data[1]), "party_training_epochs": self.config.training.epochs,
                         "query_config": self.config.query.model_dump(), "setup_seconds": round(self.setup_seconds, 1)},
            **sections,
            "targets": targets,
        }
        atomic_write(a.output, (json.dumps(result, indent=1) + "\n").encode())
        for t in targets:
            print(f"{'met   ' if t['met'] else 'missed'} {t['name']}: {t['measured']} (target {t['target']}; {t['note']})")
        return wall

    @property
    def plot_path(self) -> Path:
        return self.args.output.with_suffix(".png")
