"""What ``qkt bench`` can run: the scenarios of SPEC §5 and the profiles that size a run.

A scenario says how the data is split and how each querier's query is chosen;
a profile how many seeds and queriers a run covers and the settings per data set.
The methods are :mod:`qkt.methods`' (the ablations among them run where a scenario
and the profile allow).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import partition
from ..config import RunConfig, parse_config
from ..data import DataSet
from ..methods import ABLATIONS, BASELINES, QKT, REFERENCES, STRONG_BASELINES
from .liars import KINDS as LIARS

SELF_PROBE_HOLDOUT = 0.1
# The public pool of each data set (data.public_pool) for the levers that draw one: unlabelled images of another
# public data set of the same shape. Digits has none; there those levers' rows say n/a and why.
PUBLIC_POOLS = {"cifar10": "cifar100", "cifar100": "cifar10", "bloodmnist": "pathmnist", "pathmnist": "bloodmnist"}


@dataclass(frozen=True)
class BenchScenario:
    """A named query scenario: the partition it needs and how each querier's query is chosen."""

    name: str
    description: str
    query_size: str | int = "single"  # "single": |Q| = 1; "multi": |Q| = 3 for 10 classes, scaled with |C|; or |Q| itself
    partition: str = "dirichlet"  # "dirichlet" (SPEC §5), "one-holder" or "three-holders" (k classes per party)
    query_from_one_teacher: bool = False
    forged_teacher: bool = False
    ablations: bool = False
    liar: str | None = None  # a planted liar (qkt.bench.liars.KINDS) in place of the false expert's teacher
    liar_alone: bool = False  # the liar is the only teacher reached
    methods: tuple[str, ...] | None = None  # the scenario's methods when --methods does not name them (default: the profile's)
    self_probe: bool = False  # each party keeps SELF_PROBE_HOLDOUT of each class out of its training and scores itself on it
    teacher_archs: tuple[str, ...] | None = None  # the teachers' models, cycled over the parties; the querier keeps the profile's
    headline: str | None = None  # its row's name in the headline table; None: not in the headline


MIXED = ("cnn", "resnet", "mlp")  # qkt's small CNN, its CIFAR-style ResNet-8 and an MLP on the pixels
SCENARIOS = {s.name: s for s in [
    BenchScenario("single", "Dirichlet(α) label skew; |Q| = 1 drawn among classes the querier holds < 10 samples of (SPEC §5)", ablations=True,
                  headline="single-class"),
    BenchScenario("multi", "as single, |Q| = 3 for 10 classes (scaled with |C|)", query_size="multi", headline="multi-class"),
    *[BenchScenario(f"multi-{size}", f"as single, |Q| = {size} (CIFAR-100's multi-class queries)", query_size=size,
                    headline=f"multi-class, |Q| = {size}") for size in (5, 10)],
    BenchScenario("mixed-architectures", f"as single, with teachers of different models: they cycle through {', '.join(MIXED)} over the "
                  "parties, the querier keeps the profile's; one global model needs one architecture, so FedAvg, FedProx and FedGen "
                  "cannot run", teacher_archs=MIXED, headline="mixed architectures, single-class"),
    BenchScenario("one-teacher-many-classes", "every class held by one party (|C|/2 parties × 2 classes); Q = both classes of one other party, "
                  "so one teacher is the expert of several query classes", partition="one-holder", query_from_one_teacher=True),
    BenchScenario("many-teachers-one-class", "|C| parties × 3 classes, every class held by 3 parties; |Q| = 1, "
                  "so several teachers are experts of the same query class", partition="three-holders"),
    BenchScenario("false-expert", "the single-class queries, plus one teacher holding no sample of Q that answers the probe "
                  "claiming full expertise (score 1.0 for every query class)", forged_teacher=True),
    *[BenchScenario(f"liar-{kind}-{place}", f"the single-class queries; the teacher holding fewest samples of Q is replaced by the planted "
                    f"'{kind}' liar (qkt.bench.liars), {'the only teacher' if place == 'alone' else 'beside the honest teachers'}",
                    liar=kind, liar_alone=place == "alone", methods=("local", "qkt"))
      for kind in LIARS for place in ("alone", "beside")],
    BenchScenario("self-probe", f"the single-class queries with the 'self' probe: each party keeps {SELF_PROBE_HOLDOUT:.0%} of each class "
                  "out of its training and scores itself on it", self_probe=True),
]}
GROUPS = {"liars": tuple(name for name, s in SCENARIOS.items() if s.liar)}  # --scenario liars: every planted liar, both ways


@dataclass(frozen=True)
class Profile:
    """How much of the protocol a run covers: seeds, queriers, scenarios and settings per data set.

    ``scenarios`` and ``settings`` (RunConfig overrides) are keyed by data set name,
    with ``"default"`` for the rest.
    """

    seeds: int
    max_queriers: int | None  # None: every eligible party queries once per seed (SPEC §5)
    scenarios: dict[str, tuple[str, ...]]
    settings: dict[str, dict] = field(default_factory=dict)
    ablations: dict[str, bool] = field(default_factory=lambda: {"default": True})  # in the scenarios that have them
    # fedavg_converged, fedprox_converged, fedavg_finetune: 40 rounds each cost 8x the 5-round rows (~15 min per seed on CIFAR)
    strong_baselines: bool = False

    def config(self, dataset: str) -> dict:
        return copy.deepcopy(self.settings.get(dataset, self.settings["default"]))

    def at_full_size(self) -> Profile:
        """The same profile on every training and test image of each data set: its subsets dropped."""
        settings = {name: {**s, "data": {k: v for k, v in s.get("data", {}).items() if k not in ("max_train", "max_test")}}
                    for name, s in self.settings.items()}
        return dataclasses.replace(self, settings=settings)

    def scenarios_for(self, dataset: str) -> tuple[str, ...]:
        return self.scenarios.get(dataset, self.scenarios["default"])

    def ablations_for(self, dataset: str) -> bool:
        return self.ablations.get(dataset, self.ablations["default"])


# Settings per data set, sized for 2 shared CPU cores. QueryConfig's defaults were tuned on
# digits; on images every probe and inversion step is a CNN backward pass over a batch, so
# the teachers refine fewer probes for fewer steps and the querier inverts fewer samples for
# fewer steps. Phase 1 keeps the CNN's first block (its full-resolution convolution) frozen
# and takes a third of the mixups in each epoch, in turn; the time that saves buys 7 epochs
# instead of 5, and the phases take 1.1-1.2x fine-tuning for 7 epochs against 2.3-2.5x for
# every block and every mixup in 5, at the same accuracy (docs/benchmarks.md). Image data sets are cut to stratified, seeded subsets of 6,000
# training and 2,000 test images so that a seed takes about seven minutes; the federated
# baselines get the same 5-epoch budget as the parties.
_IMAGES = {
    "data": {"max_train": 6000, "max_test": 2000},
    "training": {"arch": "cnn", "epochs": 5},
    "query": {"inversion": {"samples_per_class": 64, "steps": 50}, "probe": {"steps": 30, "num_samples": 256, "scales": [1.0]},
              "phase1_epochs": 7, "phase1_frozen_blocks": 1, "phase1_mixups": 1 / 3, "phase2_epochs": 10},
}
_DIGITS = {"training": {"arch": "mlp", "epochs": 30}}
_STANDARD = ("single", "multi")
_MANY_CLASSES = ("single", "multi-5", "multi-10")  # 0.3 × 100 classes would ask for 30 at once
_REVIEWERS = ("one-teacher-many-classes", "many-teachers-one-class", "false-expert")
PROFILES = {
    "quick": Profile(seeds=1, max_queriers=2, scenarios={"default": _STANDARD, "cifar100": _MANY_CLASSES},
                     settings={"digits": _DIGITS, "default": _IMAGES}),
    # SPEC §5: every eligible party queries once per seed, three seeds. The first seed's first two
    # queriers are 'quick''s, on the same trained parties (checkpoints/).
    # On images the ablations run in 'quick' (the first seed) only: each costs as much as a query.
    "full": Profile(seeds=3, max_queriers=None, scenarios={"digits": _STANDARD + _REVIEWERS, "default": _STANDARD, "cifar100": _MANY_CLASSES},
                    settings={"digits": _DIGITS, "default": _IMAGES}, ablations={"digits": True, "default": False},
                    strong_baselines=True),
    # The ablations on every querier of the first seed of 'full' (whose trained parties it shares).
    "ablations": Profile(seeds=1, max_queriers=None, scenarios={"default": ("single",)},
                         settings={"digits": _DIGITS, "default": _IMAGES}),
}



def multi_query_size(num_classes: int) -> int:
    """|Q| for multi-class queries: 3 for 10 classes, scaled with |C| (SPEC §5)."""
    return max(2, round(0.3 * num_classes))


def run_config(profile: Profile, dataset: DataSet, scenario: BenchScenario, seed: int, data_root: str | None,
               methods: Sequence[str] | None = None, device: str | None = None) -> RunConfig:
    """The RunConfig of one scenario and seed: the profile's settings, the scenario's partition, its methods (default: every one).

    ``device`` sets ``training.device`` (default: the profile's).
    """
    raw = profile.config(dataset.name)
    c = dataset.num_classes
    raw["data"] = {**raw.get("data", {}), "name": dataset.name, "root": None if data_root is None else str(data_root),
                   "public_pool": PUBLIC_POOLS.get(dataset.name)}
    raw["partition"] = {"num_parties": 10, "kind": "dirichlet", "alpha": 0.1, "seed": seed}
    if scenario.partition == "one-holder":
        raw["partition"] = {"num_parties": c // 2, "kind": "k_classes", "classes_per_party": 2, "seed": seed}
    elif scenario.partition == "three-holders":
        raw["partition"] = {"num_parties": c, "kind": "k_classes", "classes_per_party": 3, "seed": seed}
    raw["scenario"] = {"query_size": {"single": 1, "multi": multi_query_size(c)}.get(scenario.query_size, scenario.query_size)}
    raw["training"] = {**raw.get("training", {}), "seed": seed, **({"device": device} if device else {}),
                       **({"teacher_archs": list(scenario.teacher_archs)} if scenario.teacher_archs else {})}
    raw["query"] = {**raw.get("query", {}), "seed": seed}
    if scenario.self_probe:
        raw["partition"]["holdout"] = SELF_PROBE_HOLDOUT
        raw["query"]["probe"] = {**raw["query"].get("probe", {}), "kind": "self"}
    raw["methods"] = scenario_methods(profile, dataset.name, scenario, methods)
    return parse_config(raw, f"bench {dataset.name}/{scenario.name}")


def scenario_methods(profile: Profile, dataset: str, scenario: BenchScenario, methods: Sequence[str] | None = None) -> list[str]:
    """The methods a query of ``scenario`` runs: ``methods`` if given, else the scenario's, else every method the profile runs there."""
    return list(methods or scenario.methods or BASELINES + (STRONG_BASELINES if profile.strong_baselines else []) + QKT + (
        ABLATIONS if scenario.ablations and profile.ablations_for(dataset) else []) + REFERENCES)


def querier_queries(config: RunConfig, dataset: DataSet, parts: list[np.ndarray], scenario: BenchScenario,
                    max_queriers: int | None) -> list[tuple[int, tuple[int, ...] | None]]:
    """Each querier with its fixed query (``None``: drawn by :func:`partition.make_scenario`)."""
    s = config.scenario
    c = dataset.num_classes
    if scenario.query_from_one_teacher:
        counts = partition.class_counts(dataset.y_train, parts, c)
        pairs = []
        for q in range(len(parts)):
            teacher = (q + 1) % len(parts)
            query = tuple(int(k) for k in np.flatnonzero((counts[teacher] >= s.min_expert_samples) & (counts[q] < s.max_query_samples)))
            if query:
                pairs.append((q, query))
    else:
        eligible = partition.eligible_queriers(dataset.y_train, parts, c, s.query_size, s.max_query_samples, s.min_expert_samples)
        pairs = [(q, None) for q in eligible]
    return pairs[:max_queriers] if max_queriers else pairs


def false_expert(scenario: partition.Scenario, labels: np.ndarray, num_classes: int) -> int:
    """The teacher that will lie: of those holding fewest samples of Q, the one holding most samples overall."""
    counts = partition.class_counts(labels, list(scenario.parts), num_classes)
    teachers = [k for k in range(len(counts)) if k != scenario.querier]
    return min(teachers, key=lambda k: (counts[k, list(scenario.query)].sum(), -counts[k].sum()))


