"""Peak resident memory of one query on all 50,000 CIFAR-10 images, the querier's data given as tensors and as a Dataset.

    python benchmarks/memory.py --whole-dataset --threads 1 --quiet   # docs/results/perf-memory-50k.json
    python benchmarks/memory.py --quick --threads 1                   # a smoke run, written under qkt-output/perf

The world of :mod:`perf_common`: with ``--whole-dataset``, CIFAR-10's 50,000 training
images over K = 10 parties (Dirichlet α = 0.1), the benchmark's CNN and query settings,
the querier ``qkt run`` picks. Each kind of input runs in a process of
its own, so that one measurement's memory never counts in another's: it loads the data
and the parties' checkpointed models (trained once by this script's parent under
``--work``), keeps only what a querier holds (its own data, its model, the teachers'
models), and runs QKT's query with ``qkt.query``:

- ``tensors``: the querier's images as one normalised float32 tensor and its labels;
- ``dataset``: a ``torch.utils.data.Dataset`` over its uint8 images, normalised item by
  item as a PyTorch user's transform would (the same values as the tensors).

Memory is the process's resident set as the kernel reports it (``/proc/self/status``):
``peak_rss_bytes`` is the high-water mark during the query, restarted just before it
(``rss_before_query_bytes`` is what the process then holds: Python, torch, the models and
the querier's data); ``ru_maxrss_bytes`` (``resource.getrusage``) is the whole process's
peak, loading the data set included. The two kinds must give the same model.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from perf_common import Setup, memory, parse, parser, reset_peak, target, world_config
from torch.utils.data import Dataset

import qkt
from qkt import experiment
from qkt.data import load_dataset
from qkt.experiment import method_settings
from qkt.query import Teacher
from qkt.training import set_threads

KINDS = ("tensors", "dataset")
GIB = 2**30
LIMIT_GIB = 2.0


class Images(Dataset):
    """uint8 images ``(N, H, W, C)`` and their labels, each image standardised when it is read."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: torch.Tensor, std: torch.Tensor):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255.0).contiguous()
        return (x - self.mean) / self.std, int(self.labels[i])


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for value in model.state_dict().values():
        h.update(value.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def child(args: argparse.Namespace) -> dict:
    """One query with the querier's data as ``args.child``; its memory, time and the model's digest."""
    set_threads(args.threads)
    dataset = load_dataset("cifar10", args.data_root)
    config = world_config(args, dataset)
    world = experiment.build_world(config, args.work / "checkpoints", False, dataset=dataset)
    s = world.scenario
    idx = np.asarray(s.parts[s.querier])
    if args.child == "tensors":
        local = world.querier_data
    else:
        # The training set's statistics, as DataSet.normalized computes them; the images stay uint8 until read.
        x = torch.as_tensor(world.dataset.x_train).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        mean, std = x.mean(dim=(0, 2, 3), keepdim=True)[0], x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)[0]
        del x
        local = Images(world.dataset.x_train[idx].copy(), world.dataset.y_train[idx].copy(), mean, std)
        if not torch.equal(local[0][0], world.x_train[int(idx[0])]):
            raise SystemExit("the Dataset's images differ from the tensors'")
    student, teachers = world.models[s.querier], {k: Teacher(m) for k, m in world.teachers.items()}
    settings, _ = method_settings(config.query, "qkt")
    num_classes, query = world.dataset.num_classes, s.query
    del world, dataset  # a querier holds its own data and the models, not the whole data set
    gc.collect()
    reset_peak()
    before = memory()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report carries them
        model, report = qkt.query(student, teachers, query, local, settings, num_classes=num_classes, progress=False)
    seconds = time.perf_counter() - start
    after = memory()
    return {"input": args.child, "local_samples": len(idx), "transfer_inputs": report.num_transfer_inputs,
            "rss_before_query_bytes": before["rss_bytes"], "peak_rss_bytes": after["peak_rss_bytes"],
            "peak_rss_increase_bytes": after["peak_rss_bytes"] - before["rss_bytes"],
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "query_seconds_in_one_process": round(seconds, 1), "model_digest": digest(model), "experts": report.experts}


def main() -> int:
    p = parser(__doc__, "memory")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)  # the measuring process of one kind
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="the inputs to measure (default: both)")
    args = parse(p)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    setup = Setup.start(args)  # trains and checkpoints the parties once, for every child to load
    runs = []
    for kind in args.kinds:
        command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", kind]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{kind}: peak {runs[-1]['peak_rss_bytes'] / GIB:.2f} GiB during the query "
              f"({runs[-1]['rss_before_query_bytes'] / GIB:.2f} GiB before it)")
    same = len({r["model_digest"] for r in runs}) == 1
    targets = [target(f"peak resident memory of a query, querier's data as {r['input']} (GiB)", round(r["peak_rss_bytes"] / GIB, 2),
                      LIMIT_GIB, f"{r['local_samples']} local images, {r['transfer_inputs']} transfer inputs; "
                                 f"{r['rss_before_query_bytes'] / GIB:.2f} GiB held before the query") for r in runs]
    wall = setup.finish("peak resident memory of one query on all of CIFAR-10, the querier's data as tensors and as a Dataset",
                        {"memory": {"runs": runs, "same_model_every_input": same}}, targets)
    print(f"wrote {args.output} in {wall:.0f} s; same model from every input: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
