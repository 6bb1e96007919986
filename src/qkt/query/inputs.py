"""What a user hands a query, checked at the entry: config and models (local data: :mod:`qkt.inputs`).

Each check refuses what it cannot use with a one-line :class:`~qkt.errors.QKTError`
instead of failing deep inside the query with a raw exception. The query classes
are checked by :func:`qkt.query.probe.check_query`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import ValidationError
from torch import nn

from ..config import QueryConfig, format_validation_error
from ..errors import ConfigError, QueryError
from ..inputs import DatasetRows, as_inputs
from ..training import model_device


def as_config(config: QueryConfig | Mapping | None) -> QueryConfig:
    """A :class:`QueryConfig`, from itself, from a mapping of its fields (validated), or the defaults for None."""
    if config is None:
        return QueryConfig()
    if isinstance(config, QueryConfig):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a qkt.QueryConfig or a mapping of its fields, not {type(config).__name__}")
    try:
        return QueryConfig.model_validate(dict(config))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "query config").replace("\n  - ", "; ")) from None


def input_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point type ``model`` computes in (that of its first floating-point parameter; float32 if it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def check_public_inputs(public_inputs: object, local_x: torch.Tensor | DatasetRows, config: QueryConfig,
                        dtype: torch.dtype) -> torch.Tensor | None:
    """A public pool as finite inputs in ``dtype`` of the local inputs' shape, or None for no pool.

    ``query.public_pool`` above 0 without inputs is refused: the setting says how many
    inputs ``qkt run`` and ``qkt bench`` draw, and a query given none would silently run without.
    """
    if public_inputs is None:
        if config.public_pool:
            raise QueryError(f"query.public_pool = {config.public_pool} but no public inputs were given: pass them as "
                             "public_inputs=, or set query.public_pool to 0")
        return None
    x = as_inputs(public_inputs, dtype, "public inputs")
    if tuple(x.shape[1:]) != tuple(local_x.shape[1:]):
        raise QueryError(f"public inputs have shape {tuple(x.shape[1:])} per input, the local inputs {tuple(local_x.shape[1:])}: "
                         "a public pool must be inputs of the same kind, normalised alike")
    return x


def check_module(who: str, model: object) -> None:
    """Refuse a model that is not an ``nn.Module`` (a function, None), before anything calls it."""
    if not isinstance(model, nn.Module):
        raise QueryError(f"{who} is {type(model).__name__}, not a torch.nn.Module")


def output_size(who: str, model: nn.Module, x: torch.Tensor | DatasetRows, own: bool = True) -> int | None:
    """How many classes ``model`` scores, from its output on two of the inputs ``x``; ``who`` names it in the error.

    The output must be a 2-D tensor of logits. If the forward raises, the querier's
    ``own`` model is refused; another party's gives None: its failure costs its reply
    (the channel records why), not the query.
    """
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x[:2].to(model_device(model), input_dtype(model)))
    except Exception as exc:  # noqa: BLE001 - a user's model: say which one failed and how, not where inside it
        if not own:
            return None
        raise QueryError(f"{who} fails on local inputs of shape {tuple(x.shape[1:])}: {type(exc).__name__}: "
                         + (str(exc).splitlines() or [""])[0]) from None
    finally:
        model.train(was_training)
    return logits_size(who, out, len(x[:2]))


def logits_size(who: str, out: object, batch: int) -> int:
    """The class count of a model's output ``out`` on ``batch`` inputs, refused unless it is a (batch, classes) tensor."""
    if not isinstance(out, torch.Tensor):
        raise QueryError(f"{who} returns {type(out).__name__}, not a tensor of logits: its forward must return the logits alone")
    if out.ndim != 2 or out.shape[0] != batch:
        raise QueryError(f"{who} returns a tensor of shape {tuple(out.shape)} for {batch} inputs; logits must be (inputs, classes)")
    return int(out.shape[1])


def check_trainable(student: nn.Module, head: nn.Linear) -> None:
    """Refuse a student a query could not train: its classification head, which both phases train, is frozen."""
    if not any(p.requires_grad for p in head.parameters()):
        frozen = "every parameter of the student" if not any(p.requires_grad for p in student.parameters()) else "the student's head"
        raise QueryError(f"{frozen} has requires_grad=False, but a query trains the head: unfreeze at least the head")
