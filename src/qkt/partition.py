"""Who holds what: label-skewed partitions and the query scenarios built on them (SPEC §5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import QKTError

LOCAL_CLASS_SHARE = 0.05


def dirichlet(labels: np.ndarray, num_parties: int, alpha: float, seed: int, min_samples: int = 10, max_tries: int = 100) -> list[np.ndarray]:
    """Split sample indices over parties with Dirichlet(``alpha``) label proportions.

    Each class is divided among the parties by its own Dirichlet draw, the usual
    label-skew protocol of federated-learning benchmarks. Draws are repeated until
    every party holds at least ``min_samples`` samples, so no party is empty.
    """
    if alpha <= 0:
        raise QKTError(f"Dirichlet alpha must be > 0, got {alpha}")
    if num_parties * min_samples > len(labels):  # no draw can succeed, and each draw of a huge count takes long
        raise QKTError(f"{num_parties} parties of at least {min_samples} samples each need {num_parties * min_samples} "
                       f"training samples; the data has {len(labels)}: use fewer parties")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_parties)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_parties, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for party, chunk in enumerate(np.split(idx, cuts)):
                parts[party].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_samples:
            return result
    raise QKTError(
        f"could not give each of {num_parties} parties {min_samples} samples with alpha={alpha} "
        f"in {max_tries} draws: use fewer parties or a larger alpha"
    )


def k_classes(labels: np.ndarray, num_parties: int, k: int, seed: int) -> list[np.ndarray]:
    """Pathological skew: each party holds ``k`` classes; each class is shared evenly by its holders.

    Classes are dealt round-robin over a seeded permutation, so every class has a holder
    whenever ``num_parties * k >= |C|``.
    """
    classes = np.unique(labels)
    if not 1 <= k <= len(classes):
        raise QKTError(f"classes per party must be between 1 and {len(classes)}, got {k}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(classes)
    holdings = [order[(np.arange(k) + p * k) % len(classes)] for p in range(num_parties)]
    holders = {c: [p for p in range(num_parties) if c in holdings[p]] for c in classes}
    parts: list[list[np.ndarray]] = [[] for _ in range(num_parties)]
    for c, owners in holders.items():
        if not owners:
            continue
        idx = rng.permutation(np.flatnonzero(labels == c))
        for owner, chunk in zip(owners, np.array_split(idx, len(owners)), strict=True):
            parts[owner].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """``counts[k, c]``: samples of class ``c`` held by party ``k``."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def local_classes(counts: np.ndarray, share: float = LOCAL_CLASS_SHARE) -> list[int]:
    """Classes making up at least ``share`` of a party's samples (SPEC §3's ``L_q``)."""
    total = counts.sum()
    return [int(c) for c in np.flatnonzero(counts >= share * total)] if total else []


@dataclass(frozen=True)
class Scenario:
    """One query: who asks, for what, and what it held before.

    ``parts`` are the parties' sample indices *after* the querier's few samples of
    the query classes were removed, so the querier holds none of them.
    """

    querier: int
    query: tuple[int, ...]
    local_classes: tuple[int, ...]
    parts: tuple[np.ndarray, ...]
    removed: int


def make_scenario(
    labels: np.ndarray,
    parts: list[np.ndarray],
    querier: int,
    query_size: int,
    seed: int,
    num_classes: int,
    max_query_samples: int = 10,
    min_expert_samples: int = 10,
    query: tuple[int, ...] | None = None,
) -> Scenario:
    """Pick ``Q`` for ``querier`` among classes it holds fewer than ``max_query_samples`` of.

    Only classes that some other party holds at least ``min_expert_samples`` of are
    eligible, so that an expert exists; the querier's few samples of ``Q`` are then
    removed. Pass ``query`` to fix ``Q`` instead of drawing it.
    """
    if not 0 <= querier < len(parts):
        raise QKTError(f"querier {querier} does not exist: there are {len(parts)} parties (0..{len(parts) - 1})")
    counts = class_counts(labels, parts, num_classes)
    others = np.delete(counts, querier, axis=0)
    has_expert = others.max(axis=0) >= min_expert_samples
    if query is None:
        eligible = np.flatnonzero((counts[querier] < max_query_samples) & has_expert)
        if len(eligible) < query_size:
            raise QKTError(
                f"party {querier} lacks only {len(eligible)} classes that another party knows "
                f"(fewer than {max_query_samples} samples held); cannot draw a query of {query_size}"
            )
        rng = np.random.default_rng([seed, querier])
        query = tuple(sorted(int(c) for c in rng.choice(eligible, size=query_size, replace=False)))
    else:
        query = tuple(sorted(int(c) for c in query))
        missing = [c for c in query if not has_expert[c]]
        if missing:
            raise QKTError(f"no other party holds {min_expert_samples}+ samples of class(es) {missing}: nobody can teach them")
        known = [c for c in query if counts[querier, c] >= max_query_samples]
        if known:
            raise QKTError(f"party {querier} holds {max_query_samples}+ samples of class(es) {known}: a query asks for classes "
                           "the querier lacks; choose another scenario.querier or raise scenario.max_query_samples")
    keep = ~np.isin(labels[parts[querier]], query)
    new_parts = list(parts)
    new_parts[querier] = parts[querier][keep]
    before = class_counts(labels, [new_parts[querier]], num_classes)[0]
    return Scenario(querier, query, tuple(local_classes(before)), tuple(new_parts), int((~keep).sum()))


def eligible_queriers(labels: np.ndarray, parts: list[np.ndarray], num_classes: int, query_size: int,
                      max_query_samples: int = 10, min_expert_samples: int = 10, query: tuple[int, ...] | None = None) -> list[int]:
    """Parties that lack at least ``query_size`` classes some other party can teach; with ``query``, every class of it."""
    counts = class_counts(labels, parts, num_classes)
    result = []
    for k in range(len(parts)):
        has_expert = np.delete(counts, k, axis=0).max(axis=0) >= min_expert_samples
        can_ask = (counts[k] < max_query_samples) & has_expert
        if can_ask[list(query)].all() if query else can_ask.sum() >= query_size:
            result.append(k)
    return result


def format_holdings(counts: np.ndarray, querier: int | None = None, query: tuple[int, ...] = ()) -> str:
    """A text table of samples per party and class; the querier's row and the query columns are marked."""
    num_classes = counts.shape[1]
    head = "party " + "".join(f"{('*' if c in query else '') + str(c):>6}" for c in range(num_classes)) + "   total"
    rows = [head]
    for k, row in enumerate(counts):
        mark = "q" if k == querier else " "
        rows.append(f"{mark}{k:>4} " + "".join(f"{n:>6}" for n in row) + f"{row.sum():>8}")
    if query:
        rows.append("(q = querier, * = query class)")
    return "\n".join(rows)


def hold_out(labels: np.ndarray, parts: Sequence[np.ndarray], share: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each party's samples into those it trains on and those it keeps out, ``share`` of each class it holds.

    A class held at least twice keeps one sample out or more, so a party's held-out set
    covers every class it could be an expert of; ``share = 0`` keeps nothing out. Each
    party draws from its own seeded stream, so its split does not move when another
    party's samples change (a querier losing its few samples of ``Q``).
    """
    if share <= 0:
        return list(parts), [part[:0] for part in parts]
    train, held = [], []
    for k, part in enumerate(parts):
        rng = np.random.default_rng([seed, k])
        out = [members[:max(1, round(share * len(members)))] for c in np.unique(labels[part])
               if len(members := rng.permutation(part[labels[part] == c])) >= 2]
        kept_out = np.sort(np.concatenate(out)) if out else part[:0]
        train.append(part[~np.isin(part, kept_out)])
        held.append(kept_out)
    return train, held
