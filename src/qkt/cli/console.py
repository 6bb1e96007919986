"""What the commands print, where their log goes, and the argument types they share (``qkt`` and ``qkt flower``)."""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..partition import format_holdings
from ..report import describe_scenario, format_table

T = TypeVar("T", int, float)


def print_run(summary: dict, output: Path | None, started: float) -> None:
    s = summary["scenario"]
    print("\nwho holds what (training samples per class):")
    print(format_holdings(np.array(s["holdings"]), s["querier"], tuple(s["query"])))
    print("\n" + describe_scenario(summary) + "\n")
    print(format_table(summary["methods"]))
    for note in summary["reports"].get("qkt", {}).get("warnings", []):
        print(f"warning: {note}")
    if output is not None:
        print(f"\nwrote {output / 'results.json'}, {output / 'results.md'} and {output / 'per_class_accuracy.png'}")
    print(f"done in {time.perf_counter() - started:.0f} s")


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` and ``--quiet``, for the commands that run something (see :func:`configure_logging`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--verbose", action="store_true", help="also qkt's debug messages")
    group.add_argument("--quiet", action="store_true", help="only warnings and errors: no progress messages or bars")


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Show qkt's log (logger ``qkt``) on stderr: its progress messages, also debug ones if ``verbose``, only warnings if ``quiet``.

    Other libraries' loggers show warnings only. A process that already configured
    logging (an application importing qkt's CLI, a test) keeps its handlers.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(_Format("%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("qkt").setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def bounded(kind: Callable[[str], T], minimum: T, *, inclusive: bool = True) -> Callable[[str], T]:
    """An argparse ``type``: ``kind(text)``, refused below ``minimum`` (or at it, unless ``inclusive``) and if not finite."""

    def parse(text: str) -> T:
        value = kind(text)
        if not math.isfinite(value):  # NaN passes every bound, and a timeout of NaN never expires
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'more than'} {minimum}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value: 'x'"
    return parse


positive_int = bounded(int, 1)
positive_float = bounded(float, 0.0, inclusive=False)
non_negative_int = bounded(int, 0)
