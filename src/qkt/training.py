"""The local training loop, evaluation and checkpoints shared by every method.

Every method — the parties' own training, the baselines and both phases of a
query — goes through :func:`fit`, so that comparisons differ in the algorithm,
not in data handling.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .errors import QKTError
from .files import atomic_file
from .models import FeaturesHead

if TYPE_CHECKING:
    from .config import TrainingConfig

BatchLoss = Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]
Amp = Literal["bf16", "fp16"]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "mps")


# Forward passes that need no gradient go in batches this size: larger batches only add
# memory traffic (a 1,024-image batch ran a CIFAR CNN's inference ~2× slower per image).
EVAL_BATCH_SIZE = 128


def set_threads(threads: int | None = None) -> None:
    """Prepare this process for torch's CPU work: ``threads`` intra-op threads, and freed memory kept for reuse.

    By default ``$OMP_NUM_THREADS`` if set, else every core this process may run on: the
    same count on every run of a machine, so that a run's float rounding, and therefore its
    numbers, do not depend on what else the machine is doing. On a busy machine ask for
    fewer: torch's OpenMP threads spin at every barrier until all of them arrive, so a
    thread sharing its core with another busy process stalls every operation (on 2 cores
    shared with a 2-thread job, a training epoch ran 13× slower with 2 threads than with 1).
    See :func:`reuse_freed_memory` for the memory.
    """
    if threads is None:
        requested = os.environ.get("OMP_NUM_THREADS", "")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = int(requested) if requested.isdigit() and int(requested) > 0 else cores
    torch.set_num_threads(threads)
    reuse_freed_memory()


def reuse_freed_memory(limit: int = 512 * 2**20) -> bool:
    """Let glibc keep up to ``limit`` bytes of freed blocks for reuse; returns False where there is no glibc.

    By default glibc hands every block above 32 MiB straight back to the system and
    trims the heap as soon as it shrinks, so each training or probe step that allocates
    the same large activations pays for them again in page faults: a 256-input probe of
    a CIFAR CNN spent ~40% of its time there. Blocks larger than ``limit`` are still returned.
    The price is resident memory: the CIFAR-10 benchmark's query peaked ~100 MB higher
    (1.0 GB instead of 0.9 GB) and took 15% less time.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError, TypeError):  # no glibc (macOS, Windows): its allocator is left as it is
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, limit // 2)) and bool(mallopt(m_trim_threshold, limit))


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` computes: the device of its first parameter or buffer (the CPU for a model with neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a :class:`torch.device`, ``"auto"`` being CUDA, else Apple's MPS, else the CPU; None stays None.

    Raises :class:`~qkt.errors.QKTError` for a device this machine lacks.
    """
    if device is None:
        return None
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise QKTError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(resolved.type, False):
        raise QKTError(f"device '{device}' is not available on this machine (CUDA: {available['cuda']}, MPS: {available['mps']}); "
                       "use 'cpu' or 'auto'")
    return resolved


def to_model(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` on ``model``'s device, floating inputs in the dtype of its floating parameters (a no-op when they match)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None and x.is_floating_point() else None
    return x.to(device=model_device(model), dtype=dtype)


def fast_layout(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` in channels-last memory order if ``model`` is one of qkt's image models, whose CPU convolutions and pooling then run 1.5-2× faster.

    Shape and values stay the same (outputs agree to float rounding). A user's own model
    gets its inputs as given: it may ``view`` its activations, which needs the default order.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and isinstance(model, FeaturesHead) else x


def augment_images(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and 4-pixel translations (the standard CIFAR augmentation)."""
    if x.ndim != 4 or x.shape[-1] < 16:
        return x
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)  # drawn on the CPU: the same flips on any device
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = 4
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def epoch_orders(n: int, epochs: int, generator: torch.Generator, epoch_size: int | None = None,
                 keep_first: int = 0) -> Iterator[torch.Tensor]:
    """The sample indices of each epoch: one shuffled pass over ``n`` samples, or ``epoch_size`` draws.

    Sized epochs take consecutive slices of a stream of shuffled passes, so over the
    epochs every sample is drawn as often as any other, give or take one. With
    ``keep_first``, every sized epoch holds the first ``keep_first`` samples and draws
    only its other ``epoch_size - keep_first`` from the rest that way.
    """
    if keep_first and epoch_size is not None:
        for drawn in epoch_orders(n - keep_first, epochs, generator, epoch_size - keep_first):
            order = torch.cat([torch.arange(keep_first), drawn + keep_first])
            yield order[torch.randperm(len(order), generator=generator)]
        return
    size = n if epoch_size is None or not n else epoch_size  # nothing to draw from: empty epochs, not an endless loop
    stream = torch.empty(0, dtype=torch.long)
    for _ in range(epochs):
        while len(stream) < size:
            stream = torch.cat([stream, torch.randperm(n, generator=generator)])
        yield stream[:size]
        stream = stream[size:]


def batches(order: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    n = len(order)
    # A lone last sample would break BatchNorm's training statistics: fold it into the previous batch.
    stops = list(range(batch_size, n, batch_size))
    if stops and n - stops[-1] < 2:
        stops.pop()
    return torch.tensor_split(order, stops)


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch[0], batch[1]
    return F.cross_entropy(model(x), y)


def fit(
    model: nn.Module,
    tensors: tuple[torch.Tensor, ...],
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    seed: int = 0,
    loss_fn: BatchLoss = cross_entropy_loss,
    params: Iterable[nn.Parameter] | None = None,
    augment: bool = False,
    epoch_size: int | None = None,
    keep_first: int = 0,
    desc: str | None = None,
    progress: bool = True,
    amp: Amp | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam over mini-batches of ``tensors``, on the model's device.

    ``tensors`` are aligned tensors (inputs first; the inputs may also be any rows that
    a batch of indices selects, such as :class:`qkt.inputs.DatasetRows`); ``loss_fn`` maps
    the model and a batch of them to a scalar. ``params`` restricts which parameters are
    trained. An epoch is one pass over ``tensors``, or ``epoch_size`` samples drawn from
    them, the first ``keep_first`` in every epoch (see :func:`epoch_orders`). ``amp``
    runs the forward pass and loss in bfloat16 or float16 (:func:`torch.autocast`; float16
    on CUDA with a gradient scaler); off by default.
    """
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    n = len(tensors[0])
    device = model_device(model)
    autocast = torch.autocast(device.type, AMP_DTYPES[amp]) if amp else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16" and device.type == "cuda")
    model.train()
    keep_frozen_statistics(model, params)
    bar = tqdm(epoch_orders(n, epochs, generator, epoch_size, keep_first), total=epochs, desc=desc, leave=False,
               disable=not progress or desc is None, unit="epoch")
    with gradients_only_for(model, params):
        for order in bar:
            total = 0.0
            for idx in batches(order, batch_size):
                batch = tuple(take(t, idx, device) for t in tensors)
                # Laid out batch by batch: a whole copy of the inputs in another layout would double their memory.
                batch = (fast_layout(to_model(batch[0], model), model), *batch[1:])
                if augment:
                    batch = (augment_images(batch[0], generator), *batch[1:])
                with autocast:
                    loss = loss_fn(model, batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{total / max(len(order), 1):.3f}")
    model.eval()
    return model


def train_as_party(model: nn.Module, tensors: tuple[torch.Tensor, ...], training: TrainingConfig, seed: int,
                   epochs: int | None = None, loss_fn: BatchLoss = cross_entropy_loss) -> nn.Module:
    """:func:`fit` as every party trains in qkt: ``training``'s epochs (or ``epochs``), optimiser, batch,
    augmentation and mixed precision, no progress bar; one place, so that in-process runs, Flower and
    the baselines train alike."""
    return fit(model, tensors, training.epochs if epochs is None else epochs, training.lr, training.batch_size,
               training.weight_decay, seed=seed, loss_fn=loss_fn, augment=training.augment, progress=False, amp=training.amp)


def take(rows: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The rows ``idx`` of a tensor (on any device) or of rows such as :class:`qkt.inputs.DatasetRows`, on ``device``."""
    picked = rows[idx.to(rows.device)] if isinstance(rows, torch.Tensor) else rows[idx]
    return picked.to(device)


@contextmanager
def gradients_only_for(model: nn.Module, trained: Iterable[nn.Parameter]) -> Iterator[None]:
    """Let autograd track only the ``trained`` parameters of ``model``; every flag is restored afterwards.

    The optimiser would leave the others unchanged anyway, but while they require
    gradients every backward pass runs on through their layers to compute gradients
    nobody reads: QKT Light's Phase 1, which trains the last block and the head of a
    CIFAR CNN, paid for the whole network's backward pass.
    """
    trained_ids = {id(p) for p in trained}
    untracked = [p for p in model.parameters() if p.requires_grad and id(p) not in trained_ids]
    for p in untracked:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in untracked:
            p.requires_grad_(True)


def keep_frozen_statistics(model: nn.Module, trained: Iterable[nn.Parameter]) -> None:
    """Put every sub-module none of whose parameters are trained in evaluation mode.

    A frozen block must compute what it computed before training: in training mode its
    BatchNorm layers would normalise with batch statistics and drift their running
    statistics towards the new data, though none of its weights move.
    """
    trained_ids = {id(p) for p in trained}
    for module in model.modules():
        own = list(module.parameters())
        if own and not any(id(p) in trained_ids for p in own):
            module.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE, layout: nn.Module | None = None) -> torch.Tensor:
    """Outputs of ``model`` on ``x`` in evaluation mode, on the model's device.

    ``x`` is a tensor on any device, or rows that a slice selects (:class:`qkt.inputs.DatasetRows`,
    a transfer set's inputs): it is moved batch by batch, so only the outputs are held whole.
    ``layout``: the model whose input layout the batches take (:func:`fast_layout`; default ``model``).
    """
    was_training = model.training
    model.eval()
    # An empty x still goes through the model once, so its outputs have the model's shape: (0, classes).
    for i in range(0, len(x) or 1, batch_size):
        y = model(fast_layout(to_model(x[i : i + batch_size], model), layout or model))
        if not i:
            # Written into one tensor as they come: gathering the batches first would hold the outputs twice.
            spatial = y.ndim == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
            out = torch.empty((len(x), *y.shape[1:]), dtype=y.dtype, device=y.device,
                              memory_format=torch.channels_last if spatial else torch.contiguous_format)
        out[i : i + len(y)] = y
    model.train(was_training)
    return out


def per_class_accuracy(model: nn.Module, x: torch.Tensor | Dataset | DataLoader, y: torch.Tensor | None, num_classes: int) -> np.ndarray:
    """Accuracy on the test samples of each class (argmax over all classes); NaN for absent classes.

    ``x`` and ``y`` are the inputs and labels, or ``x`` is a map-style :class:`~torch.utils.data.Dataset`
    or a :class:`~torch.utils.data.DataLoader` yielding (input, label) pairs and ``y`` is None.
    """
    from .inputs import as_samples  # qkt.inputs builds on this module

    x, y = as_samples(x if y is None else (x, y))
    pred, y = predict_logits(model, x).argmax(1).cpu(), y.cpu()
    correct = torch.bincount(y[pred == y], minlength=num_classes).double()
    total = torch.bincount(y, minlength=num_classes).double()
    return (correct / total).numpy()


def checkpoint_key(*parts: object) -> str:
    """Name a checkpoint by what produced it: ``parts`` (settings, and arrays by content) and torch's thread count.

    The thread count belongs in the name because it changes the float rounding of
    training, and so the weights: a resumed run on another count must not mix in models
    trained on this one.
    """
    digest = hashlib.sha1()
    for part in (*parts, torch.get_num_threads()):
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else json.dumps(part, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Write ``path`` whole, through a uniquely named temporary file (:func:`qkt.files.atomic_file`).

    An interrupted run never leaves a checkpoint cut short, and two writers of one
    checkpoint never write into each other's file.
    """
    with atomic_file(path) as f:
        torch.save(model.state_dict(), f)


def load_checkpoint(model: nn.Module, path: Path) -> bool:
    """Load ``path`` into ``model`` if it exists and fits; say whether it did.

    A checkpoint that cannot be read (corrupt, cut short) or holds another model's weights
    is not trusted: a warning names it, ``model`` is left untouched and the caller retrains it.
    """
    if not path.exists():
        return False
    try:
        state = torch.load(path, weights_only=True, map_location=model_device(model))
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):  # torch's errors for a file it cannot decode
        warnings.warn(f"checkpoint '{path}' cannot be read (corrupt or cut short); it is retrained", stacklevel=2)
        return False
    own = model.state_dict()
    # Checked before loading: load_state_dict copies every tensor that fits before it raises on one that does not.
    if not (isinstance(state, dict) and state.keys() == own.keys()
            and all(isinstance(v, torch.Tensor) and v.shape == own[k].shape for k, v in state.items())):
        warnings.warn(f"checkpoint '{path}' holds another model's weights; it is retrained", stacklevel=2)
        return False
    model.load_state_dict(state)
    model.eval()
    return True
