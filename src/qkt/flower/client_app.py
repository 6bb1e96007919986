"""Every party's ClientApp: the teacher side of SPEC §2, and a FedAvg/FedProx client.

A SuperNode plays the party of its node config (``partition-id``). It trains its
own model on its own share (once; checkpointed), answers the announcement with
its probe scores over ``Q`` (:func:`~qkt.query.protocol.answer_probe`), and sends
its weights (:func:`~qkt.query.protocol.export_weights`) only when the querier
asks for them. The same app trains the global model for Flower's FedAvg and
FedProx strategies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from ..baselines.fedavg import round_epochs
from ..query.protocol import answer_probe, export_weights
from ..training import cross_entropy_loss, fit, set_threads
from . import faults, wire
from .party import Party, Settings, blank_model, load_party, partition_id, read_settings, trained_model

app = ClientApp()


def _party(context: Context) -> tuple[Party, Settings]:
    settings = read_settings(context.run_config)
    # One thread by default: several parties often share a machine, and oversubscribed cores slow torch tenfold.
    set_threads(int(context.node_config.get("threads", 1)))
    return load_party(settings.config, partition_id(context.node_config, settings.config)), settings


@app.query("probe")
def probe(message: Message, context: Context) -> Message:
    """Reply to the announcement with ``s[k, Q]``, computed on this party's own model; the querier's own node abstains."""
    party, settings = _party(context)
    if party.is_querier:
        return Message(wire.scores_content(party.name, None), reply_to=message)
    scores = answer_probe(trained_model(settings.config, party), wire.read_announcement(message.content))
    return Message(wire.scores_content(party.name, scores), reply_to=message)


@app.query("weights")
def weights(message: Message, context: Context) -> Message:
    """Send this party's model to the querier, which asked because the probe made it an expert."""
    party, settings = _party(context)
    arrays = export_weights(trained_model(settings.config, party), half=bool(message.content["request"]["half"]))
    arrays = faults.strike(str(context.node_config.get("qkt-fault", "")), arrays)
    return Message(wire.weights_content(arrays), reply_to=message)


def proximal_loss(anchor: Sequence[torch.Tensor], mu: float):
    """FedProx's local objective: cross-entropy + μ/2 · ‖w − w_global‖², ``anchor`` being the received global weights."""

    def loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        drift = sum(((w - w0) ** 2).sum() for w, w0 in zip(model.parameters(), anchor))
        return cross_entropy_loss(model, batch) + mu / 2 * drift

    return loss


@app.train()
def train(message: Message, context: Context) -> Message:
    """One FedAvg/FedProx round on this party's own share; FedProx sends ``proximal-mu`` in the config."""
    party, settings = _party(context)
    t = settings.config.training
    config = message.content["config"]
    # The global model has the querier's architecture, whatever this party's own model is.
    model = blank_model(settings.config, party, party.scenario.querier)
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    mu = float(config.get("proximal-mu", 0.0))
    anchor = [p.detach().clone() for p in model.parameters()]
    epochs = round_epochs(t.epochs, int(config["local-epochs"]), int(config["server-round"]) - 1)
    fit(model, (party.x, party.y), epochs, t.lr, t.batch_size, t.weight_decay,
        seed=t.seed * 1000 + party.index + int(config["server-round"]), augment=t.augment, progress=False,
        loss_fn=proximal_loss(anchor, mu) if mu else cross_entropy_loss)
    reply = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(party.y)})})
    return Message(reply, reply_to=message)
