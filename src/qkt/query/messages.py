"""What travels in a query and what it reports: the announcement, the teachers' replies, the report (SPEC §2).

These objects are the same whatever carries them: a query in one process
(:class:`~qkt.query.channel.InProcessChannel`) and one over Flower
(:class:`~qkt.flower.channel.FlowerChannel`) exchange exactly these.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Generic, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from ..config import QueryConfig, first_error
from ..errors import QueryError

T = TypeVar("T")

SCORE_BYTES = 4  # one float32 per query class


# Strict: an announcement comes from another party, and a value coerced into shape would be answered as if asked for.
@with_config(ConfigDict(strict=True, extra="forbid"))
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
        """The announcement in ``blob``, each field of its own type (no other key, no string for a number, no float
        for a count); a :class:`~qkt.errors.QueryError` names the first field that is not."""
        try:
            return _STRICT.validate_json(blob)
        except ValidationError as exc:
            raise QueryError(f"the announcement is malformed: {first_error(exc)}") from None


_STRICT = TypeAdapter(Announcement)


@dataclass(frozen=True)
class Reply(Generic[T]):
    """A teacher's answer to one request, with what it cost.

    ``seconds`` is the teacher's own time to compute it (its probe, or exporting its
    weights); ``sent`` and ``received`` are the bytes of the request and of this reply.
    """

    value: T
    seconds: float = 0.0
    sent: int = 0
    received: int = 0


@dataclass(frozen=True)
class Failure:
    """A teacher that gave no usable reply to one request, and why; the bytes that still crossed the wire."""

    reason: str
    sent: int = 0
    received: int = 0


@dataclass
class QueryReport:
    """What happened in one query: who was asked, who answered as expert, what it cost.

    ``seconds`` holds the wall time of each step as if every teacher answered on its own
    machine, in parallel (``probe`` and ``transfer`` include the slowest teacher's reply),
    their sum (``total``), and ``teachers``: the time every teacher spent on its replies,
    added up (per teacher in ``teacher_seconds``). ``lost`` names the teachers that gave
    no reply, ``distrusted`` those whose weights or claims the querier's checks rejected.
    ``num_transfer_inputs`` counts every input Phases 1 and 2 learnt from, ``num_synthetic``
    the inversions among them and ``num_public`` the public pool's.
    """

    query: tuple[int, ...]
    scores: dict[str, list[float]]
    experts: dict[int, list[str]]
    bytes_sent: int
    bytes_received: int
    messages: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    teacher_seconds: dict[str, float] = field(default_factory=dict)
    num_transfer_inputs: int = 0
    num_synthetic: int = 0
    num_public: int = 0
    warnings: list[str] = field(default_factory=list)
    distrusted: dict[str, list[str]] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["experts"] = {str(c): v for c, v in self.experts.items()}
        return out
