"""The teacher channel over Flower: the query's two exchanges as messages to SuperNodes.

The querier's ServerApp builds a :class:`FlowerChannel` and runs the one query engine,
:func:`~qkt.query.querier.run_query`, over it. The announcement goes to every
SuperNode (the querier does not know which node plays which party until they answer);
the weights request only to the experts' nodes. Bytes are the messages' size on the
wire (:class:`~qkt.flower.wire.CountingGrid`); seconds are the ones each party reports
for its own computation. Parties compute on their own machines, so the channel is
``parallel``: the exchange's wall time is measured as it happens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from ..errors import QueryError
from ..query.channel import Scores, TeacherChannel, Weights
from ..query.messages import Announcement, Failure, Reply
from . import wire


def exchange(grid: Grid, contents: dict[int, RecordDict], kind: str, timeout: float) -> dict[int, RecordDict | str]:
    """Send one message per node and wait; each node maps to its reply's content or to why there is none."""
    messages = [Message(content, dst_node_id=node, message_type=kind) for node, content in contents.items()]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=timeout)}
    out: dict[int, RecordDict | str] = {}
    for node in contents:
        reply = replies.get(node)
        if reply is None:
            out[node] = f"did not answer within {timeout:g} s"
        elif reply.has_error():
            out[node] = f"failed: {wire.brief(reply.error.reason)}"
        else:
            out[node] = reply.content
    return out


def read_probe_replies(replies: dict[int, RecordDict | str], teachers: Sequence[str], nodes: Mapping[str, int] | None = None,
                       waited: float = math.inf) -> tuple[dict[str, tuple[np.ndarray | str, float]], dict[str, int], set[int], dict[str, str]]:
    """Each teacher's scores (or why it refused) and seconds in party order, its node, the querier's own nodes, and the other nodes with why they count for nothing.

    A reply that cannot be read, or that names a party which is no teacher of the run
    (an unknown party, or one that already answered), loses its node, not the query.
    ``nodes`` binds parties to the authenticated SuperNodes that play them (Flower's node
    ids): a reply naming a bound party from another node is an impostor's, and costs only
    the impostor its reply. A reply saying it took longer than the querier ``waited`` is
    unreadable too: its seconds would go into the query's reported time.
    """
    scores, node_of, own, strangers = {}, {}, set(), {}
    for node, reply in replies.items():
        if isinstance(reply, str):
            strangers[f"node {node}"] = reply
            continue
        try:
            party, party_scores, seconds = wire.read_scores(reply, waited)
        except QueryError as exc:
            strangers[f"node {node}"] = str(exc)
            continue
        if nodes and party in nodes and nodes[party] != node:
            strangers[f"node {node}"] = f"its reply names party '{wire.brief(party)}', which is node {nodes[party]}: an impostor"
            continue
        refusal = wire.read_refusal(reply)
        if refusal is not None and party in teachers and party not in scores:
            scores[party], node_of[party] = (f"refused: {refusal}", 0.0), node
        elif party_scores is None and refusal is None:  # the querier's own SuperNode, in a simulation: not a teacher
            own.add(node)
        elif party not in teachers or party in scores:
            strangers[f"node {node}"] = f"its reply names party '{wire.brief(party)}', which is no teacher of this run or has answered already"
        else:
            scores[party], node_of[party] = (party_scores, seconds), node
    # Replies arrive in any order; teachers are taken in party order, as in-process, so that the run is reproducible.
    return dict(sorted(scores.items(), key=lambda item: int(item[0]))), node_of, own, strangers


class FlowerChannel(TeacherChannel):
    """The querier's teachers as Flower SuperNodes reached through ``grid``.

    ``teachers`` are the party names of the run other than the querier; ``architecture``
    builds a blank model of a party's architecture; ``nodes`` binds parties to SuperNode ids
    (:func:`read_probe_replies`). After the announcement,
    ``strangers`` holds the nodes whose replies could not be tied to a teacher, with why.
    """

    parallel = True

    def __init__(self, grid: wire.CountingGrid, teachers: Sequence[str], timeout: float, architecture: Callable[[str], nn.Module],
                 nodes: Mapping[str, int] | None = None):
        self.grid, self._teachers, self.timeout, self._architecture = grid, tuple(teachers), timeout, architecture
        self.nodes = dict(nodes or {})
        self.node_of: dict[str, int] = {}
        self.strangers: dict[str, str] = {}
        self.query_id = ""

    @property
    def teachers(self) -> tuple[str, ...]:
        return self._teachers

    def _bytes(self, first: int) -> tuple[dict[int, int], dict[int, int]]:
        """Bytes sent to and received from each node since log entry ``first``."""
        sent: dict[int, int] = {}
        received: dict[int, int] = {}
        for entry in self.grid.log[first:]:
            book, node = (sent, entry["to"]) if "to" in entry else (received, entry["from"])
            book[node] = book.get(node, 0) + entry["bytes"]
        return sent, received

    def announce(self, announcement: Announcement, names: Sequence[str]) -> dict[str, Scores]:
        self.query_id = wire.query_id(announcement)
        first, nodes = len(self.grid.log), list(self.grid.get_node_ids())
        replies = exchange(self.grid, {n: wire.announce_content(announcement) for n in nodes}, wire.PROBE, self.timeout)
        scores, self.node_of, _, self.strangers = read_probe_replies(replies, [n for n in names if n in self._teachers], self.nodes,
                                                                     self.timeout)
        sent, received = self._bytes(first)
        # A teacher that gave no reply cannot be told from the other nodes; each got the same announcement.
        announce_bytes = max(sent.values(), default=0)
        out: dict[str, Scores] = {}
        for name in names:
            if name in scores and isinstance(scores[name][0], str):
                node = self.node_of[name]
                out[name] = Failure(scores[name][0], sent.get(node, 0), received.get(node, 0))
            elif name in scores:
                node = self.node_of[name]
                out[name] = Reply(scores[name][0], scores[name][1], sent.get(node, 0), received.get(node, 0))
            else:
                out[name] = Failure("gave no reply to the announcement", announce_bytes)
        return out

    def fetch_weights(self, names: Sequence[str], half: bool) -> dict[str, Weights]:
        first = len(self.grid.log)
        request = {self.node_of[k]: RecordDict({"request": ConfigRecord({"half": half, "query": self.query_id})}) for k in names}
        replies = exchange(self.grid, request, wire.WEIGHTS, self.timeout)
        sent, received = self._bytes(first)
        out: dict[str, Weights] = {}
        for name in names:
            node = self.node_of[name]
            reply = replies[node]
            if isinstance(reply, str):
                out[name] = Failure(reply, sent.get(node, 0), received.get(node, 0))
                continue
            try:
                arrays, seconds = wire.read_weights(reply, self.timeout)
            except QueryError as exc:
                out[name] = Failure(str(exc), sent.get(node, 0), received.get(node, 0))
                continue
            out[name] = Reply(arrays, seconds, sent.get(node, 0), received.get(node, 0))
        return out

    def architecture(self, name: str) -> nn.Module:
        return self._architecture(name)
