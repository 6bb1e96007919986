"""The query's messages as Flower records, and the bytes each one puts on the wire.

The payloads are the transport-agnostic objects of :mod:`qkt.query.messages`
(the :class:`~qkt.query.messages.Announcement`, the probe scores, the exported
weights) and the seconds the teacher spent on them; this module only packs them
into ``RecordDict`` s and back.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import SType
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from ..errors import QueryError
from ..files import npy_header
from ..inputs import NUMBER_KINDS
from ..query.messages import Announcement

PROBE = "query.probe"
WEIGHTS = "query.weights"
# Characters of what a peer says (a refusal, an error, a party name) that reach the querier's report and logs.
MAX_REASON = 500


def brief(text: object) -> str:
    """``text`` as a peer sent it, cut to :data:`MAX_REASON` characters: a reason of megabytes is no reason to log."""
    text = str(text)
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "…"


def announce_content(announcement: Announcement) -> RecordDict:
    """Step 1 of SPEC §2: the announcement, and nothing else."""
    return RecordDict({"announce": ConfigRecord({"announcement": announcement.to_bytes()})})


def read_announcement(content: RecordDict) -> Announcement:
    """The announcement of a probe message; a :class:`~qkt.errors.QueryError`, which the teacher answers with a refusal, if none can be read."""
    try:
        blob = content["announce"]["announcement"]
    except (KeyError, TypeError) as exc:
        raise QueryError(f"the announcement is malformed: no announce.announcement ({exc!r})") from None
    return Announcement.from_bytes(blob)


def scores_content(party: str, scores: np.ndarray | None, seconds: float = 0.0) -> RecordDict:
    """A teacher's reply to the announcement: ``s[k, Q]`` and the seconds it took, or no scores from the querier itself."""
    record = ConfigRecord({"party": party, "seconds": float(seconds)})
    if scores is not None:
        record["scores"] = [float(s) for s in scores]
    return RecordDict({"scores": record})


def refusal_content(party: str, reason: str) -> RecordDict:
    """A teacher's refusal of an announcement its own policy does not allow, with why."""
    return RecordDict({"scores": ConfigRecord({"party": party, "refused": reason})})


def weights_refusal(reason: str) -> RecordDict:
    return RecordDict({"refused": ConfigRecord({"reason": reason})})


def query_id(announcement: Announcement) -> str:
    """The announcement a weights request refers to: the teacher sends weights only for one it answered as an expert."""
    return hashlib.sha256(announcement.to_bytes()).hexdigest()


def read_refusal(content: RecordDict) -> str | None:
    """Why the replying teacher refused the announcement, or None for an answer."""
    try:
        return brief(content["scores"]["refused"])
    except (KeyError, TypeError):
        return None


def _seconds(record: ConfigRecord, waited: float) -> float:
    """The seconds a teacher says it spent, which go into the query's reported time: no more than the querier ``waited`` for it."""
    seconds = float(record.get("seconds", 0.0))
    if not 0 <= seconds <= waited:
        raise ValueError(f"it says it spent {seconds!r} s, outside 0..{waited:g} s, the querier's wait for the reply")
    return seconds


def read_scores(content: RecordDict, waited: float = math.inf) -> tuple[str, np.ndarray | None, float]:
    """The replying party, its scores (``None`` from the querier itself) and the seconds it spent (at most ``waited``).

    Raises :class:`~qkt.errors.QueryError` for a reply that cannot be read, so that one
    broken or out-of-date peer costs its own answer, not the query; whether the scores
    fit the query is the querier's check (:func:`~qkt.query.querier.run_query`).
    """
    try:
        record = content["scores"]
        party, seconds = str(record["party"]), _seconds(record, waited)
        scores = np.asarray(record["scores"], dtype=np.float32) if "scores" in record else None
    except (KeyError, TypeError, ValueError) as exc:
        raise QueryError(f"its reply to the announcement is malformed ({brief(repr(exc))})") from None
    return party, scores, seconds


def weights_content(arrays: Mapping[str, np.ndarray], seconds: float = 0.0) -> RecordDict:
    """An expert's model, keyed by state-dict name so the querier can check every tensor, and the seconds it took to export."""
    return RecordDict({"weights": ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()}),
                       "cost": ConfigRecord({"seconds": float(seconds)})})


def read_weights(content: RecordDict, waited: float = math.inf) -> tuple[dict[str, np.ndarray], float]:
    """An expert's weights and the seconds it spent (at most ``waited``), or a :class:`~qkt.errors.QueryError` that costs that teacher alone.

    Whether the arrays fit the querier's copy of the expert's architecture is its check
    (:func:`~qkt.query.querier.import_weights`).
    """
    try:
        if "refused" in content:
            raise QueryError(f"refused to send its weights: {brief(content['refused']['reason'])}")
        weights = content["weights"]
        if not isinstance(weights, ArrayRecord):
            raise TypeError(f"its weights are a {type(weights).__name__}, not an ArrayRecord")
        arrays = {k: _decode(k, a) for k, a in weights.items()}
        seconds = _seconds(content["cost"], waited) if "cost" in content else 0.0
    except (KeyError, TypeError, ValueError) as exc:
        raise QueryError(f"its weights reply is malformed ({brief(repr(exc))})") from None
    return arrays, seconds


def _decode(key: str, array: Array) -> np.ndarray:
    """``array`` as NumPy, once its .npy header is known to claim numbers, and no more than its bytes hold (:func:`~qkt.files.npy_header`)."""
    if not isinstance(array, Array) or array.stype != SType.NUMPY:
        raise TypeError(f"weight '{key}' is not a NumPy array")
    try:
        _, dtype = npy_header(io.BytesIO(array.data), len(array.data))
    except ValueError as exc:
        raise ValueError(f"weight '{key}': {exc}") from None
    if dtype.kind not in NUMBER_KINDS:
        raise TypeError(f"weight '{key}' is {dtype}, not numbers")
    return array.numpy()


def wire_bytes(message: Message) -> int:
    """Bytes of the serialised message and every object it carries, as Flower pushes them to the SuperLink."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


class CountingGrid(Grid):
    """A :class:`~flwr.serverapp.Grid` that logs the wire size of every message it sends and receives.

    QKT and Flower's own FedAvg/FedProx strategies talk through the same wrapper,
    so their communication is counted the same way.
    """

    def __init__(self, grid: Grid):
        self._grid = grid
        self.log: list[dict] = []

    def _record(self, direction: str, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for m in messages:
            node = m.metadata.dst_node_id if direction == "to" else m.metadata.src_node_id
            self.log.append({direction: node, "kind": m.metadata.message_type, "bytes": wire_bytes(m)})
        return messages

    def set_run(self, run):  # noqa: ANN001 - Flower's own signature
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self):
        return self._grid.get_node_ids()

    def push_messages(self, messages):  # noqa: ANN001
        return self._grid.push_messages(self._record("to", messages))

    def pull_messages(self, message_ids):  # noqa: ANN001
        return self._record("from", self._grid.pull_messages(message_ids))

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001
        # The wrapped grid's send_and_receive calls its own push/pull, not ours: count here.
        return self._record("from", self._grid.send_and_receive(self._record("to", messages), timeout=timeout))
