"""Tables, results files and charts of an experiment."""

from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: qkt runs on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .files import all_or_nothing, atomic_write  # noqa: E402
from .methods import display  # noqa: E402


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _accuracy(value: float | None, sign: str = "") -> str:
    """An accuracy for a table; a group of classes without test samples has none (NaN, or None once read from results.json)."""
    return "no test sample" if value is None or math.isnan(value) else f"{value:{sign}.3f}"


def json_safe(value: object) -> object:
    """``value`` with every NaN or infinite float as None: JSON has no NaN, and a class without test samples scores NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def not_a_result(result: dict) -> str | None:
    """Why a method's row has no figures of its own: its query failed (the querier keeps its model), or it cannot run here; else None."""
    details = result.get("details", {})
    if "failed" in details:
        return f"failed — {details['failed']} (the querier keeps its own model, as Local)"
    if "not_applicable" in details:
        return f"n/a — {details['not_applicable']}"
    return None


def format_table(methods: dict[str, dict]) -> str:
    """A markdown table of the SPEC §3 figures, one row per method.

    ``seconds`` is the method's wall time with every party on its own machine (QKT's
    includes the slowest teacher's replies); ``teachers' s`` the teachers' own compute
    time for a query's replies, added up. A method whose query failed, or that cannot
    run here, says so and why in place of figures.
    """
    rows = [
        "| method | query acc | local acc | overall acc | forgetting | bytes sent | bytes received | seconds | teachers' s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in methods.items():
        why = not_a_result(r)
        if why is not None:
            rows.append(f"| {display(name)} | {why} |" + " — |" * 7)
            continue
        rows.append(
            f"| {display(name)} | {_accuracy(r['query_accuracy'])} | {_accuracy(r['local_accuracy'])} | "
            f"{_accuracy(r['overall_accuracy'])} | {_accuracy(r['forgetting'], '+')} | {human_bytes(r['bytes_sent'])} | "
            f"{human_bytes(r['bytes_received'])} | {r['seconds']:.1f} | {r['teacher_seconds']:.1f} |"
        )
    return "\n".join(rows)


def describe_scenario(summary: dict) -> str:
    s = summary["scenario"]
    classes = summary["classes"]
    names = ", ".join(f"{c} ({classes[c]})" for c in s["query"])
    experts = summary["reports"].get("qkt", {}).get("experts", {})
    line = f"querier: party {s['querier']} ({sum(s['holdings'][s['querier']])} samples), query: {names}"
    if experts:
        line += "; experts found: " + ", ".join(f"class {c} ← parties {', '.join(v)}" for c, v in experts.items())
    return line


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> None:
    """Render ``fig`` as PNG into ``path`` atomically (a Ctrl-C during rendering leaves no partial chart), then close it."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, png.getvalue())


def plot_per_class(summary: dict, path: Path) -> None:
    """Bars of the querier's per-class test accuracy before (Local) and after (QKT, QKT Light) the query.

    A run of none of these three shows the methods it ran instead. A method whose query
    failed, or that cannot run here, has no bars: a hatched legend entry and a note say why.
    """
    methods = {k: v for k, v in summary["methods"].items() if k in ("local", "qkt", "qkt_light")} or summary["methods"]
    classes = summary["classes"]
    query = set(summary["scenario"]["query"])
    local = set(summary["scenario"]["local_classes"])
    x = np.arange(len(classes))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) + 2), 3.8))
    notes, absent = [], []
    for i, (name, r) in enumerate(methods.items()):
        why = not_a_result(r)
        if why is not None:
            absent.append(Patch(fill=False, hatch="//", label=f"{display(name)}: {why.split(' — ')[0]}, no bars"))
            notes.append(f"{display(name)}: {why}")
            continue
        label = "before (Local)" if name == "local" else f"after ({display(name)})"
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, r["per_class_accuracy"], width, label=label)
    for c in query:
        ax.axvspan(c - 0.45, c + 0.45, color="gold", alpha=0.25, lw=0)
    ax.set_xticks(x, [f"{'*' if c in query else ''}{name}{'' if c in local or c in query else ' ·'}" for c, name in enumerate(classes)],
                  rotation=30 if len(classes) > 10 or max(map(len, classes)) > 4 else 0, ha="right" if len(classes) > 10 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    # below the title, where tight_layout makes room for them, wrapped to the figure's width
    wrap = int(14 * fig.get_figwidth())
    ax.set_title("\n".join([f"{summary['dataset']}: querier {summary['scenario']['querier']} — query classes shaded (*), "
                            "· = neither local nor queried", *(textwrap.fill(n, wrap, max_lines=2, placeholder=" …") for n in notes)]),
                 fontsize=9)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + absent, loc="upper center", bbox_to_anchor=(0.5, -0.12),
              ncol=max(len(methods), 1), fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_outputs(summary: dict, output: Path) -> None:
    """``results.json``, ``results.md`` and ``per_class_accuracy.png`` in ``output``: all three, or if one fails, none."""
    with all_or_nothing():
        atomic_write(output / "results.md", (describe_scenario(summary) + "\n\n" + format_table(summary["methods"]) + "\n").encode())
        atomic_write(output / "results.json", json.dumps(json_safe(summary), indent=2, allow_nan=False).encode())
        plot_per_class(summary, output / "per_class_accuracy.png")
