"""Phases 1 + 2 of a query against plain fine-tuning on the querier's data for as many epochs.

    python benchmarks/perf_phases.py --threads 2 --quiet       # the benchmark's 6,000 images; docs/results/perf-phases.json and .png
    python benchmarks/perf_phases.py --whole-dataset --quiet   # all 50,000; docs/results/perf-phases-50k.json and .png
    python benchmarks/perf_phases.py --quick --threads 1       # a smoke run in under a minute, written under qkt-output/perf

On the world of :mod:`perf_common` (CIFAR-10, K = 10, α = 0.1), one query finds the
experts and their masks; then ``learn`` (transfer set, Phase 1, Phase 2) runs again on
that lesson with each Phase 1 of :data:`SCHEDULES`, and :func:`qkt.training.fit` fine-tunes
the querier's model with cross-entropy on its local data, with Phase 1's optimiser, batch
size and number of epochs. The schedules are the benchmark's (QKT's method settings: the
first block frozen, on its outputs computed once, the local and synthetic inputs and the
next third of the mixups in each of 7 epochs), every block and every mixup in each of 5
epochs, and QKT Light's (the last block and the head, on the outputs of the blocks
before them). Phase 2 re-fits only the linear head on features computed once, so its
epochs are not fine-tuning epochs: it is counted on QKT's side only. Synthesis
(inverting the experts and the targets of the transfer set) is reported apart. Each
measurement keeps the fastest of ``--repeats`` interleaved runs: on a shared machine
the other load only ever adds time.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from perf_common import Setup, parse, parser, target, timed
from tqdm.auto import tqdm

from qkt.config import QueryConfig
from qkt.experiment import method_settings
from qkt.query import Lesson, Variant, learn
from qkt.report import save_figure
from qkt.training import fit

# Each Phase 1 timed against fine-tuning: a method of qkt.methods and the QueryConfig values it sets over the method's.
SCHEDULES = {
    "default": ("qkt", {}),
    "every_block_every_mixup_5_epochs": ("qkt", {"phase1_frozen_blocks": 0, "phase1_mixups": 1.0, "phase1_epochs": 5}),
    "light": ("qkt_light", {}),
}
LABELS = {"default": "the benchmark's", "every_block_every_mixup_5_epochs": "every block and mixup", "light": "QKT Light"}


def schedule(config: QueryConfig, name: str) -> tuple[QueryConfig, Variant]:
    method, update = SCHEDULES[name]
    settings, variant = method_settings(config, method)
    return QueryConfig.model_validate({**settings.model_dump(), **update}), variant


def phases_vs_finetuning(setup: Setup) -> dict:
    """One query's experts and masks, learnt again with each schedule, ``repeats`` times, and fine-tuning for as many epochs."""
    q, s, student = setup.config.query, setup.world.scenario, setup.student
    local_x, local_y = setup.world.querier_data
    _, report, _ = setup.query(setup.teachers(), progress=setup.args.progress)
    names = sorted({k for v in report.experts.values() for k in v})
    lesson = Lesson({k: setup.world.teachers[k] for k in names},
                    {k: np.array([k in report.experts[c] for c in s.query]) for k in names}, s.query, local_x, local_y)
    settings = {name: schedule(q, name) for name in SCHEDULES}
    epochs = {name: config.phase1_epochs for name, (config, _) in settings.items()}
    finetune = {name: f"finetune_{e}_epochs" for name, e in epochs.items()}
    runs = []
    for _ in tqdm(range(setup.args.repeats), desc="phases vs fine-tuning", unit="repeat", disable=not setup.args.progress):
        run = {}
        for name, (config, variant) in settings.items():
            _, seconds, transfer, num_synthetic = learn(student, lesson, config, variant, progress=False)
            if name == "default":
                inputs = {"local": len(local_y), "transfer": len(transfer), "synthetic": num_synthetic}
            run.update({f"{k}_{name}": round(v, 3) for k, v in seconds.items()})
        for key, e in sorted({(finetune[name], e) for name, e in epochs.items()}):
            run[key] = round(timed(lambda e=e: fit(copy.deepcopy(student), (local_x, local_y), e, lr=q.lr, batch_size=q.batch_size,
                                                   weight_decay=0.0, seed=q.seed, progress=False))[1], 3)
        runs.append(run)
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    phases = {name: min(r[f"phase1_{name}"] + r[f"phase2_{name}"] for r in runs) for name in SCHEDULES}
    synthesis = best["synthesis_default"]
    return {
        "experts": report.experts,
        "query_seconds_per_phase": {k: round(v, 2) for k, v in report.seconds.items()},
        "epochs": {"phase1": q.phase1_epochs, "phase2_head_only": q.phase2_epochs, "phase1_by_schedule": epochs},
        "schedules": {name: {"method": method, "settings": update} for name, (method, update) in SCHEDULES.items()},
        "inputs": inputs,
        "runs": runs, "fastest": best,
        "phases_seconds": {name: round(v, 3) for name, v in phases.items()},
        "finetune_seconds": {name: best[finetune[name]] for name in SCHEDULES},
        "ratio_by_schedule": {name: round(phases[name] / best[finetune[name]], 3) for name in SCHEDULES},
        # The fastest runs above may come from different repeats; these pair each repeat with its own fine-tuning.
        "ratio_by_schedule_each_repeat": {name: [round((r[f"phase1_{name}"] + r[f"phase2_{name}"]) / r[finetune[name]], 3) for r in runs]
                                          for name in SCHEDULES},
        "synthesis_over_finetune": round(synthesis / best[finetune["default"]], 3),
        "query_learning_over_finetune": round((phases["default"] + synthesis) / best[finetune["default"]], 3),
    }


def plot(section: dict, path: Path, train_images: int) -> None:
    """Per schedule: Phase 1 and Phase 2 stacked, beside fine-tuning for as many epochs; synthesis apart."""
    fastest, names = section["fastest"], list(SCHEDULES)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    phase1 = [fastest[f"phase1_{n}"] for n in names]
    ax.barh(y + 0.2, phase1, 0.4, label="Phase 1")
    ax.barh(y + 0.2, [fastest[f"phase2_{n}"] for n in names], 0.4, left=phase1, label="Phase 2 (head only)")
    ax.barh(y - 0.2, [section["finetune_seconds"][n] for n in names], 0.4, label="fine-tuning, as many epochs")
    ax.set_yticks(y, [f"{LABELS[n]} ({section['epochs']['phase1_by_schedule'][n]} epochs)" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (fastest run)")
    ax.legend(fontsize=8)
    fig.suptitle(f"Phases 1 + 2 against fine-tuning (CIFAR-10, {train_images:,} training images; synthesis "
                 f"{fastest['synthesis_default']:.1f} s apart)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> int:
    args = parse(parser(__doc__, "phases"))
    setup = Setup.start(args)
    section = phases_vs_finetuning(setup)
    q, ratios, epochs = setup.config.query, section["ratio_by_schedule"], section["epochs"]["phase1_by_schedule"]
    targets = [
        target("Phases 1+2 / fine-tuning on the local data", ratios["default"], 1.3,
               f"fine-tuning for Phase 1's {epochs['default']} epochs; Phase 1 keeps the student's first {q.phase1_frozen_blocks} "
               f"block(s) frozen and trains on the local and synthetic inputs and {q.phase1_mixups:.2f} of the mixups per epoch, "
               f"{section['inputs']['transfer']} transfer inputs in all, {section['inputs']['local']} of them local"),
        target("Phases 1+2 / fine-tuning, every block and every mixup in each of 5 Phase 1 epochs",
               ratios["every_block_every_mixup_5_epochs"], 1.3, f"against fine-tuning for {epochs['every_block_every_mixup_5_epochs']} epochs"),
        target("QKT Light's Phases 1+2 / fine-tuning on the local data", ratios["light"], 1.3,
               "the benchmark's transfer inputs and epochs; only the last block and the head are trained, on the outputs of the "
               "frozen blocks computed once"),
    ]
    wall = setup.finish("Phases 1 + 2 of a query against fine-tuning on the local data", {"phases_vs_finetuning": section}, targets)
    plot(section, setup.plot_path, len(setup.world.y_train))
    print(f"wrote {args.output} and {setup.plot_path.name} beside it in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
