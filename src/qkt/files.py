"""Files written whole: each through a temporary file renamed into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# Read once: asking for the umask means setting it, which is not safe once threads run.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """An open temporary file beside ``path`` that replaces ``path`` once the block ends without error.

    An interrupt never leaves ``path`` cut short, and the temporary name is unique, so
    two writers of one path never write into each other's file: the last to finish wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's private 0600 would outlive the rename
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        f.write(data)
