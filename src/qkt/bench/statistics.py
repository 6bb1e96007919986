"""The statistics of a benchmark: each method's mean and spread over the queries, and QKT's gains."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import diagnostics
from ..methods import COLLABORATIVE, METHODS

QUERY_METHODS = {name for name, m in METHODS.items() if m.runner == "query"}
METRICS = ["query_accuracy", "local_accuracy", "overall_accuracy", "forgetting", "bytes", "seconds", "teacher_seconds"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(np.nanmean(a)), float(np.nanstd(a))


def summarize(records: list[dict]) -> dict:
    """Per data set and scenario: mean and std of every metric per method, and QKT's gains in points."""
    out: dict = {}
    for rec in records:
        out.setdefault(rec["dataset"], {}).setdefault(rec["scenario"], []).append(rec)
    summary: dict = {}
    for ds, by_scenario in out.items():
        for name, recs in by_scenario.items():
            methods = list(dict.fromkeys(m for r in recs for m in r["methods"]))
            rows = {}
            for m in methods:
                ran = [r["methods"][m] for r in recs if m in r["methods"]]  # a resumed run may add methods
                results = [v for v in ran if "not_applicable" not in v["details"]]
                if not results:  # e.g. one global model across parties of different architectures
                    rows[m] = {"queries": len(ran), "not_applicable": ran[0]["details"]["not_applicable"]}
                    continue
                values = {k: [v[k] for v in results] for k in METRICS if k != "bytes"}
                values["bytes"] = [v["bytes_sent"] + v["bytes_received"] for v in results]
                rows[m] = {k: mean_std(v) for k, v in values.items()}
                rows[m]["queries"] = len(results)
                # a failed query leaves the querier its own model: experiment.run_methods scores it as Local
                rows[m]["failed"] = sum("failed" in v["details"] for v in results)
                # records of an older qkt bench scored a failed query's exchange as free
                rows[m]["failed_cost_recorded"] = any(v["bytes_sent"] for v in results if "failed" in v["details"])
                budgets = sorted({v["details"]["budget"] for v in results if "budget" in v["details"]})
                if budgets:  # a federated row's rounds
                    rows[m]["budget"] = "; ".join(budgets)
                liars = [(str(r["false_expert"]), r["methods"][m]) for r in recs if m in r["methods"] and r.get("false_expert") is not None]
                if liars and m in QUERY_METHODS:
                    # kept out: distrusted, never made an expert, or the query failed with nobody else to learn from
                    rows[m]["liar_kept_out"] = sum(all(name not in names for names in v["details"].get("experts", {}).values())
                                                   for name, v in liars)
            entry = summary.setdefault(ds, {})[name] = {"queries": len(recs), "seeds": sorted({r["seed"] for r in recs}), "rows": rows}
            if "qkt" not in rows:  # a run of baselines alone, to merge with a run of QKT (benchmarks/merge_runs.py)
                continue
            qkt = rows["qkt"]["overall_accuracy"][0]
            scored = [m for m in methods if "not_applicable" not in rows[m]]
            entry.update(gain_over={m: 100 * (qkt - rows[m]["overall_accuracy"][0]) for m in scored if m != "qkt"},
                         qkt_forgetting_points=100 * rows["qkt"]["forgetting"][0])
            if "oracle" in rows and "local" in rows:
                entry["recovered_share"] = recovered_share(rows, [r["methods"]["qkt"] for r in recs if "qkt" in r["methods"]])
            entry["diagnostics"] = discovery([r["methods"]["qkt"] for r in recs if "qkt" in r["methods"]])
            collaborative = [m for m in COLLABORATIVE if m in scored]
            if collaborative:  # a run of chosen methods (--methods) may have none
                best = max(collaborative, key=lambda m: rows[m]["overall_accuracy"][0])
                entry.update({
                    "gain_over_collaborative_mean": 100 * (qkt - float(np.mean([rows[m]["overall_accuracy"][0] for m in collaborative]))),
                    "best_collaborative": best,
                    "gain_over_best_collaborative": 100 * (qkt - rows[best]["overall_accuracy"][0]),
                    "queries_above_every_collaborative": queries_above(recs, "qkt", collaborative),
                })
            # Every row QKT competes with, at any budget: not QKT's own variants, not the oracle (a reference with the experts' data).
            baselines = [m for m in scored if m in METHODS and METHODS[m].runner not in ("query", "oracle")]
            if baselines:
                best = max(baselines, key=lambda m: rows[m]["overall_accuracy"][0])
                entry.update(best_row=best, gain_over_best_row=100 * (qkt - rows[best]["overall_accuracy"][0]))
    return summary


def queries_above(records: list[dict], method: str, others: Sequence[str]) -> list[int]:
    """On how many queries ``method``'s overall accuracy is above that of every one of ``others`` that ran on the query, of how many."""
    compared = [r["methods"] for r in records if method in r["methods"] and any(m in r["methods"] for m in others)]
    above = sum(all(v[method]["overall_accuracy"] > v[m]["overall_accuracy"] for m in others if m in v) for v in compared)
    return [above, len(compared)]


def recovered_share(rows: dict, qkt_results: list[dict]) -> dict:
    """The share of the oracle's gain over Local that QKT recovers: of the mean gains, and the median of the queries' own shares."""
    local, oracle, qkt = (rows[m]["overall_accuracy"][0] for m in ("local", "oracle", "qkt"))
    per_query = [v["details"]["recovered_share"] for v in qkt_results if v["details"].get("recovered_share") is not None]
    return {"of_means": diagnostics.recovered_share(qkt, local, oracle),
            "median": float(np.median(per_query)) if per_query else None, "queries": len(per_query)}


def discovery(qkt_results: list[dict]) -> dict:
    """QKT's expert discovery over the queries: mean precision and recall (probe alone, after the checks) and the experts' query mass."""
    found = [v["details"]["diagnostics"] for v in qkt_results if "diagnostics" in v["details"]]

    def mean(values: list) -> float | None:
        values = [x for x in values if x is not None]
        return float(np.mean(values)) if values else None

    return {f"{stage}_{kind}": mean([d[stage][kind] for d in found]) for stage in ("probe", "after_checks")
            for kind in ("precision", "recall")} | {"expert_query_mass": mean([d["expert_query_mass"] for d in found]),
                                                    "queries": len(found)}
