"""A benchmark's outputs: markdown tables, the headline, CSV, the chart, and the machine it ran on."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..files import all_or_nothing, atomic_write  # noqa: E402
from ..methods import COLLABORATIVE, display  # noqa: E402
from ..report import human_bytes, json_safe, save_figure  # noqa: E402
from .catalogue import SCENARIOS  # noqa: E402
from .statistics import METRICS, summarize  # noqa: E402


def _cell(metric: str, mean: float, std: float) -> str:
    if metric == "bytes":
        return human_bytes(mean)
    if metric in ("seconds", "teacher_seconds"):
        return f"{mean:.1f}"
    sign = "+" if metric == "forgetting" else ""
    return f"{mean:{sign}.3f} ± {std:.3f}"


def label(method: str, row: dict) -> str:
    """A row's name in the tables: the method's, with a federated row's budget (its rounds, and any fine-tuning)."""
    return f"{display(method)} ({row['budget']})" if "budget" in row else display(method)


def format_tables(summary: dict) -> str:
    """Markdown: one table per data set and scenario, and QKT's headline gains."""
    lines = []
    for ds, scenarios in summary.items():
        for name, s in scenarios.items():
            lines += [f"### {ds} — {name}", "", f"{SCENARIOS[name].description}. {s['queries']} queries "
                      f"(queriers × seeds {s['seeds']}); mean ± std; seconds: wall time in one process, with QKT's teachers answering in "
                      "parallel (the slowest one's replies counted) and the federated methods training every party in turn; "
                      "teachers' s: the teachers' compute time for a query's replies, added up; Δ = QKT's overall accuracy minus the method's, in points.", "",
                      "| method | query acc | local acc | overall acc | forgetting | bytes | seconds | teachers' s | Δ overall |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for m, row in s["rows"].items():
                if "not_applicable" in row:
                    lines.append(f"| {display(m)} | n/a — {row['not_applicable']} |" + " — |" * len(METRICS))
                    continue
                gain = f"{s['gain_over'][m]:+.1f}" if m in s.get("gain_over", {}) else "—"
                count = [f"{row['queries']} queries"] if row["queries"] != s["queries"] else []
                count += [f"{row['failed']} of {row['queries']} failed"] if row["failed"] else []
                lines.append(f"| {label(m, row)}{' (' + '; '.join(count) + ')' if count else ''} | "
                             + " | ".join(_cell(k, *row[k]) for k in METRICS) + f" | {gain} |")
            kept_out = [f"{display(m)} in {row['liar_kept_out']} of {row['queries']}" for m, row in s["rows"].items() if "liar_kept_out" in row]
            if kept_out:
                lines += ["", "Queries where the lying teacher was kept out (distrusted, or never an expert): " + ", ".join(kept_out) + "."]
            failing = {m: row for m, row in s["rows"].items() if row.get("failed")}
            if failing:
                cost = ("with the bytes and seconds its exchange cost before it stopped" if all(row["failed_cost_recorded"] for row in failing.values())
                        else "no bytes and no seconds (what its probe cost before it failed is not recorded)")
                lines += ["", "Queries that failed (no expert found, or every expert distrusted or lost): "
                          + ", ".join(f"{display(m)} in {row['failed']} of {row['queries']}" for m, row in failing.items())
                          + f". A failed query leaves the querier its own model, so the means above count it as Local: Local's accuracies, {cost}."]
            against = (f"QKT vs the mean of the collaborative methods that ran ({', '.join(display(m) for m in COLLABORATIVE if m in s['gain_over'])}): "
                       f"{s['gain_over_collaborative_mean']:+.1f} points; vs the best of them ({display(s['best_collaborative'])}): "
                       f"{s['gain_over_best_collaborative']:+.1f} points, and above every one of them on "
                       f"{s['queries_above_every_collaborative'][0]} of {s['queries_above_every_collaborative'][1]} queries; "
                       if "best_collaborative" in s else "")
            if "best_row" in s:
                against += (f"vs the best of every baseline row, at any budget ({label(s['best_row'], s['rows'][s['best_row']])}): "
                            f"{s['gain_over_best_row']:+.1f} points; ")
            forgets = f"QKT forgets {s['qkt_forgetting_points']:.1f} points." if "qkt_forgetting_points" in s else "QKT did not run."
            lines += ["", f"{against}{forgets}"] + [line for line in (format_oracle(s), format_discovery(s)) if line] + [""]
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def format_oracle(s: dict) -> str:
    """One line: how much of the oracle's gain over Local QKT recovers."""
    if "recovered_share" not in s:
        return ""
    r, rows = s["recovered_share"], s["rows"]
    gain = 100 * (rows["oracle"]["overall_accuracy"][0] - rows["local"]["overall_accuracy"][0])
    return (f"The oracle (the querier trained on its data plus the found experts' real samples of Q) gains {gain:+.1f} points "
            f"of overall accuracy over Local; QKT recovers {_share(r['of_means'])} of it (of the means; median over "
            f"{r['queries']} queries: {_share(r['median'])}); the oracle forgets {100 * rows['oracle']['forgetting'][0]:.1f} points.")


def format_discovery(s: dict) -> str:
    """One line: QKT's expert discovery against the parties that really hold Q, and the experts' lean to Q on the querier's data."""
    d = s.get("diagnostics", {})
    if not d.get("queries"):
        return ""
    mass = "n/a" if d["expert_query_mass"] is None else f"{d['expert_query_mass']:.2f}"
    return (f"Expert discovery against the parties holding Q (mean over {d['queries']} queries): precision {_share(d['probe_precision'])}, "
            f"recall {_share(d['probe_recall'])} from the probe; {_share(d['after_checks_precision'])} and "
            f"{_share(d['after_checks_recall'])} after the checks. The experts put {mass} of their probability on Q "
            "on the querier's own data.")


def format_headline(summary: dict) -> str:
    """The paper-style headline, per data set and query kind: QKT's overall accuracy against the collaborative methods at the
    parties' budget (their mean and best), and against the best baseline row at any budget (e.g. FedAvg run to convergence)."""
    lines = ["| data set | queries | QKT overall acc | mean of collaborative | best collaborative | QKT − mean | QKT − best "
             "| queries QKT is above every collaborative | best of all rows (its budget) | QKT − best row | QKT forgetting (oracle's) "
             "| oracle's gain recovered |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ds, scenarios in summary.items():
        for name, scenario in SCENARIOS.items():
            if scenario.headline is None or name not in scenarios or "best_collaborative" not in scenarios[name]:
                continue
            s = scenarios[name]
            rows = s["rows"]
            mean_collab = rows["qkt"]["overall_accuracy"][0] - s["gain_over_collaborative_mean"] / 100
            best = s["best_collaborative"]
            oracle_forgets = f" ({100 * rows['oracle']['forgetting'][0]:.1f})" if "forgetting" in rows.get("oracle", {}) else ""
            failed = f" ({rows['qkt']['failed']} of {rows['qkt']['queries']} failed, scored as Local)" if rows["qkt"]["failed"] else ""
            lines.append(f"| {ds} | {scenario.headline} | {rows['qkt']['overall_accuracy'][0]:.3f}{failed} | "
                         f"{mean_collab:.3f} | {rows[best]['overall_accuracy'][0]:.3f} ({label(best, rows[best])}) | "
                         f"{s['gain_over_collaborative_mean']:+.1f} | {s['gain_over_best_collaborative']:+.1f} | "
                         f"{'{} of {}'.format(*s['queries_above_every_collaborative'])} | "
                         f"{rows[s['best_row']]['overall_accuracy'][0]:.3f} ({label(s['best_row'], rows[s['best_row']])}) | "
                         f"{s['gain_over_best_row']:+.1f} | "
                         f"{s['qkt_forgetting_points']:.1f} pts{oracle_forgets} | {_share(s.get('recovered_share', {}).get('of_means'))} |")
    return "\n".join(lines) if len(lines) > 2 else "No collaborative method ran (qkt bench --methods)."


def format_csv(summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "scenario", "queries", "method"] + [f"{m}_{k}" for m in METRICS for k in ("mean", "std")]
                    + ["qkt_gain_overall_points", "failed_queries", "not_applicable"])
    for ds, scenarios in summary.items():
        for name, s in scenarios.items():
            for m, row in s["rows"].items():
                if "not_applicable" in row:
                    writer.writerow([ds, name, s["queries"], m] + [""] * (2 * len(METRICS) + 2) + [row["not_applicable"]])
                    continue
                writer.writerow([ds, name, s["queries"], m] + [f"{v:.6g}" for k in METRICS for v in row[k]]
                                + [f"{s['gain_over'][m]:.3f}" if m in s.get("gain_over", {}) else "", row["failed"], ""])
    return buffer.getvalue()


def plot(summary: dict, path: Path) -> None:
    """Overall accuracy (mean ± std) of every method, one panel per data set, one bar group per scenario.

    A method that cannot run in a scenario has no bar but "n/a"; one whose queries failed in part is hatched.
    """
    datasets = list(summary)
    fig, axes = plt.subplots(len(datasets), 1, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    hatched = False
    for ax, ds in zip(axes[:, 0], datasets, strict=True):
        scenarios = list(summary[ds])
        methods = list(dict.fromkeys(m for s in scenarios for m in summary[ds][s]["rows"]))
        width = 0.85 / len(methods)
        for i, m in enumerate(methods):
            rows = [summary[ds][s]["rows"].get(m, {}) for s in scenarios]
            means = [row.get("overall_accuracy", (np.nan, 0))[0] for row in rows]
            stds = [row.get("overall_accuracy", (0, 0))[1] for row in rows]
            x = np.arange(len(scenarios)) + (i - (len(methods) - 1) / 2) * width
            bars = ax.bar(x, means, width, yerr=stds, label=display(m), capsize=2)
            for bar, row, at in zip(bars, rows, x, strict=True):
                if row.get("failed"):
                    bar.set_hatch("//")
                    hatched = True
                if "not_applicable" in row:
                    ax.text(at, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(np.arange(len(scenarios)), scenarios, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("overall accuracy")
        ax.set_title(ds, fontsize=10)
    axes[0, 0].legend(ncol=6, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.35), frameon=False)
    if hatched:
        fig.text(0.01, 0.005, "hatched: some of the method's queries failed and score as Local (the querier keeps its model)", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_outputs(state: dict, output: Path) -> None:
    """``bench.json`` (every query of ``state``, at least one), ``bench.md`` and ``bench.csv`` (the tables), ``headline.md`` and ``bench.png``, all or none."""
    summary = summarize(state["records"])
    state["summary"] = summary
    with all_or_nothing():
        atomic_write(output / "bench.json", json.dumps(json_safe(state), indent=1, allow_nan=False).encode())
        scale = " --whole-dataset" if state["whole_dataset"] else ""
        header = (f"qkt bench --profile {state['profile']}{scale} ({', '.join(state['datasets'])}); {state['started']}; "
                  f"{state['machine']}; wall {state['wall_seconds']:.0f} s, CPU {state['cpu_seconds']:.0f} s\n\n")
        atomic_write(output / "bench.md", (header + "## Headline\n\n" + format_headline(summary) + "\n\n" + format_tables(summary)).encode())
        atomic_write(output / "headline.md", (format_headline(summary) + "\n").encode())
        atomic_write(output / "bench.csv", format_csv(summary).encode())
        plot(summary, output / "bench.png")


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


