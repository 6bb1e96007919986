"""Files written whole, each through a temporary file renamed into place, or a set of them all or nothing; the checks of
an output folder; and the check of an array's .npy header before it is read from bytes qkt did not write.

A failure to write (a full disk, a read-only folder) is a :class:`~qkt.errors.QKTError`
naming the file: the user can act on it, and it is reported in one line.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import QKTError

# Read once: asking for the umask means setting it, which is not safe once threads run.
_UMASK = os.umask(0)
os.umask(_UMASK)

# Within all_or_nothing(): the (temporary file, target) pairs written and not yet renamed.
_staged: ContextVar[list[tuple[str, Path]] | None] = ContextVar("staged", default=None)


def _cannot_write(path: Path, exc: OSError) -> QKTError:
    return QKTError(f"cannot write '{path}': {exc.strerror or exc}")


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """An open temporary file beside ``path`` that replaces ``path`` once the block ends without error.

    An interrupt never leaves ``path`` cut short, and the temporary name is unique, so
    two writers of one path never write into each other's file: the last to finish wins.
    Within :func:`all_or_nothing` the replacement waits for the end of that block.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's private 0600 would outlive the rename
        staged = _staged.get()
        if staged is None:
            os.replace(tmp, path)
        else:
            staged.append((tmp, path))
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def all_or_nothing() -> Iterator[None]:
    """Let the files written by :func:`atomic_file` in this block replace theirs together at its end, or none if it fails.

    Each is written whole into its temporary file first, so a full disk or an error stops the
    block before any file is replaced; then only renames remain, which need no space. A
    block within another joins the outer one.
    """
    if _staged.get() is not None:
        yield
        return
    staged: list[tuple[str, Path]] = []
    token = _staged.set(staged)
    try:
        yield
        in_the_way = [path for _, path in staged if path.is_dir()]
        if in_the_way:  # the one failure a rename can meet halfway through the set
            raise QKTError(f"cannot write '{in_the_way[0]}': a folder of that name is in the way")
        _replace_together(staged)
        staged.clear()
    finally:
        _staged.reset(token)
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def _replace_together(staged: list[tuple[str, Path]]) -> None:
    """Rename each temporary file onto its target; if one rename fails (or is interrupted), put back the targets already replaced."""
    replaced: list[tuple[Path, str | None]] = []  # each target and a link to its previous version (None: it had none)
    kept: set[str | None] = set()
    try:
        for tmp, path in staged:
            previous = None
            if path.exists():
                previous = f"{tmp}.previous"  # beside the uniquely named temporary file, so unique too
                try:
                    os.link(path, previous)
                except OSError:  # a file system without hard links
                    shutil.copy2(path, previous)
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _cannot_write(path, exc) from None
            replaced.append((path, previous))
    except BaseException:
        for path, previous in reversed(replaced):
            try:
                if previous is None:
                    path.unlink(missing_ok=True)
                else:
                    os.replace(previous, path)
            except OSError as exc:  # the previous version stays beside it, named, rather than lost
                warnings.warn(f"'{path}' could not be put back ({exc.strerror or exc}); its previous version is '{previous}'",
                              stacklevel=2)
                kept.add(previous)
        raise
    finally:
        for tmp, _ in staged:
            if f"{tmp}.previous" not in kept:
                Path(f"{tmp}.previous").unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        f.write(data)


def check_output(folder: Path, reads: str | os.PathLike | None = None) -> None:
    """Refuse, before any work, an output folder that is a file, would be made inside a file or a broken link, cannot be
    written, or lies inside the data folder ``reads`` that the run reads (its files would join the data)."""
    if reads is not None and Path(reads).is_dir() and Path(folder).resolve().is_relative_to(Path(reads).resolve()):
        raise QKTError(f"the output folder '{folder}' is inside the data folder '{reads}', which the run reads: "
                       "its results would become data; choose another output folder")
    nearest = folder
    while not nearest.is_dir():  # the folder, or the nearest of its parents that exists
        if nearest.is_symlink() and not nearest.exists():
            raise QKTError(f"'{nearest}' is a link to '{os.readlink(nearest)}', which does not exist: "
                           f"make that folder, or choose another output folder")
        if nearest.exists():
            raise QKTError(f"'{folder}' is a file, not a folder: choose another output folder" if nearest == folder else
                           f"'{nearest}' is a file, so the output folder '{folder}' cannot be made in it")
        nearest = nearest.parent
    try:
        with tempfile.TemporaryFile(dir=nearest):  # permissions alone miss read-only mounts and root's rights
            pass
    except OSError as exc:
        raise QKTError(f"cannot write into '{nearest}' ({exc.strerror or exc}): choose another output folder") from None


def npy_header(stream: BinaryIO, size: int) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and type of the .npy array of ``size`` bytes at ``stream``'s position, once its header is known to claim
    exactly the bytes that follow it, and no Python objects; ``ValueError`` otherwise.

    ``np.load`` allocates the shape a header claims before it reads the data: a header of a
    few bytes could otherwise ask for terabytes.
    """
    start = stream.tell()
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    claimed, held = math.prod(shape) * dtype.itemsize, size - (stream.tell() - start)
    if dtype.hasobject or claimed != held:
        raise ValueError(f"its header claims shape {shape} of {dtype} ({claimed:,} bytes) in {held:,} bytes of data")
    return shape, dtype
