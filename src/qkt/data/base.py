"""The in-memory form every data set is decoded into, and its on-disk cache."""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from stat import S_ISREG

import numpy as np
import torch
from numpy.lib.format import MAGIC_PREFIX

from ..errors import DataError, QKTError
from ..files import atomic_file, npy_header
from ..inputs import NUMBER_KINDS

DATA_ROOT_ENV = "QKT_DATA_ROOT"
CACHE_DIR_ENV = "QKT_CACHE_DIR"


@dataclass(frozen=True)
class DataSet:
    """A labelled train/test split held as NumPy arrays.

    ``x_*`` are images ``(N, H, W, C)`` of ``uint8`` or feature vectors ``(N, D)``
    of ``float32``; ``y_*`` are integer labels in ``0..len(classes)-1``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def digest(self) -> str:
        """A fingerprint of the training arrays: checkpoints are named by it, so that edited data never reuses old models."""
        digest = hashlib.sha1()
        for array in (self.x_train, self.y_train):
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()[:16]

    @property
    def is_image(self) -> bool:
        return self.x_train.ndim == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input: ``(C, H, W)`` for images, ``(D,)`` for features."""
        if self.is_image:
            _, h, w, c = self.x_train.shape
            return (c, h, w)
        return (self.x_train.shape[1],)

    def subsample(self, max_train: int | None = None, max_test: int | None = None, seed: int = 0) -> DataSet:
        """A seeded, stratified subset (for quick runs); the class proportions are kept."""
        from sklearn.model_selection import train_test_split

        def take(x: np.ndarray, y: np.ndarray, limit: int | None, split: str) -> tuple[np.ndarray, np.ndarray]:
            if limit is None or limit >= len(y):
                return x, y
            try:
                keep, _ = train_test_split(np.arange(len(y)), train_size=limit, random_state=seed, stratify=y)
            except ValueError as exc:  # a subset too small for every class, or a class of one sample, cannot be stratified
                raise DataError(f"{self.name}: cannot draw a stratified subset of {limit} {split} samples (data.max_{split}): {exc}") from None
            keep = np.sort(keep)
            return x[keep], y[keep]

        x_train, y_train = take(self.x_train, self.y_train, max_train, "train")
        x_test, y_test = take(self.x_test, self.y_test, max_test, "test")
        return DataSet(self.name, x_train, y_train, x_test, y_test, self.classes)

    def normalized(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float tensors standardised with training statistics, and long labels.

        Standardising makes Gaussian noise the natural "blank" input of every model,
        which is what the data-free probe and model inversion sample from.
        """
        x_train = _as_float(self.x_train)
        mean, std = self._moments(x_train)
        return (
            (x_train - mean) / std,
            torch.as_tensor(self.y_train, dtype=torch.long),
            (_as_float(self.x_test) - mean) / std,
            torch.as_tensor(self.y_test, dtype=torch.long),
        )

    def standardize(self, x: np.ndarray) -> torch.Tensor:
        """Other inputs of this set's kind (e.g. a public pool's) as float tensors standardised with this set's training statistics, as :meth:`normalized` gives its own."""
        mean, std = self._moments(_as_float(self.x_train))
        return (_as_float(x) - mean) / std

    def _moments(self, x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        axes = (0, 2, 3) if self.is_image else (0,)
        return x_train.mean(dim=axes, keepdim=True), x_train.std(dim=axes, keepdim=True).clamp_min(1e-6)


def _as_float(x: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim == 4:
        return t.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return t.float()


def read_npz(source: Path, keys: tuple[str, ...], holder: str, optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (and those of ``optional`` it has) of the ``.npz`` archive ``source``; ``holder`` names the kind of file in messages."""
    contents = f"{holder} holds {', '.join(keys)}" + (f" (and optionally {', '.join(optional)})" if optional else "")
    with open(source, "rb") as f:
        is_npy = f.read(len(MAGIC_PREFIX)) == MAGIC_PREFIX
    if is_npy:
        raise DataError(f"'{source}' holds a single array (a .npy file), not an .npz archive; {contents}")
    if not zipfile.is_zipfile(source):  # np.load would take it for a pickle and answer with pickle's wording
        raise DataError(f"'{source}' is not an .npz archive (the zip file np.savez writes): it may be corrupt or cut short, "
                        f"or another kind of file; {contents}")
    with np.load(source, allow_pickle=False) as f:
        missing = [k for k in keys if k not in f.files]
        if missing:
            raise DataError(f"{source} lacks {', '.join(missing)}; {contents}")
        arrays = {}
        for k in (*keys, *(k for k in optional if k in f.files)):
            member = f.zip.getinfo(f"{k}.npy")
            with f.zip.open(member) as stream:
                try:
                    shape, dtype = npy_header(stream, member.file_size)
                except ValueError as exc:
                    raise DataError(f"{source}: array '{k}' cannot be read: {exc}") from None
            try:
                arrays[k] = f[k]
            except MemoryError:
                raise DataError(f"{source}: array '{k}' of shape {shape} and type {dtype} does not fit in memory") from None
        return arrays


def _looks_misarranged(shape: tuple[int, ...]) -> bool:
    """Whether an N×H×W×C shape is more likely channels-first (N×C×H×W) or a 3-D volume than an image.

    Channels-first images have 1, 3 or 4 on axis 1 and something else last; a volume, or
    channels first with many channels, has a last axis as long as the image's longest side.
    Multispectral images (say 64×64×13) have fewer channels than pixels a side and pass.
    """
    _, h, w, c = shape
    return (h in (1, 3, 4) and c not in (1, 3, 4)) or (c > 4 and c >= max(h, w))


def validate_arrays(name: str, source: Path | str, arrays: dict[str, np.ndarray], classes: tuple[str, ...] | None = None) -> DataSet:
    """Check shapes, dtypes and labels of decoded arrays and wrap them in a :class:`DataSet`."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (2, 3, 4):
            raise DataError(f"{name}: x_{split} in {source} has shape {x.shape}; expected N×H×W×C images or N×D features")
        y = np.asarray(y).reshape(-1)
        if not len(y):
            raise DataError(f"{name}: {source} has no {split} samples (x_{split} and y_{split} are empty)")
        if len(x) != len(y):
            raise DataError(f"{name}: x_{split} has {len(x)} rows but y_{split} has {len(y)} in {source}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{name}: y_{split} in {source} must hold integer labels, not {y.dtype}")
        if int(y.max()) > np.iinfo(np.int64).max:  # only unsigned labels reach here; int64 would wrap them negative
            raise DataError(f"{name}: y_{split} in {source} holds label {y.max()}, beyond any label space "
                            "(a negative label stored as unsigned?); number the classes 0..K-1")
        arrays[f"y_{split}"] = y.astype(np.int64)
        if x.ndim == 3:  # grayscale images without a channel axis
            arrays[f"x_{split}"] = x[..., None]
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if 0 in x.shape[1:]:
            raise DataError(f"{name}: x_{split} in {source} has shape {x.shape}: its inputs hold no values")
        if x.ndim == 4:
            if x.dtype != np.uint8:
                raise DataError(f"{name}: images in {source} must be uint8, not {x.dtype}")
            if _looks_misarranged(x.shape):
                raise DataError(f"{name}: x_{split} in {source} has shape {x.shape}, which looks channels-first or a 3-D volume; "
                                "qkt reads images as N×H×W×C, channels last: move them there with np.moveaxis(x, 1, -1), "
                                "or flatten a volume into features with x.reshape(len(x), -1)")
            continue
        if x.dtype.kind not in NUMBER_KINDS:
            raise DataError(f"{name}: x_{split} in {source} holds {x.dtype} values; features must be real numbers "
                            "(integers, floats or booleans)")
        with np.errstate(over="ignore"):  # values beyond float32's range become infinite, which the check below reports
            x = arrays[f"x_{split}"] = x.astype(np.float32)
        bad = x.size - int(np.count_nonzero(np.isfinite(x)))
        if bad:  # one would turn every model trained or scored on it to NaN
            raise DataError(f"{name}: x_{split} in {source} holds {bad} non-finite value(s) (NaN, or infinite as float32) "
                            f"among its {x.size}; drop or impute them")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{name}: train and test inputs differ in shape in {source}")
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
    if labels.min() < 0:
        raise DataError(f"{name}: negative labels in {source}")
    if classes is not None and labels.max() >= len(classes):
        raise DataError(f"{name}: label {labels.max()} in {source} is outside its {len(classes)} classes")
    size, present = len(classes) if classes is not None else int(labels.max()) + 1, len(np.unique(labels))
    if size > 2 * present:  # every model would have a head, and the chart a bar, for each: a stray label of 100000 hung the chart
        space = (f"{source} names {size} classes, but only {present} of them occur in its labels; keep only their names and"
                 if classes is not None else
                 f"labels in {source} run up to {size - 1}, a label space of {size} classes, but only {present} of them occur;")
        raise DataError(f"{name}: {space} number the classes 0..{present - 1} (np.unique(y, return_inverse=True) does)")
    return DataSet(name, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   classes if classes is not None else tuple(str(c) for c in range(size)))


def resolve_root(data_root: str | os.PathLike | None) -> Path:
    """The folder to look for data files in: the argument, else ``$QKT_DATA_ROOT``, else ``./data``."""
    if data_root is not None:
        return Path(data_root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else Path("data")


def cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qkt"


END_BYTES = 1 << 20


def _ends_digest(file: Path) -> bytes:
    """A hash of the first and last MiB of ``file`` (the whole of a smaller one).

    The end of an ``.npz`` (a zip) holds the CRC-32 of every array in it, and the end of
    a ``.tar.gz`` the CRC-32 of all it holds, so a rewrite shows there even within one
    tick of the change-time clock. It costs about 3 ms; hashing a whole 200 MB archive
    costs 0.19 s (SHA-1, warm page cache), more than reading its cached arrays (0.13 s).
    """
    digest = hashlib.sha1()
    with open(file, "rb") as f:
        digest.update(f.read(END_BYTES))
        f.seek(max(f.tell(), os.fstat(f.fileno()).st_size - END_BYTES))
        digest.update(f.read(END_BYTES))
    return digest.digest()


def cached(name: str, source: Path, decode) -> dict[str, np.ndarray]:
    """Decode ``source`` once and keep the arrays in the cache, keyed by the identity of its files.

    Decoding tens of thousands of images takes seconds; reading a ``.npz`` takes
    milliseconds, and every party of every benchmark run reads the same data.
    A folder's own timestamp does not change when a file inside is edited, so a
    folder is identified by every file under it: its size, modification time, change
    time and inode. ``rsync -t``, ``cp -p`` and ``tar`` give a rewritten file its old size
    and modification time, but a rewrite always moves the change time (or makes a new
    inode). A single file is also identified by its first and last MiB (see
    :func:`_ends_digest`). A source keeps one entry: when its files change, the new
    arrays replace the old ones (a decoded CIFAR-10 is 185 MB).
    """
    location = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    identity = hashlib.sha1()
    for file in sorted(source.rglob("*")) if source.is_dir() else [source]:
        stat = file.stat()
        if S_ISREG(stat.st_mode):
            identity.update(f"|{file.relative_to(source)}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}".encode())
    if not source.is_dir():
        identity.update(_ends_digest(source))
    path = cache_dir() / f"{name}-{location}-{identity.hexdigest()[:12]}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # a cache file cut short is rebuilt, never trusted
    arrays = decode(source)
    try:
        with atomic_file(path) as f:
            np.savez(f, **arrays)
        for stale in path.parent.glob(f"{name}-{location}-" + "?" * 12 + ".npz"):  # not another writer's temporary file
            if stale != path:
                stale.unlink(missing_ok=True)
    except (OSError, QKTError):
        pass  # a read-only home only costs the decoding time again
    return arrays
