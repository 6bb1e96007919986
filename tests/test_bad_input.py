"""What a new user gets wrong, tried through the `qkt` command: one clear message, a non-zero exit, nothing half-written."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkt.cli import main
from qkt.config import RunConfig, load_config, parse_config
from qkt.errors import ConfigError, QueryError
from qkt.models import build_model
from qkt.query import export_weights, import_weights


def _fails_cleanly(capsys, tmp_path, config_text: str, suffix: str = ".toml", *extra: str) -> str:
    """Run `qkt run` on ``config_text``; assert exit 2, one error line and no output written; return the message."""
    config = tmp_path / f"config{suffix}"
    config.write_text(config_text)
    output = tmp_path / "out"
    code = main(["run", "--config", str(config), "--output", str(output), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (output / "results.json").exists() and not list(output.rglob(".*"))
    return err


@pytest.mark.parametrize(("config", "extra", "says"), [
    ('[data]\nname = "imagenet"', (), "unknown data set 'imagenet'; choose one of: digits"),
    ('[scenario]\nquery = [12]', (), "outside the label space 0..9"),
    ('[scenario]\nquery = []', (), "the query is empty"),
    ('[data]\nname = "npz"', ("--data-path", "nothere.npz"), "'nothere.npz' does not exist"),
    ('[partition]\nkind = "k_classes"\nnum_parties = 5\n[scenario]\nquerier = 0\nquery = [{own}]', (), "nobody can teach them"),
    ('[training]\nepochs = "many"\nbogus = 1', (), "training.epochs: Input should be a valid integer"),
    ('[query.probe]\nepsilon = -1', (), "query.probe.epsilon: Input should be greater than 0"),
    ('[training]\nbatch_size = 1', (), "training.batch_size: Input should be greater than or equal to 2"),
    ('[query.probe]\nkind = "self"', (), "'self' needs each teacher's held-out data"),
    ('[scenario]\nquerier = 8\nquery = [7]', (), "party 8 holds 10+ samples of class(es) [7]"),
    ('[data]\nname = "digits"', ("--data-path", "mine.npz"), "for your own .npz set data.name: npz"),
    ('[data]\nmax_train = 5', (), "cannot draw a stratified subset of 5 train samples (data.max_train)"),
    ('[query]\ngate = "query_mass"\ngate_budget = true', (), "query.gate_budget: Value error, expected a number (got true)"),
    ('[query]\ngate = "query_mass"\ngate_inversions = 100000000000', (), "query.gate_inversions: Input should be less than or equal to 100000"),
    ('[query.inversion]\nsamples_per_class = 100000000000', (), "query.inversion.samples_per_class: Input should be less than or equal to 100000"),
    ('[query]\ngate = "query_mass"\n[query.inversion]\nsamples_per_class = 0', (),
     "gate 'query_mass' fits its threshold on synthetic inputs of the query classes, and inversion.samples_per_class is 0"),
    ('[data]\npublic_pool = "npz"', (), "data.public_pool 'npz' is not a registry data set"),
], ids=["unknown-dataset", "class-outside", "empty-query", "missing-file", "no-expert", "wrong-types", "bad-range",
        "batch-of-one", "self-probe-in-process", "querier-knows-query", "path-without-name", "subset-below-the-classes",
        "boolean-share", "huge-gate-inversions", "huge-inversions", "gate-without-inversions", "pool-not-in-the-registry"])
def test_each_bad_input_gets_one_clear_message(capsys, tmp_path, config, extra, says):
    if "{own}" in config:  # a class only the querier holds: k_classes gives every class a single holder
        from qkt.data import load_dataset
        from qkt.partition import k_classes

        parts = k_classes(load_dataset("digits").y_train, 5, 2, seed=0)
        config = config.format(own=int(load_dataset("digits").y_train[parts[0][0]]))
    err = _fails_cleanly(capsys, tmp_path, 'methods = ["local", "qkt"]\n' + config, ".toml", *extra)
    assert says in err


@pytest.mark.parametrize("method", ["qkt", "qkt_no_phase2", "qkt_merged"])
def test_mixups_left_to_a_phase2_that_does_not_run_are_refused(capsys, tmp_path, method):
    phase2 = "\nphase2_epochs = 0" if method == "qkt" else ""
    err = _fails_cleanly(capsys, tmp_path, f'methods = ["local", "{method}"]\n[query]\nphase1_mixups = 0{phase2}')
    assert "no phase would learn from them" in err


@pytest.mark.parametrize("switch", ["use_masks = false", "phase2 = false", "merged = true", 'phase1_epoch = "local"',
                                    "phase1_whole_epochs = 1"])
def test_ablation_switches_are_methods_not_settings(capsys, tmp_path, switch):
    err = _fails_cleanly(capsys, tmp_path, f'methods = ["local", "qkt"]\n[query]\n{switch}')
    assert "unknown key" in err


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "--config", "c.toml", "--resume"], "give the --output folder of the run to resume"),
    (["data", "list", "--data-path", "mine.npz"], "'qkt data list' does not read one"),
])
def test_a_flag_that_would_do_nothing_is_refused(capsys, argv, says):
    assert main(argv) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["bench", "--threads", "0"], "--threads: must be at least 1, not 0"),
    (["flower", "run-config", "--reply-timeout", "0"], "--reply-timeout: must be more than 0.0, not 0"),
    (["flower", "simulate", "--timeout", "-5"], "--timeout: must be more than 0.0, not -5"),
    (["flower", "run-config", "--min-supernodes", "-1"], "--min-supernodes: must be at least 0, not -1"),
])
def test_numbers_out_of_range_are_refused_by_the_parser(capsys, argv, says):
    with pytest.raises(SystemExit):
        main(argv)
    assert says in capsys.readouterr().err


def test_digits_has_nothing_to_download(capsys, tmp_path):
    assert main(["data", "download", "digits", "--data-root", str(tmp_path)]) == 2
    assert "nothing to download" in capsys.readouterr().err and not list(tmp_path.iterdir())


def load_config_text(tmp_path, text: str, suffix: str = ".toml") -> RunConfig:
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    return load_config(path)


def test_corrupt_data_file(capsys, tmp_path):
    (tmp_path / "mine.npz").write_bytes(np.random.default_rng(0).bytes(500))
    err = _fails_cleanly(capsys, tmp_path, '[data]\nname = "npz"', ".toml", "--data-path", str(tmp_path / "mine.npz"))
    assert "may be corrupt or cut short" in err


def test_a_data_file_with_an_empty_split(capsys, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x_train=rng.normal(size=(400, 5)), y_train=rng.integers(0, 3, 400),
             x_test=np.zeros((0, 5)), y_test=np.zeros(0, dtype=np.int64))
    err = _fails_cleanly(capsys, tmp_path, '[data]\nname = "npz"', ".toml", "--data-path", str(tmp_path / "mine.npz"))
    assert "has no test samples" in err


def test_missing_and_unreadable_config_files(capsys, tmp_path):
    assert main(["run", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    err = _fails_cleanly(capsys, tmp_path, "data: [unclosed", ".yaml")
    assert "not valid YAML" in err
    err = _fails_cleanly(capsys, tmp_path, "- just\n- a list\n", ".yaml")
    assert "top level must be a mapping" in err
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"data:\n  name: digits\xff\n")
    assert main(["run", "--config", str(latin)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_every_bad_key_is_listed_with_what_to_change(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config_text(tmp_path, "[query]\nlamda = 2\n[query.trust]\nmin_local_agreement = 3\n[partition]\nnum_parties = 1\n")
    message = str(info.value)
    assert "3 invalid setting(s)" in message
    assert "query.lamda: unknown key; did you mean 'lam'?" in message
    assert "query.trust.min_local_agreement: Input should be less than or equal to 1 (got 3)" in message
    assert "partition.num_parties: Input should be greater than or equal to 2 (got 1)" in message


@pytest.mark.parametrize(("labels", "says"), [
    (np.arange(20) % 4, "local labels must lie in 0..2; got 0..3"),
    (-np.ones(20, dtype=np.int64), "local labels must lie in 0..2; got -1..-1"),
    (np.zeros(20, dtype=np.float32), "1-D integer tensor of class indices, not torch.float32"),
], ids=["label-outside", "negative-label", "float-labels"])
def test_labels_a_query_cannot_learn_from_are_refused_before_any_exchange(labels, says):
    import torch

    from qkt import query

    torch.manual_seed(0)
    student, teacher = build_model("mlp", (8,), 3), build_model("mlp", (8,), 3)
    with pytest.raises(QueryError, match=says.replace("(", r"\(").replace(".", r"\.")):
        query(student, [teacher], [2], (torch.randn(20, 8), torch.as_tensor(labels)), progress=False)


def test_teacher_weights_that_do_not_fit_are_refused():
    model = build_model("mlp", (64,), 10)
    other = export_weights(build_model("mlp", (64,), 7))
    with pytest.raises(QueryError, match=r"received weight 'head.weight' has shape \(7, 128\), expected \(10, 128\)"):
        import_weights(model, other)


# --- fuzz: random edits of a valid config, random documents, random text -----------------------------------

DEFAULTS = RunConfig().model_dump()
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=6)


def _paths(tree: dict, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for key, value in tree.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out.extend(_paths(value, (*prefix, key)))
    return out


PATHS = _paths(DEFAULTS)


@st.composite
def edited_configs(draw) -> dict:
    """The default config with a few keys set to random values or added under random names."""
    config = copy.deepcopy(DEFAULTS)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        if draw(st.booleans()):
            path = (*path[:-1], draw(st.text(min_size=1, max_size=6)))
        node = config
        for key in path[:-1]:
            node = node[key] if isinstance(node.get(key), dict) else node.setdefault(key, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = draw(VALUES)
    return config


def _clean(fn, *args) -> None:
    """``fn`` either validates or raises a ConfigError whose message names the file: never anything else."""
    try:
        fn(*args)
    except ConfigError as exc:
        assert str(exc) and "Traceback" not in str(exc)


FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(edited_configs())
def test_random_edits_validate_or_fail_cleanly(config):
    _clean(parse_config, config, "fuzz")


@FUZZ
@given(st.one_of(VALUES, st.dictionaries(st.sampled_from(list(DEFAULTS)) | st.text(max_size=5), VALUES, max_size=4)))
def test_random_documents_validate_or_fail_cleanly(document):
    _clean(parse_config, document, "fuzz")


@FUZZ
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80), st.sampled_from([".yaml", ".toml"]))
def test_random_text_files_validate_or_fail_cleanly(tmp_path, text, suffix):
    _clean(load_config_text, tmp_path, text, suffix)


@settings(FUZZ, max_examples=25)
@given(edited_configs())
def test_the_cli_reports_invalid_configs_in_one_message(tmp_path, capsys, config):
    try:
        parse_config(config)
    except ConfigError:
        text = yaml.safe_dump(config, allow_unicode=True)
        err = _fails_cleanly(capsys, tmp_path, text, ".yaml")
        assert "invalid setting" in err or "not valid YAML" in err


def test_a_query_that_fails_exits_non_zero_and_says_why(capsys, tmp_path, monkeypatch):
    def no_usable_expert(*args, **kwargs):
        raise QueryError("no usable expert: teacher '1': its weights hold NaN")

    monkeypatch.setattr("qkt.experiment.run_query", no_usable_expert)
    config = tmp_path / "config.toml"
    config.write_text('methods = ["local", "qkt"]\n[partition]\nnum_parties = 4\n[training]\nepochs = 2\n')
    assert main(["run", "--config", str(config), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: qkt failed") and "no usable expert: teacher '1'" in err
    assert "Traceback" not in err
    assert "failed" in json.loads((tmp_path / "out" / "results.json").read_text())["methods"]["qkt"]["details"]


def test_an_unknown_key_with_no_near_miss_lists_what_the_section_takes():
    with pytest.raises(ConfigError, match=r"query.probe.xyz: unknown key; this section takes kind, steps, num_samples"):
        parse_config({"query": {"probe": {"xyz": 1}}})
    with pytest.raises(ConfigError, match="methods: List should have at least 1 item"):
        parse_config({"methods": []})
