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

from ..config import QueryConfig, config_error
from ..errors import ConfigError, QueryError
from ..inputs import DatasetRows, as_inputs
from ..training import AMP_DTYPES, model_device
from . import probe

# The first inputs of each, enough to tell a pool on another scale from the local inputs'.
SCALE_SAMPLE = 1024
# A pool whose spread or mean is this many of the local inputs' standard deviations away is on another scale.
SCALE_RATIO = 4.0


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
        raise config_error(err, "query config", QueryConfig) from None


def input_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point type ``model`` computes in (that of its first floating-point parameter; float32 if it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def check_public_inputs(public_inputs: object, local_x: torch.Tensor | DatasetRows, config: QueryConfig,
                        dtype: torch.dtype) -> tuple[torch.Tensor | None, list[str]]:
    """A public pool as finite inputs in ``dtype`` of the local inputs' shape (None for no pool), and warnings about it.

    ``query.public_pool`` above 0 without inputs is refused: the setting says how many
    inputs ``qkt run`` and ``qkt bench`` draw, and a query given none would silently run
    without. Every input given is used. A pool far from the local inputs' scale gets a
    warning: the experts' targets on it would teach the student about inputs it never sees.
    """
    if public_inputs is None:
        if config.public_pool:
            raise QueryError(f"query.public_pool = {config.public_pool} but no public inputs were given: pass them as "
                             "public_inputs=, or set query.public_pool to 0")
        return None, []
    x = as_inputs(public_inputs, dtype, "public inputs")
    if tuple(x.shape[1:]) != tuple(local_x.shape[1:]):
        raise QueryError(f"public inputs have shape {tuple(x.shape[1:])} per input, the local inputs {tuple(local_x.shape[1:])}: "
                         "a public pool must be inputs of the same kind, normalised alike")
    if not len(x):
        raise QueryError("public inputs are empty: pass None for no pool")
    notes = []
    if config.public_pool and config.public_pool != len(x):
        notes.append(f"query.public_pool = {config.public_pool} but {len(x)} public inputs were given: all {len(x)} are used "
                     "(the setting is how many qkt run draws)")
    # on the CPU: MPS has no float64
    local = local_x[:SCALE_SAMPLE].to("cpu", torch.float64)
    pool = x[:SCALE_SAMPLE].to("cpu", torch.float64)
    spread = float(local.std()) or 1.0
    ratio = float(pool.std()) / spread
    if not (1 / SCALE_RATIO <= ratio <= SCALE_RATIO and abs(float(pool.mean() - local.mean())) <= SCALE_RATIO * spread):
        notes.append(f"public inputs have mean {float(pool.mean()):.3g} and standard deviation {float(pool.std()):.3g}, the local "
                     f"inputs {float(local.mean()):.3g} and {spread:.3g}: normalise the pool as the local inputs are")
    return x, notes


def check_module(who: str, model: object) -> None:
    """Refuse a model that is not an ``nn.Module`` (a function, None), before anything calls it."""
    if not isinstance(model, nn.Module):
        raise QueryError(f"{who} is {type(model).__name__}, not a torch.nn.Module")


def check_dtype(who: str, model: nn.Module) -> None:
    """Refuse a model of another floating-point type than float32 or float64, or of several."""
    # Probes and inversions optimise inputs in the model's dtype: in float16 or bfloat16 they overflow to NaN
    # (and NumPy, which carries the weights, has no bfloat16). Mixed precision is what amp= is for.
    kinds = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()})
    if len(kinds) > 1 or not set(kinds) <= {"float32", "float64"}:
        raise QueryError(f"{who} has parameters of {', '.join(kinds)}; a query needs float32 or float64 models, one dtype "
                         "each: pass model.float() (and amp='bf16' or 'fp16' for mixed-precision training)")


def check_student(student: object) -> None:
    """Refuse a student a query cannot copy and train: not a module, without values (the meta device), or of a float type it cannot use."""
    check_module("the student", student)
    if any(p.is_meta for p in student.parameters()):
        raise QueryError("the student is on the meta device, its parameters hold no values: load its weights first")
    check_dtype("the student", student)


def check_num_classes(num_classes: object) -> None:
    """Refuse a label space that is not an integer count of at least 2 (None: the student's output size)."""
    if num_classes is not None and not (probe.is_index(num_classes) and num_classes >= 2):
        raise QueryError(f"num_classes must be an integer of at least 2, not {num_classes!r}")


def check_amp(amp: object) -> None:
    """Refuse a mixed-precision setting other than None, ``"bf16"`` or ``"fp16"`` before any work."""
    if amp is not None and amp not in tuple(AMP_DTYPES):
        raise QueryError(f"amp must be one of {', '.join(map(repr, AMP_DTYPES))} or None, not {amp!r}")


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
