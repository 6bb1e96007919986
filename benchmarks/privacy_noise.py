"""The accuracy cost of differentially private probe replies (docs/privacy.md), on the demo's query.

    python benchmarks/privacy_noise.py [output.json]   # 3-4 minutes on one thread; default docs/results/privacy.json

Every teacher answers the probe with Laplace noise of scale min(2, |Q|)/ε and the querier
learns as usual, with its trust checks on and off, for ε = ∞ (no noise), 10, 3, 1 and 0.3,
five repetitions per ε. The teachers compute their exact scores once
(:class:`~qkt.query.CachedScores`, each query still charged their time) and
:class:`~qkt.query.NoisyScores` draws the noise from a generator seeded per repetition,
so the JSON repeats exactly. Each run records the experts asked and kept, the teachers
distrusted, the bytes received, the query and local accuracy, and the query's seconds
(teachers answering in parallel) and its teachers' summed seconds.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from qkt.config import DEMO, TrustConfig, parse_config
from qkt.errors import QueryError
from qkt.experiment import build_world
from qkt.files import atomic_write
from qkt.query import CachedScores, InProcessChannel, NoisyScores, Teacher, run_query
from qkt.query.privacy import laplace_scale
from qkt.training import per_class_accuracy, set_threads

EPSILONS = [None, 10.0, 3.0, 1.0, 0.3]  # None: no noise
REPETITIONS = 5


def main(output: Path) -> None:
    set_threads(1)
    config = parse_config(DEMO, "demo")
    world = build_world(config, progress=False)
    s = world.scenario
    teachers = InProcessChannel({k: Teacher(m) for k, m in world.teachers.items()})
    cache: dict = {}  # every run's exact scores, computed once per teacher
    rows = []
    for epsilon in EPSILONS:
        for trust in (True, False):
            for rep in range(REPETITIONS if epsilon else 1):
                channel = NoisyScores(CachedScores(teachers, cache), np.random.default_rng([rep, int(1000 * (epsilon or 0))]))
                update = {"trust": TrustConfig(enabled=trust)}
                if epsilon:
                    update["probe"] = config.query.probe.model_copy(update={"noise": "laplace", "epsilon": epsilon})
                row = {"epsilon": epsilon, "trust": trust, "repetition": rep,
                       "laplace_scale": laplace_scale(len(s.query), epsilon) if epsilon else 0.0}
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # the report carries them
                        model, report = run_query(world.models[s.querier], channel, s.query, world.querier_data,
                                                  config.query.model_copy(update=update), num_classes=world.dataset.num_classes,
                                                  progress=False)
                    row.update({"experts_asked": len([m for m in report.messages if m["kind"] == "weights"]),
                                "experts_kept": sorted({k for v in report.experts.values() for k in v}),
                                "distrusted": sorted(report.distrusted), "bytes_received": report.bytes_received,
                                "seconds": report.seconds["total"], "teacher_seconds": report.seconds["teachers"]})
                except QueryError as exc:  # the querier keeps its own model; counted, not hidden
                    model = world.models[s.querier]
                    row.update({"failed": str(exc), "experts_asked": float("nan"), "bytes_received": float("nan")})
                acc = per_class_accuracy(model, world.x_test, world.y_test, world.dataset.num_classes)
                rows.append({**row, "query_accuracy": float(acc[list(s.query)].mean()),
                             "local_accuracy": float(acc[list(s.local_classes)].mean())})
                print(json.dumps(rows[-1]), flush=True)
    summary = []
    for epsilon in EPSILONS:
        for trust in (True, False):
            sel = [r for r in rows if r["epsilon"] == epsilon and r["trust"] == trust]
            summary.append({"epsilon": epsilon, "trust": trust, "runs": len(sel), "failed": sum("failed" in r for r in sel),
                            **{f"{k}_{name}": float(f([r[k] for r in sel])) for k in
                               ("query_accuracy", "local_accuracy", "experts_asked", "bytes_received")
                               for name, f in (("mean", np.nanmean), ("std", np.nanstd))}})
    result = {"scenario": {"dataset": "digits", "querier": s.querier, "query": list(s.query), "local_classes": list(s.local_classes),
                           "config": "qkt demo (10 parties, Dirichlet 0.1, MLP)"}, "summary": summary, "runs": rows}
    atomic_write(output, json.dumps(result, indent=2).encode())
    print(f"wrote {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results" / "privacy.json",
                        help="where to write the JSON (default: docs/results/privacy.json)")
    main(parser.parse_args().output)
