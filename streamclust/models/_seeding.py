"""k-means++ seeding where the sample is: NumPy arrays or tensors on a device.

scikit-learn's greedy k-means++ (:func:`sklearn.cluster.kmeans_plusplus`: ``2 + ln k``
candidates a centre, the one that lowers the potential most kept), written once for
both array libraries.  The random draws are scikit-learn's, in the same order, from a
NumPy ``RandomState`` on the host; on NumPy every product and sum is the one scikit-learn
makes, so the seeds are scikit-learn's exactly.  On a device nothing comes back to the
host until the last centre is chosen: a GPU is not made to wait for the host once a
centre (the seeding of a 200-component mixture is 200 rounds of a few small kernels).
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state

from ..engine.arrays import empty, float64, host, is_numpy, like, namespace, sum_squares

__all__ = ["kmeans_plusplus"]


def _squared_distances(C, X, x_sq):
    """scikit-learn's ``_euclidean_distances(C, X, Y_norm_squared=x_sq, squared=True)`` for float64."""
    xp = namespace(X)
    d = -2 * (C @ X.T)
    d += sum_squares(C, axis=1)[:, None]
    d += x_sq[None, :]
    return xp.clip(d, min=0.0)


def kmeans_plusplus(X, n_clusters: int, *, random_state=None, sample_weight=None,
                    n_local_trials: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeds of the rows of ``X``: ``(centers, indices)``, NumPy arrays.

    ``X`` is a NumPy array or a tensor (the arithmetic runs on its device), seeded in
    float64 whatever its dtype; ``sample_weight`` a NumPy array of row weights (``None``:
    ones); ``random_state`` as scikit-learn's.  For float64 rows, the same seeds as
    :func:`sklearn.cluster.kmeans_plusplus` for the same arguments (on a device: to the
    rounding of its products, which could only matter for a draw on a boundary; scikit-learn
    seeds float32 rows in float32).
    """
    n = int(X.shape[0])
    k = int(n_clusters)
    if n < k:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}.")
    X = np.asarray(X, dtype=np.float64) if is_numpy(X) else X.to(dtype=float64(X))
    xp = namespace(X)
    rs = check_random_state(random_state)
    w_host = np.ones(n, dtype=np.float64) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    trials = 2 + int(np.log(k)) if n_local_trials is None else int(n_local_trials)
    # scikit-learn's draws, in its order: the first centre, then `trials` uniforms a centre
    first = int(rs.choice(n, p=w_host / w_host.sum()))
    uniforms = like(X, rs.uniform(size=(max(k - 1, 0), trials)))
    w = like(X, w_host)
    w_col = xp.reshape(w, (-1, 1))
    x_sq = sum_squares(X, axis=1)
    indices = empty((k,), X, dtype=xp.int64)
    indices[0] = first
    closest = _squared_distances(X[first : first + 1], X, x_sq)  # (1, n), as scikit-learn's
    potential = closest @ w  # (1,)
    for c in range(1, k):
        # candidates drawn with probability proportional to the squared distance to the nearest centre
        draws = uniforms[c - 1] * potential
        ids = xp.clip(xp.searchsorted(xp.cumulative_sum(xp.reshape(w * closest, (-1,))), draws), max=n - 1)
        dist = xp.minimum(closest, _squared_distances(xp.take(X, ids, axis=0), X, x_sq))
        pots = xp.reshape(dist @ w_col, (-1,))
        # the candidate that lowers the potential most (the first of equals, as NumPy's argmin);
        # taken by index arrays, not Python integers: on a device nothing waits for the host
        best = xp.reshape(xp.argmin(pots), (1,))
        potential = xp.take(pots, best)
        closest = xp.reshape(xp.take(dist, best, axis=0), (-1,))
        indices[c : c + 1] = xp.take(ids, best)
    return host(xp.take(X, indices, axis=0)), host(indices).astype(np.intp)
