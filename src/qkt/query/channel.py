"""The teacher channel: how the querier talks to its teachers, whatever carries the messages.

A query needs two exchanges (SPEC §2): the announcement, answered by every teacher
with its probe scores, and the request for weights, answered by the experts alone.
:class:`TeacherChannel` is that interface; :func:`~qkt.query.querier.run_query` is
written once against it. Each reply carries the teacher's own compute time and the
bytes both ways, so the query's report counts every message and every second of
every party, on any transport.

Implementations: :class:`InProcessChannel` over the user's own models, the Flower
channel of :mod:`qkt.flower` over SuperNodes, and wrappers that change what a
channel carries without touching the query: :class:`CachedScores`,
:class:`ForgedScores`, :class:`NoisyScores`, :class:`Faults` and :class:`Recorder`.
"""

from __future__ import annotations

import abc
import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..errors import QKTError, QueryError
from ..training import model_device
from . import privacy
from .messages import SCORE_BYTES, Announcement, Failure, Reply
from .teacher import Teacher, answer_probe, export_weights

Scores = Reply[np.ndarray] | Failure
Weights = Reply[dict[str, np.ndarray]] | Failure


def weights_request_bytes(half: bool) -> int:
    return len(json.dumps({"half": half}).encode())


class TeacherChannel(abc.ABC):
    """The querier's link to its teachers.

    ``parallel`` says whether the teachers' computations overlap in time (each on its
    own machine) or run one after another in this process; in the second case the
    query counts only the slowest reply of an exchange in its wall time, as it would
    be on a real network.
    """

    parallel: bool = False

    @property
    @abc.abstractmethod
    def teachers(self) -> tuple[str, ...]:
        """The names of the teachers this channel reaches, in a fixed order."""

    @abc.abstractmethod
    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        """Send ``announcement`` to ``names``; each maps to its scores over ``announcement.query`` or a :class:`Failure`."""

    @abc.abstractmethod
    def fetch_weights(self, names: Sequence[str], half: bool) -> dict[str, Weights]:
        """Ask ``names`` for their models; each maps to its state as arrays (float16 if ``half``) or a :class:`Failure`."""

    @abc.abstractmethod
    def architecture(self, name: str) -> nn.Module:
        """A model of teacher ``name``'s architecture for its weights to be loaded into (a copy is made; it is not changed)."""


def on_device(model: nn.Module, device: torch.device | None) -> nn.Module:
    """``model`` itself if it is on ``device`` (or no device is asked for), else a copy moved there: the user's model is never moved."""
    return model if device is None or model_device(model) == device else copy.deepcopy(model).to(device)


class InProcessChannel(TeacherChannel):
    """Teachers that are models in this process, by name (a :class:`Teacher` gives one its held-out data): each reply is computed here and timed.

    With ``device``, each teacher answers the probe there (a teacher's model elsewhere is
    copied there for its reply; the model handed in is left as it is).
    """

    def __init__(self, teachers: Mapping[str, nn.Module | Teacher], device: torch.device | None = None):
        if not isinstance(teachers, Mapping):
            raise QueryError(f"teachers must be a mapping of names to models, not {type(teachers).__name__}")
        # Converting names would merge teachers 1 and "1", and the report could not be read by the names given.
        named = [k for k in teachers if not isinstance(k, str)]
        if named:
            raise QueryError(f"teacher names must be strings, not {named[0]!r} ({type(named[0]).__name__}): the report names each teacher by it")
        self._teachers = {k: t if isinstance(t, Teacher) else Teacher(t) for k, t in teachers.items()}
        self.device = device

    @property
    def teachers(self) -> tuple[str, ...]:
        return tuple(self._teachers)

    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        sent = len(announcement.to_bytes())
        replies: dict[str, Scores] = {}
        for name in names:
            teacher = self._teachers[name]
            start = time.perf_counter()
            try:
                scores = answer_probe(on_device(teacher.model, self.device), announcement, teacher.holdout, policy=teacher.policy)
            except QueryError as exc:  # its policy, or its model or data, cannot answer this announcement: as over Flower
                replies[name] = Failure(f"refused: {exc}", sent)
                continue
            except Exception as exc:  # noqa: BLE001 - another party's model failing costs its reply, not the query
                replies[name] = Failure(f"failed to answer: {type(exc).__name__}: {exc}", sent)
                continue
            replies[name] = Reply(scores, time.perf_counter() - start, sent, SCORE_BYTES * len(scores))
        return replies

    def fetch_weights(self, names: Sequence[str], half: bool) -> dict[str, Weights]:
        replies: dict[str, Weights] = {}
        for name in names:
            start = time.perf_counter()
            try:
                arrays = export_weights(self._teachers[name].model, half)
            except Exception as exc:  # noqa: BLE001 - as in announce: a failing teacher costs its reply
                replies[name] = Failure(f"failed to send its weights: {type(exc).__name__}: {exc}", weights_request_bytes(half))
                continue
            replies[name] = Reply(arrays, time.perf_counter() - start, weights_request_bytes(half),
                                  int(sum(a.nbytes for a in arrays.values())))
        return replies

    def architecture(self, name: str) -> nn.Module:
        return self._teachers[name].model


class ChannelWrapper(TeacherChannel):
    """A channel that passes everything to ``inner``; subclasses change one kind of message."""

    def __init__(self, inner: TeacherChannel):
        self.inner = inner

    @property
    def parallel(self) -> bool:  # type: ignore[override]
        return self.inner.parallel

    @property
    def teachers(self) -> tuple[str, ...]:
        return self.inner.teachers

    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        return self.inner.announce(announcement, names)

    def fetch_weights(self, names: Sequence[str], half: bool) -> dict[str, Weights]:
        return self.inner.fetch_weights(names, half)

    def architecture(self, name: str) -> nn.Module:
        return self.inner.architecture(name)


class CachedScores(ChannelWrapper):
    """Each teacher computes its scores over every class once per probe recipe; later queries get them from ``cache``.

    A teacher's scores do not depend on the query (its reply is its score vector
    restricted to ``Q``), so a simulation that runs many queries over the same teachers
    can compute each once. Each cached reply is charged the seconds its computation
    took, so every query still pays for its teachers' replies. ``cache`` may be shared
    by several channels over the same teachers (keyed by teacher name and recipe; λ is the
    querier's own and not in the announcement, so a sweep over λ reuses the scores).
    """

    def __init__(self, inner: TeacherChannel, cache: dict | None = None):
        super().__init__(inner)
        self.cache: dict = {} if cache is None else cache

    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        every_class = replace(announcement, query=tuple(range(announcement.num_classes)))
        recipe = every_class.to_bytes()
        missing = [n for n in names if (n, recipe) not in self.cache]
        if missing:
            for name, reply in self.inner.announce(every_class, missing).items():
                if isinstance(reply, Reply):  # a failure is not remembered: the teacher may answer next time
                    self.cache[name, recipe] = reply
        sent, query = len(announcement.to_bytes()), list(announcement.query)
        replies: dict[str, Scores] = {}
        for name in names:
            full = self.cache.get((name, recipe))
            replies[name] = (Reply(full.value[query], full.seconds, sent, SCORE_BYTES * len(query)) if full is not None
                             else Failure("gave no probe scores", sent))
        return replies


class ForgedScores(ChannelWrapper):
    """Teacher ``liar`` claims full expertise: score 1.0 for every query class, whatever its model says; its weights are its own."""

    def __init__(self, inner: TeacherChannel, liar: str):
        super().__init__(inner)
        self.liar = liar

    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        replies = self.inner.announce(announcement, names)
        honest = replies.get(self.liar)
        if isinstance(honest, Reply):
            replies[self.liar] = replace(honest, value=np.ones_like(honest.value))
        return replies


class NoisyScores(ChannelWrapper):
    """Laplace noise on every probe reply, as each teacher adds under ``probe.noise = "laplace"``, drawn from ``rng``.

    The teachers compute their exact scores (the inner channel is asked without noise,
    so a :class:`CachedScores` inside keeps them) and the noise is added here from one
    seeded generator, so that a benchmark of the privacy cost repeats exactly.
    """

    def __init__(self, inner: TeacherChannel, rng: np.random.Generator):
        super().__init__(inner)
        self.rng = rng

    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        if announcement.noise != "laplace":
            return self.inner.announce(announcement, names)
        replies = self.inner.announce(replace(announcement, noise="none"), names)
        return {name: replace(r, value=privacy.privatize(r.value, announcement.epsilon, self.rng)) if isinstance(r, Reply) else r
                for name, r in replies.items()}


def nan_weights(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights with their first float tensor all NaN (a teacher whose training diverged)."""
    name = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))
    return {**arrays, name: np.full_like(arrays[name], np.nan)}


def misshapen_weights(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights with their first float tensor cut short by one entry (a teacher of another architecture)."""
    name = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))
    return {**arrays, name: arrays[name][..., :-1]}


class Faults(ChannelWrapper):
    """Teachers that fail, by name: ``silent`` never answers; ``nan`` and ``shape`` send broken weights.

    For rehearsing what the querier does when a party goes down or sends garbage;
    the Flower app has the same faults for real processes (its ``qkt-fault`` node option).
    """

    KINDS: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None] = {
        "silent": None, "nan": nan_weights, "shape": misshapen_weights}

    def __init__(self, inner: TeacherChannel, faults: Mapping[str, str]):
        super().__init__(inner)
        unknown = sorted(set(faults.values()) - set(self.KINDS))
        if unknown:
            raise QKTError(f"unknown fault(s) {unknown}; choose among {', '.join(self.KINDS)}")
        self.faults = dict(faults)

    def _silent(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if self.faults.get(n) == "silent"]

    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        silent = self._silent(names)
        replies = self.inner.announce(announcement, [n for n in names if n not in silent])
        sent = len(announcement.to_bytes())
        return {n: replies[n] if n in replies else Failure("did not answer", sent) for n in names}

    def fetch_weights(self, names: Sequence[str], half: bool) -> dict[str, Weights]:
        silent = self._silent(names)
        replies = self.inner.fetch_weights([n for n in names if n not in silent], half)
        out: dict[str, Weights] = {}
        for name in names:
            reply, corrupt = replies.get(name), self.KINDS[self.faults[name]] if name in self.faults else None
            if reply is None:
                out[name] = Failure("did not answer", weights_request_bytes(half))
            elif isinstance(reply, Reply) and corrupt is not None:
                out[name] = replace(reply, value=corrupt(reply.value))
            else:
                out[name] = reply
        return out


class Recorder(ChannelWrapper):
    """Keeps every announcement and every reply that passes, in order: what left each teacher, for inspection."""

    def __init__(self, inner: TeacherChannel):
        super().__init__(inner)
        self.announcements: list[Announcement] = []
        self.replies: list[tuple[str, str, Scores | Weights]] = []  # (teacher, "scores" or "weights", reply)

    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        self.announcements.append(announcement)
        replies = self.inner.announce(announcement, names)
        self.replies += [(name, "scores", reply) for name, reply in replies.items()]
        return replies

    def fetch_weights(self, names: Sequence[str], half: bool) -> dict[str, Weights]:
        replies = self.inner.fetch_weights(names, half)
        self.replies += [(name, "weights", reply) for name, reply in replies.items()]
        return replies
