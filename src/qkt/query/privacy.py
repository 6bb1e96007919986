"""Differential privacy of a teacher's probe reply: the Laplace mechanism (docs/privacy.md).

The protected unit is the teacher's training data, all of it. A teacher's model is
not trained with differential privacy, so changing even one training record may
change the model, and with it every probe output, arbitrarily. The only bound that
holds is therefore the range of the reply: ``s[k, Q]`` is a mean of softmax vectors
restricted to ``Q``, and two probability vectors differ by at most 2 in L1 norm (and
by at most 1 per coordinate), so the L1 sensitivity is ``min(2, |Q|)`` for any two
models. Laplace noise of scale ``min(2, |Q|) / ε`` makes the reply ε-differentially
private with respect to the whole model, hence to any change of the teacher's data.
The expert's weights, sent afterwards to the querier that asks, are not covered.
"""

from __future__ import annotations

import numpy as np


def laplace_scale(num_scores: int, epsilon: float) -> float:
    """The Laplace scale ``b = Δ1 / ε`` for a reply of ``num_scores`` probe scores."""
    return min(2.0, float(num_scores)) / epsilon


def privatize(scores: np.ndarray, epsilon: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """``scores`` plus Laplace noise, clipped to [0, 1] (post-processing costs no privacy).

    ``rng`` defaults to fresh operating-system entropy: noise the querier could
    regenerate from a seed would protect nothing.
    """
    rng = rng if rng is not None else np.random.default_rng()
    noisy = scores + rng.laplace(0.0, laplace_scale(len(scores), epsilon), size=len(scores))
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)
