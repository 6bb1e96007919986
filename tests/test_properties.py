"""Properties that hold for every input: partitions assign each sample once, and the mask rule of SPEC §2."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qkt.partition import class_counts, dirichlet, k_classes, make_scenario
from qkt.query.probe import expert_masks

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def labelled(draw):
    """Labels over 2-12 classes, 20-120 samples each, in shuffled order."""
    num_classes = draw(st.integers(2, 12))
    sizes = draw(st.lists(st.integers(20, 120), min_size=num_classes, max_size=num_classes))
    labels = np.repeat(np.arange(num_classes), sizes)
    return np.random.default_rng(draw(st.integers(0, 2**16))).permutation(labels), num_classes


def _exact_cover(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


@PROPERTY
@given(labelled(), st.integers(2, 8), st.floats(0.05, 100.0), st.integers(0, 10**6))
def test_dirichlet_assigns_every_sample_once_and_reproduces(data, num_parties, alpha, seed):
    labels, _ = data
    parts = dirichlet(labels, num_parties, alpha, seed, min_samples=1, max_tries=1000)
    assert len(parts) == num_parties and _exact_cover(parts, len(labels))
    assert all(len(p) >= 1 for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, dirichlet(labels, num_parties, alpha, seed, min_samples=1, max_tries=1000), strict=True))


@PROPERTY
@given(labelled(), st.integers(1, 10), st.integers(1, 12), st.integers(0, 10**6))
def test_k_classes_holdings(data, num_parties, k, seed):
    labels, num_classes = data
    k = min(k, num_classes)
    parts = k_classes(labels, num_parties, k, seed)
    counts = class_counts(labels, parts, num_classes)
    held = counts > 0
    assert (held.sum(1) <= k).all()
    if num_parties * k >= num_classes:  # every class has a holder, so every sample is assigned, once
        assert _exact_cover(parts, len(labels)) and held.any(0).all()
        assert (held.sum(1) == k).all()
    assert all(np.array_equal(a, b) for a, b in zip(parts, k_classes(labels, num_parties, k, seed), strict=True))


@PROPERTY
@given(labelled(), st.integers(3, 8), st.integers(0, 1000))
def test_a_scenario_leaves_the_querier_none_of_its_query(data, num_parties, seed):
    labels, num_classes = data
    parts = k_classes(labels, num_parties, max(1, num_classes // 2), seed)
    lacking = [c for c in range(num_classes) if class_counts(labels, [parts[0]], num_classes)[0, c] == 0
               and class_counts(labels, parts[1:], num_classes)[:, c].max() >= 10]
    if not lacking:
        return
    s = make_scenario(labels, parts, 0, 1, seed, num_classes)
    assert s.query[0] in lacking and not np.isin(labels[s.parts[0]], s.query).any()
    assert all(np.array_equal(a, b) for a, b in zip(s.parts[1:], parts[1:], strict=True))


@st.composite
def replies(draw):
    """Probe replies of 1-6 teachers over a query of 1-4 classes of a 2-20 class label space."""
    num_classes = draw(st.integers(2, 20))
    q = draw(st.integers(1, min(4, num_classes)))
    teachers = draw(st.integers(1, 6))
    scores = draw(arrays(np.float64, (teachers, q), elements=st.floats(0, 1)))
    return {str(k): scores[k] for k in range(teachers)}, list(range(q)), num_classes


@PROPERTY
@given(replies(), st.floats(1.0, 10.0), st.floats(1.0, 10.0))
def test_mask_rule_threshold_fallback_and_monotonic_in_lambda(reply, lam_a, lam_b):
    scores, query, num_classes = reply
    low, high = sorted((lam_a, lam_b))
    masks = expert_masks(scores, query, num_classes, low)
    stricter = expert_masks(scores, query, num_classes, high)
    matrix = np.stack([scores[k] for k in scores])
    for j in range(len(query)):
        experts = [k for k in scores if masks[k][j]]
        best = matrix[:, j].max()
        # Threshold: every teacher at or above λ/|C| is an expert ...
        assert all(masks[k][j] for k in scores if scores[k][j] >= low / num_classes)
        # ... and the fallback adds at most the single best, and only when it is above uniform.
        over = [k for k in experts if scores[k][j] < low / num_classes]
        assert len(over) <= 1 and all(scores[k][j] == best and best > 1 / num_classes for k in over)
        assert bool(experts) == (best >= low / num_classes or best > 1 / num_classes)
        # A larger λ never adds an expert.
        assert all(masks[k][j] for k in scores if stricter[k][j])
