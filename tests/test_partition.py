"""Partitions assign every sample once; scenarios leave the querier with none of its query classes."""

from __future__ import annotations

import numpy as np
import pytest

from qkt.errors import QKTError
from qkt.partition import class_counts, dirichlet, eligible_queriers, format_holdings, k_classes, make_scenario

LABELS = np.repeat(np.arange(10), 100)


def _assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


def test_dirichlet_covers_every_sample_once_and_is_seeded():
    parts = dirichlet(LABELS, 10, 0.1, seed=3)
    _assert_exact_cover(parts, len(LABELS))
    assert all(len(p) >= 10 for p in parts)
    again = dirichlet(LABELS, 10, 0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, dirichlet(LABELS, 10, 0.1, seed=4), strict=True))


def test_small_alpha_is_skewed_large_alpha_is_balanced():
    def mean_classes_held(alpha):
        counts = class_counts(LABELS, dirichlet(LABELS, 10, alpha, seed=0), 10)
        return (counts >= 0.05 * counts.sum(1, keepdims=True)).sum(1).mean()

    assert mean_classes_held(0.1) < 5 < mean_classes_held(100.0)


def test_k_classes_gives_each_party_k_classes():
    parts = k_classes(LABELS, 5, 2, seed=0)
    _assert_exact_cover(parts, len(LABELS))
    counts = class_counts(LABELS, parts, 10)
    assert ((counts > 0).sum(1) == 2).all()


def test_scenario_removes_query_samples_and_keeps_experts():
    parts = dirichlet(LABELS, 10, 0.1, seed=0)
    querier = eligible_queriers(LABELS, parts, 10, 3)[0]
    s = make_scenario(LABELS, parts, querier, 3, seed=0, num_classes=10)
    held = class_counts(LABELS, [s.parts[querier]], 10)[0]
    assert len(s.query) == 3 and all(held[c] == 0 for c in s.query)
    others = np.delete(class_counts(LABELS, list(s.parts), 10), querier, axis=0)
    assert all(others[:, c].max() >= 10 for c in s.query)
    assert not set(s.local_classes) & set(s.query)
    assert make_scenario(LABELS, parts, querier, 3, seed=0, num_classes=10).query == s.query


def test_scenario_refuses_impossible_queries():
    parts = k_classes(LABELS, 10, 10, seed=0)  # everybody holds everything: nothing to ask for
    with pytest.raises(QKTError, match="cannot draw a query"):
        make_scenario(LABELS, parts, 0, 1, seed=0, num_classes=10)
    with pytest.raises(QKTError, match="querier 12 does not exist"):
        make_scenario(LABELS, parts, 12, 1, seed=0, num_classes=10)


def test_a_fixed_query_goes_only_to_a_querier_that_lacks_it():
    parts = dirichlet(LABELS, 10, 0.1, seed=0)
    counts = class_counts(LABELS, parts, 10)
    query = (int(counts[0].argmax()),)
    eligible = eligible_queriers(LABELS, parts, 10, 1, query=query)
    assert 0 not in eligible and eligible
    assert all(counts[k, query[0]] < 10 for k in eligible)
    with pytest.raises(QKTError, match=f"party 0 holds 10\\+ samples of class\\(es\\) \\[{query[0]}\\]"):
        make_scenario(LABELS, parts, 0, 1, seed=0, num_classes=10, query=query)


def test_holdings_table_marks_querier_and_query():
    counts = class_counts(LABELS, k_classes(LABELS, 3, 4, seed=0), 10)
    table = format_holdings(counts, querier=1, query=(2,))
    assert "*2" in table and table.splitlines()[2].startswith("q")
