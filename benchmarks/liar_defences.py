"""Two checks a querier could run against the noise-only planted liar, measured on honest experts and on the liar.

    python benchmarks/liar_defences.py --threads 1 --data-root DATA
        [--datasets digits cifar10] [--seeds 0 1 2] [--output docs/results/liar-defences]

The noise-only liar (``qkt.bench.liars``) is an honest teacher's model made confident in
the query class ``Q`` on inputs with little energy in the principal components of its
own data: it passes the data-free probe and answers honestly on real data, so the
querier's checks (``qkt.query.trust``) keep it. Its inversions are inputs only it calls
``Q``. Two statistics could tell it apart, if honest experts score clearly above it:

- **projected**: the expert inverts 32 inputs of each of its query classes (the
  profile's inversion settings); each is projected on the principal components holding
  90%, 95% or 99% of the variance of the querier's own data (the checks' sample of it)
  and shown to the expert again. The share it still calls the class: an honest expert's
  knowledge should show on inputs of the querier's domain, the liar's only off it.
- **peers**: where a class has two experts or more, the share of one expert's
  inversions the others call the class (their mean): nobody but the liar recognises the
  liar's inversions.

A statistic separates the liar when a threshold drops it and no honest expert. The worlds
are ``qkt bench --profile full``'s (K = 10, Dirichlet α = 0.1, every eligible querier):
its single-class scenario, on digits also the reviewers' scenarios with many experts
(``one-teacher-many-classes``, ``many-teachers-one-class``), and ``liar-noise-only-beside``,
where the liar replaces the teacher holding fewest samples of ``Q`` beside the honest
teachers. The experts are those the querier's rule picks from each party's statistics
probe (the default). No query is trained. Parties are checkpointed under ``--work``.

Writes ``liar-defences.json`` (every expert's figures), ``liar-defences.md`` (the
summary table) and ``liar-defences.png`` (each statistic's spread, honest against liar)
to ``--output``/<data set>.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from qkt.bench import PROFILES, SCENARIOS
from qkt.bench.output import machine  # also puts matplotlib on its file-only backend
from qkt.bench.runner import BenchQuery, scenario_queries
from qkt.data import load_dataset
from qkt.files import atomic_write
from qkt.query import Announcement, probe, synth, trust
from qkt.query.teacher import probe_scores
from qkt.report import save_figure
from qkt.training import predict_logits, set_threads

FRACTIONS = (0.9, 0.95, 0.99)
INVERSIONS = 32
SCENARIO_NAMES = {"digits": ("single", "one-teacher-many-classes", "many-teachers-one-class", "liar-noise-only-beside"),
                  "default": ("single", "liar-noise-only-beside")}
STATISTICS = [f"projected {f:.0%}" for f in FRACTIONS] + ["peers"]
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "liar-defences"


def principal_basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean of the flattened inputs, their principal directions (rows) and the share of variance the first k hold."""
    flat = x.reshape(len(x), -1).double()
    mean = flat.mean(0)
    _, singular, directions = torch.linalg.svd(flat - mean, full_matrices=False)
    return mean, directions, (singular**2).cumsum(0) / (singular**2).sum()


def projected(x: torch.Tensor, mean: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    centred = x.reshape(len(x), -1).double() - mean
    return (mean + centred @ directions.T @ directions).to(x.dtype).reshape(x.shape)


def called(model: torch.nn.Module, x: torch.Tensor, c: int) -> float:
    """The share of ``x`` that ``model`` calls class ``c``."""
    return float((predict_logits(model, x).argmax(1).cpu() == c).double().mean())


def query_records(dataset: str, scenario: str, seed: int, bench: BenchQuery, probed: weakref.WeakKeyDictionary) -> list[dict]:
    """Every expert of the query (the planted liar in place of its honest self) with its statistics, per query class.

    ``probed`` holds each model's probe scores over all classes: they do not depend on the query,
    so a seed's teachers are probed once for all its queries.
    """
    world, config = bench.world, bench.config
    s = world.scenario
    local_x, local_y = world.querier_data
    num_classes = world.dataset.num_classes
    announcement = Announcement.from_config(s.query, num_classes, tuple(local_x.shape[1:]), config.query)
    noise = probe.noise_probes(announcement.input_shape, announcement.probe_samples, announcement.probe_scales, announcement.probe_seed)
    teachers = {str(k): m for k, m in world.teachers.items()}
    if bench.rigged is not None:
        teachers[str(bench.liar)] = bench.rigged
    for m in teachers.values():
        if m not in probed:
            probed[m] = probe_scores(m, announcement, noise=noise)
    scores = {k: probed[m][list(s.query)] for k, m in teachers.items()}
    masks = {k: m for k, m in probe.expert_masks(scores, s.query, num_classes, config.query.lam).items() if m.any()}
    sample, _ = trust.check_sample(local_x, local_y, config.query.trust.max_samples, config.query.seed)
    mean, directions, held = principal_basis(sample)
    bases = {f: directions[: int((held < f).sum()) + 1] for f in FRACTIONS}
    made = {}
    for i, (name, mask) in enumerate(masks.items()):
        classes = [c for c, m in zip(s.query, mask, strict=True) if m]
        made[name] = synth.invert(teachers[name], classes, announcement.input_shape, config.query.inversion,
                                  seed=config.query.seed * 1000 + i, num_per_class=INVERSIONS)
    records = []
    for name, (x, y) in made.items():
        for c in sorted(set(y.tolist())):
            mine = x[y == c]
            peers = [called(teachers[other], mine, c) for other, (_, y2) in made.items() if other != name and c in y2.tolist()]
            party = int(name)
            records.append({
                "dataset": dataset, "scenario": scenario, "seed": seed, "querier": s.querier, "query": list(s.query), "class": c,
                "expert": name, "liar": bench.rigged is not None and party == bench.liar,
                "holds": int((world.dataset.y_train[s.parts[party]] == c).sum()),
                "raw": called(teachers[name], mine, c),
                **{f"projected {f:.0%}": called(teachers[name], projected(mine, mean, bases[f]), c) for f in FRACTIONS},
                "components": {f"{f:.0%}": len(bases[f]) for f in FRACTIONS},
                "peers": float(np.mean(peers)) if peers else None,
            })
    return records


def summary(records: list[dict]) -> list[dict]:
    """Per statistic over one data set's records: honest experts' and liars' spread; the liars a threshold keeping every
    honest expert drops, and the honest experts one dropping every liar drops."""
    rows = []
    for stat in STATISTICS:
        honest = [r[stat] for r in records if not r["liar"] and r[stat] is not None]
        liars = [r[stat] for r in records if r["liar"] and r[stat] is not None]
        if not honest or not liars:
            continue
        floor, ceiling = min(honest), max(liars)
        rows.append({"dataset": records[0]["dataset"], "statistic": stat, "honest": len(honest), "liars": len(liars),
                     "honest_min": floor, "honest_p05": float(np.quantile(honest, 0.05)), "honest_median": float(np.median(honest)),
                     "liar_median": float(np.median(liars)), "liar_max": ceiling,
                     "liars_below_every_honest": sum(v < floor for v in liars),
                     "honest_at_or_below_every_liar": sum(v <= ceiling for v in honest)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| data set | statistic | honest experts | their min / 5th pct / median | liars | their median / max | liars dropped by a threshold keeping every honest expert | honest experts dropped by one dropping every liar |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['statistic']} | {r['honest']} | {r['honest_min']:.2f} / {r['honest_p05']:.2f} / "
                     f"{r['honest_median']:.2f} | {r['liars']} | {r['liar_median']:.2f} / {r['liar_max']:.2f} | "
                     f"{r['liars_below_every_honest']} of {r['liars']} | {r['honest_at_or_below_every_liar']} of {r['honest']} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STATISTICS), figsize=(3.2 * len(STATISTICS), 2.8))
    rng = np.random.default_rng(0)
    for ax, stat in zip(axes, STATISTICS, strict=True):
        for side, colour, label in ((False, "tab:blue", "honest expert"), (True, "tab:red", "noise-only liar")):
            v = [r[stat] for r in records if r["liar"] == side and r[stat] is not None]
            ax.scatter(v, int(side) + rng.uniform(-0.25, 0.25, len(v)), s=10, alpha=0.6, color=colour, label=label)
        ax.set(yticks=[0, 1], yticklabels=["honest", "liar"], xlim=(-0.05, 1.05), title=f"{records[0]['dataset']}: {stat}")
        ax.set_xlabel("share of the inversions called Q")
    axes[0].legend(loc="center", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["digits", "cifar10"], help="data sets (default: digits cifar10)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="the full profile's seeds to run (default: all three)")
    parser.add_argument("--data-root", default=os.environ.get("QKT_DATA_ROOT"), help="folder of the data files (default: $QKT_DATA_ROOT)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the results go (default: docs/results/liar-defences)")
    parser.add_argument("--work", type=Path, default=Path("qkt-output/liar-defences"), help="the parties' checkpoints")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $OMP_NUM_THREADS, else every core)")
    args = parser.parse_args()
    set_threads(args.threads)
    profile = PROFILES["full"]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    for name in args.datasets:
        records: list[dict] = []
        wall, cpu = time.perf_counter(), time.process_time()
        output = args.output / name
        data = profile.config(name).get("data", {})
        dataset = load_dataset(name, args.data_root).subsample(data.get("max_train"), data.get("max_test"), 0)
        for seed in args.seeds if args.seeds is not None else range(profile.seeds):
            probed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
            for scenario in SCENARIO_NAMES.get(name, SCENARIO_NAMES["default"]):
                for bench in scenario_queries(dataset, SCENARIOS[scenario], seed, profile, args.data_root, args.work / "checkpoints",
                                              set(), True, ["local"]):
                    records += query_records(name, scenario, seed, bench, probed)
                    state = {"command": command, "machine": machine(), "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                             "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu, "profile": "full",
                             "inversions_per_class": INVERSIONS, "summary": summary(records), "records": records}
                    atomic_write(output / "liar-defences.json", json.dumps(state, indent=1).encode())
        table = markdown(summary(records))
        atomic_write(output / "liar-defences.md", table.encode())
        plot(records, output / "liar-defences.png")
        print(table)
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
