"""Inputs and faults that crashed qkt or misled it silently: one clear line or the right result."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import time
import types
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from qkt.cli import main
from qkt.config import RunConfig, parse_config
from qkt.data import load_dataset
from qkt.errors import ConfigError, DataError, QKTError
from qkt.models import build_model
from qkt.training import load_checkpoint, save_checkpoint

# A run that takes a second: three parties, one epoch, no query.
TINY = 'methods = ["local"]\n[partition]\nnum_parties = 3\nalpha = 1.0\n[training]\nepochs = 1\n[scenario]\nmax_query_samples = 1000\n'


def _arrays() -> dict[str, np.ndarray]:
    """Three classes of eight features, 300 training and 60 test samples."""
    y = np.arange(300) % 3
    x = (np.random.default_rng(0).normal(size=(300, 8)) + y[:, None]).astype(np.float32)
    return {"x_train": x, "y_train": y, "x_test": x[:60].copy(), "y_test": y[:60].copy()}


def _run(capsys, tmp_path: Path, config: str = TINY, output: Path | None = None, *extra: str) -> tuple[int, str, str]:
    path = tmp_path / "config.toml"
    path.write_text(config)
    code = main(["run", "--config", str(path), "--output", str(output or tmp_path / "out"), "--quiet", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _npz_run(capsys, tmp_path: Path, arrays: dict, config: str = TINY) -> tuple[int, str, str]:
    np.savez(tmp_path / "mine.npz", **arrays)
    return _run(capsys, tmp_path, config + '[data]\nname = "npz"\n', None, "--data-path", str(tmp_path / "mine.npz"))


# --- 6: non-finite data --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "values"), [
    ("x_train", [np.nan] * 3),
    ("x_test", [np.inf, -np.inf]),
    ("x_train", [1e300]),  # finite in float64, infinite as the float32 qkt trains in
], ids=["nan-train", "inf-test", "beyond-float32"])
def test_non_finite_data_is_refused_with_the_array_and_count(capsys, tmp_path, split, values):
    arrays = _arrays()
    x = arrays[split].astype(np.float64)
    x.flat[[5, 17, 40][: len(values)]] = values
    arrays[split] = x
    err = _one_line_error(*_npz_run(capsys, tmp_path, arrays)[::2])
    assert f"{split} in" in err and f"{len(values)} non-finite value" in err
    with pytest.raises(DataError):
        load_dataset("npz", path=tmp_path / "mine.npz")


# --- 7: non-finite config floats -----------------------------------------------------------------------------


def _leaves(model: type[BaseModel] = RunConfig, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every option of the schema: its path and its type."""
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += _leaves(field.annotation, (*prefix, name))
        else:
            out.append(((*prefix, name), field.annotation))
    return out


def _holds(annotation: object, kind: type) -> bool:
    """Whether values of ``annotation`` (through Annotated, unions and lists) may be of type ``kind``."""
    if annotation is kind:
        return True
    return any(_holds(a, kind) for a in get_args(annotation) if get_origin(annotation) is not Literal)


FLOAT_OPTIONS = [path for path, annotation in _leaves() if _holds(annotation, float)]


def _set(config: dict, path: tuple[str, ...], value: object) -> dict:
    """``config`` with the option at ``path`` set to ``value``, its sections made as needed."""
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return config


def test_every_float_option_is_found():
    assert ("query", "lam") in FLOAT_OPTIONS and ("query", "probe", "scales") in FLOAT_OPTIONS and len(FLOAT_OPTIONS) > 20


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("path", FLOAT_OPTIONS, ids=".".join)
def test_config_floats_must_be_finite(path, value):
    wrapped = [value] if path[-1] == "scales" else value
    with pytest.raises(ConfigError, match=f"{'.'.join(path)}.*: Input should be a finite number"):
        parse_config(_set({}, path, wrapped))


@pytest.mark.parametrize("argv", [["flower", "simulate", "--timeout", "nan"], ["flower", "run-config", "--reply-timeout", "inf"]])
def test_command_line_numbers_must_be_finite(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    assert f"must be a finite number, not {argv[-1]}" in capsys.readouterr().err


def test_a_huge_lambda_is_documented_as_no_teacher_qualifying():
    described = RunConfig.model_fields["query"].annotation.model_fields["lam"].description
    assert "no teacher" in described


# --- 8: output problems --------------------------------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the run loads data or trains: its output must be checked before."""
    def started(*args, **kwargs):
        raise AssertionError("the run started working before checking its output")

    monkeypatch.setattr("qkt.experiment.build_world", started)


@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_a_file_as_output_is_refused_before_any_work(capsys, tmp_path, no_work, under):
    file = tmp_path / "results.txt"
    file.write_text("mine")
    err = _one_line_error(*_run(capsys, tmp_path, TINY, file / "run" if under else file)[::2])
    assert "is a file" in err and file.read_text() == "mine"


def test_a_broken_link_as_output_is_refused_before_any_work(capsys, tmp_path, no_work):
    """A broken link does not exist as a path, but no folder can be made there: refused before a party trains, naming the link."""
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    err = _one_line_error(*_run(capsys, tmp_path, TINY, tmp_path / "out" / "run")[::2])
    assert f"'{tmp_path / 'out'}' is a link to '{tmp_path / 'gone'}', which does not exist" in err


def test_an_output_folder_inside_the_data_folder_the_run_reads_is_refused(tmp_path):
    """An image folder's run would read its own chart as a training image the next time."""
    from qkt.files import check_output

    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    with pytest.raises(QKTError, match="is inside the data folder .*, which the run reads"):
        check_output(tmp_path / "data" / "train" / "a" / "out", reads=tmp_path / "data")
    check_output(tmp_path / "out", reads=tmp_path / "data")
    check_output(tmp_path / "data" / "out", reads=tmp_path / "data" / "train.npz")  # a data file, not a folder


def test_a_file_as_the_bench_output_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("qkt.bench.run_bench", lambda *a, **k: pytest.fail("the bench started before checking its output"))
    (tmp_path / "bench").write_text("mine")
    err = _one_line_error(main(["bench", "--output", str(tmp_path / "bench"), "--quiet"]), capsys.readouterr().err)
    assert "is a file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_any_work(capsys, tmp_path, no_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        err = _one_line_error(*_run(capsys, tmp_path, TINY, locked / "run")[::2])
    finally:
        locked.chmod(0o755)
    assert "cannot write" in err and not (locked / "run").exists()


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_checkpointing_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _full_disk)
    err = _one_line_error(*_run(capsys, tmp_path)[::2])
    assert "No space left on device" in err and not list((tmp_path / "out").rglob(".*"))


# --- 9: result files all or nothing --------------------------------------------------------------------------


def _full_disk_for(monkeypatch, name: str) -> None:
    """Writes to the temporary file of ``name`` hit a full disk (Linux's /dev/full), as they would on a full partition."""
    mkstemp = tempfile.mkstemp

    def full(*args, **kwargs):
        fd, path = mkstemp(*args, **kwargs)
        if name in Path(path).name:
            full_fd = os.open("/dev/full", os.O_WRONLY)
            os.dup2(full_fd, fd)
            os.close(full_fd)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", full)


RESULTS = ("results.json", "results.md", "per_class_accuracy.png")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_while_drawing_leaves_the_previous_results_whole(capsys, tmp_path, monkeypatch):
    assert _run(capsys, tmp_path)[0] == 0
    before = {name: (tmp_path / "out" / name).read_bytes() for name in RESULTS}
    _full_disk_for(monkeypatch, "per_class_accuracy.png")  # the last of the three to be written
    err = _one_line_error(*_run(capsys, tmp_path, TINY.replace("epochs = 1", "epochs = 2"))[::2])
    assert "No space left on device" in err
    assert {name: (tmp_path / "out" / name).read_bytes() for name in RESULTS} == before
    assert not list((tmp_path / "out").rglob(".*"))


def test_a_result_that_cannot_replace_its_file_leaves_the_others_whole(capsys, tmp_path):
    assert _run(capsys, tmp_path)[0] == 0
    before = {name: (tmp_path / "out" / name).read_bytes() for name in RESULTS[:2]}
    (tmp_path / "out" / RESULTS[2]).unlink()
    (tmp_path / "out" / RESULTS[2]).mkdir()
    err = _one_line_error(*_run(capsys, tmp_path, TINY.replace("epochs = 1", "epochs = 2"))[::2])
    assert "per_class_accuracy.png" in err
    assert {name: (tmp_path / "out" / name).read_bytes() for name in RESULTS[:2]} == before
    assert not list((tmp_path / "out").rglob(".*"))


@pytest.mark.parametrize("failure", [OSError(errno.EBUSY, os.strerror(errno.EBUSY)), KeyboardInterrupt()], ids=["busy", "interrupt"])
def test_a_set_whose_second_rename_fails_puts_the_first_back(tmp_path, monkeypatch, failure):
    from qkt import files

    old = {"a.md": b"old a", "b.json": b"old b"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    replace = os.replace

    def failing(src, dst):
        if str(dst).endswith("b.json"):
            raise failure
        return replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing)
    with pytest.raises(type(failure) if isinstance(failure, KeyboardInterrupt) else QKTError), files.all_or_nothing():
        for name in (*old, "c.png"):
            files.atomic_write(tmp_path / name, b"new")
    monkeypatch.setattr(files.os, "replace", replace)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


# --- 10: two writers of one checkpoint -----------------------------------------------------------------------


def test_two_writers_of_one_checkpoint_do_not_collide(tmp_path, monkeypatch):
    path = tmp_path / "party0.pt"
    first, second = build_model("mlp", (8,), 3), build_model("mlp", (8,), 3)
    replace = os.replace

    def the_other_writer_finishes_first(src, dst):
        monkeypatch.setattr(os, "replace", replace)
        save_checkpoint(second, path)  # between the first writer's write and its rename
        replace(src, dst)

    monkeypatch.setattr(os, "replace", the_other_writer_finishes_first)
    save_checkpoint(first, path)
    loaded = build_model("mlp", (8,), 3)
    assert load_checkpoint(loaded, path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), first.state_dict().values(), strict=True))
    assert [p.name for p in tmp_path.iterdir()] == ["party0.pt"]


# --- 11: foreign or corrupt checkpoints under --resume -------------------------------------------------------


@pytest.mark.parametrize("foreign", [
    lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)),
    lambda p: torch.save(torch.zeros(3), p),
    lambda p: torch.save(build_model("mlp", (5,), 2).state_dict(), p),
    lambda p: torch.save({k: v[..., :1] if k == "head.bias" else v for k, v in torch.load(p, weights_only=True).items()}, p),
    lambda p: p.write_bytes(p.read_bytes()[:300]),
], ids=["garbage", "a-tensor", "another-model", "one-tensor-off", "cut-short"])
def test_a_foreign_checkpoint_is_retrained_with_a_warning(capsys, tmp_path, foreign):
    assert _run(capsys, tmp_path)[0] == 0
    checkpoints = sorted((tmp_path / "out" / "checkpoints").glob("*.pt"))
    trained = {path: torch.load(path, weights_only=True) for path in checkpoints}
    for path in checkpoints:
        foreign(path)
    with pytest.warns(UserWarning, match="retrained") as caught:
        code, _, err = _run(capsys, tmp_path, TINY, None, "--resume")
    assert code == 0 and "Traceback" not in err
    assert len([w for w in caught if "retrained" in str(w.message)]) == len(checkpoints)
    for path, weights in trained.items():  # retrained from the same seeded start, untouched by the foreign file
        again = torch.load(path, weights_only=True)
        assert all(torch.equal(again[k], weights[k]) for k in weights)


# --- 12: a .npy as the data file -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["npz", "bloodmnist"])
def test_a_npy_as_the_data_file_is_one_line(capsys, tmp_path, name):
    np.save(tmp_path / "mine.npy", _arrays()["x_train"])
    err = _one_line_error(main(["data", "info", name, "--data-path", str(tmp_path / "mine.npy")]), capsys.readouterr().err)
    assert "a single array" in err


# --- 13: sparse labels ---------------------------------------------------------------------------------------


def test_a_label_space_far_larger_than_the_labels_present_is_refused(capsys, tmp_path):
    arrays = _arrays()
    for split in ("y_train", "y_test"):
        arrays[split] = np.where(arrays[split] == 2, 100_000, arrays[split])
    np.savez(tmp_path / "mine.npz", **arrays)
    started = time.perf_counter()
    err = _one_line_error(main(["data", "info", "npz", "--data-path", str(tmp_path / "mine.npz")]), capsys.readouterr().err)
    assert "100001 classes" in err and "3 of them" in err and time.perf_counter() - started < 5


def test_labels_with_a_few_gaps_are_kept():
    from qkt.data.base import validate_arrays

    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"] * 2  # 0, 2, 4: five classes, three present
    assert validate_arrays("npz", "mine.npz", arrays).num_classes == 5


# --- 14: a query class without test samples ------------------------------------------------------------------


def _strict_json(text: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_query_class_absent_from_the_test_set_is_null_and_said_so(capsys, tmp_path):
    arrays = _arrays()
    kept = arrays["y_test"] != 2
    arrays["x_test"], arrays["y_test"] = arrays["x_test"][kept], arrays["y_test"][kept]
    code, out, err = _npz_run(capsys, tmp_path, arrays, TINY + "query = [2]\n")
    assert code == 0 and "invalid value" not in err, err
    results = _strict_json((tmp_path / "out" / "results.json").read_text())
    local = results["methods"]["local"]
    assert local["query_accuracy"] is None and local["per_class_accuracy"][2] is None
    assert local["local_accuracy"] is not None
    assert "no test sample" in (tmp_path / "out" / "results.md").read_text() and "no test sample" in out
    assert "| nan" not in out


# --- 17: smaller ---------------------------------------------------------------------------------------------


def test_a_folder_as_config_is_named_a_folder(capsys, tmp_path):
    assert main(["run", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "does not exist" not in err


def test_a_list_of_two_million_scales_is_refused_fast(capsys, tmp_path):
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="at most"):
        parse_config({"query": {"probe": {"scales": [1.0] * 2_000_000}}})
    path = tmp_path / "config.yaml"
    path.write_text("query:\n  probe:\n    scales: [" + ", ".join(["1.0"] * 2_000_000) + "]\n")
    assert main(["run", "--config", str(path)]) == 2
    assert "too large" in capsys.readouterr().err
    assert time.perf_counter() - started < 5


def test_a_yaml_config_whose_aliases_nest_a_billion_entries_is_refused_fast(capsys, tmp_path):
    """454 bytes of anchors, each a list of ten of the one before: the error must not try to render the 10**9 entries."""
    lines = ["x0: &x0 [1,1,1,1,1,1,1,1,1,1]"] + [f"x{i}: &x{i} [" + ",".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\ntraining: {epochs: *x8}\n")
    started = time.perf_counter()
    assert main(["run", "--config", str(path)]) == 2
    assert "training.epochs: Input should be a valid integer (got a list of 10 entries, nesting more)" in capsys.readouterr().err
    assert time.perf_counter() - started < 5


# A valid entry of each list option: a new list option must be added here, and bounded.
LIST_ENTRIES = {("query", "probe", "scales"): 1.0, ("scenario", "query"): 0, ("training", "teacher_archs"): "mlp",
                ("methods",): "local"}


def test_every_list_option_is_bounded():
    assert {path for path, annotation in _leaves() if "list[" in str(annotation)} == set(LIST_ENTRIES)
    for path, entry in LIST_ENTRIES.items():
        with pytest.raises(ConfigError, match=f"{'.'.join(path)}: List should have at most"):
            parse_config(_set({}, path, [entry] * 100_000))


# --- acceptance: configs drawn from the schema's types, in and out of range ----------------------------------

EDGES = st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1e308, 0.0, -0.0, 5e-324, -1.0, 1.0, 2.0])


def _values(annotation: object) -> st.SearchStrategy:
    """Values of the option's type, mostly at or beyond the edges of its range; its constraints are what is tested."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _values(args[0])
    if origin in (Union, types.UnionType):
        return st.one_of(*(_values(a) for a in args))
    if origin is Literal:
        return st.sampled_from(args) | st.text(max_size=4)
    if origin is list:
        return st.lists(_values(args[0]), max_size=3) | st.integers(0, 3000).map(lambda n: [1] * n)
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(-2, 3) | st.integers(-(2**70), 2**70)
    if annotation is float:
        return EDGES | st.floats()
    return st.text(max_size=8)


LEAVES = _leaves()


@st.composite
def drawn_configs(draw) -> tuple[dict, list[str]]:
    """A config setting one to three options to values drawn from their types; and the keys set."""
    config: dict = {}
    leaves = draw(st.lists(st.sampled_from(LEAVES), min_size=1, max_size=3, unique_by=lambda leaf: leaf[0]))
    for path, annotation in leaves:
        _set(config, path, draw(_values(annotation)))
    return config, [".".join(path) for path, _ in leaves]


def _finite(tree: object) -> bool:
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    if isinstance(tree, list):
        return all(_finite(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree)


SCHEMA = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SCHEMA
@given(drawn_configs())
def test_configs_drawn_from_the_schema_validate_finite_or_fail_in_a_few_lines(drawn):
    config, keys = drawn
    try:
        parsed = parse_config(config, "drawn")
    except ConfigError as exc:
        message = str(exc)
        lines = message.splitlines()
        assert lines[0].startswith("drawn") and len(lines) <= 12 and len(message) < 300 * len(lines)
        assert all(line.startswith("  - ") for line in lines[1:]) and "Traceback" not in message
        named = [line[4:].split(":")[0] for line in lines[1:]]  # an option drawn, an entry of it, or the section it breaks
        assert all(n == "(top level)" or any(k == n or k.startswith(n + ".") or n.startswith(k + ".") for k in keys)
                   for n in named), (named, keys)
        return
    assert _finite(parsed.model_dump())


DIGITS = {"partition": {"num_parties": 3, "alpha": 1.0}, "training": {"epochs": 1}, "methods": ["local"],
          "scenario": {"max_query_samples": 1000}}


@settings(SCHEMA, max_examples=6)
@given(st.sampled_from(FLOAT_OPTIONS), st.sampled_from([math.inf, -math.inf, math.nan]))
def test_qkt_run_refuses_a_non_finite_option_before_any_work(tmp_path_factory, capsys, path, value):
    folder = tmp_path_factory.mktemp("drawn")
    config = _set(json.loads(json.dumps(DIGITS)), path, [value] if path[-1] == "scales" else value)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    code = main(["run", "--config", str(folder / "config.yaml"), "--output", str(folder / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert ".".join(path) in err and not (folder / "out").exists()
