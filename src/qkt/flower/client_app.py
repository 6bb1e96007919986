"""Every party's ClientApp: the teacher side of SPEC §2, and a FedAvg/FedProx client.

A SuperNode plays the party of its node config (``partition-id``). It trains its
own model on its own share (once; checkpointed), answers the announcement with
its probe scores over ``Q`` (:func:`~qkt.query.teacher.answer_probe`), and sends
its weights (:func:`~qkt.query.teacher.export_weights`) only when the querier
asks for them; each reply says how long the party computed it. The same app trains the global model for Flower's FedAvg and
FedProx strategies.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from ..baselines.fedavg import round_epochs
from ..baselines.fedprox import proximal_loss
from ..errors import ConfigError
from ..query.messages import Announcement
from ..query.teacher import Refused, TeacherPolicy, answer_probe, export_weights
from ..training import cross_entropy_loss, set_threads, train_as_party
from . import faults, wire
from .party import Party, Settings, blank_model, load_party, partition_id, read_settings, trained_model

app = ClientApp()


def _party(context: Context) -> tuple[Party, Settings]:
    settings = read_settings(context.run_config)
    # One thread by default: several parties often share a machine, and oversubscribed cores slow torch tenfold.
    set_threads(int(context.node_config.get("threads", 1)))
    return load_party(settings.config, partition_id(context.node_config, settings.config)), settings


def policy(node_config: Mapping[str, object]) -> TeacherPolicy:
    """This party's own privacy policy, from its SuperNode's node config (``qkt-noise``, ``qkt-max-epsilon``,
    ``qkt-classes`` as "1,4,7", ``qkt-max-query-share``), never from the querier's run config."""
    try:
        classes = str(node_config.get("qkt-classes", "")).strip()
        return TeacherPolicy(noise=str(node_config.get("qkt-noise", "none")),
                             max_epsilon=float(node_config.get("qkt-max-epsilon", float("inf"))),
                             classes=tuple(int(c) for c in classes.split(",")) if classes else None,
                             max_query_share=float(node_config.get("qkt-max-query-share", 1.0)))
    except ValueError as exc:
        raise ConfigError(f"this SuperNode's privacy policy (node config qkt-*) is invalid: {exc}") from None


def remember_answer(state: RecordDict, announcement: Announcement, scores: Sequence[float]) -> None:
    """Keep, in the party's run state, which query it last answered and whether its own scores made it an expert."""
    state["qkt-answered"] = ConfigRecord({"query": wire.query_id(announcement), "expert": announcement.is_expert(scores)})


def weights_refusal(state: RecordDict, request: ConfigRecord) -> str | None:
    """Why this party will not send its weights for ``request``, or None: only for the query it answered last, as an expert."""
    answered = state["qkt-answered"] if "qkt-answered" in state else None
    if answered is None or answered["query"] != request.get("query"):
        return "it answered no announcement of this query"
    if not answered["expert"]:
        return "its scores did not make it an expert of the query"
    return None


@app.query("probe")
def probe(message: Message, context: Context) -> Message:
    """Reply to the announcement with ``s[k, Q]``, computed on this party's own model; the querier's own node abstains."""
    party, settings = _party(context)
    if party.is_querier:
        return Message(wire.scores_content(party.name, None), reply_to=message)
    model = trained_model(settings.config, party)
    start = time.perf_counter()
    announcement = wire.read_announcement(message.content)
    try:
        scores = answer_probe(model, announcement, party.holdout, policy=policy(context.node_config))
    except Refused as exc:
        return Message(wire.refusal_content(party.name, str(exc)), reply_to=message)
    remember_answer(context.state, announcement, scores)
    return Message(wire.scores_content(party.name, scores, time.perf_counter() - start), reply_to=message)


@app.query("weights")
def weights(message: Message, context: Context) -> Message:
    """Send this party's model to the querier, for a query this party answered as an expert; refuse otherwise."""
    refusal = weights_refusal(context.state, message.content["request"])
    if refusal is not None:
        return Message(wire.weights_refusal(refusal), reply_to=message)
    party, settings = _party(context)
    model = trained_model(settings.config, party)
    start = time.perf_counter()
    arrays = export_weights(model, half=bool(message.content["request"]["half"]))
    seconds = time.perf_counter() - start
    arrays = faults.strike(str(context.node_config.get("qkt-fault", "")), arrays)
    return Message(wire.weights_content(arrays, seconds), reply_to=message)


def train_round(settings: Settings, party: Party, global_state: Mapping[str, torch.Tensor], server_round: int,
                local_epochs: int, mu: float = 0.0) -> nn.Module:
    """Round ``server_round`` (from 1) of FedAvg (``mu = 0``) or FedProx on this party's share, from the global weights.

    The party trains ``local_epochs`` epochs, or what is left of ``training.epochs`` in the
    last round, exactly as in-process FedAvg does (:func:`~qkt.baselines.fedavg.round_epochs`).
    """
    t = settings.config.training
    # The global model has the querier's architecture, whatever this party's own model is.
    model = blank_model(settings.config, party, party.scenario.querier)
    model.load_state_dict(global_state)
    anchor = [p.detach().clone() for p in model.parameters()]
    train_as_party(model, (party.x, party.y), t, seed=t.seed * 1000 + party.index + server_round,
                   epochs=round_epochs(t.epochs, local_epochs, server_round - 1), loss_fn=proximal_loss(anchor, mu) if mu else cross_entropy_loss)
    return model


@app.train()
def train(message: Message, context: Context) -> Message:
    """One FedAvg/FedProx round on this party's own share; FedProx sends ``proximal-mu`` in the config."""
    party, settings = _party(context)
    config = message.content["config"]
    model = train_round(settings, party, message.content["arrays"].to_torch_state_dict(), int(config["server-round"]),
                        int(config["local-epochs"]), float(config.get("proximal-mu", 0.0)))
    reply = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(party.y)})})
    return Message(reply, reply_to=message)
