"""Streaming agglomerative clustering: k-means micro-clusters, then a size-weighted linkage.

:class:`StreamingAgglomerative` approximates :class:`sklearn.cluster.AgglomerativeClustering`
on data of any size in two stages:

1. *sub-clusters*: :class:`~streamclust.models.kmeans.StreamingKMeans` with
   ``n_subclusters`` centres summarises the data (its plan of passes, resumable and
   mergeable for Lloyd); its final labelling pass also keeps, per sub-cluster, the count,
   the sum of ``x - c`` and of ``||x - c||^2`` of its rows, so the exact mean of each
   sub-cluster's rows and the exact within-cluster sum of squares of any union of
   sub-clusters are known.
2. *linkage*: the sub-clusters are merged by a hierarchical clustering that honours
   their sizes (:func:`weighted_linkage`: nearest-neighbour chain with Lance–Williams
   updates started from the sub-cluster sizes), cut at ``n_clusters``.

Every row takes the cluster of its nearest sub-cluster centre (``labels_``, ``predict``).
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..engine.arrays import host
from ..engine import RowSource, StreamingMixin, as_row_source, fit_streaming
from .kmeans import StreamingKMeans, _cluster_sums, _LabelAccumulator, nearest_centre

__all__ = ["StreamingAgglomerative", "weighted_linkage", "cut_linkage"]

LINKAGES = ("ward", "average", "complete", "single")


# ------------------------------------------------------------------------ linkage
def _initial_distances(centers: np.ndarray, sizes: np.ndarray, linkage: str) -> np.ndarray:
    sq = np.einsum("ij,ij->i", centers, centers)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (centers @ centers.T)
    np.maximum(d2, 0.0, out=d2)
    if linkage == "ward":  # scipy's convention: sqrt(2 n_a n_b / (n_a + n_b)) ||c_a - c_b||
        d2 *= 2.0 * np.outer(sizes, sizes) / (sizes[:, None] + sizes[None, :])
    D = np.sqrt(d2)
    np.fill_diagonal(D, np.inf)
    return D


def weighted_linkage(centers, sizes, linkage: str = "ward") -> np.ndarray:
    """Hierarchical clustering of weighted points, as a scipy linkage matrix.

    Each point ``i`` stands for a cluster of ``sizes[i]`` rows whose mean is
    ``centers[i]``.  The merges are those of the nearest-neighbour chain algorithm with
    the Lance–Williams update of ``linkage``, started from the given sizes:

    ``"ward"``
        Exact Ward merges of the clusters (``d(a, b) = sqrt(2 n_a n_b / (n_a + n_b))
        ||c_a - c_b||``, scipy's convention): the increase of the within-cluster sum of
        squares of merging two clusters depends only on their sizes and means, so this
        is the Ward tree of the rows, constrained to keep each sub-cluster whole.
    ``"average"``
        Size-weighted average of the distances between centres (UPGMA).
    ``"complete"``, ``"single"``
        Largest / smallest distance between centres (sizes do not matter).

    With unit sizes the result equals :func:`scipy.cluster.hierarchy.linkage` of the
    points (up to the order of equal-height merges).

    Parameters
    ----------
    centers : array-like of shape (m, n_features)
        Cluster means.
    sizes : array-like of shape (m,)
        Positive cluster sizes (weights).
    linkage : {"ward", "average", "complete", "single"}, default="ward"
        Linkage criterion.

    Returns
    -------
    Z : ndarray of shape (m - 1, 4)
        ``[id_a, id_b, distance, size]`` per merge, by increasing distance; ids below
        ``m`` are points, ``m + t`` is the cluster formed by merge ``t``.

    Notes
    -----
    ``O(m^2)`` time and memory (one ``m x m`` float64 matrix).
    """
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {LINKAGES}, got {linkage!r}")
    centers = np.asarray(centers, dtype=np.float64)
    size = np.asarray(sizes, dtype=np.float64).copy()
    m = centers.shape[0]
    if size.shape != (m,) or np.any(size <= 0):
        raise ValueError("sizes must hold one positive weight per center")
    if m < 2:
        return np.zeros((0, 4))
    D = _initial_distances(centers, size, linkage)
    active = np.ones(m, dtype=bool)
    merges = []  # (slot_a, slot_b, distance); the union takes slot b
    chain: list[int] = []
    for _ in range(m - 1):
        while True:
            if not chain:
                chain.append(int(np.flatnonzero(active)[0]))
            a = chain[-1]
            row = D[a]
            b = int(np.argmin(row))
            if len(chain) > 1 and row[chain[-2]] <= row[b]:
                b = chain[-2]  # ties go to the previous element: the chain never cycles
            if len(chain) > 1 and b == chain[-2]:
                break
            chain.append(b)
        chain.pop()
        chain.pop()
        dist = float(D[a, b])
        na, nb = size[a], size[b]
        da, db = D[a], D[b]
        if linkage == "single":
            new = np.minimum(da, db)
        elif linkage == "complete":
            new = np.maximum(da, db)
        elif linkage == "average":
            new = (na * da + nb * db) / (na + nb)
        else:
            nk = size
            with np.errstate(invalid="ignore"):  # inf rows of merged slots stay inf
                new = np.sqrt(np.maximum(
                    ((na + nk) * da**2 + (nb + nk) * db**2 - nk * dist**2) / (na + nb + nk), 0.0))
        new[~active] = np.inf
        D[b, :] = new
        D[:, b] = new
        D[b, b] = np.inf
        D[a, :] = np.inf
        D[:, a] = np.inf
        active[a] = False
        size[b] = na + nb
        merges.append((a, b, dist))
    return _relabel(merges, np.asarray(sizes, dtype=np.float64), m)


def _relabel(merges, sizes, m: int) -> np.ndarray:
    """Merges of slots (in chain order) as a linkage matrix sorted by distance (scipy's ids)."""
    order = sorted(range(len(merges)), key=lambda t: merges[t][2])  # stable for ties
    parent = np.arange(m)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    cluster_id = np.arange(m)  # id of the cluster whose root is this leaf
    total = np.array(sizes, dtype=np.float64)
    Z = np.zeros((m - 1, 4))
    for t, idx in enumerate(order):
        a, b, dist = merges[idx]
        ra, rb = find(a), find(b)
        ia, ib = cluster_id[ra], cluster_id[rb]
        Z[t] = (min(ia, ib), max(ia, ib), dist, total[ra] + total[rb])
        parent[ra] = rb
        total[rb] += total[ra]
        cluster_id[rb] = m + t
    return Z


def cut_linkage(Z: np.ndarray, n_clusters: int) -> np.ndarray:
    """Flat labels ``0 .. n_clusters - 1`` of the ``m`` leaves after the first ``m - n_clusters`` merges.

    Labels are numbered by the smallest leaf of each cluster.
    """
    m = Z.shape[0] + 1
    n_clusters = int(min(max(n_clusters, 1), m))
    parent = np.arange(2 * m - 1)
    for t in range(m - n_clusters):
        a, b = int(Z[t, 0]), int(Z[t, 1])
        parent[a] = parent[b] = m + t
    root = np.arange(m)
    for _ in range(2 * m):  # follow parents to the roots (depth < 2m)
        nxt = parent[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    _, labels = np.unique(root, return_inverse=True)
    # number clusters by their first leaf
    first = np.full(labels.max() + 1, m)
    np.minimum.at(first, labels, np.arange(m))
    rank = np.argsort(np.argsort(first))
    return rank[labels].astype(np.int32)


# ------------------------------------------------------------------ accumulators
class _SubclusterStats(_LabelAccumulator):
    """The k-means labelling pass, plus per-sub-cluster ``sum (x - c)`` and ``sum ||x - c||^2``."""

    name = "agglomerative: sub-cluster labels"

    def __init__(self, centers: np.ndarray, n_samples: int):
        super().__init__(centers, n_samples)
        k, d = centers.shape
        self.s1 = np.zeros((k, d))
        self.ss = np.zeros(k)

    def update(self, X: np.ndarray, offset: int) -> None:
        X = host(X, np.float64)  # agglomerative clustering's passes run with NumPy
        k = self.centers.shape[0]
        labels, _ = nearest_centre(X, self.centers, self._centers_sq)
        self.labels[offset : offset + X.shape[0]] = labels
        diff = X - self.centers[labels]
        sq = np.einsum("ij,ij->i", diff, diff)
        self.inertia += float(sq.sum())
        sums, counts = _cluster_sums(diff, labels, k)
        self.counts += counts
        self.s1 += sums
        self.ss += np.bincount(labels, weights=sq, minlength=k)

    def merge(self, other: "_SubclusterStats") -> None:
        super().merge(other)
        self.s1 += other.s1
        self.ss += other.ss

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update({"s1": self.s1, "ss": self.ss})
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.s1 = np.array(state["s1"], dtype=np.float64, copy=True)
        self.ss = np.array(state["ss"], dtype=np.float64, copy=True)


class _AgglomerativePlan:
    """The passes of the sub-cluster k-means (its labelling pass extended), then the linkage."""

    def __init__(self, km_plan, n_samples: int):
        self.km = km_plan
        self.n_samples = int(n_samples)
        self.done = False
        self.s1 = np.zeros((0, 0))
        self.ss = np.zeros(0)

    def next_pass(self):
        if self.done:
            return None
        acc = self.km.next_pass()
        if isinstance(acc, _LabelAccumulator):
            return _SubclusterStats(acc.centers, self.n_samples)
        return acc

    def end_pass(self, acc) -> None:
        self.km.end_pass(acc)
        if isinstance(acc, _SubclusterStats):
            self.s1, self.ss = acc.s1.copy(), acc.ss.copy()
            self.done = True

    def state_dict(self) -> dict:
        state = {f"km.{k}": v for k, v in self.km.state_dict().items()}
        state.update({"done": np.bool_(self.done), "s1": self.s1, "ss": self.ss})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.km.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("km.")})
        self.done = bool(state["done"])
        self.s1 = np.array(state["s1"], dtype=np.float64, copy=True)
        self.ss = np.array(state["ss"], dtype=np.float64, copy=True)


# ---------------------------------------------------------------------- estimator
class StreamingAgglomerative(ClusterMixin, StreamingMixin, BaseEstimator):
    """Agglomerative clustering of data streamed from NumPy, zarr or dask arrays.

    A streaming k-means first summarises the rows into ``n_subclusters`` sub-clusters
    (centres and sizes); a hierarchical clustering of the sub-clusters that honours
    their sizes is then cut at ``n_clusters``, and every row takes the cluster of its
    nearest sub-cluster.

    Parameters
    ----------
    n_clusters : int, default=2
        Number of clusters.
    linkage : {"ward", "average", "complete", "single"}, default="ward"
        Linkage criterion between clusters of sub-clusters (see
        :func:`weighted_linkage`).  ``"ward"`` is exact given the sub-clusters: it
        merges the pair whose union least increases the within-cluster sum of squares of
        the rows.
    n_subclusters : int, default=1000
        Sub-clusters of the first stage (at most ``n_samples`` are used).  More
        sub-clusters follow the exact clustering more closely; the linkage costs
        ``O(n_subclusters^2)`` time and memory.
    subcluster_method : {"lloyd", "minibatch"}, default="lloyd"
        ``method`` of the first-stage :class:`~streamclust.models.kmeans.StreamingKMeans`.
    max_iter : int, default=20
        Passes of the first-stage k-means at most (sub-clusters need not converge).
    tol : float, default=1e-4
        Tolerance of the first-stage k-means.
    batch_size : int, default=1024
        Rows read per batch.
    init_sample_size : int or None, default=None
        Rows sampled to seed the first stage; ``None`` means ``max(3 * batch_size,
        3 * n_subclusters)``.
    random_state : int, RandomState instance or None, default=None
        Seeds the first stage.  Pass an int for reproducible (and resumable) fits.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,), dtype=int32
        Cluster of each training row.
    n_clusters_ : int
        Number of clusters found (``n_clusters`` unless there are fewer distinct
        sub-clusters).
    cluster_centers_ : ndarray of shape (n_clusters_, n_features)
        Exact mean of each cluster's rows.
    cluster_sizes_ : ndarray of shape (n_clusters_,), dtype=int64
        Rows per cluster.
    inertia_ : float
        Exact within-cluster sum of squares of the clusters (to ``cluster_centers_``).
    subcluster_centers_ : ndarray of shape (n_leaves_, n_features)
        Centres of the non-empty sub-clusters (rows go to the nearest one).
    subcluster_sizes_ : ndarray of shape (n_leaves_,), dtype=int64
        Rows per sub-cluster.
    subcluster_labels_ : ndarray of shape (n_leaves_,), dtype=int32
        Cluster of each sub-cluster.
    subcluster_inertia_ : float
        Sum of squared distances of the rows to their sub-cluster centre.
    children_ : ndarray of shape (n_leaves_ - 1, 2)
        The merges of the sub-clusters, as in
        :class:`~sklearn.cluster.AgglomerativeClustering` (``i < n_leaves_`` is a
        sub-cluster, ``n_leaves_ + t`` the cluster of merge ``t``).
    distances_ : ndarray of shape (n_leaves_ - 1,)
        Linkage distance of each merge (non-decreasing).
    n_leaves_ : int
        Number of non-empty sub-clusters.
    n_iter_ : int
        Passes run by the first-stage k-means.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names, when the input had string column names.

    See Also
    --------
    sklearn.cluster.AgglomerativeClustering : In-memory (``O(n^2)``) agglomerative clustering.
    sklearn.cluster.Birch : Another summarise-then-cluster method.

    Notes
    -----
    *Approximation.*  Each sub-cluster stays whole: the result is the exact
    agglomerative clustering of the sub-clusters, not of the rows.  With Ward linkage
    the merge costs use the exact sizes and means of the sub-clusters' rows, so the
    only approximation is the first stage.  Against exact
    ``AgglomerativeClustering(linkage="ward")`` the adjusted Rand index with the default
    1000 sub-clusters is 0.92 on 10,000 synthetic faces (0.91-0.93 over seeds), 0.90 on
    the digits (0.75-0.98 over seeds: their 10-cluster Ward cut is sensitive to keeping
    sub-clusters whole) and 1.0 on separated blobs (``scripts/bench_methods.py``).

    The first stage is k-means rather than BIRCH's ``partial_fit``.  Measured at about
    the same number of sub-clusters, neither agrees consistently better with exact Ward
    (faces 0.92 vs BIRCH 0.91, digits 0.90 vs 0.96, 5,400 noisy digits 0.87 vs 0.84);
    k-means is chosen for what BIRCH lacks: the number of sub-clusters is a parameter
    (BIRCH's follows from a distance threshold in data units, to be tuned per data
    set), the result does not depend on the order the rows arrive in, and its passes
    are exact, mergeable (dask) and checkpointed as flat arrays.

    *Memory* (``s = n_subclusters``, ``d = n_features``, ``b = batch_size``): the
    first stage's ``O(s d)`` (see :class:`~streamclust.models.kmeans.StreamingKMeans`),
    ``labels_`` (4 bytes per row) and, for the linkage, an ``s x s`` float64 matrix
    (measured peak: 172 MiB for 10,000 rows, against 902 MiB for exact Ward).

    Examples
    --------
    >>> import numpy as np
    >>> from streamclust.models.agglomerative import StreamingAgglomerative
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=float)
    >>> agg = StreamingAgglomerative(2, n_subclusters=4, batch_size=4, random_state=0).fit(X)
    >>> bool(agg.labels_[0] == agg.labels_[1] == agg.labels_[2] != agg.labels_[3])
    True
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "linkage": [StrOptions(set(LINKAGES))],
        "n_subclusters": [Interval(Integral, 1, None, closed="left")],
        "subcluster_method": [StrOptions({"lloyd", "minibatch"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "init_sample_size": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_clusters=2,
        *,
        linkage="ward",
        n_subclusters=1000,
        subcluster_method="lloyd",
        max_iter=20,
        tol=1e-4,
        batch_size=1024,
        init_sample_size=None,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.linkage = linkage
        self.n_subclusters = n_subclusters
        self.subcluster_method = subcluster_method
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.init_sample_size = init_sample_size
        self.random_state = random_state

    def fit(self, X, y=None):
        """Cluster ``X`` by streaming over it.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Training data; trailing axes are flattened into features.
        y : None
            Ignored.

        Returns
        -------
        self : StreamingAgglomerative
            The fitted estimator.
        """
        return fit_streaming(self, X)

    def _first_stage(self, n_samples: int) -> StreamingKMeans:
        s = min(int(self.n_subclusters), n_samples)
        sample = self.init_sample_size
        if sample is None:
            sample = max(3 * int(self.batch_size), 3 * s)
        return StreamingKMeans(n_clusters=s, method=self.subcluster_method, max_iter=self.max_iter, tol=self.tol,
                               batch_size=self.batch_size, init_sample_size=sample, random_state=self.random_state)

    def _make_plan(self, source: RowSource):
        self._validate_params()
        n = source.n_samples
        if self.n_clusters > n:
            raise ValueError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")
        km = self._first_stage(n)
        return _AgglomerativePlan(km._make_plan(source), n)

    def _finish_plan(self, plan: _AgglomerativePlan, source: RowSource) -> None:
        km = plan.km
        counts = np.asarray(km.sizes, dtype=np.int64)
        keep = np.flatnonzero(counts > 0)
        centers = np.asarray(km.centers, dtype=np.float64)[keep]
        sizes = counts[keep]
        s1, ss = plan.s1[keep], plan.ss[keep]
        means = centers + s1 / sizes[:, None]  # exact means of the sub-clusters' rows
        Z = weighted_linkage(means, sizes, self.linkage)
        m = keep.size
        k = min(int(self.n_clusters), m)
        if k < self.n_clusters:
            warnings.warn(
                f"only {m} distinct sub-clusters were found, fewer than n_clusters={self.n_clusters}; "
                f"{k} clusters are returned.",
                UserWarning,
                stacklevel=3,
            )
        sub_labels = cut_linkage(Z, k) if m > 1 else np.zeros(m, dtype=np.int32)
        # labels of the rows: sub-cluster (indices among all k-means centres) -> cluster
        full_map = np.full(counts.size, -1, dtype=np.int32)
        full_map[keep] = sub_labels
        self.labels_ = full_map[np.asarray(km.labels, dtype=np.int64)]
        # exact cluster statistics from the sub-cluster sums
        n_k = np.bincount(sub_labels, weights=sizes, minlength=k)
        sums = np.zeros((k, centers.shape[1]))
        np.add.at(sums, sub_labels, centers * sizes[:, None] + s1)
        cmeans = sums / n_k[:, None]
        e = centers - cmeans[sub_labels]
        inertia = ss + 2.0 * np.einsum("ij,ij->i", e, s1) + sizes * np.einsum("ij,ij->i", e, e)
        self.n_clusters_ = int(k)
        self.cluster_centers_ = cmeans
        self.cluster_sizes_ = n_k.astype(np.int64)
        self.inertia_ = float(max(inertia.sum(), 0.0))
        self.subcluster_centers_ = centers
        self.subcluster_sizes_ = sizes
        self.subcluster_labels_ = sub_labels.astype(np.int32)
        self.subcluster_inertia_ = float(km.inertia)
        self.children_ = Z[:, :2].astype(np.int64)
        self.distances_ = Z[:, 2].copy()
        self.n_leaves_ = int(m)
        self.n_iter_ = int(km.n_iter)

    def predict(self, X):
        """Cluster of the nearest sub-cluster centre of each row, streaming over lazy input.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Rows to label.

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype=int32
            Cluster index of each row.
        """
        check_is_fitted(self)
        source = as_row_source(self, X, reset=False)
        centers = self.subcluster_centers_
        centers_sq = np.einsum("ij,ij->i", centers, centers)
        out = np.empty(source.n_samples, dtype=np.int32)
        for lo, batch in source.iter_batches(int(self.batch_size), dtype=np.float64):
            sub, _ = nearest_centre(batch, centers, centers_sq)
            out[lo : lo + batch.shape[0]] = self.subcluster_labels_[sub]
        return out
