"""The querier's side of a query, written once for every transport (SPEC §2).

:func:`run_query` announces the query over a :class:`~qkt.query.channel.TeacherChannel`,
chooses the experts from the teachers' scores, fetches their weights, checks them,
learns (Phase 1, Phase 2) and reports. :func:`qkt.query` runs it over the user's own
models in this process, the Flower ServerApp over SuperNodes, and ``qkt bench`` over
wrapped in-process channels.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..config import QueryConfig, TrustConfig
from ..errors import QueryError, QueryFailed
from ..inputs import NUMBER_KINDS, DatasetRows, LocalData, as_samples, class_indices
from ..models import find_head
from ..training import Amp, model_device, resolve_device
from . import inputs, probe, trust
from .channel import TeacherChannel
from .gate import gate, hold_out, own_inversions
from .messages import Announcement, Failure, QueryReport, Reply
from .phase1 import run_phase1
from .phase2 import align_weights, refine_head
from .teacher import probe_scores
from .transfer import Lesson, TransferSet, build_transfer_set
from .variant import Variant

log = logging.getLogger(__name__)


def select_experts(scores: Mapping[str, Sequence[float]], query: Sequence[int], num_classes: int,
                   lam: float) -> tuple[dict[str, np.ndarray], list[str]]:
    """The masks, restricted to teachers with at least one bit inside ``Q``, and a note per class left without an expert.

    Raises :class:`QueryError` when no query class has an expert.
    """
    masks = probe.expert_masks(scores, query, num_classes, lam)
    missing = [c for c, experts in probe.experts_by_class(masks, query).items() if not experts]
    if len(missing) == len(query):
        raise QueryError(probe.no_expert_message(scores, query, num_classes, lam, missing))
    notes = [probe.no_expert_message(scores, query, num_classes, lam, missing)] if missing else []
    return {k: m for k, m in masks.items() if m.any()}, notes


def import_weights(template: nn.Module, arrays: Mapping[str, np.ndarray]) -> nn.Module:
    """A copy of ``template`` holding the received weights, after checking that they fit it and are finite."""
    model = copy.deepcopy(template)
    state = model.state_dict()
    if set(arrays) != set(state):
        raise QueryError(f"received weights do not fit the model: keys differ ({sorted(set(arrays) ^ set(state))[:3]} …)")
    loaded = {}
    for key, ref in state.items():
        array = np.asarray(arrays[key])
        # complex would lose its imaginary part in the cast below, with a warning, not an error
        if array.dtype.kind not in NUMBER_KINDS:
            raise QueryError(f"received weight '{key}' is {array.dtype}, expected {ref.dtype}")
        if array.shape != tuple(ref.shape):
            raise QueryError(f"received weight '{key}' has shape {array.shape}, expected {tuple(ref.shape)}")
        value = torch.as_tensor(array).to(ref.dtype)
        # after the cast: 1e300 in float64 is finite, and infinite as the float32 the model holds
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise QueryError(f"received weight '{key}' holds NaN or infinite values (as {ref.dtype})")
        loaded[key] = value
    model.load_state_dict(loaded)
    return model.eval()


def vet_experts(experts: Mapping[str, nn.Module], scores: Mapping[str, Sequence[float]], masks: Mapping[str, np.ndarray],
                announcement: Announcement, local_x: torch.Tensor | DatasetRows, local_y: torch.Tensor, lam: float,
                config: TrustConfig, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Check each received expert (:mod:`qkt.query.trust`) before learning from it.

    Returns the masks the checks leave (experts left with no bit are removed) and,
    for each expert that lost a bit, the reasons.
    """
    # The querier re-runs the announced probe on the weights, over all of C and without noise;
    # the 'self' probe needs the teacher's data, so the data-free recipe stands in for it.
    recipe = announcement if announcement.probe_kind != "self" else replace(announcement, probe_kind="statistics")
    x, y = trust.check_sample(local_x, local_y, config.max_samples, seed)
    noise = probe.noise_probes(recipe.input_shape, recipe.probe_samples, recipe.probe_scales, recipe.probe_seed)
    kept, distrusted = {}, {}
    for name, model in experts.items():
        try:
            verdict = trust.check_expert(model, scores[name], probe_scores(model, recipe, noise=noise), masks[name], announcement.query, x, y,
                                         lam, config, verify_claims=announcement.probe_kind != "self", probe_x=noise)
        except Exception as exc:  # noqa: BLE001 - another party's model failing on the checks costs its place, not the query
            distrusted[name] = [f"its model fails on the querier's checks: {type(exc).__name__}: {exc}"]
            continue
        if verdict.reasons:
            distrusted[name] = verdict.reasons
        if not verdict.dropped:
            kept[name] = verdict.mask
    return kept, distrusted


def check_local_data(local_x: torch.Tensor | DatasetRows, local_y: torch.Tensor, query_classes: Sequence[int] | int,
                     num_classes: int) -> tuple[tuple[int, ...], torch.Tensor, list[str]]:
    """The query's classes sorted and checked, the labels as int64 on the CPU, and a note per query class the querier already holds."""
    local_y = class_indices(local_y, len(local_x))
    if local_y.min() < 0 or local_y.max() >= num_classes:
        raise QueryError(f"local labels must lie in 0..{num_classes - 1}; got {int(local_y.min())}..{int(local_y.max())}")
    query = probe.check_query(query_classes, num_classes)
    held = torch.bincount(local_y, minlength=num_classes)
    notes = [f"the querier already holds {int(held[c])} samples of query class {c}; a query is meant for classes it lacks"
             for c in query if held[c] >= max(10, 0.05 * len(local_y))]
    return query, local_y, notes


def learn(student: nn.Module, lesson: Lesson, config: QueryConfig, variant: Variant | None = None, head: str | None = None,
          progress: bool = True, device: torch.device | None = None,
          amp: Amp | None = None) -> tuple[nn.Module, dict[str, float], TransferSet, int]:
    """Build the transfer set, then Phase 1 and Phase 2 on a copy of ``student``; with each step's seconds.

    With ``config.gate``, the result is a :class:`~qkt.query.gate.GatedModel` of a copy of
    ``student`` and the trained copy; fitting its gate counts in Phase 2's seconds. With
    ``config.gate_budget``, the transfer set leaves out the inputs the gate is fitted on
    (:func:`~qkt.query.gate.hold_out`); with ``config.gate_inversions``, inversions of the
    querier's own classes join the inputs it is fitted on (counted in the synthesis seconds).

    Everything runs on ``device`` (default: the student's), where the copy is returned;
    ``amp``: mixed precision of the two phases' training steps (:func:`qkt.training.fit`).
    """
    variant = variant or Variant()
    device = device or model_device(student)
    seconds: dict[str, float] = {}
    original = copy.deepcopy(student).to(device).eval()
    new = copy.deepcopy(student).to(device)
    start = time.perf_counter()
    held_out = None
    if config.gate_budget is not None:
        lesson, held_out = hold_out(lesson, config.seed)
    transfer, num_synthetic = build_transfer_set(original, lesson, config, progress)
    if len(transfer) < 2:  # BatchNorm cannot train on one input
        raise QueryError(f"the transfer set holds {len(transfer)} input: give more local samples, or enable query.inversion or query.mixup")
    own_synthetic = own_inversions(original, lesson, config, progress) if config.gate_inversions else None
    seconds["synthesis"] = time.perf_counter() - start

    start = time.perf_counter()
    trained, inputs = run_phase1(new, transfer, config, variant, len(lesson.local_y), transfer.x.num_unmixed, head, progress, amp)
    seconds["phase1"] = time.perf_counter() - start

    start = time.perf_counter()
    if variant.phase2 and not variant.merged and config.phase2_epochs:
        refine_head(trained, inputs, config, head, progress, amp)
    if config.head_correction == "weight_aligning":
        own = torch.bincount(lesson.local_y, minlength=int(lesson.local_y.max()) + 1).nonzero().flatten().tolist()
        align_weights(new, lesson.query, [c for c in own if c not in lesson.query], head)
    result = new.eval()
    if config.gate == "query_mass":
        result = gate(original, new, transfer.x, len(lesson.local_y), num_synthetic, lesson.query, transfer.targets.shape[1],
                      held_out, config.gate_budget, own_synthetic)
    seconds["phase2"] = time.perf_counter() - start
    return result, seconds, transfer, num_synthetic


def _wall(measured: float, replies: Mapping[str, Reply | Failure], parallel: bool) -> float:
    """An exchange's wall time as if every teacher computed on its own machine: the querier's share plus the slowest reply."""
    if parallel:
        return measured
    times = [r.seconds for r in replies.values() if isinstance(r, Reply)]
    return max(0.0, measured - sum(times)) + max(times, default=0.0)


def _exchange_cost(probe_replies: Mapping[str, Reply | Failure], weight_replies: Mapping[str, Reply | Failure]
                   ) -> tuple[dict[str, float], list[dict]]:
    """Each teacher's compute time for its replies, and every message of the exchange with its bytes."""
    teacher_seconds: dict[str, float] = {}
    for replies in (probe_replies, weight_replies):
        for name, reply in replies.items():
            if isinstance(reply, Reply):
                teacher_seconds[name] = teacher_seconds.get(name, 0.0) + reply.seconds
    return teacher_seconds, _messages(probe_replies, "announce", "scores") + _messages(weight_replies, "request_weights", "weights")


def _bytes(messages: Sequence[dict]) -> tuple[int, int]:
    """The bytes the querier sent and received in ``messages``."""
    return sum(m["bytes"] for m in messages if "to" in m), sum(m["bytes"] for m in messages if "from" in m)


def _failed(message: str, seconds: dict[str, float], probe_replies: Mapping[str, Reply | Failure],
            weight_replies: Mapping[str, Reply | Failure]) -> QueryFailed:
    teacher_seconds, messages = _exchange_cost(probe_replies, weight_replies)
    return QueryFailed(message, {**seconds, "total": sum(seconds.values()), "teachers": sum(teacher_seconds.values())},
                       *_bytes(messages))


def _messages(replies: Mapping[str, Reply | Failure], request: str, reply: str) -> list[dict]:
    out = []
    for name, r in replies.items():
        out.append({"to": name, "kind": request, "bytes": r.sent})
        if r.received:
            out.append({"from": name, "kind": reply, "bytes": r.received})
    return out


def _scores(reply: Reply | Failure, query_size: int) -> np.ndarray | str:
    """A teacher's scores, or why they cannot be used: a reply must be one finite score per query class."""
    if isinstance(reply, Failure):
        return reply.reason
    scores = np.asarray(reply.value, dtype=np.float32).reshape(-1)
    if scores.shape != (query_size,) or not np.isfinite(scores).all():
        return f"its reply is not one finite score per query class ({query_size} expected): {scores.tolist()[:8]}"
    return scores


def run_query(student: nn.Module, channel: TeacherChannel, query_classes: Sequence[int] | int,
              local_data: LocalData, config: QueryConfig | Mapping | None = None, *, num_classes: int | None = None,
              variant: Variant | None = None, head: str | None = None, progress: bool = True,
              device: str | torch.device | None = None, amp: Amp | None = None,
              public_inputs: torch.Tensor | None = None) -> tuple[nn.Module, QueryReport]:
    """One query, end to end: announce, choose experts, fetch their weights, vet them, learn, report.

    Parameters
    ----------
    student:
        The querier's trained model, mapping inputs to logits over ``num_classes``; it is not modified.
    channel:
        The querier's link to its teachers (:mod:`qkt.query.channel`).
    query_classes, local_data:
        ``Q``, and the querier's own inputs and labels, as for :func:`qkt.query`: two
        tensors or NumPy arrays, a map-style :class:`~torch.utils.data.Dataset` of
        (input, label) pairs or a :class:`~torch.utils.data.DataLoader` over one
        (:mod:`qkt.inputs`). They are read batch by batch, never copied whole.
    config, num_classes:
        The query's settings (a :class:`~qkt.config.QueryConfig` or a mapping of its fields; default: its defaults),
        and ``|C|`` (default: the student's output size).
    variant:
        The engine's switches for an ablation (:mod:`qkt.query.variant`); None is QKT itself.
    device, amp:
        Where the querier computes: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"`` or a
        :class:`torch.device` (default: the student's device); the new model is returned
        there. ``amp`` (``"bf16"`` or ``"fp16"``) trains Phases 1 and 2 in mixed precision.
    public_inputs:
        A public pool: unlabelled inputs the querier holds and may use, of the same shape per
        input as its own, added to the transfer inputs with the combined targets of the
        inversions (``query.public_pool`` of docs/method.md). None: no pool.

    A teacher that gives no reply is *lost*; one whose weights do not fit or whose claims
    the querier's checks do not support is *distrusted*; both are named in the report and
    the query goes on with the others. Raises :class:`~qkt.errors.QueryFailed` (with what the
    exchange cost) when no teacher answers, no query class has an expert, or no expert is
    left to learn from; :class:`~qkt.errors.QueryError` for a query that cannot run as asked.
    """
    config, variant = inputs.as_config(config), variant or Variant()
    variant.check(config)
    if not isinstance(channel, TeacherChannel):
        raise QueryError(f"channel must be a qkt.TeacherChannel, e.g. qkt.InProcessChannel(teachers), not {type(channel).__name__}")
    inputs.check_student(student)
    inputs.check_num_classes(num_classes)
    inputs.check_amp(amp)
    device = resolve_device(device) or model_device(student)
    local_x, local_y = as_samples(local_data, inputs.input_dtype(student))
    if num_classes is None:
        num_classes = inputs.output_size("the student", student, local_x)
    query, local_y, notes = check_local_data(local_x, local_y, query_classes, num_classes)
    public_x, pool_notes = inputs.check_public_inputs(public_inputs, local_x, config, inputs.input_dtype(student))
    notes += pool_notes
    inputs.check_trainable(student, find_head(student, head))
    seconds: dict[str, float] = {}
    announcement = Announcement.from_config(query, num_classes, tuple(local_x.shape[1:]), config)

    log.info("query %s of %d classes: announcing it to %d teacher(s)", list(query), num_classes, len(channel.teachers))
    start = time.perf_counter()
    probe_replies = channel.announce(announcement, channel.teachers)
    measured = time.perf_counter() - start
    scores, lost = {}, {}
    for name, reply in probe_replies.items():
        value = _scores(reply, len(query))
        if isinstance(value, str):
            lost[name] = value
        else:
            scores[name] = value
    # The querier's own work after the exchange is timed apart: cached replies may charge more than the call took.
    seconds["probe"] = time.perf_counter() - start - measured + _wall(measured, probe_replies, channel.parallel)
    if not scores:
        raise _failed(f"no teacher answered the announcement ({len(probe_replies)} asked; lost: "
                      + ("; ".join(f"teacher '{k}' {v}" for k, v in lost.items()) or "none") + ")", seconds, probe_replies, {})
    if variant.masks:
        try:
            masks, unmatched = select_experts(scores, query, num_classes, config.lam)
        except QueryError as exc:
            raise _failed(str(exc), seconds, probe_replies, {}) from None
    else:
        masks, unmatched = {k: np.ones(len(query), dtype=bool) for k in scores}, []
    notes += unmatched
    by_class = probe.experts_by_class(masks, query)
    log.debug("probe scores: %s", {k: [round(float(v), 4) for v in s] for k, s in scores.items()})
    log.info("experts: %s; asking them for their weights",
             "; ".join(f"class {c}: {', '.join(map(repr, names)) or 'none'}" for c, names in by_class.items()))
    unmatched_classes = {c for c, names in by_class.items() if not names}

    start = time.perf_counter()
    weight_replies = channel.fetch_weights(list(masks), config.light)
    measured = time.perf_counter() - start
    experts, distrusted = {}, {}
    for name, reply in weight_replies.items():
        if isinstance(reply, Failure):
            lost[name] = reply.reason
            continue
        try:
            experts[name] = import_weights(channel.architecture(name), reply.value).to(device)
        except QueryError as exc:  # one broken teacher must not sink the query
            distrusted[name] = [str(exc)]
    masks = {k: m for k, m in masks.items() if k in experts}
    if config.trust.enabled and masks:
        masks, vetted = vet_experts(experts, scores, masks, announcement, local_x, local_y, config.lam, config.trust, config.seed)
        distrusted.update(vetted)
    # Checking what arrived is part of the transfer: its time is counted there.
    seconds["transfer"] = time.perf_counter() - start - measured + _wall(measured, weight_replies, channel.parallel)
    notes += [f"teacher '{name}' was lost: {why}" for name, why in lost.items()]
    notes += [f"teacher '{name}' distrusted: {'; '.join(reasons)}" for name, reasons in distrusted.items()]
    if not masks:
        raise _failed("no usable expert: " + "; ".join(f"teacher '{k}': {v if isinstance(v, str) else ', '.join(v)}"
                                                        for k, v in {**lost, **distrusted}.items() if k in weight_replies),
                      seconds, probe_replies, weight_replies)
    lesson = Lesson({k: experts[k] for k in masks}, masks, query, local_x, local_y, public_x)
    orphans = sorted(c for c, names in lesson.by_class.items() if not names and c not in unmatched_classes)
    if orphans:
        notes.append(f"query class(es) {orphans} have no usable expert left; the querier's own outputs stand for them")
    for note in notes:
        warnings.warn(note, stacklevel=2)

    log.info("learning from %d expert(s): %s", len(masks), ", ".join(map(repr, masks)))
    model, learn_seconds, transfer, num_synthetic = learn(student, lesson, config, variant, head, progress, device, amp)
    seconds.update(learn_seconds)
    seconds["total"] = sum(seconds.values())
    teacher_seconds, messages = _exchange_cost(probe_replies, weight_replies)
    seconds["teachers"] = sum(teacher_seconds.values())
    sent, received = _bytes(messages)
    report = QueryReport(
        query=query,
        scores={k: [float(v) for v in s] for k, s in scores.items()},
        experts=lesson.by_class,
        bytes_sent=sent,
        bytes_received=received,
        messages=messages,
        seconds=seconds,
        teacher_seconds=teacher_seconds,
        num_transfer_inputs=len(transfer),
        num_synthetic=num_synthetic,
        num_public=lesson.num_public,
        warnings=notes,
        distrusted=distrusted,
        lost=lost,
    )
    pool = f", {lesson.num_public} from the public pool" if lesson.num_public else ""
    log.info("query %s learnt in %.1f s (%d transfer inputs, %d synthetic%s; %s received)", list(query),
             seconds["total"], len(transfer), num_synthetic, pool, f"{report.bytes_received:,} bytes")
    return model, report
