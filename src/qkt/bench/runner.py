"""``qkt bench``: every method of SPEC §4 under the scenarios of SPEC §5, as paper-style tables.

For each data set, scenario and seed the parties are trained once (checkpointed)
and so are the global models of the federated baselines; then every eligible
party queries once and every method is scored on its query. Rows are means ± std
over queriers × seeds. Results are written atomically after each query, so
``--resume`` continues an interrupted run where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from tqdm.auto import tqdm
from typing_extensions import NotRequired, TypedDict

from .. import experiment, partition
from ..baselines import federated_training, train_global
from ..baselines.fedavg import FederatedResult
from ..config import RunConfig, first_error
from ..data import DATASETS, DataSet, find_file, load_dataset
from ..errors import DataError, QKTError
from ..files import atomic_write
from ..methods import METHODS
from ..models import build_model
from ..query import CachedScores, ForgedScores, TeacherChannel
from ..training import checkpoint_key, load_checkpoint, resolve_device, save_checkpoint
from .catalogue import (
    GROUPS,
    PROFILES,
    PUBLIC_POOLS,
    SCENARIOS,
    BenchScenario,
    Profile,
    false_expert,
    querier_queries,
    run_config,
    scenario_methods,
)
from .liars import Planted, plant
from .output import machine, write_outputs

log = logging.getLogger(__name__)

def available_datasets(data_root: str | os.PathLike | None = None) -> list[str]:
    """``digits`` and every registry data set whose file is under the data root."""
    found = ["digits"]
    for name in sorted(DATASETS):
        try:
            find_file(name, data_root)
        except DataError:
            continue
        found.append(name)
    return found


def global_model(method: str, config: RunConfig, dataset: DataSet, tensors: tuple[torch.Tensor, torch.Tensor],
                 parts: list[np.ndarray], checkpoints: Path, progress: bool) -> FederatedResult:
    """Train (or reload) the global model of federated row ``method`` (e.g. ``fedavg``, ``fedavg_converged``) for one partition and seed."""
    device = resolve_device(config.training.device)
    # The row's own local-epoch budget names it, so the rows at the parties' budget keep their checkpoints whatever converged_rounds is.
    key = checkpoint_key(method, dataset.name, dataset.digest, experiment.training_settings(federated_training(config, method), device),
                         config.federated.model_dump(exclude={"converged_rounds"}), *parts)
    path, meta = checkpoints / f"global-{method}-{key}.pt", checkpoints / f"global-{method}-{key}.json"
    info = _global_costs(meta)
    if info is not None:
        model = build_model(config.training.arch, dataset.input_shape, dataset.num_classes).to(device)
        if load_checkpoint(model, path):
            return FederatedResult(model, **info)
    result = train_global(method, config, dataset.input_shape, dataset.num_classes, *tensors, parts, progress)
    save_checkpoint(result.model, path)
    atomic_write(meta, json.dumps({k: getattr(result, k) for k in ("rounds", "seconds", "bytes_sent", "bytes_received")}).encode())
    return result


# The files qkt bench reads back are checked strictly: a seed of "0" in a hand-edited bench.json is no seed 0,
# and a query it misnames would run again before the tables failed on it.
STRICT = with_config(ConfigDict(strict=True))


@STRICT
class _GlobalCosts(TypedDict):
    rounds: int
    seconds: float
    bytes_sent: int
    bytes_received: int


_GLOBAL_COSTS = TypeAdapter(_GlobalCosts)


def _global_costs(meta: Path) -> dict | None:
    """What training a checkpointed global model cost, as ``meta`` records it; None (with a warning, as for a corrupt checkpoint) if it cannot say."""
    if not meta.exists():
        return None
    try:
        return _GLOBAL_COSTS.validate_json(meta.read_bytes())
    except (OSError, ValidationError) as exc:
        warnings.warn(f"'{meta}' cannot be read ({str(exc).splitlines()[0]}); its global model is retrained", stacklevel=2)
        return None


def _record(dataset: str, scenario: str, seed: int, world: experiment.World, results: dict, liar: int | None) -> dict:
    s = world.scenario
    return {
        "dataset": dataset, "scenario": scenario, "seed": seed, "querier": s.querier, "query": list(s.query),
        "local_classes": list(s.local_classes), "removed_query_samples": s.removed, "false_expert": liar,
        "methods": {k: {m: getattr(v, m) for m in ("query_accuracy", "local_accuracy", "overall_accuracy", "forgetting",
                                                   "bytes_sent", "bytes_received", "seconds", "teacher_seconds", "details")}
                    for k, v in results.items()},
    }


@dataclass
class BenchQuery:
    """One query of a scenario, ready to run: its settings, its world, and the channel wrapper its teachers answer through.

    ``liar`` is the party a forged or planted teacher replaces (None: every teacher is honest)
    and ``rigged`` the planted liar's model (None for a forged reply or no liar).
    """

    config: RunConfig
    world: experiment.World
    channel: Callable[[TeacherChannel], TeacherChannel]
    liar: int | None
    rigged: torch.nn.Module | None


def scenario_queries(dataset: DataSet, scenario: BenchScenario, seed: int, profile: Profile, data_root: str | None,
                     checkpoints: Path, done: set, progress: bool, methods: Sequence[str] | None = None,
                     device: str | None = None) -> Iterator[BenchQuery]:
    """Every querier of one scenario and seed not in ``done``, one :class:`BenchQuery` at a time.

    The parties are trained once (or reloaded from ``checkpoints``), so are the global
    models the configured federated methods need.
    """
    config = run_config(profile, dataset, scenario, seed, data_root, methods, device)
    parts = experiment.make_partition(config, dataset.y_train)
    x_train, y_train, x_test, y_test = dataset.normalized()
    pairs = [(q, query) for q, query in querier_queries(config, dataset, parts, scenario, profile.max_queriers)
             if (dataset.name, scenario.name, seed, q) not in done]
    if not pairs:
        return
    log.info("%s, scenario %s, seed %d: %d quer%s to run", dataset.name, scenario.name, seed, len(pairs), "y" if len(pairs) == 1 else "ies")
    public_pool = experiment.load_public_pool(config, dataset)
    whole = partition.Scenario(-1, (), (), tuple(parts), 0)
    base_models = experiment.train_parties(config, (x_train, y_train), whole, dataset,
                                           experiment.training_shares(config, dataset, whole)[0], checkpoints, progress)
    one_model = experiment.federated_not_applicable(config, len(parts)) is None  # else their rows say n/a and why
    needed = dict.fromkeys(METHODS[m].global_model for m in config.methods if METHODS[m].runner == "federated" and one_model)
    global_models = {g: global_model(g, config, dataset, (x_train, y_train), parts, checkpoints, progress) for g in needed}
    test_probs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # shared: fixed models are evaluated once per seed
    # A teacher's probe scores do not depend on the query: each computes them once for every query of the seed,
    # and each query is charged the seconds they took.
    probe_cache: dict = {}
    bar = tqdm(pairs, desc=f"{dataset.name} {scenario.name} seed {seed}", unit="query", disable=not progress)
    for q, query in bar:
        s = config.scenario
        scen = partition.make_scenario(dataset.y_train, parts, q, s.query_size, seed, dataset.num_classes,
                                       s.max_query_samples, s.min_expert_samples, query)
        models = list(base_models)
        shares, holdouts = experiment.training_shares(config, dataset, scen)
        # the querier lost its few samples of Q, or keeps training.arch among teachers of others: retrain it alone, from its own checkpoint if any
        if scen.removed or experiment.party_arch(config, q, q) != experiment.party_arch(config, q, whole.querier):
            models[q] = experiment.train_parties(config, (x_train, y_train), scen, dataset, shares, checkpoints, False)[q]
        world = experiment.World(dataset, x_train, y_train, x_test, y_test, scen, models, holdouts=holdouts, global_models=global_models,
                                 test_probs=test_probs, public_pool=public_pool)
        liar = false_expert(scen, dataset.y_train, dataset.num_classes) if scenario.forged_teacher or scenario.liar else None
        rigged = None if liar is None or scenario.liar is None else plant(
            scenario.liar, models[liar], scen.query, dataset.num_classes, x_train[torch.as_tensor(parts[liar])])

        def channel(inner: TeacherChannel, liar: int | None = liar, rigged: torch.nn.Module | None = rigged) -> TeacherChannel:
            cached = CachedScores(inner, probe_cache)
            if liar is None:
                return cached
            # a planted model answers for the liar itself: its replies must not enter the honest teachers' cache
            return ForgedScores(cached, str(liar)) if rigged is None else Planted(cached, str(liar), rigged, scenario.liar_alone)

        yield BenchQuery(config, world, channel, liar, rigged)


def run_scenario(dataset: DataSet, scenario: BenchScenario, seed: int, profile: Profile, data_root: str | None,
                 checkpoints: Path, done: set, on_record, progress: bool, methods: Sequence[str] | None = None,
                 device: str | None = None) -> None:
    """Every querier of one scenario and seed; ``on_record`` receives each query's record as soon as it is scored."""
    for bench_query in scenario_queries(dataset, scenario, seed, profile, data_root, checkpoints, done, progress, methods, device):
        results, _ = experiment.run_methods(bench_query.world, bench_query.config, progress=False, channel=bench_query.channel)
        on_record(_record(dataset.name, scenario.name, seed, bench_query.world, results, bench_query.liar))


def check_resumed_settings(before: dict, settings: dict[str, dict], path: Path) -> None:
    """Refuse to resume a run whose finished queries ran under other settings than the profile's now.

    A profile's settings change between versions of qkt; resuming across such a change would put queries of two methods under one name in one table.
    """
    held = before.get("settings")
    names = sorted({r["dataset"] for r in before["records"]} & set(settings))
    if names and held is None:
        raise QKTError(f"{path} does not record the settings its queries ran under (a run joined by benchmarks/merge_runs.py, "
                       "or of an older version of qkt bench), so they cannot be checked against the profile's: choose another --output")
    for name in names:
        then, now = dotted(held.get(name, {})), dotted(settings[name])
        changed = [f"{key} {then.get(key, 'unset')} -> {now.get(key, 'unset')}" for key in sorted(then.keys() | now.keys())
                   if then.get(key) != now.get(key)]
        if changed:
            raise QKTError(f"{path} ran {name} under other settings than the profile's now ({'; '.join(changed)}): "
                           "its queries and the rest would not be one method; choose another --output")


def check_resumed_methods(records: list[dict], wanted: Callable[[dict], list[str] | None], path: Path) -> None:
    """Refuse to continue queries of a scenario and seed with other methods than the kept ones ran: they would run only on the queries not yet done.

    ``wanted(record)`` is the methods this run gives the record's scenario, data set and
    seed, or None if it runs none of them (another seed, data set or scenario, whose kept
    queries it leaves as they are).
    """
    for r in records:
        now, then = wanted(r), list(r["methods"])
        if now is not None and set(now) != set(then):
            raise QKTError(f"{path}: its queries of {r['dataset']}/{r['scenario']} ran {', '.join(then)}; this run asks for "
                           f"{', '.join(now)}, which --resume would run only on the queries not yet done. Run other methods into "
                           "another --output and join the runs with benchmarks/merge_runs.py")


@STRICT
class _MethodRecord(TypedDict):
    query_accuracy: float | None  # None: no test sample of the class
    local_accuracy: float | None
    overall_accuracy: float | None
    forgetting: float | None
    bytes_sent: int
    bytes_received: int
    seconds: float
    teacher_seconds: NotRequired[float]  # records of an older qkt bench lack it
    details: dict


@STRICT
class _Record(TypedDict):
    dataset: str
    scenario: str
    seed: int
    querier: int
    query: list[int]
    methods: dict[str, _MethodRecord]


@STRICT
class _Run(TypedDict):
    records: list[_Record]
    wall_seconds: float
    cpu_seconds: float
    settings: NotRequired[dict]
    whole_dataset: NotRequired[bool]


_RUN = TypeAdapter(_Run)


def read_run(path: str | os.PathLike) -> dict:
    """A ``qkt bench`` run as its ``bench.json`` holds it; a one-line :class:`QKTError` if ``path`` holds none.

    Every field the tables and ``--resume`` read is checked for its type, and each query
    is recorded once, before any work, so that a hand-edited file fails here and not after
    the queries still to do have run.
    """
    path = Path(path)
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QKTError(f"{path} cannot be read as a qkt bench run ({type(exc).__name__}: {exc})") from None
    try:
        _RUN.validate_python(run)
    except ValidationError as exc:
        raise QKTError(f"{path} is not a qkt bench run's bench.json: {first_error(exc)}") from None
    seen: set[tuple] = set()
    for r in run["records"]:
        query = (r["dataset"], r["scenario"], r["seed"], r["querier"])
        if query in seen:
            raise QKTError(f"{path} records the query of querier {r['querier']} ({r['dataset']}/{r['scenario']}/{r['seed']}) twice")
        seen.add(query)
    return run


def dotted(settings: dict, prefix: str = "") -> dict[str, object]:
    """Nested settings as ``{"query.phase1_epochs": 7, ...}``."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_bench(profile_name: str, datasets: Sequence[str] | None, output: Path, data_root: str | None = None,
              scenarios: Sequence[str] | None = None, resume: bool = False, progress: bool = True,
              methods: Sequence[str] | None = None, whole_dataset: bool = False, device: str | None = None,
              seeds: Sequence[int] | None = None) -> dict:
    """Run a benchmark profile and write its outputs to ``output``; returns the final state (as in ``bench.json``).

    Parameters
    ----------
    profile_name:
        ``quick`` (one seed, two queriers, single- and multi-class), ``full`` (three seeds,
        every eligible querier; on digits also the reviewers' scenarios) or ``ablations``
        (every ablation on every single-class querier of the first seed).
    datasets:
        Registry names; default: ``digits`` and every data set whose file is under ``data_root``.
    scenarios:
        A subset of the profile's scenarios (names in :data:`SCENARIOS`).
    resume:
        Keep the queries already in ``output/bench.json`` and run only the missing ones; the
        scenarios and seeds it continues must run the same settings and methods as before.
    methods:
        Only these methods (default: the profile's). Every Δ is against ``qkt``; a run without it,
        of baselines whose settings a change to QKT's leaves alone, has tables without Δ and is
        for ``benchmarks/merge_runs.py`` to join to a run of QKT on the same queries.
    whole_dataset:
        Every training and test image of each data set instead of the profile's subsets
        (SPEC §5's scale: on CIFAR-10 each query takes about three times as long).
    device:
        ``training.device`` of every run (``auto``, ``cpu``, ``cuda``, ``mps``; default: the profile's, ``auto``).
    seeds:
        A subset of the profile's seeds (``0`` to ``seeds - 1``), so that a long profile can run in
        parts: a later run with ``resume`` and the same ``output`` adds the other seeds.
    """
    if profile_name not in PROFILES:
        raise QKTError(f"unknown profile '{profile_name}'; choose one of: {', '.join(PROFILES)}")
    profile = PROFILES[profile_name].at_full_size() if whole_dataset else PROFILES[profile_name]
    # a name given twice would run, and count, its queries twice
    scenarios = list(dict.fromkeys(n for s in scenarios or () for n in GROUPS.get(s, (s,))))
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise QKTError(f"unknown scenario(s) {unknown}; choose from: {', '.join([*SCENARIOS, *GROUPS])}")
    methods = list(dict.fromkeys(methods or ()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise QKTError(f"unknown method(s) {unknown} in --methods; choose from: {', '.join(METHODS)}")
    seeds = list(dict.fromkeys(seeds)) if seeds else list(range(profile.seeds))
    if any(not 0 <= s < profile.seeds for s in seeds):
        raise QKTError(f"the {profile_name} profile has seeds 0 to {profile.seeds - 1}; got {seeds}")
    datasets = list(dict.fromkeys(datasets or available_datasets(data_root)))
    if "npz" in datasets:
        raise QKTError("qkt bench runs the registry data sets; for your own .npz file use `qkt run` with data.name: npz and data.path")
    # the methods each (data set, seed, scenario) of this run runs
    plan = {(name, seed, scenario): scenario_methods(profile, name, SCENARIOS[scenario], methods)
            for name in datasets for seed in seeds for scenario in scenarios or profile.scenarios_for(name)}
    for name in datasets:  # a missing file must stop the bench before hours of other data sets, not after
        if name != "digits":
            find_file(name, data_root)
        pool = PUBLIC_POOLS.get(name)
        drawing = sorted({m for (n, _, _), run in plan.items() if n == name for m in run if METHODS[m].settings.get("public_pool")})
        if pool and drawing:
            try:
                find_file(pool, data_root)
            except DataError as exc:
                raise QKTError(f"{pool} is {name}'s public pool, which {', '.join(drawing)} draw from: {exc}") from None
    # As written to bench.json, so that a resumed run compares like with like.
    settings = json.loads(json.dumps({name: profile.config(name) for name in datasets}))
    previous = output / "bench.json"
    records: list[dict] = []
    spent = (0.0, 0.0)
    if resume and previous.exists():
        try:
            before = read_run(previous)
        except QKTError as exc:
            raise QKTError(f"{exc}: choose another --output, or remove it to start afresh") from None
        if before.get("whole_dataset", False) != whole_dataset:
            held, flag = ("the subsets", "without") if whole_dataset else ("whole data sets", "with")
            raise QKTError(f"{previous} holds a run on {held}: resume it {flag} --whole-dataset, or choose another --output")
        records, spent = before["records"], (before["wall_seconds"], before["cpu_seconds"])
        check_resumed_settings(before, settings, previous)
        check_resumed_methods(before["records"], lambda r: plan.get((r["dataset"], r["seed"], r["scenario"])), previous)
        settings = {**before.get("settings", {}), **settings}  # of its data sets this run leaves out, too
    done = {(r["dataset"], r["scenario"], r["seed"], r["querier"]) for r in records}
    state = {"profile": profile_name, "datasets": datasets, "settings": settings, "machine": machine(),
             "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "whole_dataset": whole_dataset, "wall_seconds": 0.0, "cpu_seconds": 0.0,
             "records": records}
    wall, cpu = time.perf_counter() - spent[0], time.process_time() - spent[1]

    def on_record(record: dict) -> None:
        records.append(record)
        state["wall_seconds"] = time.perf_counter() - wall
        state["cpu_seconds"] = time.process_time() - cpu
        write_outputs(state, output)

    for name in datasets:
        data = profile.config(name).get("data", {})
        # One seeded subset for every seed: seeds vary the partition and the training, not the data.
        dataset = load_dataset(name, data_root).subsample(data.get("max_train"), data.get("max_test"), 0)
        for seed in seeds:
            for scenario in scenarios or profile.scenarios_for(name):
                run_scenario(dataset, SCENARIOS[scenario], seed, profile, data_root, output / "checkpoints", done, on_record,
                             progress, methods, device)
    state["wall_seconds"] = time.perf_counter() - wall
    state["cpu_seconds"] = time.process_time() - cpu
    if records:  # a run that scored nothing leaves the folder, and a run it may hold, as they were
        write_outputs(state, output)
    return state

