"""A querier's data as PyTorch users hold it: two tensors, a map-style ``Dataset`` or a ``DataLoader``.

A query and an evaluation read the data batch by batch: a tensor is sliced, a
:class:`~torch.utils.data.Dataset` is read item by item into batches
(:class:`DatasetRows`), so a data set behind a ``Dataset`` is never held whole as
float tensors. Only the labels are read once up front, as one int64 tensor.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .errors import QueryError

NUMBER_KINDS = "biuf"
"""NumPy dtype kinds a model's inputs and weights can hold: bool, signed and unsigned integers, floats (not complex, dates, strings or records)."""

LocalData = tuple[torch.Tensor, torch.Tensor] | Dataset | DataLoader
"""What ``qkt.query`` and the evaluation helpers take as data: (inputs, labels), a Dataset or a DataLoader yielding (input, label)."""

# Items read per batch when the labels are collected.
LABEL_BATCH = 256


class DatasetRows:
    """The inputs of a map-style ``Dataset`` of (input, label) pairs, selected by index or slice as a stacked batch.

    Stands where a tensor of inputs would: ``len(rows)``, ``rows[idx]`` (a LongTensor of
    indices or a slice) and ``rows.shape`` (the first item's shape after the length).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._length = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        indices = range(self._length)[idx] if isinstance(idx, slice) else idx.tolist()
        return torch.stack([torch.as_tensor(self.dataset[i][0]) for i in indices])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._length, *torch.as_tensor(self.dataset[0][0]).shape))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


def _labels(dataset: Dataset, workers: int) -> torch.Tensor:
    """Every label of ``dataset``, in order, read in batches (with ``workers`` loader processes)."""
    loader = DataLoader(dataset, batch_size=LABEL_BATCH, shuffle=False, num_workers=workers)
    try:
        labels = [torch.as_tensor(batch[1]).reshape(-1) for batch in loader]
    except (TypeError, IndexError, KeyError, ValueError) as exc:
        raise QueryError(f"the data set must yield (input, label) pairs: {type(exc).__name__}: {exc}") from None
    return torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)


def as_samples(data: LocalData, dtype: torch.dtype | None = None) -> tuple[torch.Tensor | DatasetRows, torch.Tensor]:
    """The inputs (a tensor, cast to ``dtype`` if given, or :class:`DatasetRows`) and the labels of ``data``.

    Two tensors or NumPy arrays go through :func:`as_tensors`; a pair whose inputs are
    already :class:`DatasetRows` is returned as it is.

    A ``DataLoader`` gives its data set (the query draws its own seeded batches; its
    ``num_workers`` read the labels); it must be map-style, since the query reads items by index.
    """
    if isinstance(data, DataLoader):
        dataset, workers = data.dataset, data.num_workers
    elif isinstance(data, Dataset):
        dataset, workers = data, 0
    elif isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], DatasetRows):
        return data[0], torch.as_tensor(data[1])
    elif isinstance(data, tuple | list):
        return as_tensors(data, dtype)
    else:
        raise QueryError(f"local data must be (inputs, labels) tensors, a torch Dataset or a DataLoader, not {type(data).__name__}")
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise QueryError("the data set must be map-style (len() and indexing): a query reads its items by index, "
                         "an IterableDataset cannot be")
    if not len(dataset):
        raise QueryError("the data set is empty")
    return DatasetRows(dataset), _labels(dataset, workers)


def as_tensors(local_data: object, dtype: torch.dtype | None = None, what: str = "local") -> tuple[torch.Tensor, torch.Tensor]:
    """The querier's ``(inputs, labels)`` as tensors, inputs in the models' floating-point ``dtype``.

    Tensors and NumPy arrays are accepted (arrays are converted; inputs are cast to
    ``dtype`` unless it is None). Labels are checked with the query
    (:func:`qkt.query.querier.check_local_data`). ``what`` names the data in the errors.
    """
    if not (isinstance(local_data, tuple | list) and len(local_data) == 2):
        raise QueryError(f"{what} data must be a pair (inputs, labels), not {type(local_data).__name__}"
                         + (f" of {len(local_data)}" if isinstance(local_data, tuple | list) else ""))
    x, y = (_tensor(f"{what} {part}", a) for part, a in zip(("inputs", "labels"), local_data, strict=True))
    return as_inputs(x, dtype, f"{what} inputs"), y


def class_indices(labels: torch.Tensor, num_inputs: int, what: str = "local") -> torch.Tensor:
    """``labels`` as int64 class indices on the CPU, after checking there is one integer per input and at least one input.

    ``what`` names the data in the one-line :class:`~qkt.errors.QueryError` that refuses them.
    """
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool or labels.ndim != 1:
        raise QueryError(f"{what} labels must be a 1-D integer tensor of class indices, not {labels.dtype} of shape {tuple(labels.shape)}")
    if len(labels) != num_inputs or not num_inputs:
        raise QueryError(f"{what} data must be non-empty inputs and labels of equal length (got {num_inputs} and {len(labels)})")
    return labels.long().cpu()  # the losses take int64 class indices; the few label tensors live on the CPU


def as_inputs(value: object, dtype: torch.dtype | None = None, what: str = "local inputs") -> torch.Tensor:
    """``value`` (a tensor or a NumPy array) as a batch of finite floating-point inputs, cast to ``dtype`` unless it is None.

    ``what`` names the inputs in the one-line :class:`~qkt.errors.QueryError` that refuses them.
    """
    x = _tensor(what, value)
    if not x.is_floating_point():
        raise QueryError(f"{what} are {x.dtype}; the models take floating-point inputs, normalised as in training "
                         "(e.g. x.float() / 255)")
    if x.ndim < 2:
        raise QueryError(f"{what} must be a batch (samples first), not a tensor of shape {tuple(x.shape)}")
    if dtype is not None:
        x = x.to(dtype)
    bad = int((~torch.isfinite(x)).sum())
    if bad:  # every model trained on them would be NaN
        raise QueryError(f"{what} hold {bad} non-finite value(s) (NaN, or infinite as {x.dtype})")
    return x


def _tensor(what: str, value: object) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        try:
            return torch.as_tensor(value)
        except TypeError:  # strings, objects, dates: torch holds numbers only
            raise QueryError(f"{what} are a NumPy array of {value.dtype}, which torch cannot hold: give numbers") from None
    if not isinstance(value, torch.Tensor):
        raise QueryError(f"{what} must be a torch.Tensor or a NumPy array, not {type(value).__name__}")
    return value
