"""The querier's ServerApp: one query of SPEC §2 over Flower messages, and the baselines through Flower's strategies.

The query is the one engine of every transport, :func:`~qkt.query.querier.run_query`,
over a :class:`~qkt.flower.channel.FlowerChannel`: the querier announces ``Q`` to every
SuperNode, chooses the experts from their scores, asks only them for their weights,
checks them and learns (Phase 1 and Phase 2). A party that fails, does not answer
within ``reply-timeout`` or sends weights that do not fit is dropped and named in the
report; the query goes on with the others.
FedAvg and FedProx run through Flower's own strategies on the same parties.
Every message is counted on the wire (:class:`~qkt.flower.wire.CountingGrid`).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import console_handler
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx
from torch import nn

from ..errors import QKTError, QueryError
from ..experiment import method_settings
from ..methods import METHODS
from ..metrics import score
from ..partition import class_counts
from ..query import run_query
from ..report import write_outputs
from ..training import per_class_accuracy, set_threads
from . import wire
from .channel import FlowerChannel
from .party import Party, Settings, blank_model, load_party, read_querier_file, read_settings, trained_model

app = ServerApp()
log = logging.getLogger(__name__)


def flower_query(grid: wire.CountingGrid, settings: Settings, querier: Party, student: nn.Module,
                 method: str) -> tuple[nn.Module, dict]:
    """Run QKT or QKT Light over ``grid`` and return the new model and the report (a :class:`QueryReport` dict).

    The query is :func:`~qkt.query.querier.run_query`, as in-process, over a
    :class:`~qkt.flower.channel.FlowerChannel`; nodes whose replies could not be tied
    to a teacher are added to the report's ``lost``.
    """
    config, variant = method_settings(settings.config.query, method)
    teachers = [str(k) for k in range(settings.config.partition.num_parties) if k != querier.index]
    channel = FlowerChannel(grid, teachers, settings.reply_timeout,
                            lambda name: blank_model(settings.config, querier, int(name)), settings.party_nodes)
    model, report = run_query(student, channel, querier.scenario.query, (querier.x, querier.y), config,
                              num_classes=querier.dataset.num_classes, variant=variant, progress=False)
    return model, {**report.to_dict(), "lost": {**report.lost, **channel.strangers}}


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
        elif METHODS[method].runner == "query":
            model, reports[method] = flower_query(grid, settings, querier, student, method)
        else:
            model = federated(grid, settings, querier, method)
        messages = reports[method]["messages"] if method in reports else grid.log[first:]
        sent = sum(m["bytes"] for m in messages if "to" in m)
        received = sum(m["bytes"] for m in messages if "from" in m)
        details, teacher_seconds = {"messages": len(messages)}, 0.0
        if method in reports:
            r = reports[method]
            details.update(experts=r["experts"], lost=r["lost"], distrusted=r["distrusted"], seconds_per_phase=r["seconds"])
            teacher_seconds = r["seconds"]["teachers"]
        results[method] = score(method, evaluate(model), local_before, test_counts, s.query, s.local_classes,
                                seconds=time.perf_counter() - start, teacher_seconds=teacher_seconds,
                                bytes_sent=sent, bytes_received=received, details=details)
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


def log_with_flower() -> None:
    """qkt's messages (logger ``qkt``, info and above) go where Flower's own go: its console handler, which the run's log streams."""
    qkt_log = logging.getLogger("qkt")
    qkt_log.setLevel(logging.INFO)
    if console_handler not in qkt_log.handlers:
        qkt_log.addHandler(console_handler)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The querier's entry point under ``flwr run``: run, then write the outputs to its file's ``output-dir``."""
    settings = read_settings(context.run_config, read_querier_file())
    set_threads(settings.threads)
    log_with_flower()
    try:
        summary = run(grid, settings)
    except Exception as exc:
        # Written out so the caller (qkt flower, a test) can show the reason without digging in Flower's logs;
        # an unforeseen error too, named by its type, rather than a run that wrote nothing.
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        reason = str(exc) if isinstance(exc, QKTError) else f"{type(exc).__name__}: {exc} (a bug in qkt: the traceback is in Flower's logs)"
        (settings.output_dir / "error.txt").write_text(f"{reason}\n")
        raise
    write_outputs(summary, settings.output_dir)
    log.info("wrote %s", settings.output_dir / "results.json")
