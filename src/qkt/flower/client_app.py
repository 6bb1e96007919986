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
from collections.abc import Callable, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import nn

from ..baselines.fedavg import round_epochs
from ..baselines.fedprox import proximal_loss
from ..errors import ConfigError, QueryError
from ..query.messages import Announcement
from ..query.teacher import NOTHING_ANSWERED, Answered, InvalidPolicy, TeacherPolicy, answer_probe, export_weights
from ..training import cross_entropy_loss, set_threads, train_as_party
from . import faults, wire
from .party import (
    MAX_THREADS,
    NODE_CONFIG,
    Party,
    Settings,
    blank_model,
    count_setting,
    load_party,
    partition_id,
    read_settings,
    real_number,
    trained_model,
    whole_number,
)

app = ClientApp()
TRAIN_REFUSAL = ("refused: this party's node config keeps it out of federated training "
                 "(it sets a qkt-* privacy option; qkt-federated=true lets it in)")


INVALID_POLICY = "this SuperNode's privacy policy (node config qkt-*) is invalid"


def _classes(value: object) -> tuple[int, ...] | None:
    text = str(value).strip()
    return tuple(whole_number(c) for c in text.split(",")) if text else None


# The policy fields a SuperNode sets, each from node config qkt-<field with dashes>, and how to read its value.
POLICY_OPTIONS: dict[str, Callable[[object], object]] = {
    "noise": str, "max_epsilon": real_number, "classes": _classes, "max_query_share": real_number, "min_expert_score": real_number,
    "max_answers": whole_number,
}


def option(field: str) -> str:
    """The node config key of the policy field ``field``."""
    return "qkt-" + field.replace("_", "-")


def policy(node_config: Mapping[str, object], num_classes: int | None = None) -> TeacherPolicy:
    """This party's own privacy policy, from its SuperNode's node config (``qkt-noise``, ``qkt-max-epsilon``,
    ``qkt-classes`` as "1,4,7", ``qkt-max-query-share``, ``qkt-min-expert-score``, ``qkt-max-answers``), never from
    the querier's run config; classes are checked against the label space of ``num_classes`` if given."""
    values = {}
    for field, read in POLICY_OPTIONS.items():
        if option(field) in node_config:
            try:
                values[field] = read(node_config[option(field)])
            except ValueError as exc:
                raise ConfigError(f"{INVALID_POLICY}: {option(field)} {exc}") from None
    try:
        own = TeacherPolicy(**values)
    except InvalidPolicy as exc:
        raise ConfigError(f"{INVALID_POLICY}: {exc.naming(option)}") from None
    if own.classes is not None and num_classes is not None and max(own.classes) >= num_classes:
        raise ConfigError(f"{INVALID_POLICY}: {option('classes')} names {max(own.classes)}, outside the label space 0..{num_classes - 1}")
    return own


def federated(node_config: Mapping[str, object]) -> bool:
    """Whether this party trains in FedAvg/FedProx rounds (node config ``qkt-federated``): each round hands the
    server a model trained on its whole share. By default yes, unless it sets any qkt-* privacy option."""
    if "qkt-federated" not in node_config:
        return not any(option(field) in node_config for field in POLICY_OPTIONS)
    value = node_config["qkt-federated"]
    if str(value).strip().lower() not in ("true", "false"):
        raise ConfigError(f"node config qkt-federated is '{value}'; choose true or false")
    return str(value).strip().lower() == "true"


def _party(context: Context) -> tuple[Party, Settings, TeacherPolicy]:
    settings = read_settings(context.run_config)
    threads = count_setting(context.node_config, "threads", 1, NODE_CONFIG, least=1, most=MAX_THREADS)
    # One thread by default: several parties often share a machine, and oversubscribed cores slow torch tenfold.
    set_threads(threads)
    party = load_party(settings.config, partition_id(context.node_config, settings.config))
    return party, settings, policy(context.node_config, party.dataset.num_classes)


def answered(state: RecordDict) -> Answered:
    """What the party has answered in this run, from its run state."""
    if "qkt-answered" not in state:
        return NOTHING_ANSWERED
    record = state["qkt-answered"]
    return Answered(int(record["answers"]), frozenset(record["classes"]))


def remember_answer(state: RecordDict, announcement: Announcement, expert: bool, before: Answered) -> None:
    """Keep, in the party's run state, which query it last answered, whether its own scores made it an expert, and
    what it has answered in this run (``before``, and now this announcement)."""
    now = before.plus(announcement)
    state["qkt-answered"] = ConfigRecord({"query": wire.query_id(announcement), "expert": expert, "answers": now.count,
                                          "classes": sorted(now.classes)})


def weights_refusal(state: RecordDict, request: ConfigRecord) -> str | None:
    """Why this party will not send its weights for ``request``, or None: only for the query it answered last, as an expert."""
    last = state["qkt-answered"] if "qkt-answered" in state else None
    if last is None or last["query"] != request.get("query"):
        return "it answered no announcement of this query"
    if not last["expert"]:
        return "its scores did not make it an expert of the query"
    return None


@app.query("probe")
def probe(message: Message, context: Context) -> Message:
    """Reply to the announcement with ``s[k, Q]``, computed on this party's own model; the querier's own node abstains."""
    party, settings, own = _party(context)
    if party.is_querier:
        return Message(wire.scores_content(party.name, None), reply_to=message)
    model = trained_model(settings.config, party)
    start = time.perf_counter()
    before = answered(context.state)
    try:
        announcement = wire.read_announcement(message.content)
        scores = answer_probe(model, announcement, party.holdout, policy=own, answered=before)
    except QueryError as exc:  # a malformed announcement, or one this party's policy or data cannot answer: refused
        return Message(wire.refusal_content(party.name, str(exc)), reply_to=message)
    remember_answer(context.state, announcement, own.is_expert(announcement, scores), before)
    return Message(wire.scores_content(party.name, scores, time.perf_counter() - start), reply_to=message)


@app.query("weights")
def weights(message: Message, context: Context) -> Message:
    """Send this party's model to the querier, for a query this party answered as an expert; refuse otherwise."""
    refusal = weights_refusal(context.state, message.content["request"])
    if refusal is not None:
        return Message(wire.weights_refusal(refusal), reply_to=message)
    party, settings, _ = _party(context)
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
    """One FedAvg/FedProx round on this party's own share, if its node config lets it (:func:`federated`);
    FedProx sends ``proximal-mu`` in the config."""
    party, settings, _ = _party(context)
    if not federated(context.node_config):
        # An error reply is one Flower's strategies leave out of the round's average, as a node that failed.
        return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, TRAIN_REFUSAL), reply_to=message)
    config = message.content["config"]
    model = train_round(settings, party, message.content["arrays"].to_torch_state_dict(), int(config["server-round"]),
                        int(config["local-epochs"]), float(config.get("proximal-mu", 0.0)))
    reply = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(party.y)})})
    return Message(reply, reply_to=message)
