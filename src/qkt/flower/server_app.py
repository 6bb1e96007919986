"""The querier's ServerApp: one query of SPEC §2 over Flower messages, and the baselines through Flower's strategies.

The querier announces ``Q`` to every SuperNode, collects their probe scores,
picks the experts with :func:`~qkt.query.protocol.select_experts`, asks only
them for their weights, checks each with :func:`~qkt.query.protocol.import_weights`
and :func:`~qkt.query.protocol.vet_experts`, and learns with
:func:`~qkt.query.protocol.learn_and_report` (Phase 1 and Phase 2). A party that fails, does
not answer within ``reply-timeout`` or sends weights that do not fit is dropped and
named in the report; the query goes on with the others.
FedAvg and FedProx run through Flower's own strategies on the same parties.
Every message is counted on the wire (:class:`~qkt.flower.wire.CountingGrid`).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx
from torch import nn

from ..errors import QKTError, QueryError
from ..metrics import score
from ..partition import class_counts
from ..query import probe
from ..query.protocol import Announcement, Lesson, choose_experts, import_weights, learn_and_report, vet_experts
from ..report import write_outputs
from ..training import per_class_accuracy, set_threads
from . import wire
from .party import Party, Settings, blank_model, load_party, read_settings, trained_model

app = ServerApp()
log = logging.getLogger(__name__)


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
            out[node] = f"failed: {reply.error.reason}"
        else:
            out[node] = reply.content
    return out


def read_probe_replies(replies: dict[int, RecordDict | str], query_size: int, teachers: set[str]
                       ) -> tuple[dict[str, np.ndarray], dict[str, int], set[int], dict[str, str]]:
    """The teachers' scores in party order, each one's node, the querier's own nodes, and the nodes lost with why.

    A reply that is not one finite score per query class from a teacher of the run
    (an unknown party, or one that already answered) loses its node, not the query.
    """
    scores, node_of, own, lost = {}, {}, set(), {}
    for node, reply in replies.items():
        if isinstance(reply, str):
            lost[f"node {node}"] = reply
            continue
        try:
            party, party_scores = wire.read_scores(reply, query_size)
        except QueryError as exc:
            lost[f"node {node}"] = str(exc)
            continue
        if party_scores is None:  # the querier's own SuperNode, in a simulation: not a teacher
            own.add(node)
        elif party not in teachers or party in scores:
            lost[f"node {node}"] = f"its reply names party '{party}', which is no teacher of this run or has answered already"
        else:
            scores[party], node_of[party] = party_scores, node
    # Replies arrive in any order; experts are taken in party order, as in-process, so that the run is reproducible.
    return dict(sorted(scores.items(), key=lambda item: int(item[0]))), node_of, own, lost


def flower_query(grid: wire.CountingGrid, settings: Settings, querier: Party, student: nn.Module,
                 light: bool) -> tuple[nn.Module, dict]:
    """Run one query over ``grid`` and return the new model and the report (a :class:`QueryReport` dict plus ``lost``).

    As the in-process :func:`~qkt.query.protocol.query`: weights that do not fit, or whose
    claims the querier's own checks do not support, make their sender *distrusted*; a
    party that fails or stays silent past ``reply-timeout`` is *lost*.
    """
    config = settings.config.query.model_copy(update={"light": light})
    query, num_classes = querier.scenario.query, querier.dataset.num_classes
    first = len(grid.log)
    seconds: dict[str, float] = {}
    announcement = Announcement.from_config(query, num_classes, tuple(querier.x.shape[1:]), config)

    start = time.perf_counter()
    nodes = list(grid.get_node_ids())
    teachers = {str(k) for k in range(settings.config.partition.num_parties) if k != querier.index}
    replies = exchange(grid, {n: wire.announce_content(announcement) for n in nodes}, wire.PROBE, settings.reply_timeout)
    scores, node_of, own, lost = read_probe_replies(replies, len(query), teachers)
    if not scores:
        raise QueryError(f"no teacher answered the announcement ({len(nodes)} SuperNode(s) connected; lost: {lost or 'none'})")
    masks, notes = choose_experts(scores, query, num_classes, config)
    seconds["probe"] = time.perf_counter() - start

    start = time.perf_counter()
    request = {node_of[k]: RecordDict({"request": ConfigRecord({"half": light})}) for k in masks}
    replies = exchange(grid, request, wire.WEIGHTS, settings.reply_timeout)
    experts, distrusted = {}, {}
    for name in masks:
        reply = replies[node_of[name]]
        if isinstance(reply, str):
            lost[name] = reply
            continue
        try:
            experts[name] = import_weights(blank_model(settings.config, querier, int(name)), wire.read_weights(reply))
        except QueryError as exc:  # one broken teacher must not sink the query
            distrusted[name] = [str(exc)]
    masks = {k: m for k, m in masks.items() if k in experts}
    if config.trust.enabled and masks:
        masks, vetted = vet_experts(experts, scores, masks, announcement, querier.x, querier.y, config.lam, config.trust, config.seed)
        distrusted.update(vetted)
    experts = {k: experts[k] for k in masks}
    seconds["transfer"] = time.perf_counter() - start
    notes += [f"teacher {who} was lost: {why}" for who, why in lost.items()]
    notes += [f"teacher '{name}' distrusted: {'; '.join(reasons)}" for name, reasons in distrusted.items()]
    for note in notes:
        log.warning(note)
    if not masks:
        raise QueryError("no usable expert: " + "; ".join(f"teacher {k}: {v}" for k, v in {**lost, **distrusted}.items()))
    orphans = [c for c, names in probe.experts_by_class(masks, query).items() if not names]
    if orphans:
        notes.append(f"query class(es) {orphans} have no usable expert left; the querier's own outputs stand for them")

    party_of = {node: party for party, node in node_of.items()}
    # Talking to the querier's own simulated SuperNode costs nothing on a real network.
    messages = [{**{d: party_of.get(e[d], f"node {e[d]}") for d in ("to", "from") if d in e}, "kind": e["kind"], "bytes": e["bytes"]}
                for e in grid.log[first:] if e.get("to", e.get("from")) not in own]
    model, report = learn_and_report(student, Lesson(experts, masks, query, querier.x, querier.y), config, scores=scores,
                                     messages=messages, seconds=seconds, notes=notes, distrusted=distrusted, progress=False)
    return model, {**report.to_dict(), "lost": lost}


def federated(grid: wire.CountingGrid, settings: Settings, querier: Party, method: str) -> nn.Module:
    """FedAvg or FedProx with Flower's strategy over every SuperNode; the global model is the querier's result."""
    model = blank_model(settings.config, querier)
    nodes = len(list(grid.get_node_ids()))
    options = {"fraction_evaluate": 0.0, "min_train_nodes": nodes, "min_available_nodes": nodes}
    federated = settings.config.federated
    strategy = FedProx(proximal_mu=federated.prox_mu, **options) if method == "fedprox" else FedAvg(**options)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=settings.rounds,
                            timeout=settings.reply_timeout, train_config=ConfigRecord({"local-epochs": federated.local_epochs}))
    model.load_state_dict(result.arrays.to_torch_state_dict())
    return model.eval()


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> None:
    """Give SuperNodes that are still starting a chance to connect before the announcement goes out."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise QueryError(f"only {len(list(grid.get_node_ids()))} of the {count} expected SuperNodes connected within {timeout:g} s")
        time.sleep(0.5)


def run(grid: Grid, settings: Settings) -> dict:
    """Every configured method at the querier; the summary has the shape of :func:`qkt.experiment.run`'s, plus ``flower``."""
    grid = wire.CountingGrid(grid)
    wait_for_nodes(grid, settings.min_supernodes, settings.reply_timeout)
    querier = load_party(settings.config)
    s, dataset = querier.scenario, querier.dataset
    student = trained_model(settings.config, querier)
    test_counts = np.bincount(dataset.y_test, minlength=dataset.num_classes)

    def evaluate(model: nn.Module) -> np.ndarray:
        return per_class_accuracy(model, *querier.test, dataset.num_classes)

    local_before = score("local", evaluate(student), 0.0, test_counts, s.query, s.local_classes).local_accuracy
    results, reports = {}, {}
    for method in settings.methods:
        first, start = len(grid.log), time.perf_counter()
        if method == "local":
            model = student
        elif method in ("qkt", "qkt_light"):
            model, reports[method] = flower_query(grid, settings, querier, student, light=method == "qkt_light")
        else:
            model = federated(grid, settings, querier, method)
        messages = reports[method]["messages"] if method in reports else grid.log[first:]
        sent = sum(m["bytes"] for m in messages if "to" in m)
        received = sum(m["bytes"] for m in messages if "from" in m)
        details = {"messages": len(messages)}
        if method in reports:
            r = reports[method]
            details.update(experts=r["experts"], lost=r["lost"], distrusted=r["distrusted"], seconds_per_phase=r["seconds"])
        results[method] = score(method, evaluate(model), local_before, test_counts, s.query, s.local_classes,
                                seconds=time.perf_counter() - start, bytes_sent=sent, bytes_received=received, details=details)
    return {
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "scenario": {
            "querier": s.querier,
            "query": list(s.query),
            "local_classes": list(s.local_classes),
            "removed_query_samples": s.removed,
            "holdings": class_counts(dataset.y_train, list(s.parts), dataset.num_classes).tolist(),
        },
        "methods": {k: v.to_dict() for k, v in results.items()},
        "reports": reports,
        "config": settings.config.model_dump(),
        "flower": {"supernodes": len(list(grid.get_node_ids())), "skipped_methods": settings.skipped,
                   "rounds": settings.rounds, "reply_timeout": settings.reply_timeout},
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The querier's entry point under ``flwr run``: run, then write the outputs to ``output-dir``."""
    settings = read_settings(context.run_config)
    set_threads(settings.threads)
    try:
        summary = run(grid, settings)
    except QKTError as exc:
        # Written out so the caller (qkt flower, a test) can show the reason without digging in Flower's logs.
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        (settings.output_dir / "error.txt").write_text(f"{exc}\n")
        raise
    write_outputs(summary, settings.output_dir)
    log.warning("qkt: wrote %s", settings.output_dir / "results.json")
