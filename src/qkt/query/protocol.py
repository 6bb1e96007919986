"""One query, end to end, independent of the transport (SPEC §2).

The teacher side is :func:`answer_probe` and :func:`export_weights`; the querier
side is :func:`select_experts`, :func:`import_weights`, :func:`vet_experts` and :func:`learn` (on a :class:`Lesson`). :func:`query` drives both in one
process on the user's own models; the Flower app drives the same functions over
Flower messages.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..config import QueryConfig, TrustConfig
from ..errors import QueryError
from ..training import predict_logits
from . import light, privacy, probe, synth, trust
from .distill import TransferSet, combine_targets, phase1_inputs, softmax_outputs, train_on_transfer, whole_student_epochs
from .refine import refine_head

SCORE_BYTES = 4  # one float32 per query class


@dataclass(frozen=True)
class Announcement:
    """What the querier sends every candidate teacher: the query, the input shape and the probe recipe. Nothing else."""

    query: tuple[int, ...]
    num_classes: int
    input_shape: tuple[int, ...]
    probe_kind: str = "statistics"
    probe_samples: int = 512
    probe_steps: int = 100
    probe_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    probe_seed: int = 0
    noise: str = "none"
    epsilon: float = 1.0

    @classmethod
    def from_config(cls, query: tuple[int, ...], num_classes: int, input_shape: tuple[int, ...], config: QueryConfig) -> Announcement:
        p = config.probe
        return cls(query, num_classes, input_shape, p.kind, p.num_samples, p.steps, tuple(p.scales), p.seed, p.noise, p.epsilon)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Announcement:
        raw = json.loads(blob)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


@dataclass
class Teacher:
    """A teacher as the in-process API sees it: its model and, for the 'self' probe, its own held-out data."""

    model: nn.Module
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None


def answer_probe(model: nn.Module, announcement: Announcement, holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Teacher side: the scores ``s[k, Q]`` (one float32 per query class), computed on the teacher's own model.

    With ``announcement.noise == "laplace"`` the reply is ε-differentially private
    (:mod:`qkt.query.privacy`); ``rng`` seeds that noise (default: fresh entropy).
    """
    if announcement.probe_kind == "self":
        if holdout is None:
            raise QueryError("the 'self' probe needs each teacher's held-out data")
        scores = probe.self_scores(model, holdout[0], holdout[1], announcement.num_classes)
    else:
        probes = probe.noise_probes(announcement.input_shape, announcement.probe_samples, announcement.probe_scales, announcement.probe_seed)
        if announcement.probe_kind == "statistics":
            probes = probe.statistics_probes(model, probes, announcement.probe_steps)
        scores = probe.noise_scores(model, probes)
    if len(scores) != announcement.num_classes:
        raise QueryError(f"the teacher's model outputs {len(scores)} classes but the label space has {announcement.num_classes}")
    reply = scores[list(announcement.query)].astype(np.float32)
    return privacy.privatize(reply, announcement.epsilon, rng) if announcement.noise == "laplace" else reply


def export_weights(model: nn.Module, half: bool = False) -> dict[str, np.ndarray]:
    """Teacher side: the model's state as arrays, floats cast to float16 for QKT Light."""
    dtype = light.WIRE_DTYPE if half else None
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).cpu().numpy() for k, v in model.state_dict().items()}


def import_weights(template: nn.Module, arrays: Mapping[str, np.ndarray]) -> nn.Module:
    """Querier side: a copy of ``template`` holding the received weights, after checking them."""
    model = copy.deepcopy(template)
    state = model.state_dict()
    if set(arrays) != set(state):
        raise QueryError(f"received weights do not fit the model: keys differ ({sorted(set(arrays) ^ set(state))[:3]} …)")
    loaded = {}
    for key, ref in state.items():
        value = torch.as_tensor(np.asarray(arrays[key]))
        if value.shape != ref.shape:
            raise QueryError(f"received weight '{key}' has shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise QueryError(f"received weight '{key}' holds NaN or infinite values")
        loaded[key] = value.to(ref.dtype)
    model.load_state_dict(loaded)
    return model.eval()


def select_experts(scores: Mapping[str, Sequence[float]], query: Sequence[int], num_classes: int, lam: float) -> dict[str, np.ndarray]:
    """Querier side: the masks, restricted to teachers with at least one bit inside ``Q``.

    Raises :class:`QueryError` when no query class has an expert; warns for each class left without one.
    """
    masks = probe.expert_masks(scores, query, num_classes, lam)
    by_class = probe.experts_by_class(masks, query)
    missing = [c for c, experts in by_class.items() if not experts]
    if len(missing) == len(query):
        raise QueryError(probe.no_expert_message(scores, query, num_classes, lam, missing))
    if missing:
        warnings.warn(probe.no_expert_message(scores, query, num_classes, lam, missing), stacklevel=2)
    return {k: m for k, m in masks.items() if m.any()}


def choose_experts(scores: Mapping[str, Sequence[float]], query: Sequence[int], num_classes: int,
                   config: QueryConfig) -> tuple[dict[str, np.ndarray], list[str]]:
    """Querier side: :func:`select_experts` (or, for the "no masks" ablation, every teacher for every class).

    Returns the masks and the warnings about classes left without an expert, as notes for the report.
    """
    if not config.use_masks:
        return {k: np.ones(len(query), dtype=bool) for k in scores}, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = select_experts(scores, query, num_classes, config.lam)
    return masks, [str(w.message) for w in caught]


def vet_experts(experts: Mapping[str, nn.Module], scores: Mapping[str, Sequence[float]], masks: Mapping[str, np.ndarray],
                announcement: Announcement, local_x: torch.Tensor, local_y: torch.Tensor, lam: float,
                config: TrustConfig, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Querier side: check each received expert (:mod:`qkt.query.trust`) before learning from it.

    Returns the masks the checks leave (experts left with no bit are removed) and,
    for each expert that lost a bit, the reasons. Raises :class:`QueryError` when no
    expert is left.
    """
    # The querier re-runs the announced probe on the weights, over all of C and without noise;
    # the 'self' probe needs the teacher's data, so the data-free recipe stands in for it.
    recipe = replace(announcement, query=tuple(range(announcement.num_classes)), noise="none")
    if recipe.probe_kind == "self":
        recipe = replace(recipe, probe_kind="statistics")
    x, y = trust.check_sample(local_x, local_y, config.max_samples, seed)
    kept, distrusted = {}, {}
    for name, model in experts.items():
        verdict = trust.check_expert(model, scores[name], answer_probe(model, recipe), masks[name], announcement.query, x, y,
                                     lam, config, verify_claims=announcement.probe_kind != "self")
        if verdict.reasons:
            distrusted[name] = verdict.reasons
        if not verdict.dropped:
            kept[name] = verdict.mask
    if not kept:
        raise QueryError("every expert was distrusted, nothing to learn from: "
                         + "; ".join(f"teacher '{k}' {', '.join(v)}" for k, v in distrusted.items()))
    return kept, distrusted


@dataclass
class QueryReport:
    """What happened in one query: who was asked, who answered as expert, what it cost."""

    query: tuple[int, ...]
    scores: dict[str, list[float]]
    experts: dict[int, list[str]]
    bytes_sent: int
    bytes_received: int
    messages: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    num_transfer_inputs: int = 0
    num_synthetic: int = 0
    warnings: list[str] = field(default_factory=list)
    distrusted: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["experts"] = {str(c): v for c, v in self.experts.items()}
        return out


@dataclass(frozen=True)
class Lesson:
    """What Phases 1 and 2 learn from, once the experts are in: their models and mask bits over ``query``, and the querier's data."""

    experts: Mapping[str, nn.Module]
    masks: Mapping[str, np.ndarray]
    query: tuple[int, ...]
    local_x: torch.Tensor
    local_y: torch.Tensor

    def __post_init__(self) -> None:
        # A caller may hand in a list; the reports and the mask bits rely on one fixed, hashable order.
        object.__setattr__(self, "query", tuple(int(c) for c in self.query))


def build_transfer_set(original: nn.Module, lesson: Lesson, config: QueryConfig, progress: bool = True) -> tuple[TransferSet, int]:
    """Querier side: local data, inversions of the experts and mixups, each with its combined target."""
    local_x, local_y = lesson.local_x, lesson.local_y
    input_shape = tuple(local_x.shape[1:])
    by_class = probe.experts_by_class(lesson.masks, lesson.query)
    synthetic = []
    if config.inversion.enabled and config.inversion.samples_per_class:
        for i, (name, model) in enumerate(lesson.experts.items()):
            classes = [c for c, names in by_class.items() if name in names]
            per_class = max(1, config.inversion.samples_per_class // max(len(by_class[c]) for c in classes))
            x, _ = synth.invert(model, classes, input_shape, config.inversion, seed=config.seed * 1000 + i,
                                num_per_class=per_class, desc=f"inverting expert {name}" if progress else None)
            synthetic.append(x)
    x_synth = torch.cat(synthetic) if synthetic else local_x[:0]
    x = torch.cat([local_x, x_synth])
    x = synth.with_mixups(x, config.mixup, config.mixup_alpha, config.seed)
    own = softmax_outputs(original, x, config.temperature)
    outputs = {name: softmax_outputs(model, x, config.temperature) for name, model in lesson.experts.items()}
    targets = combine_targets(own, outputs, lesson.masks, lesson.query)
    return TransferSet.querier_first(x, targets, local_y), len(x_synth)


def learn(student: nn.Module, lesson: Lesson, config: QueryConfig, head: str | None = None,
          progress: bool = True) -> tuple[nn.Module, dict[str, float], TransferSet, int]:
    """Querier side: build the transfer set, then Phase 1 and Phase 2 on a copy of ``student``."""
    seconds: dict[str, float] = {}
    original = copy.deepcopy(student).eval()
    new = copy.deepcopy(student)
    start = time.perf_counter()
    transfer, num_synthetic = build_transfer_set(original, lesson, config, progress)
    seconds["synthesis"] = time.perf_counter() - start

    def phase1(model: nn.Module, inputs: TransferSet, epochs: int, params: list[nn.Parameter] | None = None) -> None:
        chosen, epoch_size, keep_first = phase1_inputs(inputs, config, len(lesson.local_y), len(lesson.local_y) + num_synthetic)
        train_on_transfer(model, chosen.balanced() if config.merged else chosen, config, epochs, config.lr, params=params,
                          epoch_size=epoch_size, keep_first=keep_first, desc="phase 1 (distill)", progress=progress)

    start = time.perf_counter()
    whole = whole_student_epochs(config)
    trained, inputs = new, transfer
    # Each stage trains a tail of the last one's (sharing its modules with new, so training it trains new) on the
    # outputs of the blocks it freezes: the whole student but its frozen blocks, then its last block and head.
    for frozen_blocks, epochs in ((config.phase1_frozen_blocks, whole), (None, config.phase1_epochs - whole)):
        if epochs:
            trained, x, params = light.trained_part(trained, inputs.x, head, frozen_blocks)
            inputs = replace(inputs, x=x)
            phase1(trained, inputs, epochs, params)
    seconds["phase1"] = time.perf_counter() - start

    start = time.perf_counter()
    if config.phase2 and not config.merged and config.phase2_epochs:
        refine_head(trained, inputs, config, head, progress)
    seconds["phase2"] = time.perf_counter() - start
    return new.eval(), seconds, transfer, num_synthetic


def query(
    student: nn.Module,
    teachers: Mapping[str, nn.Module | Teacher] | Sequence[nn.Module | Teacher],
    query_classes: Sequence[int],
    local_data: tuple[torch.Tensor, torch.Tensor],
    config: QueryConfig | None = None,
    *,
    num_classes: int | None = None,
    head: str | None = None,
    progress: bool = True,
) -> tuple[nn.Module, QueryReport]:
    """Ask ``teachers`` for ``query_classes`` and learn them into a copy of ``student``.

    Parameters
    ----------
    student:
        The querier's trained model; it is not modified. It must map inputs to
        logits over all classes and expose a classification head (``head``
        attribute, the submodule named by ``head``, or its last ``nn.Linear``).
    teachers:
        The other parties' trained models, by name (or a list, named ``"0"``,
        ``"1"``, …). Wrap one in :class:`Teacher` to give it held-out data for
        the ``self`` probe. Architectures may differ from the student's.
    query_classes:
        The classes to acquire, ``Q``; the querier should hold (almost) none of them.
    local_data:
        The querier's own inputs (normalised as the models expect) and labels.
    config:
        :class:`~qkt.config.QueryConfig`; the defaults are measured on the demo (see its docstring for images).
    num_classes:
        ``|C|``; defaults to the student's output size.

    Returns
    -------
    (model, report):
        The new model, which knows ``Q`` and keeps what the student knew, and a
        :class:`QueryReport` with experts, bytes, timings and the teachers whose
        claims the querier's checks rejected, with why (``distrusted``; see
        :mod:`qkt.query.trust`). A teacher whose weights do not fit is dropped there too.
    """
    config = config or QueryConfig()
    local_x, local_y = local_data
    if len(local_x) != len(local_y) or not len(local_x):
        raise QueryError(f"local data must be non-empty inputs and labels of equal length (got {len(local_x)} and {len(local_y)})")
    named = dict(teachers) if isinstance(teachers, Mapping) else {str(i): t for i, t in enumerate(teachers)}
    if not named:
        raise QueryError("no teachers to ask")
    named = {str(k): t if isinstance(t, Teacher) else Teacher(t) for k, t in named.items()}
    models = {"the student": student, **{f"teacher '{k}'": t.model for k, t in named.items()}}
    for who, model in models.items():
        # Probes, inversions and mixups are made as float32 CPU tensors; another model would fail deep inside.
        kinds = sorted({f"{p.dtype} on {p.device}" for p in model.parameters()} - {"torch.float32 on cpu"})
        if kinds:
            raise QueryError(f"{who} has parameters of {', '.join(kinds)}; a query runs in float32 on the CPU: pass model.float().cpu()")
    outputs = {who: int(predict_logits(model, local_x[:2]).shape[1]) for who, model in models.items()}
    num_classes = outputs["the student"] if num_classes is None else num_classes
    for who, size in outputs.items():
        if size != num_classes:
            raise QueryError(f"{who} outputs {size} classes but the label space has {num_classes}")
    if local_y.dtype.is_floating_point or local_y.dtype.is_complex or local_y.dtype == torch.bool or local_y.ndim != 1:
        raise QueryError(f"local labels must be a 1-D integer tensor of class indices, not {local_y.dtype} of shape {tuple(local_y.shape)}")
    local_y = local_y.long()  # the losses take int64 class indices
    if local_y.min() < 0 or local_y.max() >= num_classes:
        raise QueryError(f"local labels must lie in 0..{num_classes - 1}; got {int(local_y.min())}..{int(local_y.max())}")
    query_classes = probe.check_query(query_classes, num_classes)
    notes: list[str] = []
    held = torch.bincount(local_y, minlength=num_classes)
    for c in query_classes:
        if held[c] >= max(10, 0.05 * len(local_y)):
            notes.append(f"the querier already holds {int(held[c])} samples of query class {c}; a query is meant for classes it lacks")
            warnings.warn(notes[-1], stacklevel=2)

    seconds: dict[str, float] = {}
    messages: list[dict] = []
    announcement = Announcement.from_config(query_classes, num_classes, tuple(local_x.shape[1:]), config)
    start = time.perf_counter()
    scores = {}
    for name, t in named.items():
        messages.append({"to": name, "kind": "announce", "bytes": len(announcement.to_bytes())})
        scores[name] = answer_probe(t.model, announcement, t.holdout)
        messages.append({"from": name, "kind": "scores", "bytes": SCORE_BYTES * len(query_classes)})
    masks, unmatched = choose_experts(scores, query_classes, num_classes, config)
    for note in unmatched:
        notes.append(note)
        warnings.warn(note, stacklevel=2)
    seconds["probe"] = time.perf_counter() - start

    start = time.perf_counter()
    experts, distrusted = {}, {}
    for name in masks:
        messages.append({"to": name, "kind": "request_weights", "bytes": len(json.dumps({"half": config.light}).encode())})
        arrays = export_weights(named[name].model, half=config.light)
        messages.append({"from": name, "kind": "weights", "bytes": int(sum(a.nbytes for a in arrays.values()))})
        try:
            experts[name] = import_weights(named[name].model, arrays)
        except QueryError as exc:  # one broken teacher must not sink the query
            distrusted[name] = [str(exc)]
    # Checking what arrived is part of the transfer: its time is counted there.
    masks = {k: m for k, m in masks.items() if k in experts}
    if config.trust.enabled and masks:
        masks, vetted = vet_experts(experts, scores, masks, announcement, local_x, local_y, config.lam, config.trust, config.seed)
        distrusted.update(vetted)
    if not masks:
        raise QueryError("no usable expert: " + "; ".join(f"teacher '{k}': {', '.join(v)}" for k, v in distrusted.items()))
    experts = {k: experts[k] for k in masks}
    for name, reasons in distrusted.items():
        notes.append(f"teacher '{name}' distrusted: {'; '.join(reasons)}")
        warnings.warn(notes[-1], stacklevel=2)
    orphans = [c for c, names in probe.experts_by_class(masks, query_classes).items() if not names]
    if orphans and distrusted:
        notes.append(f"query class(es) {orphans} have no trusted expert left; the querier's own outputs stand for them")
    seconds["transfer"] = time.perf_counter() - start

    return learn_and_report(student, Lesson(experts, masks, query_classes, local_x, local_y), config, scores=scores,
                            messages=messages, seconds=seconds, notes=notes, distrusted=distrusted, head=head, progress=progress)


def learn_and_report(
    student: nn.Module,
    lesson: Lesson,
    config: QueryConfig,
    *,
    scores: Mapping[str, Sequence[float]],
    messages: list[dict],
    seconds: Mapping[str, float],
    notes: list[str],
    distrusted: dict[str, list[str]],
    head: str | None = None,
    progress: bool = True,
) -> tuple[nn.Module, QueryReport]:
    """Querier side, once the experts are in: :func:`learn`, then the report of the whole query.

    ``messages`` lists every message of the query (``to`` or ``from`` a party, ``kind``,
    ``bytes``); ``seconds`` the time of the steps before learning.
    """
    model, learn_seconds, transfer, num_synthetic = learn(student, lesson, config, head, progress)
    seconds = {**seconds, **learn_seconds}
    seconds["total"] = sum(seconds.values())
    report = QueryReport(
        query=lesson.query,
        scores={k: [float(v) for v in s] for k, s in scores.items()},
        experts=probe.experts_by_class(lesson.masks, lesson.query),
        bytes_sent=sum(m["bytes"] for m in messages if "to" in m),
        bytes_received=sum(m["bytes"] for m in messages if "from" in m),
        messages=messages,
        seconds=seconds,
        num_transfer_inputs=len(transfer),
        num_synthetic=num_synthetic,
        warnings=notes,
        distrusted=distrusted,
    )
    return model, report
