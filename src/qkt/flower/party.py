"""One party of a Flower federation: the run's settings, and the party's own data and model.

Every process of the app (the querier's ServerApp, each SuperNode's ClientApp)
receives the same Flower run config, so it carries only the world every party shares
(data, partition, scenario, training, federated). The querier's own settings (the
query, the methods, its output folder) stay on its machine, in the file named by
``QKT_QUERIER_CONFIG`` that only the ServerApp reads. A party derives the benchmark's partition from the
shared data set and keeps only its own share (``partition-id`` in its node
config), exactly as :func:`qkt.experiment.build_world` does in one process, so
a query over Flower and the in-process run of the same seed see the same data
and the same models.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from ..baselines.fedavg import num_rounds
from ..config import RunConfig, parse_config
from ..data import DataSet
from ..data.base import cache_dir
from ..errors import ConfigError
from ..experiment import load_scenario, party_arch, public_pool_size, training_shares
from ..methods import METHODS
from ..models import build_model
from ..partition import Scenario
from ..training import checkpoint_key, load_checkpoint, save_checkpoint, train_as_party

QUERIER_ENV = "QKT_QUERIER_CONFIG"
SHARED_SECTIONS = ("data", "partition", "scenario", "training", "federated")
QUERIER_KEYS = ("query", "methods", "output-dir")
# Far above any machine's cores; torch would try to start as many threads as asked.
MAX_THREADS = 1024
NODE_CONFIG = "this SuperNode's node config"


@dataclass(frozen=True)
class Settings:
    """The run config of the Flower app (``[tool.flwr.app.config]``), validated.

    Attributes
    ----------
    config:
        The qkt experiment: the shared world of ``qkt-config`` with, at the querier, its own
        ``query`` and ``methods``. Of the methods, the app runs those :mod:`qkt.methods` marks
        ``flower``; FedAvg and FedProx take ``federated.local_epochs`` and ``federated.prox_mu``.
    output_dir:
        Where the querier writes ``results.json``, ``results.md`` and the chart (its file's ``output-dir``).
    reply_timeout:
        Seconds the querier waits for the replies of one exchange; a party that
        has not answered by then is reported as lost.
    min_supernodes:
        SuperNodes to wait for (up to ``reply_timeout``) before announcing the query.
    threads:
        Torch threads of the querier's process (a party sets its own with node config ``threads``).
    party_nodes:
        ``party-nodes`` ("1=8214,2=553"): the SuperNode id that plays each party, as the SuperLink
        authenticated it; a reply naming a party from another node is refused as an impostor's.
    """

    config: RunConfig
    output_dir: Path
    reply_timeout: float
    min_supernodes: int = 0
    threads: int = 1
    party_nodes: Mapping[str, int] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return [m for m in self.config.methods if METHODS[m].flower]

    @property
    def skipped(self) -> list[str]:
        """Configured methods that need every teacher's model in one place, which a federation does not offer."""
        return [m for m in self.config.methods if not METHODS[m].flower]

    @property
    def rounds(self) -> int:
        """FedAvg/FedProx rounds, so that the total local-epoch budget equals ``training.epochs``."""
        return num_rounds(self.config.training.epochs, self.config.federated.local_epochs)


def read_settings(run_config: Mapping[str, object], querier: Mapping[str, object] | None = None) -> Settings:
    """Validate a Flower run config and, at the querier, its own settings; raise :class:`~qkt.errors.ConfigError` naming the bad key.

    ``querier`` holds ``query``, ``methods`` and ``output-dir`` (:func:`read_querier_file`);
    a party reads the run config alone and gets the defaults, which it never uses.
    """
    text = str(run_config.get("qkt-config", ""))
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"run config 'qkt-config' is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"run config 'qkt-config' must be a mapping of config sections, not {type(raw).__name__}")
    private = sorted(set(raw) - set(SHARED_SECTIONS))
    if private:  # every party receives the run config: the querier's trust thresholds would tell a liar what to pass
        raise ConfigError(f"run config 'qkt-config' holds {', '.join(private)}, which every party would receive; it takes only "
                          f"{', '.join(SHARED_SECTIONS)}: the query and methods go in the querier's own file (${QUERIER_ENV})")
    querier = dict(querier or {})
    config = parse_config({**raw, **{k: querier[k] for k in ("query", "methods") if k in querier}}, "run config 'qkt-config'")
    if public_pool_size(config):
        pooled = [m for m in config.methods if METHODS[m].settings.get("public_pool")] or ["query.public_pool"]
        raise ConfigError(f"the Flower app cannot pass a public pool to the query: {', '.join(pooled)} draw(s) one; set "
                          "query.public_pool to 0 and leave out the public-pool methods, or run them with qkt run or qkt bench")
    timeout = run_config.get("reply-timeout", 600.0)
    try:
        seconds = real_number(timeout)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:  # an infinite or NaN timeout would wait for a lost party for ever
        raise ConfigError(f"run config 'reply-timeout' must be positive seconds, not {timeout!r}")
    parties = config.partition.num_parties
    min_supernodes = count_setting(run_config, "min-supernodes", 0)
    if not 0 <= min_supernodes <= parties:  # more would wait out the whole reply-timeout before failing
        raise ConfigError(f"run config 'min-supernodes' is {min_supernodes}: the run has {parties} parties, "
                          f"{parties - 1} besides the querier")
    threads = count_setting(run_config, "threads", 1, least=1, most=MAX_THREADS)
    return Settings(config, Path(str(querier.get("output-dir", "qkt-output/flower"))).expanduser(), seconds,
                    min_supernodes, threads, _party_nodes(str(run_config.get("party-nodes", "")), parties))


def whole_number(value: object) -> int:
    """A count or an index as written, TOML's 2 or "2" from a command line; ``ValueError`` for 2.9, "all" or true,
    which ``int()`` would truncate or take for 1."""
    if isinstance(value, bool) or not re.fullmatch(r"\s*[+-]?\d+\s*", str(value)):
        raise ValueError(f"must be a whole number, not {value!r}")
    return int(value)


def real_number(value: object) -> float:
    """A number as written (2.5 or "2.5"); ``ValueError`` for true, which ``float()`` would take for 1.0, or text."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, not {value!r}") from None


def count_setting(settings: Mapping[str, object], key: str, default: int, where: str = "run config",
                  least: int = 0, most: int | None = None) -> int:
    """The whole number ``settings[key]`` (``default`` if absent) within ``least..most``, or a :class:`ConfigError` naming ``where`` and the key."""
    try:
        value = whole_number(settings.get(key, default))
    except ValueError as exc:
        raise ConfigError(f"{where} '{key}' {exc}") from None
    if value < least or (most is not None and value > most):
        bounds = f"at least {least}" if most is None else f"{least}..{most}"
        raise ConfigError(f"{where} '{key}' must be {bounds}, not {value}")
    return value


def _party_nodes(text: str, parties: int) -> dict[str, int]:
    """``party-nodes`` ("1=8214,2=553") as party name → node id: each party once, in the run, on a node of its own."""
    bound: dict[str, int] = {}
    try:
        for pair in filter(str.strip, text.split(",")):
            party, node = (int(part) for part in pair.split("="))
            if str(party) in bound:
                raise ConfigError(f"run config 'party-nodes' binds party {party} twice")
            if not 0 <= party < parties:
                raise ConfigError(f"run config 'party-nodes' binds party {party}; the run has parties 0..{parties - 1}")
            bound[str(party)] = node
    except ValueError:
        raise ConfigError(f"run config 'party-nodes' must read like \"1=8214,2=553\" (party=node id), not {text!r}") from None
    shared = sorted(node for node, parties_of_node in Counter(bound.values()).items() if parties_of_node > 1)
    if shared:  # one node cannot play two parties: it would answer for both
        raise ConfigError(f"run config 'party-nodes' binds node(s) {shared} to more than one party")
    return bound


def read_querier_file(path: str | os.PathLike | None = None) -> dict[str, object]:
    """The querier's own settings (``query``, ``methods``, ``output-dir``) from ``path``, else from ``$QKT_QUERIER_CONFIG``; {} if neither is set."""
    path = path if path is not None else os.environ.get(QUERIER_ENV)
    if not path:
        return {}
    try:
        settings = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"the querier's settings file {path} (${QUERIER_ENV}) cannot be read: {exc}") from None
    if not isinstance(settings, dict) or set(settings) - set(QUERIER_KEYS):
        unknown = sorted(set(settings) - set(QUERIER_KEYS)) if isinstance(settings, dict) else settings
        raise ConfigError(f"the querier's settings file {path} takes {', '.join(QUERIER_KEYS)}, not {unknown}")
    return settings


def partition_id(node_config: Mapping[str, object], config: RunConfig) -> int:
    """The party a SuperNode plays, checked against the partition of the run."""
    if "partition-id" not in node_config:
        raise ConfigError("this SuperNode has no 'partition-id': start it with --node-config 'partition-id=K num-partitions=N'")
    index = count_setting(node_config, "partition-id", 0, NODE_CONFIG)
    total = count_setting(node_config, "num-partitions", config.partition.num_parties, NODE_CONFIG)
    if total != config.partition.num_parties or not 0 <= index < total:
        raise ConfigError(f"SuperNode says partition-id={index} num-partitions={total}, but the run has "
                          f"partition.num_parties={config.partition.num_parties}")
    return index


@dataclass
class Party:
    """One party's share of the world: its own data, the part of it it trains on, and the test set.

    ``x, y`` are the whole share (the querier's data for its query; a FedAvg client's
    data); its own model trains on ``training``, the share less the samples it keeps out
    (``partition.holdout``), which are ``holdout`` and which the 'self' probe scores it on.
    """

    index: int
    dataset: DataSet
    scenario: Scenario
    x: torch.Tensor
    y: torch.Tensor
    test: tuple[torch.Tensor, torch.Tensor]
    training: tuple[torch.Tensor, torch.Tensor]
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def name(self) -> str:
        return str(self.index)

    @property
    def is_querier(self) -> bool:
        return self.index == self.scenario.querier


@functools.lru_cache(maxsize=1)
def _world(data_and_partition: str) -> tuple[DataSet, Scenario, tuple[torch.Tensor, ...]]:
    # A simulated SuperNode's worker serves many parties and rounds of the same run: partition the data once.
    dataset, scenario = load_scenario(parse_config(json.loads(data_and_partition)))
    return dataset, scenario, dataset.normalized()


def load_party(config: RunConfig, index: int | None = None) -> Party:
    """Party ``index`` (default: the querier of the run's scenario), holding only its own share, split as in-process training splits it."""
    key = json.dumps({k: getattr(config, k).model_dump() for k in ("data", "partition", "scenario")}, sort_keys=True)
    dataset, scenario, (x_train, y_train, x_test, y_test) = _world(key)
    index = scenario.querier if index is None else index
    shares, held = (idx[index] for idx in training_shares(config, dataset, scenario))
    own, trains, keeps_out = (torch.as_tensor(idx) for idx in (scenario.parts[index], shares, held))
    holdout = (x_train[keeps_out], y_train[keeps_out]) if len(keeps_out) else None
    return Party(index, dataset, scenario, x_train[own], y_train[own], (x_test, y_test), (x_train[trains], y_train[trains]), holdout)


def blank_model(config: RunConfig, party: Party, index: int | None = None) -> nn.Module:
    """An untrained model of party ``index``'s architecture (default: ``party`` itself), seeded as in-process training seeds it."""
    index = party.index if index is None else index
    torch.manual_seed(config.training.seed * 1000 + index)
    return build_model(party_arch(config, index, party.scenario.querier), party.dataset.input_shape, party.dataset.num_classes)


def trained_model(config: RunConfig, party: Party) -> nn.Module:
    """The party's own model, trained on its own share with the seed of the in-process run; checkpointed between messages."""
    t = config.training
    model = blank_model(config, party)
    key = checkpoint_key(party.dataset.name, party.dataset.digest, config.partition.model_dump(), config.scenario.model_dump(),
                         t.model_dump(), party.index)
    path = cache_dir() / "flower-parties" / f"party{party.index}-{key}.pt"
    if not load_checkpoint(model, path):
        train_as_party(model, party.training, t, seed=t.seed * 1000 + party.index)
        save_checkpoint(model, path)
    return model.eval()
