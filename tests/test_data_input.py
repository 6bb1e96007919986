"""The querier's data as a Dataset or a DataLoader: the same query, read batch by batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import qkt
from qkt.inputs import DatasetRows
from qkt.models import cnn
from qkt.query.synth import with_mixups
from qkt.training import fit, per_class_accuracy

IMAGE = (3, 8, 8)
C = 4


def _images(classes, n, seed):
    """Class-coloured 8×8 images: class c lights channel c % 3, brighter for c ≥ 3, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat_interleave(n)
    x = 0.5 * torch.randn(len(y), *IMAGE, generator=g)
    for c in classes:
        x[y == c, c % 3] += 1.5 if c < 3 else 3.0
    return x, y


class Pairs(Dataset):
    """A user's Dataset: (input, label) pairs, the label a plain int."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _trained(classes, seed):
    torch.manual_seed(seed)
    return fit(cnn(IMAGE, C, width=8), _images(classes, 60, seed), epochs=8, seed=seed, progress=False)


@pytest.fixture(scope="module")
def parties():
    # The 'self' probe: the toy teacher scores itself on its held-out images (the querier re-checks its weights with a short data-free probe).
    return {"querier": _trained([0, 1], 0), "teacher": qkt.Teacher(_trained([2, 3], 1), holdout=_images([2, 3], 20, 9))}


CONFIGS = {
    "qkt": qkt.QueryConfig(phase1_epochs=2, phase2_epochs=2, phase1_mixups=0.5, probe={"kind": "self", "steps": 5, "num_samples": 32},
                           inversion={"samples_per_class": 16, "steps": 5}),
    "frozen first block": qkt.QueryConfig(phase1_epochs=2, phase2_epochs=2, phase1_frozen_blocks=1, probe={"kind": "self", "steps": 5, "num_samples": 32},
                                          inversion={"samples_per_class": 16, "steps": 5}),
    "light": qkt.QueryConfig(light=True, phase1_epochs=2, phase2_epochs=2, probe={"kind": "self", "steps": 5, "num_samples": 32},
                             inversion={"samples_per_class": 16, "steps": 5}),
}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dataset_and_dataloader_give_the_tensors_model(parties, name):
    x, y = _images([0, 1], 40, 3)
    config = CONFIGS[name]
    inputs = {"tensors": (x, y), "Dataset": Pairs(x, y), "TensorDataset": TensorDataset(x, y),
              "DataLoader": DataLoader(Pairs(x, y), batch_size=7, shuffle=True)}
    results = {k: qkt.query(parties["querier"], [parties["teacher"]], [2], v, config, progress=False, device="cpu")
               for k, v in inputs.items()}
    model, report = results["tensors"]
    for kind, (other, other_report) in results.items():
        assert _same(model, other), kind
        assert (other_report.experts, other_report.num_transfer_inputs, other_report.bytes_received) == \
               (report.experts, report.num_transfer_inputs, report.bytes_received), kind


def test_evaluation_takes_a_dataset_or_dataloader(parties):
    x, y = _images([0, 1, 2, 3], 25, 5)
    expected = per_class_accuracy(parties["querier"], x, y, C)
    for data in (Pairs(x, y), DataLoader(Pairs(x, y), batch_size=9)):
        np.testing.assert_array_equal(per_class_accuracy(parties["querier"], data, None, C), expected)


@pytest.mark.parametrize("rows", ["tensor", "dataset"])
def test_mixups_made_batch_by_batch_equal_the_whole_tensor(rows):
    """Each batch of the transfer inputs holds exactly the values the materialised inputs and mixups would."""
    x = torch.randn(30, *IMAGE)
    synthetic = torch.randn(6, *IMAGE)
    local = x if rows == "tensor" else DatasetRows(Pairs(x, torch.zeros(30)))
    mixed = with_mixups([local, synthetic], 1.0, 0.4, 7, torch.device("cpu"))
    whole = torch.cat([x, synthetic])
    rng = np.random.default_rng(7)
    i, j = torch.from_numpy(rng.integers(36, size=36)), torch.from_numpy(rng.integers(36, size=36))
    w = torch.from_numpy(rng.beta(0.4, 0.4, size=36)).float().view(-1, 1, 1, 1)
    whole = torch.cat([whole, w * whole[i] + (1 - w) * whole[j]])
    assert len(mixed) == len(whole) == 72
    idx = torch.randperm(72, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mixed[idx], whole[idx])
    assert torch.equal(mixed[10:50], whole[10:50])
    assert torch.equal(mixed.first(36)[0:36], whole[:36]) and len(mixed.first(40)) == 40


def test_an_iterable_dataset_is_refused_with_why(parties):
    class Stream(IterableDataset):
        def __iter__(self):
            yield from zip(*_images([0, 1], 5, 0), strict=True)

    with pytest.raises(qkt.QueryError, match="map-style"):
        qkt.query(parties["querier"], [parties["teacher"]], [2], Stream(), progress=False)


def test_a_dataset_without_labels_is_refused_with_why(parties):
    x, _ = _images([0, 1], 5, 0)
    with pytest.raises(qkt.QueryError, match=r"\(input, label\) pairs"):
        qkt.query(parties["querier"], [parties["teacher"]], [2], TensorDataset(x), progress=False)
