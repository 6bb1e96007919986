"""Every method qkt runs and compares (SPEC §4), in one registry.

Configs, ``qkt run``, ``qkt bench``, the reports and the Flower app all read
this table: a method's name, how it is shown, what runs it, whether it is one
of the existing ways of collaborating that QKT is compared with, and, for QKT's
variants, what they change. An ablation is QKT with a few settings or engine
switches (:class:`qkt.query.Variant`) changed, never a user-facing option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Method:
    """One row of every results table.

    Attributes
    ----------
    name, display:
        The name configs and ``--methods`` use, and the name tables show.
    runner:
        ``local`` (the querier's own model), ``ensemble``, ``kd``, ``federated``
        (FedAvg, FedProx, FedGen: one global model), ``query`` (QKT and its variants)
        or ``oracle`` (a reference, not a competitor: the querier's model trained on its
        own data plus the real samples of ``Q`` held by the experts the query found).
    collaborative:
        One of the existing ways of collaborating, at the parties' own training budget, whose
        mean QKT's headline is compared with. The baselines at their strength (a bigger
        budget) are not: the headline compares QKT with the best of every baseline row.
    algorithm, rounds, finetune:
        A federated row's algorithm (``fedavg``, ``fedprox``, ``fedgen``); its rounds,
        ``equal`` (``training.epochs`` local epochs in all, the parties' own budget) or
        ``converged`` (``federated.converged_rounds`` rounds); and whether the querier
        then fine-tunes the global model on its own data for ``training.epochs``.
    settings:
        ``QueryConfig`` values this method sets over the run's (QKT Light, ablations).
    variant:
        Engine switches (:class:`qkt.query.Variant` fields) of an ablation.
    ablation:
        Run by ``qkt bench`` in the scenarios that have ablations.
    lever:
        A candidate change against multi-class forgetting, run only when named (``--methods``)
        and compared with QKT query by query (``benchmarks/paired.py``).
    flower:
        The Flower app runs it across processes (Ensemble, KD and FedGen need every teacher's model in one place).
    """

    name: str
    display: str
    runner: Literal["local", "ensemble", "kd", "federated", "query", "oracle"]
    collaborative: bool = False
    settings: Mapping[str, object] = field(default_factory=dict)
    variant: Mapping[str, object] = field(default_factory=dict)
    ablation: bool = False
    lever: bool = False
    flower: bool = False
    algorithm: str | None = None
    rounds: Literal["equal", "converged"] = "equal"
    finetune: bool = False

    @property
    def global_model(self) -> str:
        """The federated row whose global model this one scores or fine-tunes: rows that share it train it once."""
        return f"{self.algorithm}_converged" if self.rounds == "converged" else str(self.algorithm)

    @property
    def strong(self) -> bool:
        """A baseline at its strength: a bigger budget than the parties' own training."""
        return self.rounds == "converged" or self.finetune


def _qkt(name: str, display: str, settings: Mapping[str, object] | None = None, variant: Mapping[str, object] | None = None,
         ablation: bool = True, lever: bool = False) -> Method:
    """QKT or one of its variants: they all run on the one query engine, over Flower too."""
    return Method(name, display, "query", settings=settings or {}, variant=variant or {}, ablation=ablation and not lever,
                  lever=lever, flower=True)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("local", "Local", "local", flower=True),
    Method("fedavg", "FedAvg", "federated", collaborative=True, flower=True, algorithm="fedavg"),
    Method("fedprox", "FedProx", "federated", collaborative=True, flower=True, algorithm="fedprox"),
    Method("fedgen", "FedGen", "federated", collaborative=True, algorithm="fedgen"),
    Method("fedavg_converged", "FedAvg, converged", "federated", algorithm="fedavg", rounds="converged"),
    Method("fedprox_converged", "FedProx, converged", "federated", algorithm="fedprox", rounds="converged"),
    # The personalised baseline: the converged global model, fine-tuned by the querier as its party trained its own.
    Method("fedavg_finetune", "FedAvg, converged + fine-tune", "federated", algorithm="fedavg", rounds="converged", finetune=True),
    Method("ensemble", "Ensemble", "ensemble", collaborative=True),
    Method("kd", "KD (all teachers)", "kd", collaborative=True),
    Method("oracle", "Oracle (experts' data)", "oracle"),
    _qkt("qkt_weight_aligning", "QKT, weight aligning", {"head_correction": "weight_aligning"}, lever=True),
    _qkt("qkt_out_of_depth", "QKT, experts out of their depth", {"expert_depth": "agreement"}, lever=True),
    _qkt("qkt_gated", "QKT, gated to the original", {"gate": "query_mass"}, lever=True),
    _qkt("qkt_gated_budget", "QKT, gated within 2% of own inputs", {"gate": "query_mass", "gate_budget": 0.02}, lever=True),
    _qkt("qkt_gated_inverted", "QKT, gated within 2%, fitted on own inversions", {"gate": "query_mass", "gate_budget": 0.02,
                                                                                 "gate_inversions": 64}, lever=True),
    # A public pool of unlabelled inputs the querier holds (data.public_pool) joins the transfer inputs (FedDF-style).
    _qkt("qkt_public_pool", "QKT, public pool", {"public_pool": 1000}, lever=True),
    _qkt("qkt_public_pool_out_of_depth", "QKT, public pool + experts out of their depth",
         {"public_pool": 1000, "expert_depth": "agreement"}, lever=True),
    _qkt("qkt", "QKT", ablation=False),
    _qkt("qkt_light", "QKT Light", {"light": True}, ablation=False),
    _qkt("qkt_no_masks", "QKT, no masks", variant={"masks": False}),
    _qkt("qkt_no_phase2", "QKT, no Phase 2", variant={"phase2": False}),
    _qkt("qkt_merged", "QKT, phases merged", variant={"merged": True}),
    _qkt("qkt_no_mixup", "QKT, no mixup", {"mixup": 0.0}),
    # Short epochs draw from the whole transfer set, so they take every mixup whatever share the run sets.
    _qkt("qkt_short_phase1", "QKT, short Phase 1 epochs", {"phase1_mixups": 1.0}, {"short_epochs": True}),
    _qkt("qkt_phase2_mixups", "QKT, mixups in Phase 2 only", {"phase1_mixups": 0.0}),
    # The whole student has no frozen block, whatever the run sets.
    _qkt("qkt_whole_first_epoch", "QKT, whole student in Phase 1's first epoch only", {"phase1_frozen_blocks": 0}, {"whole_epochs": 1}),
]}

BASELINES = [m for m, method in METHODS.items() if method.runner not in ("query", "oracle") and not method.strong]
STRONG_BASELINES = [m for m, method in METHODS.items() if method.strong]
REFERENCES = [m for m, method in METHODS.items() if method.runner == "oracle"]
QKT = [m for m, method in METHODS.items() if method.runner == "query" and not (method.ablation or method.lever)]
LEVERS = [m for m, method in METHODS.items() if method.lever]
ABLATIONS = [m for m, method in METHODS.items() if method.ablation]
COLLABORATIVE = [m for m, method in METHODS.items() if method.collaborative]
DEFAULT = ["local", "ensemble", "kd", "qkt", "qkt_light"]


def display(name: str) -> str:
    """The name a table shows for method ``name``."""
    return METHODS[name].display if name in METHODS else name
