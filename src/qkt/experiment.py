"""A whole experiment from a validated config: data, partition, local training, one query, every method.

This is what ``qkt demo`` and ``qkt run`` call; the benchmark repeats it over
queriers and seeds.
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from tqdm.auto import tqdm

from . import diagnostics, partition
from .baselines import fine_tune, train_global
from .baselines.fedavg import FederatedResult
from .baselines.kd import distill_all
from .config import QueryConfig, RunConfig, TrainingConfig, format_validation_error
from .data import DataSet, load_dataset
from .errors import ConfigError, DataError, QKTError, QueryError, QueryFailed
from .files import check_output
from .methods import METHODS
from .metrics import MethodResult, group_accuracy, score
from .models import build_model, num_bytes
from .query import InProcessChannel, QueryReport, TeacherChannel, Variant, run_query
from .query.probe import check_query, expert_masks, experts_by_class
from .query.teacher import UNLIMITED, Teacher
from .training import (
    checkpoint_key,
    load_checkpoint,
    per_class_accuracy,
    predict_logits,
    resolve_device,
    save_checkpoint,
    train_as_party,
)

log = logging.getLogger(__name__)

def method_settings(query_config: QueryConfig, method: str) -> tuple[QueryConfig, Variant]:
    """The query settings and engine switches of QKT, QKT Light or an ablation (:mod:`qkt.methods`), validated together."""
    spec = METHODS[method]
    try:
        settings = QueryConfig.model_validate({**query_config.model_dump(), **spec.settings})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"query settings of method {method}", QueryConfig)) from None
    variant = Variant(**spec.variant)
    variant.check(settings)
    return settings, variant


@dataclass
class World:
    """Everything a method needs: the data as tensors, who holds what, and every party's trained model."""

    dataset: DataSet
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    scenario: partition.Scenario
    models: list[nn.Module]
    # Each party's samples kept out of its training (partition.holdout), which the 'self' probe scores it on.
    holdouts: list[np.ndarray] = field(default_factory=list)
    # Federated rows' global models, by Method.global_model (rows may share one); a benchmark shares them across its queriers.
    global_models: dict[str, FederatedResult] = field(default_factory=dict)
    # Test-set outputs of models that no query changes (parties, global models), computed once and shared.
    test_probs: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    # The querier's public pool (data.public_pool), standardised as x_train: a seeded draw, each method taking its first query.public_pool.
    public_pool: torch.Tensor | None = None

    @property
    def querier_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(self.scenario.parts[self.scenario.querier])
        return self.x_train[idx], self.y_train[idx]

    @property
    def teachers(self) -> dict[str, nn.Module]:
        return {str(k): m for k, m in enumerate(self.models) if k != self.scenario.querier}

    def held_out(self, party: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The samples party ``party`` kept out of its training, or None when it kept none."""
        if not self.holdouts or not len(self.holdouts[party]):
            return None
        idx = torch.as_tensor(self.holdouts[party])
        return self.x_train[idx], self.y_train[idx]


def make_partition(config: RunConfig, labels: np.ndarray) -> list[np.ndarray]:
    p = config.partition
    if p.kind == "dirichlet":
        return partition.dirichlet(labels, p.num_parties, p.alpha, p.seed)
    return partition.k_classes(labels, p.num_parties, p.classes_per_party, p.seed)


def make_scenario(config: RunConfig, dataset: DataSet) -> partition.Scenario:
    """The configured query, or one drawn for the eligible party holding the most samples."""
    s = config.scenario
    parts = make_partition(config, dataset.y_train)
    querier = s.querier
    query_classes = None if s.query is None else check_query(s.query, dataset.num_classes)
    if querier is None:
        eligible = partition.eligible_queriers(dataset.y_train, parts, dataset.num_classes, s.query_size,
                                               s.max_query_samples, s.min_expert_samples, query_classes)
        if not eligible:
            if query_classes:
                raise QKTError(f"no party lacks class(es) {list(query_classes)} (holds fewer than {s.max_query_samples} samples) "
                               f"while another holds {s.min_expert_samples}+ samples of each; query other classes, or change "
                               "scenario.max_query_samples or scenario.min_expert_samples")
            raise QKTError(f"no party lacks {s.query_size} class(es) that another party could teach; "
                           "try a smaller scenario.query_size or a more skewed partition (smaller alpha)")
        querier = max(eligible, key=lambda k: len(parts[k]))
    return partition.make_scenario(dataset.y_train, parts, querier, s.query_size, config.partition.seed, dataset.num_classes,
                                   s.max_query_samples, s.min_expert_samples, query_classes)


def party_arch(config: RunConfig, party: int, querier: int) -> str:
    archs = config.training.teacher_archs
    return config.training.arch if party == querier or not archs else archs[party % len(archs)]


def federated_not_applicable(config: RunConfig, num_parties: int, querier: int | None = None) -> str | None:
    """Why one global model (FedAvg, FedProx, FedGen) cannot stand for the parties, or None if they share one architecture.

    ``querier`` None: whichever party queries (it keeps ``training.arch``, the teachers cycle through ``training.teacher_archs``).
    """
    queriers = range(num_parties) if querier is None else [querier]
    archs = sorted({party_arch(config, k, q) for q in queriers for k in range(num_parties)})
    if len(archs) < 2:
        return None
    return f"one global model needs one architecture; the parties use {', '.join(archs)}"


def public_pool_size(config: RunConfig) -> int:
    """The most public-pool inputs a configured method draws (``query.public_pool``, or a method's own); 0: none needs the pool."""
    return max((method_settings(config.query, m)[0].public_pool for m in config.methods if METHODS[m].runner == "query"),
               default=0)


def load_public_pool(config: RunConfig, dataset: DataSet) -> torch.Tensor | None:
    """The public pool the configured methods need: a seeded draw of ``data.public_pool``'s training inputs, standardised as ``dataset``'s.

    None when no method draws from it or ``data.public_pool`` names no data set. Raises
    :class:`~qkt.errors.ConfigError` when the pool cannot be read, holds fewer inputs than
    asked for, or its inputs differ in shape from ``dataset``'s: callers load it before
    training the parties, so that such a mistake costs no training.
    """
    size = public_pool_size(config)
    if not size or config.data.public_pool is None:
        return None
    try:
        pool = load_dataset(config.data.public_pool, config.data.root)
    except DataError as exc:
        raise ConfigError(f"data.public_pool {config.data.public_pool}: {exc}") from None
    if pool.input_shape != dataset.input_shape:
        raise ConfigError(f"data.public_pool {pool.name} has inputs of shape {pool.input_shape}, data.name {dataset.name} "
                          f"{dataset.input_shape}: the pool must be inputs the models take")
    if size > len(pool.x_train):
        raise ConfigError(f"query.public_pool = {size} but data.public_pool {pool.name} has {len(pool.x_train)} training inputs: "
                          "draw at most that many")
    drawn = np.random.default_rng(config.query.seed).permutation(len(pool.x_train))[:size]
    return dataset.standardize(pool.x_train[np.sort(drawn)])


def training_settings(training: TrainingConfig, device: torch.device) -> dict:
    """What names a party's checkpoint: the training settings, with the device and mixed precision only where they are not the CPU's defaults.

    They change the weights, so a model trained on a GPU or in bfloat16 gets its own
    checkpoint; a CPU run keeps the names it had before these settings existed.
    """
    settings = training.model_dump(exclude={"device", "amp"})
    if device.type != "cpu" or training.amp is not None:
        settings |= {"device": device.type, "amp": training.amp}
    return settings


def training_shares(config: RunConfig, dataset: DataSet, scenario: partition.Scenario) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each party's samples it trains on, and those it keeps out (``partition.holdout`` of each class) for the 'self' probe."""
    return partition.hold_out(dataset.y_train, scenario.parts, config.partition.holdout, config.partition.seed)


def train_parties(config: RunConfig, world_data: tuple, scenario: partition.Scenario, dataset: DataSet, shares: Sequence[np.ndarray],
                  checkpoints: Path | None, progress: bool, resume: bool = True) -> list[nn.Module]:
    """Train every party's model on its training share (``shares``, from :func:`training_shares`) and checkpoint it;
    with ``resume``, reuse a checkpoint of the same party."""
    x_train, y_train = world_data
    t = config.training
    device = resolve_device(t.device)
    models = []
    log.info("training the %d parties' models (%s, %d epochs), or reusing their checkpoints", len(scenario.parts), t.arch, t.epochs)
    bar = tqdm(range(len(scenario.parts)), desc="local training", unit="party", disable=not progress)
    for k in bar:
        arch = party_arch(config, k, scenario.querier)
        torch.manual_seed(t.seed * 1000 + k)
        model = build_model(arch, dataset.input_shape, dataset.num_classes).to(device)
        idx = shares[k]
        key = checkpoint_key(dataset.name, dataset.digest, arch, training_settings(t, device), idx)
        path = checkpoints / f"party{k}-{arch}-{key}.pt" if checkpoints else None
        if path is None or not (resume and load_checkpoint(model, path)):
            tensor_idx = torch.as_tensor(idx)
            train_as_party(model, (x_train[tensor_idx], y_train[tensor_idx]), t, seed=t.seed * 1000 + k)
            if path is not None:
                save_checkpoint(model, path)
        models.append(model.eval())
    return models


def load_scenario(config: RunConfig, dataset: DataSet | None = None) -> tuple[DataSet, partition.Scenario]:
    """The data subset of ``config`` and its scenario; ``dataset`` spares loading ``config.data`` again."""
    dataset = dataset or load_dataset(config.data.name, config.data.root, config.data.path, config.data.size)
    dataset = dataset.subsample(config.data.max_train, config.data.max_test, config.partition.seed)
    return dataset, make_scenario(config, dataset)


def build_world(config: RunConfig, checkpoints: Path | None = None, progress: bool = True,
                dataset: DataSet | None = None, resume: bool = True) -> World:
    """The parties' data, scenario and trained models; ``dataset`` spares loading ``config.data`` again."""
    dataset, scenario = load_scenario(config, dataset)
    public_pool = load_public_pool(config, dataset)
    x_train, y_train, x_test, y_test = dataset.normalized()
    shares, holdouts = training_shares(config, dataset, scenario)
    models = train_parties(config, (x_train, y_train), scenario, dataset, shares, checkpoints, progress, resume)
    return World(dataset, x_train, y_train, x_test, y_test, scenario, models, holdouts, public_pool=public_pool)


T = TypeVar("T")


def _timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run_methods(world: World, config: RunConfig, progress: bool = True,
                channel: Callable[[TeacherChannel], TeacherChannel] | None = None) -> tuple[dict[str, MethodResult], dict[str, dict]]:
    """Evaluate every configured method on the world's query; returns results and the query reports of QKT's methods.

    ``channel`` wraps the in-process channel to the teachers (:mod:`qkt.query.channel`),
    e.g. to cache their probe scores or to plant a lying teacher.
    """
    s = world.scenario
    student = world.models[s.querier]
    local_x, local_y = world.querier_data
    test_counts = np.bincount(world.dataset.y_test, minlength=world.dataset.num_classes)

    def evaluate(model: nn.Module) -> np.ndarray:
        return per_class_accuracy(model, world.x_test, world.y_test, world.dataset.num_classes)

    def evaluate_fixed(members: list[nn.Module]) -> np.ndarray:
        """Per-class accuracy of the mean softmax of unchanged models, from their cached test outputs."""
        for m in members:
            if m not in world.test_probs:
                world.test_probs[m] = torch.softmax(predict_logits(m, world.x_test), dim=1)
        pred = torch.stack([world.test_probs[m] for m in members]).mean(0).argmax(1).cpu()
        y = world.y_test
        return (torch.bincount(y[pred == y], minlength=len(test_counts)) / torch.bincount(y, minlength=len(test_counts))).double().numpy()

    before = evaluate_fixed([student])
    local_before = group_accuracy(before, test_counts, s.local_classes)
    unchanged = score("local", before, local_before, test_counts, s.query, s.local_classes)
    truth = true_experts(world, config)
    all_weights = sum(num_bytes(m) for m in world.teachers.values())
    # Simulated teachers: CachedScores has each compute every class's score once, which a real teacher's policy would refuse.
    teachers: TeacherChannel = InProcessChannel({k: Teacher(m, holdout=world.held_out(int(k)), policy=UNLIMITED)
                                                 for k, m in world.teachers.items()})
    if channel is not None:
        teachers = channel(teachers)
    results: dict[str, MethodResult] = {}
    reports: dict[str, dict] = {}
    not_applicable = federated_not_applicable(config, len(s.parts), s.querier)
    for method in config.methods:
        log.info("running %s", method)
        runner = METHODS[method].runner
        if runner == "federated" and not_applicable:  # a row saying why, not a silent gap in the tables
            results[method] = MethodResult.not_applicable(method, not_applicable)
        elif runner == "local":
            results[method] = unchanged
        elif runner == "oracle":
            continue  # after QKT, whose experts it learns from
        elif runner == "ensemble":  # the mean softmax of every party, from cached outputs
            results[method] = score(method, evaluate_fixed(world.models), local_before,
                                    test_counts, s.query, s.local_classes, bytes_received=all_weights)
        elif runner == "federated":
            spec = METHODS[method]
            if spec.global_model not in world.global_models:  # rows that share a global model train it once
                world.global_models[spec.global_model] = train_global(spec.global_model, config, world.dataset.input_shape,
                                                                      world.dataset.num_classes, world.x_train, world.y_train,
                                                                      s.parts, progress)
            g = world.global_models[spec.global_model]
            per_round = config.federated.local_epochs
            details = {"rounds": g.rounds, "budget": f"{g.rounds} rounds of {per_round} local epoch{'s' * (per_round > 1)}"}
            if spec.finetune:
                model, seconds = _timed(fine_tune, g.model, (local_x, local_y), config.training, config.training.seed * 1000 + s.querier)
                accuracy = evaluate(model)
                details.update(finetune_epochs=config.training.epochs,
                               budget=f"{details['budget']} + {config.training.epochs} epochs of fine-tuning")
            else:
                accuracy, seconds = evaluate_fixed([g.model]), 0.0
            results[method] = score(method, accuracy, local_before, test_counts, s.query, s.local_classes,
                                    seconds=g.seconds + seconds, bytes_sent=g.bytes_sent, bytes_received=g.bytes_received,
                                    details=details)
        elif runner == "kd":
            model, seconds = _timed(distill_all, student, list(world.teachers.values()), local_x, local_y, config.query, progress,
                                    config.training.amp)
            results[method] = score(method, evaluate(model), local_before, test_counts, s.query, s.local_classes,
                                    seconds=seconds, bytes_received=all_weights)
        else:
            settings, variant = method_settings(config.query, method)
            if settings.public_pool and world.public_pool is None:
                results[method] = MethodResult.not_applicable(
                    method, f"no public pool for {world.dataset.name}: data.public_pool names none")
                continue
            public = world.public_pool[: settings.public_pool] if settings.public_pool else None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the report carries them
                    model, report = run_query(student, teachers, s.query, (local_x, local_y), settings,
                                              num_classes=world.dataset.num_classes, variant=variant, progress=progress,
                                              amp=config.training.amp, public_inputs=public)
            except QueryError as exc:  # a failed query leaves the querier with its own model: score that, say why and what it cost
                cost = {} if not isinstance(exc, QueryFailed) else {
                    "seconds": exc.seconds["total"], "teacher_seconds": exc.seconds["teachers"],
                    "bytes_sent": exc.bytes_sent, "bytes_received": exc.bytes_received}
                results[method] = score(method, before, local_before, test_counts, s.query, s.local_classes, **cost,
                                        details={"failed": str(exc), "scored_as": "local"})
                continue
            reports[method] = report.to_dict()
            results[method] = score(method, evaluate(model), local_before, test_counts, s.query, s.local_classes,
                                    seconds=report.seconds["total"], teacher_seconds=report.seconds["teachers"],
                                    bytes_sent=report.bytes_sent, bytes_received=report.bytes_received,
                                    details={"experts": reports[method]["experts"], "distrusted": report.distrusted,
                                             "seconds_per_phase": report.seconds,
                                             **({"public_inputs": report.num_public} if report.num_public else {}),
                                             "diagnostics": query_diagnostics(world, report, settings.lam, truth, local_x)})
    if "oracle" in config.methods:
        qkt = results.get("qkt")
        found = None if qkt is None or "failed" in qkt.details else {int(c): v for c, v in qkt.details["experts"].items()}
        model, (seconds, details) = train_oracle(world, config, found)
        results["oracle"] = score("oracle", evaluate(model), local_before, test_counts, s.query, s.local_classes,
                                  seconds=seconds, bytes_received=details.pop("bytes"), details=details)
        for method, result in results.items():
            if METHODS[method].runner == "query":
                result.details["recovered_share"] = diagnostics.recovered_share(
                    result.overall_accuracy, unchanged.overall_accuracy, results["oracle"].overall_accuracy)
    return results, reports


def true_experts(world: World, config: RunConfig) -> dict[int, list[str]]:
    """Per query class, the teachers that really hold it (at least ``scenario.min_expert_samples`` samples)."""
    s = world.scenario
    counts = partition.class_counts(world.y_train.numpy(), list(s.parts), world.dataset.num_classes)
    return diagnostics.true_experts(counts, s.query, s.querier, config.scenario.min_expert_samples)


def query_diagnostics(world: World, report: QueryReport, lam: float, truth: dict[int, list[str]], local_x: torch.Tensor) -> dict:
    """How well the probe and the checks found the true experts (``truth``), and how much the experts lean to ``Q`` on ``local_x``."""
    s = world.scenario
    by_probe = experts_by_class(expert_masks(report.scores, s.query, world.dataset.num_classes, lam), s.query)
    experts = sorted({k for names in report.experts.values() for k in names})
    return {
        "true_experts": {str(c): v for c, v in truth.items()},
        "probe": diagnostics.expert_discovery(by_probe, truth),
        "after_checks": diagnostics.expert_discovery(report.experts, truth),
        "expert_query_mass": diagnostics.query_mass([world.teachers[k] for k in experts], local_x, s.query),
    }


def train_oracle(world: World, config: RunConfig, experts: dict[int, list[str]] | None) -> tuple[nn.Module, tuple[float, dict]]:
    """The oracle: the querier's model trained, as its party was, on its own data plus the experts' real training samples of ``Q``.

    Its loss weighs every class present equally: the experts may hold many times more
    samples of ``Q`` than the querier holds of its own classes, and an unweighted loss
    would trade the local classes for the query ones, which no one with the data would do.
    ``experts`` are those a query found, per query class; ``None`` (no query ran or it
    found none) takes the parties that really hold each class. Returns the model, its
    training seconds, and which experts and how many samples it learnt from (``bytes``:
    those samples as tensors, what sending them would cost).
    """
    s = world.scenario
    source = "qkt" if experts else "holders"
    experts = experts or true_experts(world, config)
    y = world.y_train.numpy()
    extra = [s.parts[int(k)][y[s.parts[int(k)]] == c] for c, names in experts.items() for k in names]
    extra_idx = torch.as_tensor(np.concatenate(extra) if extra else np.zeros(0, dtype=np.int64))
    local_x, local_y = world.querier_data
    x = torch.cat([local_x, world.x_train[extra_idx]])
    t = config.training
    torch.manual_seed(t.seed * 1000 + s.querier)
    model = build_model(party_arch(config, s.querier, s.querier), world.dataset.input_shape, world.dataset.num_classes)
    start = time.perf_counter()
    y_all = torch.cat([local_y, world.y_train[extra_idx]])
    counts = torch.bincount(y_all, minlength=world.dataset.num_classes).float()
    balance = torch.where(counts > 0, len(y_all) / (counts.clamp_min(1) * int((counts > 0).sum())), torch.zeros_like(counts))

    def balanced_loss(net: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.cross_entropy(net(batch[0]), batch[1], weight=balance)

    train_as_party(model, (x, y_all), t, seed=t.seed * 1000 + s.querier, loss_fn=balanced_loss)
    seconds = time.perf_counter() - start
    details = {"experts": {str(c): v for c, v in experts.items()}, "experts_from": source, "query_samples": len(extra_idx),
               "bytes": int(world.x_train[extra_idx].numel() * world.x_train.element_size())}
    return model.eval(), (seconds, details)


def run(config: RunConfig, output: Path | None = None, progress: bool = True, resume: bool = True) -> dict:
    """Run one experiment; if ``output`` is given, write ``results.json`` and the chart there.

    Parties' models are checkpointed under ``output/checkpoints``; ``resume`` reuses those
    already finished (an interrupted run loses only the party it was training).
    """
    from .report import write_outputs

    if output is not None:
        check_output(output, reads=config.data.path)
    checkpoints = output / "checkpoints" if output else None
    world = build_world(config, checkpoints, progress, resume=resume)
    results, reports = run_methods(world, config, progress)
    s = world.scenario
    summary = {
        "dataset": world.dataset.name,
        "classes": list(world.dataset.classes),
        "scenario": {
            "querier": s.querier,
            "query": list(s.query),
            "local_classes": list(s.local_classes),
            "removed_query_samples": s.removed,
            "holdings": partition.class_counts(world.dataset.y_train, list(s.parts), world.dataset.num_classes).tolist(),
        },
        "methods": {k: v.to_dict() for k, v in results.items()},
        "reports": reports,
        "config": config.model_dump(),
    }
    if output is not None:
        write_outputs(summary, output)
    return summary
