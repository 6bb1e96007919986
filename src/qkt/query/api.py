"""``qkt.query``: one query over the user's own models, in this process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..config import QueryConfig
from ..errors import QueryError
from ..training import predict_logits
from .channel import InProcessChannel
from .messages import QueryReport
from .querier import run_query
from .teacher import Teacher


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
        logits over all classes and have a linear classification head, found by
        :func:`qkt.models.find_head` (``head``, ``fc``, ``classifier``, …).
    teachers:
        The other parties' trained models, by name (or a list, named ``"0"``,
        ``"1"``, …). Wrap one in :class:`Teacher` to give it held-out data for
        the ``self`` probe. Architectures may differ from the student's.
    query_classes:
        The classes to acquire, ``Q``; the querier should hold (almost) none of them.
    local_data:
        The querier's own inputs (normalised as the models expect) and labels.
    config:
        :class:`~qkt.config.QueryConfig`; the defaults suit small models such as the demo's MLP.
    num_classes:
        ``|C|``; defaults to the student's output size.

    Returns
    -------
    (model, report):
        The new model, which knows ``Q`` and keeps what the student knew, and a
        :class:`QueryReport` with experts, bytes, timings (the teachers' replies
        included) and the teachers whose claims the querier's checks rejected, with
        why (``distrusted``; see :mod:`qkt.query.trust`).

    This is :func:`~qkt.query.querier.run_query` over an
    :class:`~qkt.query.channel.InProcessChannel`, after checking that every model fits.
    """
    named = dict(teachers) if isinstance(teachers, Mapping) else {str(i): t for i, t in enumerate(teachers)}
    if not named:
        raise QueryError("no teachers to ask")
    channel = InProcessChannel(named)
    local_x = local_data[0]
    models = {"the student": student, **{f"teacher '{k}'": channel.architecture(k) for k in channel.teachers}}
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
    return run_query(student, channel, query_classes, local_data, config, num_classes=num_classes, head=head, progress=progress)
