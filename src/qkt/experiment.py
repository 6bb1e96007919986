"""A whole experiment from a validated config: data, partition, local training, one query, every method.

This is what ``qkt demo`` and ``qkt run`` call; the benchmark repeats it over
queriers and seeds.
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from tqdm.auto import tqdm

from . import partition
from .baselines import train_global
from .baselines.fedavg import FederatedResult
from .baselines.kd import distill_all
from .config import QueryConfig, RunConfig, format_validation_error
from .data import DataSet, load_dataset
from .errors import ConfigError, QKTError, QueryError
from .files import check_output
from .methods import METHODS
from .metrics import MethodResult, score
from .models import build_model, num_bytes
from .query import InProcessChannel, TeacherChannel, Variant, run_query
from .query.probe import check_query
from .query.teacher import UNLIMITED, Teacher
from .training import checkpoint_key, fit, load_checkpoint, per_class_accuracy, predict_logits, save_checkpoint


def method_settings(query_config: QueryConfig, method: str) -> tuple[QueryConfig, Variant]:
    """The query settings and engine switches of QKT, QKT Light or an ablation (:mod:`qkt.methods`), validated together."""
    spec = METHODS[method]
    try:
        settings = QueryConfig.model_validate({**query_config.model_dump(), **spec.settings})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"query settings of method {method}")) from None
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
    # Federated baselines train one global model per partition; a benchmark shares them across its queriers.
    global_models: dict[str, FederatedResult] = field(default_factory=dict)
    # Test-set outputs of models that no query changes (parties, global models), computed once and shared.
    test_probs: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)

    @property
    def querier_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(self.scenario.parts[self.scenario.querier])
        return self.x_train[idx], self.y_train[idx]

    @property
    def teachers(self) -> dict[str, nn.Module]:
        return {str(k): m for k, m in enumerate(self.models) if k != self.scenario.querier}


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


def train_parties(config: RunConfig, world_data: tuple, scenario: partition.Scenario, dataset: DataSet,
                  checkpoints: Path | None, progress: bool, resume: bool = True) -> list[nn.Module]:
    """Train every party's model on its own data and checkpoint it; with ``resume``, reuse a checkpoint of the same party."""
    x_train, y_train = world_data
    t = config.training
    models = []
    bar = tqdm(range(len(scenario.parts)), desc="local training", unit="party", disable=not progress)
    for k in bar:
        arch = party_arch(config, k, scenario.querier)
        torch.manual_seed(t.seed * 1000 + k)
        model = build_model(arch, dataset.input_shape, dataset.num_classes)
        idx = scenario.parts[k]
        key = checkpoint_key(dataset.name, dataset.digest, arch, t.model_dump(), idx)
        path = checkpoints / f"party{k}-{arch}-{key}.pt" if checkpoints else None
        if path is None or not (resume and load_checkpoint(model, path)):
            tensor_idx = torch.as_tensor(idx)
            fit(model, (x_train[tensor_idx], y_train[tensor_idx]), t.epochs, t.lr, t.batch_size, t.weight_decay,
                seed=t.seed * 1000 + k, augment=t.augment, progress=False)
            if path is not None:
                save_checkpoint(model, path)
        models.append(model.eval())
    return models


def load_scenario(config: RunConfig, dataset: DataSet | None = None) -> tuple[DataSet, partition.Scenario]:
    """The data subset of ``config`` and its scenario; ``dataset`` spares loading ``config.data`` again."""
    dataset = dataset or load_dataset(config.data.name, config.data.root, config.data.path)
    dataset = dataset.subsample(config.data.max_train, config.data.max_test, config.partition.seed)
    return dataset, make_scenario(config, dataset)


def build_world(config: RunConfig, checkpoints: Path | None = None, progress: bool = True,
                dataset: DataSet | None = None, resume: bool = True) -> World:
    """The parties' data, scenario and trained models; ``dataset`` spares loading ``config.data`` again."""
    dataset, scenario = load_scenario(config, dataset)
    x_train, y_train, x_test, y_test = dataset.normalized()
    models = train_parties(config, (x_train, y_train), scenario, dataset, checkpoints, progress, resume)
    return World(dataset, x_train, y_train, x_test, y_test, scenario, models)


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
        pred = torch.stack([world.test_probs[m] for m in members]).mean(0).argmax(1)
        y = world.y_test
        return (torch.bincount(y[pred == y], minlength=len(test_counts)) / torch.bincount(y, minlength=len(test_counts))).double().numpy()

    before = evaluate_fixed([student])
    local_before = score("local", before, 0.0, test_counts, s.query, s.local_classes).local_accuracy
    all_weights = sum(num_bytes(m) for m in world.teachers.values())
    # Simulated teachers: CachedScores has each compute every class's score once, which a real teacher's policy would refuse.
    teachers: TeacherChannel = InProcessChannel({k: Teacher(m, policy=UNLIMITED) for k, m in world.teachers.items()})
    if channel is not None:
        teachers = channel(teachers)
    results: dict[str, MethodResult] = {}
    reports: dict[str, dict] = {}
    for method in config.methods:
        runner = METHODS[method].runner
        if runner == "local":
            results[method] = score(method, before, local_before, test_counts, s.query, s.local_classes)
        elif runner == "ensemble":  # the mean softmax of every party, from cached outputs
            results[method] = score(method, evaluate_fixed(world.models), local_before,
                                    test_counts, s.query, s.local_classes, bytes_received=all_weights)
        elif runner == "federated":
            if method not in world.global_models:
                world.global_models[method] = train_global(method, config, world.dataset.input_shape, world.dataset.num_classes,
                                                           world.x_train, world.y_train, s.parts, progress)
            g = world.global_models[method]
            results[method] = score(method, evaluate_fixed([g.model]), local_before, test_counts, s.query, s.local_classes,
                                    seconds=g.seconds, bytes_sent=g.bytes_sent, bytes_received=g.bytes_received,
                                    details={"rounds": g.rounds})
        elif runner == "kd":
            model, seconds = _timed(distill_all, student, list(world.teachers.values()), local_x, local_y, config.query, progress)
            results[method] = score(method, evaluate(model), local_before, test_counts, s.query, s.local_classes,
                                    seconds=seconds, bytes_received=all_weights)
        else:
            settings, variant = method_settings(config.query, method)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the report carries them
                    model, report = run_query(student, teachers, s.query, (local_x, local_y), settings,
                                              num_classes=world.dataset.num_classes, variant=variant, progress=progress)
            except QueryError as exc:  # a failed query leaves the querier with its own model: score that, say why
                results[method] = score(method, before, local_before, test_counts, s.query, s.local_classes, details={"failed": str(exc)})
                continue
            reports[method] = report.to_dict()
            results[method] = score(method, evaluate(model), local_before, test_counts, s.query, s.local_classes,
                                    seconds=report.seconds["total"], teacher_seconds=report.seconds["teachers"],
                                    bytes_sent=report.bytes_sent, bytes_received=report.bytes_received,
                                    details={"experts": reports[method]["experts"], "distrusted": report.distrusted,
                                             "seconds_per_phase": report.seconds})
    return results, reports


def run(config: RunConfig, output: Path | None = None, progress: bool = True, resume: bool = True) -> dict:
    """Run one experiment; if ``output`` is given, write ``results.json`` and the chart there.

    Parties' models are checkpointed under ``output/checkpoints``; ``resume`` reuses those
    already finished (an interrupted run loses only the party it was training).
    """
    from .report import write_outputs

    if output is not None:
        check_output(output)
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
