"""``qkt.query``: one query over the user's own models, in this process."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..config import QueryConfig
from ..errors import QueryError
from ..inputs import LocalData, as_samples
from ..training import Amp, model_device, resolve_device
from . import inputs
from .channel import InProcessChannel
from .messages import QueryReport
from .querier import run_query
from .teacher import Teacher


def query(
    student: nn.Module,
    teachers: Mapping[str, nn.Module | Teacher] | Sequence[nn.Module | Teacher],
    query_classes: Sequence[int] | int,
    local_data: LocalData,
    config: QueryConfig | Mapping | None = None,
    *,
    num_classes: int | None = None,
    head: str | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    amp: Amp | None = None,
    public_inputs: torch.Tensor | None = None,
) -> tuple[nn.Module, QueryReport]:
    """Ask ``teachers`` for ``query_classes`` and learn them into a copy of ``student``.

    Parameters
    ----------
    student:
        The querier's trained model; it is not modified. It must map inputs to
        logits over all classes and have a linear classification head, found by
        :func:`qkt.models.find_head` (``head``, ``fc``, ``classifier``, …).
    teachers:
        The other parties' trained models, by name (or a list, named ``"0"``,
        ``"1"``, …). Wrap one in :class:`Teacher` to give it held-out data for
        the ``self`` probe. Architectures may differ from the student's.
    query_classes:
        The classes to acquire, ``Q``, as integer class indices (a single integer is a
        query of one class); the querier should hold (almost) none of them.
    local_data:
        The querier's own inputs (normalised as the models expect) and labels: two
        tensors or NumPy arrays (inputs are cast to the student's floating-point type),
        a map-style :class:`~torch.utils.data.Dataset` yielding (input, label) or a
        :class:`~torch.utils.data.DataLoader` over one. They are read batch by batch; a
        Dataset's items are never held all at once.
    config:
        :class:`~qkt.config.QueryConfig`, or a mapping of its fields; the defaults suit
        small models such as the demo's MLP.
    num_classes:
        ``|C|``; defaults to the student's output size.
    device:
        Where the query computes (``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"`` or a
        :class:`torch.device`); default: the student's device. Teachers elsewhere answer
        through copies moved there: the models handed in come back as they were.
    amp:
        ``"bf16"`` or ``"fp16"``: mixed precision for the training steps of Phases 1 and 2 (default: off).
    public_inputs:
        Optional public pool: unlabelled inputs the querier holds and may use (e.g. images of
        another public data set), a tensor or NumPy array of the local inputs' shape per
        input, normalised alike. They join the transfer inputs with the combined targets of
        the inversions; nothing about them leaves the querier (docs/privacy.md). Every input
        given is used (the report's ``num_public``); a pool far from the local inputs' scale is
        warned about.

    Returns
    -------
    (model, report):
        The new model (on ``device``), which knows ``Q`` and keeps what the student knew, and a
        :class:`QueryReport` with experts, bytes, timings (the teachers' replies
        included) and the teachers whose claims the querier's checks rejected, with
        why (``distrusted``; see :mod:`qkt.query.trust`).

    Raises :class:`~qkt.errors.QKTError` for anything it cannot use as given. A teacher
    whose model fails while answering is named in the report (``lost`` or ``distrusted``)
    and the query goes on with the others.

    This is :func:`~qkt.query.querier.run_query` over an
    :class:`~qkt.query.channel.InProcessChannel`, after checking that every model fits.
    """
    if isinstance(teachers, nn.Module | str) or not isinstance(teachers, Mapping | Sequence):
        raise QueryError(f"teachers must be a mapping of names to models or a list of models, not {type(teachers).__name__}")
    named = dict(teachers) if isinstance(teachers, Mapping) else {str(i): t for i, t in enumerate(teachers)}
    if not named:
        raise QueryError("no teachers to ask")
    config = inputs.as_config(config)
    inputs.check_student(student)
    device = resolve_device(device) or model_device(student)
    channel = InProcessChannel(named, device)
    teacher_models = {f"teacher '{k}'": channel.architecture(k) for k in channel.teachers}
    for who, model in teacher_models.items():
        inputs.check_module(who, model)
    owners: dict[int, str] = {}
    for name in channel.teachers:
        other = owners.setdefault(id(channel.architecture(name)), name)
        if other != name:
            raise QueryError(f"teachers '{other}' and '{name}' are the same model: each would answer and count as an expert; "
                             "pass it once")
    unused = [k for k, t in named.items() if isinstance(t, Teacher) and t.holdout is not None]
    if unused and config.probe.kind != "self":
        warnings.warn(f"held-out data of teacher(s) {', '.join(map(repr, unused))} go unused: the '{config.probe.kind}' probe "
                      "is data-free; set probe.kind to 'self' to score teachers on them", stacklevel=2)
    samples = as_samples(local_data, inputs.input_dtype(student))  # a Dataset's labels are read here, once
    for who, model in teacher_models.items():
        inputs.check_dtype(who, model)
    inputs.check_num_classes(num_classes)
    models = {"the student": student, **teacher_models}
    outputs = {who: inputs.output_size(who, model, samples[0], own=who == "the student") for who, model in models.items()}
    num_classes = outputs["the student"] if num_classes is None else num_classes
    for who, size in outputs.items():
        if size is not None and size != num_classes:
            raise QueryError(f"{who} outputs {size} classes but the label space has {num_classes}")
    return run_query(student, channel, query_classes, samples, config, num_classes=num_classes, head=head, progress=progress,
                     device=device, amp=amp, public_inputs=public_inputs)
