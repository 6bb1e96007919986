"""Shared fixtures: seeded, offline, CPU-only, and fast."""

from __future__ import annotations

import os

# One torch thread in every test, in the module-scoped fixtures that run a whole `qkt demo`
# or `qkt bench` too, and in the subprocesses they start: the same float rounding on every
# machine, and no OpenMP threads spinning against a busy neighbour (on 2 busy cores, two
# threads made the bench fixture take minutes instead of seconds).
os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path

import pytest
import torch

from qkt.training import set_threads

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
USER_CACHE = os.environ.get("QKT_CACHE_DIR")  # read before any test isolates it


def shared_data_root() -> Path | None:
    """Where the real data files are: $QKT_DATA_ROOT, else ../shared/data beside the clone."""
    env = os.environ.get("QKT_DATA_ROOT")
    for root in ([Path(env)] if env else []) + [SHARED_DATA]:
        if root.is_dir():
            return root
    return None


def pytest_xdist_auto_num_workers(config) -> int:
    # Each worker holds torch and its data sets (up to a gigabyte); past four, workers wait on the longest test file.
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seeded_cpu():
    # Tests that set another thread count leave it behind: start each test from one.
    torch.manual_seed(0)
    set_threads(1)
    yield


@pytest.fixture
def data_root(_isolated_cache, monkeypatch) -> Path:
    # The real data sets are decoded in the user's cache, once, not once per test run (CIFAR-10 takes seconds).
    if USER_CACHE is None:
        monkeypatch.delenv("QKT_CACHE_DIR")
    else:
        monkeypatch.setenv("QKT_CACHE_DIR", USER_CACHE)
    root = shared_data_root()
    if root is None:
        pytest.skip("real data files not found: set QKT_DATA_ROOT to the folder holding the shared data sets "
                    "(cifar10-jpeg.tar.xz, bloodcell-28.npz, cifar100-jpeg.tar.xz, pathmnist.npz)")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never write into the user's cache; only the data_root fixture lets the real data sets in.
    monkeypatch.setenv("QKT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "qkt-cache"))
