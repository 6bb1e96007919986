"""qkt reports progress through the "qkt" logger, which the command line shows or silences; the library never prints."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import yaml

import qkt
from qkt.cli import main
from qkt.models import build_model
from qkt.training import fit

TINY_RUN = {"data": {"max_train": 300, "max_test": 100}, "partition": {"num_parties": 3, "alpha": 1.0},
            "training": {"epochs": 1}, "methods": ["local", "qkt"],
            "query": {"phase1_epochs": 1, "phase2_epochs": 1, "probe": {"steps": 2, "num_samples": 16},
                      "inversion": {"samples_per_class": 8, "steps": 2}}}


def _qkt_records(caplog, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("qkt.") and r.levelno == level]


def test_a_query_logs_its_progress_to_the_qkt_logger(caplog):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 4
    x = torch.randn(80, 8, generator=g) + 2 * torch.nn.functional.one_hot(y, 8).float()
    student = fit(build_model("mlp", (8,), 4), (x[y < 2], y[y < 2]), epochs=20, progress=False)
    teacher = fit(build_model("mlp", (8,), 4), (x[y >= 2], y[y >= 2]), epochs=20, progress=False)
    config = {"phase1_epochs": 1, "phase2_epochs": 1, "probe": {"kind": "noise", "num_samples": 16},
              "inversion": {"samples_per_class": 8, "steps": 2}}
    with caplog.at_level(logging.INFO, logger="qkt"):
        qkt.query(student, {"lab": teacher}, [2], (x[y < 2], y[y < 2]), config, progress=False)
    messages = [r.getMessage() for r in _qkt_records(caplog)]
    assert {r.name for r in _qkt_records(caplog)} == {"qkt.query.querier"}
    assert messages[0] == "query [2] of 4 classes: announcing it to 1 teacher(s)"
    assert "experts: class 2: 'lab'; asking them for their weights" in messages
    assert re.fullmatch(r"query \[2\] learnt in [\d.]+ s \(\d+ transfer inputs, 8 synthetic; [\d,]+ bytes received\)", messages[-1])


@pytest.mark.parametrize("flag", [[], ["--quiet"], ["--verbose"]], ids=["default", "quiet", "verbose"])
def test_the_command_shows_the_log_unless_quiet(tmp_path, caplog, capsys, flag):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN))
    caplog.set_level(logging.DEBUG)  # everything that reaches the root logger is captured; the command sets qkt's level
    assert main(["run", "--config", str(config), *flag]) in (0, 2)
    info, debug = _qkt_records(caplog), _qkt_records(caplog, logging.DEBUG)
    if flag == ["--quiet"]:
        assert not info and not debug
    else:
        assert any(r.getMessage().startswith("training the 3 parties' models") for r in info)
        assert any(r.name == "qkt.query.querier" for r in info)
        assert bool(debug) == (flag == ["--verbose"])
    capsys.readouterr()


def test_the_library_does_not_print():
    """Only the command-line modules print (their tables and messages); the library logs or warns."""
    src = Path(qkt.__file__).parent
    printing = [f"{p.relative_to(src)}:{i}" for p in sorted(src.rglob("*.py")) if p.parent != src / "cli"
                for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"(?<![\w.])print\(", line)]
    assert not printing
