"""One validated schema for every option, with sections that mirror the package.

Configs are read from YAML or TOML; unknown keys, wrong types and out-of-range
values are rejected with a message naming the key and what to change.
"""

from __future__ import annotations

import difflib
import json
import numbers
import operator
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .methods import DEFAULT, METHODS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEMO = {
    "data": {"name": "digits"},
    "partition": {"num_parties": 10, "kind": "dirichlet", "alpha": 0.1, "seed": 0},
    "scenario": {"query_size": 1},
    "training": {"arch": "mlp", "epochs": 30},
}
"""The settings of ``qkt demo``: ten parties on the bundled digits, one single-class query."""


def _plain_integer(value: object) -> object:
    """A NumPy integer as the int it is (strict mode refuses it), anything else unchanged."""
    return operator.index(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _integer(**bounds: int) -> object:
    """An integer option within ``bounds`` (``gt``, ``ge``, ``le``), as written: no bool, string or float."""
    return Annotated[int, BeforeValidator(_plain_integer), Field(strict=True, **bounds)]


def _not_a_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    return value


# A count or an index is an integer as written: lax parsing would read `true` as 1 and "12" as 12. Floats stay
# lax, because YAML reads 1e-3 (no dot) as a string, but refuse `true` and `false`, which lax parsing reads as 1 and 0.
Positive = _integer(gt=0)
NonNegative = _integer(ge=0)
# BatchNorm cannot train on a batch of one sample; federated learning needs two parties.
AtLeastTwo = _integer(ge=2)
# Every float option is finite: an infinite learning rate or temperature trains a NaN model, and
# infinity passes any lower bound.
Finite = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]
Rate = Annotated[Finite, Field(gt=0)]
Weight = Annotated[Finite, Field(ge=0)]
Share = Annotated[Finite, Field(ge=0, le=1)]
# Synthetic inputs per class: at most a hundred times the default, already more than memory holds of CIFAR-sized images.
SyntheticCount = _integer(ge=0, le=100_000)
# Probe seeds fit an int64, as torch's generators (below 2**64) and every teacher take them.
PROBE_SEEDS = 2**63
ProbeSeed = _integer(ge=0, le=PROBE_SEEDS - 1)
# Longer than any list a run needs; a longer one is refused at once rather than validated entry by entry.
MAX_ENTRIES = 1000
# Ten times what `qkt config` lists; parsing megabytes of YAML takes minutes.
MAX_CONFIG_BYTES = 100_000


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Built or changed in Python (qkt.QueryConfig(lam=...), config.lam = ...), a bad value is the same one-line
    # ConfigError a config file gets, not pydantic's multi-line ValidationError.
    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise config_error(err, type(self).__name__, type(self)) from None

    # Marked as pydantic marks its own: a section inside another is validated as part of it, its errors
    # located under the outer section's key, not raised from here.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: object) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise config_error(err, type(self).__name__, type(self)) from None


class ProbeConfig(Section):
    """Teacher-side expert discovery (SPEC §2 step 2)."""

    kind: Literal["statistics", "noise", "self"] = Field(
        "statistics",
        description="'statistics': noise refined to match each teacher's BatchNorm statistics; 'noise': plain Gaussian probes; "
        "'self': teachers score themselves on held-out data (partition.holdout; in the Python API qkt.Teacher(model, holdout=...))",
    )
    steps: NonNegative = Field(100, description="refinement steps of the 'statistics' probe")
    num_samples: Positive = Field(512, description="probe inputs per noise scale")
    scales: list[Rate] = Field([0.5, 1.0, 2.0], min_length=1, max_length=MAX_ENTRIES, description="standard deviations of the Gaussian probes in the normalised input space")
    seed: ProbeSeed = 0
    noise: Literal["none", "laplace"] = Field(
        "none", description="differential privacy of the teachers' replies: 'laplace' adds Laplace noise to each probe score (docs/privacy.md)"
    )
    epsilon: Rate = Field(1.0, description="privacy budget ε of one probe reply when noise='laplace'; smaller hides more and costs accuracy")


class TrustConfig(Section):
    """Querier-side checks of the experts' claims once their weights arrive (qkt.query.trust)."""

    enabled: bool = Field(True, description="check every received expert and drop what its weights do not support")
    claim_tolerance: Share = Field(
        0.01, description="how far below the expert threshold the querier's own probe of the received weights may score before a claim is dropped"
    )
    min_local_agreement: Share = Field(
        0.6, description="least share of the querier's samples of a shared class the expert must label right (catches permuted or garbage models)"
    )
    min_output_spread: Share = Field(
        0.02, description="least mean distance (total variation) of the expert's outputs from their mean on the querier's inputs "
                          "(catches models whose output ignores the input)"
    )
    max_samples: Positive = Field(1024, description="querier samples the checks look at")


class InversionConfig(Section):
    """Synthetic query-class inputs made at the querier by inverting the experts (DeepInversion)."""

    enabled: bool = Field(True, description="invert the experts into synthetic query-class inputs (off: local data and mixups only)")
    samples_per_class: SyntheticCount = Field(
        256, description="synthetic inputs made per query class, split among its experts; an expert of several classes makes "
                         "the same number for each, its share of its most shared class")
    steps: Positive = Field(200, description="optimisation steps per batch")
    lr: Rate = Field(0.1, description="Adam learning rate of the synthetic inputs")
    bn_weight: Weight = Field(1.0, description="weight of matching the expert's BatchNorm statistics")
    tv_weight: Weight = Field(1e-4, description="weight of the total-variation image prior")
    l2_weight: Weight = Field(1e-5, description="weight of the L2 input prior")


class QueryConfig(Section):
    """How one query runs; the defaults suit small models such as the demo's MLP.

    On CNNs every probe and inversion step is a backward pass over a batch: the image
    benchmarks (``qkt bench``) and ``examples/`` use a lighter probe and inversion, and
    keep the first feature block frozen in Phase 1.
    """

    lam: Annotated[Finite, Field(ge=1.0)] = Field(
        1.5, description="λ: a teacher is an expert of a query class iff its probe score ≥ λ/|C|, |C| the number of classes; "
                         "a score is at most 1 (before privacy noise), so from λ = |C| on no teacher qualifies and each query "
                         "class falls back to the one teacher scoring it highest, if that is above uniform (1/|C|)")
    probe: ProbeConfig = ProbeConfig()
    trust: TrustConfig = TrustConfig()
    inversion: InversionConfig = InversionConfig()
    mixup: Weight = Field(
        1.0, description="mixups of local and synthetic inputs added per such input (0: none); each costs Phase 1 as much as a local input"
    )
    mixup_alpha: Rate = Field(0.4, description="mixup weights are drawn from Beta(mixup_alpha, mixup_alpha)")
    temperature: Rate = Field(2.0, description="softmax temperature of the distillation targets and the student's KL term")
    kd_weight: Weight = Field(1.0, description="weight of the distillation term against the local cross-entropy")
    phase1_epochs: NonNegative = Field(10, description="epochs of Phase 1, the masked distillation; an epoch is one pass over the "
                                                       "local and synthetic inputs and phase1_mixups of the mixups")
    phase1_mixups: Share = Field(
        1.0, description="share of the mixups in each Phase 1 epoch, taken in turn so that all are used alike (1: every mixup "
                         "in every epoch; 0: only Phase 2, which trains the head on features computed once, learns from them). "
                         "Phase 1's time grows with the inputs it sees"
    )
    phase1_frozen_blocks: NonNegative = Field(
        0, description="leading blocks of the student's feature extractor that Phase 1 keeps frozen, their outputs computed "
                       "once (1 on qkt's CNN: its full-resolution first block, the costliest). Needs a student whose blocks are "
                       "an nn.Sequential named 'features', as qkt's models have. QKT Light freezes all but the last block"
    )
    phase2_epochs: NonNegative = Field(20, description="epochs of Phase 2, which re-fits only the head on class-balanced transfer inputs")
    head_correction: Literal["none", "weight_aligning"] = Field(
        "none", description="after Phase 2, 'weight_aligning' rescales the head's rows of the query classes to the mean norm of "
                            "the rows of the querier's own classes (Zhao et al. 2020), so that neither group's logits dominate"
    )
    expert_depth: Literal["none", "agreement"] = Field(
        "none", description="'agreement': each expert's say on the query classes of a transfer input is weighted by how well it "
                            "knows the class the input is made of (its agreement with the querier's labels on the querier's "
                            "own classes; 1 on the query classes it is an expert in); where it knows nothing, the querier's "
                            "own output stands in, so an expert says nothing about inputs of classes it never saw"
    )
    gate: Literal["none", "query_mass"] = Field(
        "none", description="'query_mass': the result keeps the original model and routes an input to the query-trained one "
                            "only where that one puts more than a threshold of its probability on the query classes; the "
                            "threshold best separates the querier's own inputs from the synthetic query-class inputs"
    )
    gate_budget: Share | None = Field(
        None, description="with gate 'query_mass': the largest share of the querier's unseen inputs (each class counting alike) "
                          "the gate may send to the query-trained model, measured on a fifth of each of the querier's classes kept "
                          "out of the transfer set; it limits the local accuracy a query can cost on inputs like those (null: no limit)"
    )
    gate_inversions: SyntheticCount = Field(
        0, description="with gate 'query_mass': inputs synthesised for each of the querier's own classes by inverting its "
                       "original model (as query.inversion inverts the experts), which join its own inputs in fitting the "
                       "gate's threshold. No model trained on them: they show inputs of the querier's classes that the "
                       "query-trained model takes for the query classes, which the inputs it trained on hide (0: none)"
    )
    public_pool: NonNegative = Field(
        0, description="unlabelled inputs of a public pool added to the transfer inputs (FedDF-style), drawn seeded from the "
                       "training inputs of data.public_pool (0: off); they get the combined targets of the inversions, every "
                       "expert keeping its say on them. The Python API takes the inputs themselves (qkt.query(public_inputs=))"
    )
    lr: Rate = Field(1e-3, description="Adam learning rate of Phase 1")
    head_lr: Rate = Field(5e-3, description="Adam learning rate of Phase 2 (the head alone)")
    batch_size: AtLeastTwo = Field(64, description="mini-batch of Phases 1 and 2")
    light: bool = Field(False, description="QKT Light: experts send float16 weights; Phase 1 trains the last block and the head")
    seed: NonNegative = Field(0, description="seeds the probe, the inversion, the mixups and both phases: a query repeats exactly")

    @model_validator(mode="after")
    def _mixups_are_learnt(self) -> QueryConfig:
        if self.mixup and not self.phase1_mixups and not self.phase2_epochs:
            raise ValueError("phase1_mixups = 0 leaves the mixups to Phase 2, which phase2_epochs = 0 skips: no phase would learn from them")
        return self

    @model_validator(mode="after")
    def _gate_settings_need_the_gate(self) -> QueryConfig:
        if self.gate_budget is not None and self.gate == "none":
            raise ValueError("gate_budget bounds what the gate sends to the query-trained model: set gate = 'query_mass' too")
        if self.gate_inversions and self.gate == "none":
            raise ValueError("gate_inversions are inputs the gate's threshold is fitted on: set gate = 'query_mass' too")
        if self.gate != "none" and not (self.inversion.enabled and self.inversion.samples_per_class):
            off = "inversion.enabled is false" if not self.inversion.enabled else "inversion.samples_per_class is 0"
            raise ValueError(f"gate '{self.gate}' fits its threshold on synthetic inputs of the query classes, and {off}: "
                             "make inversions, or set gate = 'none'")
        return self


class FederatedConfig(Section):
    """FedAvg, FedProx and FedGen (SPEC §4): one global model trained over all parties.

    The total local-epoch budget equals the parties' own training: ``training.epochs``
    split into rounds of ``local_epochs``; optimiser, learning rate and batch size are
    those of ``training``. The other defaults are the values the authors published.
    """

    local_epochs: Positive = Field(1, description="local epochs per round (McMahan et al. 2017 use 1-5); rounds = training.epochs / local_epochs")
    converged_rounds: Positive = Field(40, description="rounds of local_epochs of the baselines at their strength (fedavg_converged, "
                                                       "fedprox_converged, fedavg_finetune); 40, as benchmarks/perf_query.py: on the "
                                                       "benchmark's 6,000 CIFAR-10 images FedAvg first reaches its 40-round accuracy "
                                                       "in round 23 (docs/performance.md)")
    prox_mu: Weight = Field(0.01, description="FedProx μ (Li et al. 2020 pick from 0.001-1; 0.01 is their best under label skew)")
    gen_noise_dim: Positive = Field(32, description="FedGen: noise dimension of the generator (Zhu et al. 2021)")
    gen_hidden: Positive = Field(256, description="FedGen: hidden width of the generator")
    gen_lr: Rate = Field(3e-4, description="FedGen: Adam learning rate of the generator")
    gen_steps: Positive = Field(50, description="FedGen: generator steps per round (10 epochs × 5 teacher iterations in the authors' code)")
    gen_batch_size: AtLeastTwo = Field(64, description="FedGen: generated features per step")
    gen_alpha: Weight = Field(10.0, description="FedGen: weight of the generated-feature cross-entropy in local training")
    gen_beta: Weight = Field(10.0, description="FedGen: weight of the latent KL term in local training")
    gen_diversity: Weight = Field(1.0, description="FedGen: weight of the generator's diversity loss (η)")
    gen_decay: Annotated[Finite, Field(gt=0, le=1)] = Field(0.98, description="FedGen: per-round decay of gen_alpha and gen_beta")




def _arch_name(value: str) -> str:
    """A built-in architecture, or a package's model or a user's factory named as ``source:name`` (qkt.models.build_model)."""
    if value not in ("mlp", "cnn", "resnet", "resnet18") and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        raise ValueError("choose mlp, cnn, resnet or resnet18, or name a model as torchvision:<name>, timm:<name> or "
                         "module.path:function")
    return value


Arch = Annotated[str, AfterValidator(_arch_name)]
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]


class DataConfig(Section):
    """Which data set: a registry name, or npz with your own file."""

    name: str = Field("digits", description="digits (bundled), cifar10, cifar100, cinic10, a MedMNIST name, imagefolder or npz "
                                            "(see `qkt data list`)")
    root: str | None = Field(None, description="folder with the data files (default: $QKT_DATA_ROOT or ./data)")
    path: str | None = Field(None, description="an explicit data file or folder, e.g. your own .npz or imagefolder")
    size: Positive | None = Field(None, description="image side in pixels: which MedMNIST file (28, 64, 128 or 224; default 28), "
                                                    "or the size every imagefolder image is resized to")
    max_train: Positive | None = Field(None, description="use a seeded, stratified subset of this many training samples")
    max_test: Positive | None = Field(None, description="use a seeded, stratified subset of this many test samples")
    public_pool: str | None = Field(None, description="a registry data set whose training inputs, unlabelled, form the public pool "
                                                       "query.public_pool draws from (e.g. cifar100 beside cifar10); read from "
                                                       "data.root, its inputs must have the shape of data.name's")

    @model_validator(mode="after")
    def _pool_is_a_registry_data_set(self) -> DataConfig:
        from .data import dataset_names  # here: the data registry imports torch, which reading a config needs nowhere else

        registry = [n for n in dataset_names() if n not in ("npz", "imagefolder")]
        if self.public_pool is not None and self.public_pool not in registry:
            raise ValueError(f"data.public_pool '{self.public_pool}' is not a registry data set; choose one of: {', '.join(registry)}")
        return self


class PartitionConfig(Section):
    """How the training data is split over the parties."""

    num_parties: AtLeastTwo = 10
    kind: Literal["dirichlet", "k_classes"] = Field("dirichlet", description="label skew: Dirichlet(alpha) shares per class, or k classes per party")
    alpha: Rate = Field(0.1, description="Dirichlet concentration: smaller is more skewed")
    classes_per_party: Positive = Field(2, description="k of k_classes")
    holdout: Annotated[Finite, Field(ge=0, lt=1)] = Field(
        0.0, description="share of each party's samples of each class kept out of its own training, for query.probe.kind 'self' "
                         "to score itself on (0.1 is a usual choice)")
    seed: NonNegative = 0


class ScenarioConfig(Section):
    """Who queries, and for which classes."""

    querier: NonNegative | None = Field(None, description="the querying party (default: the eligible party with most samples)")
    query: list[NonNegative] | None = Field(None, max_length=MAX_ENTRIES, description="fixed query classes, which the querier must lack (default: drawn)")
    query_size: Positive = Field(1, description="number of query classes drawn when query is not set")
    max_query_samples: Positive = Field(10, description="a class the querier holds fewer samples of than this may be queried")
    min_expert_samples: Positive = Field(10, description="only a class some other party holds this many samples of can be queried (someone can teach it)")


class TrainingConfig(Section):
    """Every party's training of its own model (and the federated baselines' optimiser)."""

    arch: Arch = Field("mlp", description="the querier's model: mlp, cnn, resnet, resnet18, torchvision:<name>, timm:<name>, "
                                          "or your own factory as module.path:function (called with num_classes=; docs/models.md)")
    teacher_archs: list[Arch] | None = Field(None, max_length=MAX_ENTRIES, description="architectures of the teachers, cycled over the parties (default: arch)")
    epochs: Positive = 20
    lr: Rate = 1e-3
    batch_size: AtLeastTwo = 64
    weight_decay: Weight = 5e-4
    augment: bool = Field(False, description="random flips and crops for 32-pixel images")
    seed: NonNegative = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="where every step computes (local training, the query, the baselines, evaluation): auto picks CUDA, "
                            "else Apple's MPS, else the CPU")
    amp: Literal["bf16", "fp16"] | None = Field(
        None, description="mixed precision of the training steps (local training, the baselines, Phases 1 and 2): bf16 or fp16 "
                          "(fp16 scales the loss on CUDA); default off")


class RunConfig(Section):
    """A whole experiment: data, who holds what, local training and one query."""

    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    scenario: ScenarioConfig = ScenarioConfig()
    training: TrainingConfig = TrainingConfig()
    query: QueryConfig = QueryConfig()
    federated: FederatedConfig = FederatedConfig()
    methods: list[MethodName] = Field(list(DEFAULT), min_length=1, max_length=MAX_ENTRIES,
                                      description="the methods to run and compare: " + ", ".join(METHODS))

    @model_validator(mode="after")
    def _query_fits(self) -> RunConfig:
        if self.scenario.querier is not None and self.scenario.querier >= self.partition.num_parties:
            raise ValueError(f"scenario.querier={self.scenario.querier} but there are only {self.partition.num_parties} parties")
        if self.query.public_pool and self.data.public_pool is None:
            raise ValueError(f"query.public_pool = {self.query.public_pool} draws from data.public_pool, which names no data set: "
                             "name one whose training inputs form the pool (e.g. cifar100 beside cifar10), or set query.public_pool to 0")
        if self.data.public_pool is not None and self.data.public_pool == self.data.name:
            raise ValueError(f"data.public_pool must name another data set than data.name ({self.data.name}): its training "
                             "inputs are the parties' own data, not a public pool")
        if self.query.probe.kind == "self" and not self.partition.holdout:
            raise ValueError("query.probe.kind 'self' needs each teacher's held-out data: set partition.holdout (e.g. 0.1), "
                             "the share of its samples each party keeps out of its training to score itself on")
        return self


def commented_yaml(config: BaseModel, indent: int = 0) -> str:
    """``config`` as YAML that loads back to it, each option followed by its description as a comment."""
    lines = []
    for name, field in type(config).model_fields.items():
        value, pad = getattr(config, name), "  " * indent
        if isinstance(value, BaseModel):
            doc = (type(value).__doc__ or "").strip().splitlines()
            lines.append(f"{pad}{name}:" + (f"  # {doc[0]}" if doc else ""))
            lines.append(commented_yaml(value, indent + 1))
            continue
        text = yaml.safe_dump([value], default_flow_style=True, width=1_000).strip()[1:-1]  # one line, lists inline
        lines.append(f"{pad}{name}: {text}" + (f"  # {field.description}" if field.description else ""))
    return "\n".join(lines)


def _entries_within(value: object, most: int) -> bool:
    """Whether ``value`` holds at most ``most`` entries, however deep, counted without walking more than that."""
    pending, seen = [value], 0
    while pending:
        item = pending.pop()
        if isinstance(item, list | dict):
            seen += len(item)
            if seen > most:
                return False
            pending.extend(item.values() if isinstance(item, dict) else item)
    return True


def _shown(value: object) -> str:
    """A short rendering of a rejected value; YAML can give keys (dates, numbers) that JSON cannot write."""
    # Rendering a huge value only to cut it short takes seconds, or for ever: YAML aliases nest
    # a few hundred bytes into 10**9 entries.
    if isinstance(value, list | dict) and not _entries_within(value, 10):
        nested = "" if all(not isinstance(v, list | dict) for v in (value.values() if isinstance(value, dict) else value)) else ", nesting more"
        return f"a {type(value).__name__} of {len(value)} entries{nested}"
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text[:60]


def _section_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the section at ``loc`` accepts (a path of section names from the top of ``root``)."""
    section = root
    for name in loc:
        field_type = section.model_fields[str(name)].annotation
        if not (isinstance(field_type, type) and issubclass(field_type, BaseModel)):
            return []
        section = field_type
    return list(section.model_fields)


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel] | None = None, shown: int = 10) -> str:
    """One line per invalid setting of ``root`` (default: :class:`RunConfig`), the first ``shown`` of them."""
    lines = [f"{source}: {err.error_count()} invalid setting(s)"]
    if err.error_count() > shown:
        lines[0] += f", the first {shown}:"
    said: set[str] = set()  # a long list of choices (every method) is worth reading once
    for e in err.errors()[:shown]:
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            known = _section_keys(root or RunConfig, e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"this section takes {', '.join(known)}"
            lines.append(f"  - {key}: unknown key; {hint}")
        else:
            value = "" if e["type"] == "missing" else f" (got {_shown(e.get('input'))})"
            lines.append(f"  - {key}: {'as above' if e['msg'] in said else e['msg']}{value}")
            said.add(e["msg"])
    return "\n".join(lines)


def first_error(err: ValidationError, chars: int = 200) -> str:
    """The first of ``err``'s errors in one line, ``where: what`` (``chars`` of what at most), for data other than a config:
    a message or a record read back, whose first fault is enough to refuse it."""
    error = err.errors()[0]
    where = ".".join(map(str, error["loc"])) or "the top level"
    return f"{where}: {error['msg'][:chars]}"


def config_error(err: ValidationError, source: str, root: type[BaseModel]) -> ConfigError:
    """:func:`format_validation_error` of settings of ``root`` as one :class:`ConfigError` line, for the Python API."""
    return ConfigError(format_validation_error(err, source, root).replace("\n  - ", "; "))


def parse_config(raw: object, source: str = "config") -> RunConfig:
    """Validate a mapping (as read from YAML/TOML) into a :class:`RunConfig`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, not {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a folder: give the YAML or TOML file itself")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: too large for a config ({path.stat().st_size:,} bytes; at most {MAX_CONFIG_BYTES:,})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from None
    return parse_config(raw, str(path))
