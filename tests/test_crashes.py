"""Inputs and faults that crashed qkt or misled it silently (issue 44, items 6-14 and 17): one clear line or the right result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from qkt.cli import main
from qkt.models import build_model
from qkt.training import load_checkpoint, save_checkpoint

# A run that takes a second: three parties, one epoch, no query.
TINY = 'methods = ["local"]\n[partition]\nnum_parties = 3\nalpha = 1.0\n[training]\nepochs = 1\n[scenario]\nmax_query_samples = 1000\n'


def _arrays(n: int = 300, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = (rng.normal(size=(n, 8)) + y[:, None]).astype(np.float32)
    return {"x_train": x, "y_train": y, "x_test": x[: n // 5].copy(), "y_test": y[: n // 5].copy()}


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
