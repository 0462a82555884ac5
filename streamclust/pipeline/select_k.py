"""``streamclust select-k``: one model per candidate k, all sharing the reads of the data.

The candidates are fitted on the PCA features of a finished ``fit`` (``features.zarr``)
by one :class:`~streamclust.engine.CombinedPlan`: every batch read feeds the
accumulators of every candidate still fitting, so a sweep over 20 values of k reads the
data as often as the slowest candidate needs, not 20 times as often.  Each candidate
ends where a separate fit (same seed, batch size and rows) of that k ends: exactly for
k-means and full or tied mixtures; diagonal and spherical mixtures take each batch's
E-step together (:class:`~streamclust.models._gmm_estep.DiagEStep`: the same terms summed
in another order), so they agree with a separate fit to rounding.

Mixtures (``method="gmm"``)
    Fitted with :class:`StreamingGaussianMixture` on the leading ``gmm_pca_components``
    features (the columns ``fit`` used for its mixture), on the *training rows*: every
    feature row except the held-out ones.  **The held-out rows are the rows of
    ``features.zarr`` whose position i (0-based, i.e. among the fitted images in store
    order) has ``i % 10 == 9``** — every tenth image, about 10 %, fixed whatever the
    seed, so every candidate and every re-run sees the same split.  After the fit one
    more pass over all rows scores each candidate: BIC and AIC from the log-likelihood
    of the training rows (``n_parameters`` free parameters, ``log(n_train)``), and the
    mean log-likelihood of the held-out rows.  BIC and AIC pick their minimum, the
    held-out log-likelihood its maximum.
k-means (``method="kmeans"``)
    Lloyd :class:`StreamingKMeans` on all rows and all features (no held-out rows).
    One more pass gives the exact Calinski-Harabasz index of the final labelling in
    streaming form: per-cluster sums give the cluster means ``m_j`` and the global mean
    ``g``; between = ``sum n_j |m_j - g|^2``, within = inertia ``- sum n_j |c_j - m_j|^2``
    (the inertia is about the centres ``c_j``; the correction makes it about the means,
    as :func:`sklearn.metrics.calinski_harabasz_score`).  The elbow of the inertia is
    ill-defined, so k-means picks the k of the largest Calinski-Harabasz index.

Outputs: ``RUN_DIR/select_k.csv`` (``k,method,covariance,bic,aic,heldout_loglik,inertia,
calinski_harabasz``, empty where a criterion does not apply or a candidate failed) and
``RUN_DIR/select_k.png``.  Resumable like ``fit``: the fit checkpoints under
``.streamclust/select-k.ckpt.npz``, the scoring pass under
``.streamclust/select-k-score.ckpt.npz``; ``.streamclust/select-k.done`` marks completion.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import stages
from .._atomic import write_bytes, write_json
from ..config import FitConfig, load_run_config
from ..errors import ConfigMismatchError, UsageError
from ..models import StreamingGaussianMixture, StreamingKMeans
from ..engine.arrays import host
from ..engine import Checkpointer, CombinedPlan, HostRoom, RowSource, as_row_source, drive, fingerprint, fit_batch_rows
from ..models._gmm_stats import gmm_log_resp, n_parameters
from ..integrity import verify_output
from ..store import RunLayout
from . import fit as _fit
from .memory import batch_rows, host_room, mixture_memory_check, mixture_stage_bytes
from .estimate import select_k_phases
from .progress import PassBars

__all__ = [
    "parse_k_range",
    "check_ks",
    "heldout_split",
    "candidate_estimator",
    "fit_candidates",
    "score_candidates",
    "calinski_harabasz_streaming",
    "pick",
    "select_k_run",
    "CSV_COLUMNS",
    "HELDOUT_EVERY",
]

logger = logging.getLogger(__name__)

#: columns of select_k.csv, in order
CSV_COLUMNS = ("k", "method", "covariance", "bic", "aic", "heldout_loglik", "inertia", "calinski_harabasz")
#: feature rows at positions i with ``i % HELDOUT_EVERY == HELDOUT_EVERY - 1`` are held out (GMM)
HELDOUT_EVERY = 10
#: criteria picked per method and whether larger is better
CRITERIA = {"gmm": {"bic": False, "aic": False, "heldout_loglik": True}, "kmeans": {"calinski_harabasz": True}}
METHODS = ("gmm", "kmeans")
COVARIANCES = ("diag", "full", "tied", "spherical")
STAGE = "select-k"
MAX_K_VALUES = 1000



# --------------------------------------------------------------------------------------
# candidates


def parse_k_range(spec: str | int | Sequence[int]) -> list[int]:
    """The candidate ks of ``"START:STOP:STEP"``, ``"START:STOP"`` (step 1), ``"2,4,8"`` or ``"5"``.

    ``STOP`` is included when it lies on the grid (``"10:200:10"`` ends at 200).  The
    result is sorted and without repeats.  Raises :class:`UsageError` (one line) for a
    malformed spec, a k below 1, ``START > STOP`` or a step below 1.
    """
    if isinstance(spec, (int, np.integer)):
        values = [int(spec)]
    elif not isinstance(spec, str):
        try:
            values = [int(v) for v in spec]
        except (TypeError, ValueError):
            raise UsageError(f"--k must be integers, got {spec!r}") from None
        if any(isinstance(v, float) and not float(v).is_integer() for v in spec):
            raise UsageError(f"--k must be integers, got {spec!r}")
    else:
        text = spec.strip()
        hint = "use START:STOP:STEP (e.g. 10:200:10), a list such as 2,4,8, or one k"
        if not text:
            raise UsageError(f"--k is empty; {hint}")
        if ":" in text:
            parts = [p.strip() for p in text.split(":")]
            if len(parts) not in (2, 3) or not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
                raise UsageError(f"--k {spec!r} is not a range of integers; {hint}")
            start, stop = int(parts[0]), int(parts[1])
            step = int(parts[2]) if len(parts) == 3 else 1
            if step < 1:
                raise UsageError(f"--k {spec!r}: the step must be at least 1, got {step}")
            if start > stop:
                raise UsageError(f"--k {spec!r}: START {start} is larger than STOP {stop}")
            if start < 1:
                raise UsageError(f"--k {spec!r}: k must be at least 1, got {start}")
            if (stop - start) // step + 1 > MAX_K_VALUES:
                raise UsageError(f"--k {spec!r} gives more than {MAX_K_VALUES} candidates; use a larger step")
            values = list(range(start, stop + 1, step))
        else:
            parts = [p.strip() for p in text.split(",")]
            if not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
                raise UsageError(f"--k {spec!r} is not a list of integers; {hint}")
            values = [int(p) for p in parts]
    if not values:
        raise UsageError("--k gives no candidate")
    bad = [v for v in values if v < 1]
    if bad:
        raise UsageError(f"--k: k must be at least 1, got {bad[0]}")
    if len(set(values)) > MAX_K_VALUES:
        raise UsageError(f"--k gives more than {MAX_K_VALUES} candidates")
    return sorted(set(values))


def check_ks(ks: Sequence[int], n_rows: int, *, what: str = "usable images") -> list[int]:
    """Validate candidate ks against the number of rows they are fitted on (one-line errors)."""
    ks = parse_k_range(list(ks))
    if ks[-1] > n_rows:
        raise UsageError(f"--k {ks[-1]} is more than the {n_rows} {what}; lower the largest k")
    return ks


def heldout_split(n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, heldout)`` positions: position ``i`` is held out when ``i % 10 == 9``."""
    pos = np.arange(int(n_rows), dtype=np.int64)
    held = pos % HELDOUT_EVERY == HELDOUT_EVERY - 1
    return pos[~held], pos[held]


def candidate_estimator(method: str, k: int, *, covariance: str = "diag", seed: int = 0, max_iter: int = 100,
                        batch_size: int = 1024, backend: str = "auto", device: str = "auto",
                        precision: str = "float64"):
    """The estimator a separate fit of this candidate would use (same defaults as ``fit``)."""
    where = dict(backend=backend, device=device, precision=precision)
    if method == "gmm":
        return StreamingGaussianMixture(n_components=int(k), covariance_type=covariance, max_iter=int(max_iter),
                                        batch_size=int(batch_size), random_state=int(seed), **where)
    if method == "kmeans":
        return StreamingKMeans(n_clusters=int(k), method="lloyd", max_iter=int(max_iter),
                               batch_size=int(batch_size), random_state=int(seed), **where)
    raise UsageError(f"--method must be gmm or kmeans, got {method!r}")


@dataclass
class CandidateFits:
    """Outcome of :func:`fit_candidates`: the estimators (fitted in place) and what went wrong."""

    estimators: list
    #: index -> message of candidates that failed (e.g. an ill-defined covariance)
    failed: dict[int, str] = field(default_factory=dict)
    #: index -> warning message (e.g. did not converge within max_iter)
    warnings: dict[int, str] = field(default_factory=dict)
    #: combined passes over the data
    passes: int = 0

    def ok(self, i: int) -> bool:
        return i not in self.failed


def fit_candidates(
    estimators: Sequence,
    X,
    *,
    rows=None,
    checkpoint: Checkpointer | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    client=None,
    host_room: HostRoom | None = None,
) -> CandidateFits:
    """Fit several streaming estimators on ``X`` sharing every read (one combined plan).

    Each estimator ends exactly as ``fit_streaming(estimator, X, rows=rows)`` would end
    it with the same batch size (all estimators must share one ``batch_size``).  A
    candidate whose fit raises :class:`~streamclust.errors.ConvergenceError` is dropped
    and reported in ``failed``; warnings of the candidates (non-convergence) are
    collected in ``warnings`` instead of being emitted.  ``host_room`` caps a GPU's larger
    batches as in :func:`~streamclust.engine.fit_streaming`.
    """
    estimators = list(estimators)
    if rows is not None and isinstance(X, RowSource):
        raise ValueError("give rows inside the RowSource, not both")
    if not estimators:
        raise UsageError("no candidate to fit")
    sizes = {int(e.batch_size) for e in estimators}
    dtypes = {np.dtype(e._batch_dtype) for e in estimators}
    if len(sizes) != 1 or len(dtypes) != 1:
        raise ValueError("the candidates must share one batch_size and batch dtype")
    source = as_row_source(estimators[0], X, reset=True, rows=rows)
    plans = [estimators[0]._make_plan(source)]
    for est in estimators[1:]:
        plans.append(est._make_plan(as_row_source(est, source, reset=True)))
    labels = [_label(e) for e in estimators]
    if len(set(labels)) != len(labels):
        labels = [f"{i}-{s}" for i, s in enumerate(labels)]
    backends = {e._resolved_backend(client) for e in estimators}
    if len(backends) != 1:
        raise ValueError("the candidates must share one backend, device and precision")
    result = CandidateFits(estimators)
    plan = CombinedPlan(plans, labels)
    backend, rows = backends.pop(), sizes.pop()
    if all(e._batches_may_grow() for e in estimators):  # a GPU's batches are larger
        rows = fit_batch_rows(backend, rows, source, estimators[0]._batch_dtype, host_room)
    drive(plan, source, rows, dtype=dtypes.pop(), checkpoint=checkpoint, progress=progress, client=client,
          backend=backend)
    result.passes = plan.pass_index
    result.failed = dict(plan.errors)
    for i, (est, sub) in enumerate(zip(estimators, plans)):
        if i in result.failed:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est._finish_plan(sub, source)
        if caught:
            result.warnings[i] = "; ".join(str(w.message) for w in caught)
    return result


def _label(est) -> str:
    k = getattr(est, "n_components", None) or getattr(est, "n_clusters", None)
    return f"k={k}"


# --------------------------------------------------------------------------------------
# scoring pass


class _GMMScoreAccumulator:
    """Log-likelihood sums of the training and of the held-out rows, per candidate."""

    def __init__(self, models: list, heldout: Callable[[np.ndarray], np.ndarray]):
        self.models = models
        self.heldout = heldout
        self.name = "scoring the candidates"
        m = len(models)
        self.ll_train = np.zeros(m)
        self.ll_held = np.zeros(m)
        self.n_train = 0
        self.n_held = 0

    def update(self, X: np.ndarray, offset: int) -> None:
        held = self.heldout(offset + np.arange(X.shape[0], dtype=np.int64))
        for j, est in enumerate(self.models):
            weights, means, _, prec_chol = est._float64_params()
            lpn = host(gmm_log_resp(X, weights, means, prec_chol, est.covariance_type)[0])
            self.ll_train[j] += float(lpn[~held].sum())
            self.ll_held[j] += float(lpn[held].sum())
        n_held = int(held.sum())
        self.n_held += n_held
        self.n_train += X.shape[0] - n_held

    def merge(self, other: "_GMMScoreAccumulator") -> None:
        self.ll_train += other.ll_train
        self.ll_held += other.ll_held
        self.n_train += other.n_train
        self.n_held += other.n_held

    def state_dict(self) -> dict:
        return {"ll_train": self.ll_train, "ll_held": self.ll_held,
                "n_train": np.int64(self.n_train), "n_held": np.int64(self.n_held)}

    def load_state_dict(self, state: dict) -> None:
        self.ll_train = np.array(state["ll_train"], dtype=np.float64)
        self.ll_held = np.array(state["ll_held"], dtype=np.float64)
        self.n_train, self.n_held = int(state["n_train"]), int(state["n_held"])


class _KMeansScoreAccumulator:
    """Per-cluster sums of the rows under each candidate's final labels."""

    def __init__(self, models: list):
        self.models = models
        self.name = "scoring the candidates"
        self.sums = [np.zeros(est.cluster_centers_.shape) for est in models]

    def update(self, X: np.ndarray, offset: int) -> None:
        X = host(X, np.float64)
        for j, est in enumerate(self.models):
            labels = est.labels_[offset: offset + X.shape[0]]
            k = est.cluster_centers_.shape[0]
            onehot = np.zeros((k, X.shape[0]))
            onehot[labels, np.arange(X.shape[0])] = 1.0
            self.sums[j] += onehot @ X

    def merge(self, other: "_KMeansScoreAccumulator") -> None:
        for a, b in zip(self.sums, other.sums):
            a += b

    def state_dict(self) -> dict:
        return {f"sums/{j}": s for j, s in enumerate(self.sums)}

    def load_state_dict(self, state: dict) -> None:
        self.sums = [np.array(state[f"sums/{j}"], dtype=np.float64) for j in range(len(self.models))]


class _ScorePlan:
    """One pass computing the criteria of fitted candidates."""

    def __init__(self, make_acc: Callable[[], Any]):
        self.make_acc = make_acc
        self.done = False
        self.result = None

    def next_pass(self):
        return None if self.done else self.make_acc()

    def end_pass(self, acc) -> None:
        self.result = acc
        self.done = True

    def state_dict(self) -> dict:
        state = {"done": np.bool_(self.done)}
        if self.result is not None:
            state.update({f"result/{k}": v for k, v in self.result.state_dict().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state["done"])
        if self.done:
            self.result = self.make_acc()
            self.result.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("result/")})


def calinski_harabasz_streaming(sums: np.ndarray, counts: np.ndarray, centers: np.ndarray, inertia: float) -> float:
    """Calinski-Harabasz index from per-cluster sums and sizes, the centres and the inertia.

    ``inertia`` is ``sum |x - c_label|^2`` about the centres ``centers``; the within
    dispersion about the cluster means is ``inertia - sum n_j |c_j - m_j|^2``.  Equals
    :func:`sklearn.metrics.calinski_harabasz_score` of the same labelling (up to
    rounding); NaN with fewer than two non-empty clusters or as many clusters as rows.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    n, n_labels = float(counts.sum()), int(present.sum())
    if n_labels < 2 or n_labels >= n:
        return float("nan")
    nj = counts[present]
    means = sums[present] / nj[:, None]
    g = sums[present].sum(axis=0) / n
    between = float(np.sum(nj * np.sum((means - g) ** 2, axis=1)))
    within = float(inertia) - float(np.sum(nj * np.sum((centers[present] - means) ** 2, axis=1)))
    within = max(within, 0.0)
    if within == 0.0:
        return 1.0
    return between * (n - n_labels) / (within * (n_labels - 1.0))


def score_candidates(method: str, fits: CandidateFits, source: RowSource, batch_size: int, *,
                     n_fit_rows: int, checkpoint: Checkpointer | None = None,
                     progress: Callable[[str, int, int], None] | None = None, client=None) -> list[dict]:
    """One pass over ``source`` (all rows) giving each fitted candidate's criteria.

    GMM: BIC/AIC from the training rows (those not held out by :func:`heldout_split`),
    mean held-out log-likelihood.  k-means: inertia and Calinski-Harabasz of all rows.
    Returns one dict per candidate with the keys of :data:`CSV_COLUMNS` (None where n/a).
    """
    ok = [i for i in range(len(fits.estimators)) if fits.ok(i)]
    models = [fits.estimators[i] for i in ok]
    if method == "gmm":
        def make():
            return _GMMScoreAccumulator(models, lambda pos: pos % HELDOUT_EVERY == HELDOUT_EVERY - 1)
    else:
        def make():
            return _KMeansScoreAccumulator(models)
    plan = _ScorePlan(make)
    if models:
        drive(plan, source, int(batch_size), dtype=np.float64, checkpoint=checkpoint, progress=progress,
              client=client, backend=models[0]._resolved_backend(client))
    rows = []
    for i, est in enumerate(fits.estimators):
        k = int(getattr(est, "n_components", None) or est.n_clusters)
        row = dict.fromkeys(CSV_COLUMNS)
        row.update(k=k, method=method, covariance=est.covariance_type if method == "gmm" else None)
        if i in ok:
            j = ok.index(i)
            acc = plan.result
            if method == "gmm":
                if acc.n_train != n_fit_rows:
                    raise RuntimeError("scored another number of training rows than were fitted")
                p = n_parameters(est.covariance_type, k, est.means_.shape[1])
                ll = acc.ll_train[j]
                row["bic"] = -2.0 * ll + p * math.log(acc.n_train)
                row["aic"] = -2.0 * ll + 2.0 * p
                row["heldout_loglik"] = acc.ll_held[j] / acc.n_held if acc.n_held else None
            else:
                row["inertia"] = float(est.inertia_)
                ch = calinski_harabasz_streaming(acc.sums[j], est.cluster_sizes_, est._float64_centers(), est.inertia_)
                row["calinski_harabasz"] = None if math.isnan(ch) else ch
        rows.append(row)
    return rows


def pick(rows: Sequence[dict], method: str) -> dict[str, int]:
    """The k each criterion of ``method`` picks (ties: the smallest k); criteria with no value are left out."""
    out = {}
    for crit, larger in CRITERIA[method].items():
        vals = [(r[crit], r["k"]) for r in rows if r.get(crit) is not None and np.isfinite(r[crit])]
        if vals:
            best = max(vals, key=lambda t: (t[0], -t[1])) if larger else min(vals, key=lambda t: (t[0], t[1]))
            out[crit] = int(best[1])
    return out


# --------------------------------------------------------------------------------------
# files


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(float(v)) if np.isfinite(v) else ""
    return str(v)


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in CSV_COLUMNS])
    return write_bytes(path, buf.getvalue().encode())


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``select_k.csv`` (numbers as int / float, empty cells as None)."""
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for c in CSV_COLUMNS:
                v = r.get(c, "")
                if v == "":
                    row[c] = None
                elif c == "k":
                    row[c] = int(v)
                elif c in ("method", "covariance"):
                    row[c] = v
                else:
                    row[c] = float(v)
            out.append(row)
    return out


#: the panels of each method's curves: ((criterion, label), ...) and the y label
_PANELS = {
    "gmm": (((("bic", "BIC"), ("aic", "AIC")), "criterion (lower is better)"),
            ((("heldout_loglik", "held-out log-likelihood / row"),), "mean log-likelihood (higher is better)")),
    "kmeans": (((("inertia", "inertia"),), "inertia (no pick: the elbow is ill-defined)"),
               ((("calinski_harabasz", "Calinski-Harabasz"),), "Calinski-Harabasz (higher is better)")),
}
_TITLES = {"gmm": "Gaussian mixture", "kmeans": "k-means (picked by the Calinski-Harabasz maximum)"}


def figure(rows: Sequence[dict]):
    """The select-k curves of ``rows`` (as :func:`read_csv` reads them): each criterion
    against k, the k that :func:`pick` picks marked, the panels of each method in the table
    one above the other; ``None`` when no row names a method.  Agg canvas, no pyplot.

    What ``select-k`` draws into ``select_k.png`` and the report shows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = [m for m in METHODS if any(r.get("method") == m for r in rows)]
    panels = [(m, series, ylabel, i == 0) for m in methods for i, (series, ylabel) in enumerate(_PANELS[m])]
    if not panels:
        return None
    fig = Figure(figsize=(6.4, 3.2 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    picks = {m: pick([r for r in rows if r.get("method") == m], m) for m in methods}
    for ax, (method, series, ylabel, first) in zip(axes, panels):
        picked = picks[method]
        for j, (key, label) in enumerate(series):
            pts = [(r["k"], r[key]) for r in rows if r.get("method") == method and r.get(key) is not None]
            if not pts:
                continue
            ks, vs = zip(*pts)
            color = f"C{j}"
            ax.plot(ks, vs, "o-", color=color, ms=3, label=label)
            if key in picked:
                kp = picked[key]
                vp = dict(pts)[kp]
                ax.plot([kp], [vp], "*", color=color, ms=14, mec="k", label=f"{label} picks k={kp}")
                ax.axvline(kp, color=color, ls=":", lw=1)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if first:
            ax.set_title(f"select-k: {_TITLES[method]}", fontsize=9)
    axes[-1].set_xlabel("k")
    return fig


def plot(path: Path, rows: Sequence[dict]) -> Path:
    """Write :func:`figure` of ``rows`` to ``path`` (PNG)."""
    buf = io.BytesIO()
    figure(rows).savefig(buf, format="png", dpi=100)
    return write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------
# run directory


def _progress_fn(progress, phases: Callable[[], list]) -> tuple[Callable | None, PassBars | None]:
    """The caller's callback, or bars saying the sweep's time (``phases()`` times its passes)."""
    if callable(progress):
        return progress, None
    bars = PassBars(STAGE, progress, phases=phases())
    return bars, bars


def _batch_size(method: str, ks: list[int], d: int, covariance: str, fit_cfg: FitConfig,
                requested, *, numpy: bool = True) -> tuple[int, HostRoom | None]:
    """Rows per batch under the fit's memory limit, and what that plan leaves of it for a GPU's
    read-ahead; ``numpy``: whether the passes run on NumPy (else a PyTorch device)."""
    if method == "gmm":
        fixed, per_row = mixture_stage_bytes(ks, d, covariance, numpy=numpy)
    else:
        fixed = sum(4 * k * d * 8 for k in ks)
        per_row = max(d * 16 + k * 24 for k in ks)
    rows = batch_rows("select-k", fixed=fixed, per_row=per_row, limit=fit_cfg.memory_limit, requested=requested,
                      preferred=4096)
    return rows, host_room(fit_cfg.memory_limit, fixed=fixed, per_row=per_row, rows=rows)


def _check_config(layout: RunLayout, identity: dict, overwrite: bool) -> None:
    run_cfg = load_run_config(layout.root)
    saved = run_cfg.get("select_k")
    if saved is not None and saved != identity:
        if not overwrite:
            diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
            raise ConfigMismatchError(
                f"{layout.root} has a select-k sweep with other settings ({', '.join(diff)} differ); "
                "pass --overwrite to replace it"
            )
    if saved != identity or overwrite:
        _reset(layout)
    run_cfg["select_k"] = identity
    write_json(layout.config, run_cfg)


def _checkpoint_paths(layout: RunLayout) -> tuple[Path, Path]:
    return tuple(layout.state_dir / name for name in stages.stage(STAGE).state)


def _reset(layout: RunLayout) -> None:
    stages.invalidate(layout, STAGE, include_self=True)


def _checkpointer(path: Path, key: str) -> Checkpointer:
    ck = Checkpointer(path, key=key, every_seconds=_fit.CHECKPOINT_SECONDS)
    try:
        ck.load()
    except ValueError:  # a stale checkpoint (the fit or the data changed): start again
        logger.info("discarding stale checkpoint %s", path)
        ck.clear()
    return ck


def _result(rows: list[dict], method: str, layout: RunLayout, extra: dict | None = None) -> dict:
    picked = pick(rows, method)
    out = {"picked": picked, "rows": rows, "csv": str(layout.select_k_csv), "png": str(layout.select_k_png)}
    if method == "kmeans":
        out["note"] = "k-means: the inertia elbow is ill-defined; k is picked by the Calinski-Harabasz maximum"
    out.update(extra or {})
    return out


def select_k_run(
    run_dir: str | os.PathLike,
    ks: Sequence[int] | str,
    *,
    method: str = "gmm",
    covariance: str = "diag",
    seed: int = 0,
    max_iter: int = 100,
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool | None | Callable[[str, int, int], None] = None,
    client=None,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "float64",
) -> dict:
    """Fit one model per k in ``ks`` on the run's PCA features, sharing the passes; resumes.

    With a dask.distributed ``client`` the shared passes run as per-block tasks.

    Parameters
    ----------
    run_dir : path
        A run directory whose ``fit`` has completed (``features.zarr``).
    ks : sequence of int or str
        Candidate k (or a spec for :func:`parse_k_range`).
    method : {"gmm", "kmeans"}, default="gmm"
    covariance : {"diag", "full", "tied", "spherical"}, default="diag"
        Mixture covariance (ignored by k-means).
    seed, max_iter : int
        As ``fit``'s ``--seed`` and ``--max-iter``; every candidate uses the same seed.
    batch_size : int or None
        Rows per batch; ``None`` derives it from ``fit``'s memory limit.
    overwrite : bool, default=False
        Replace an earlier sweep with other settings instead of refusing.
    progress : bool, None or callable
        Progress bars (``None``: on a terminal only), or a ``progress(pass_name, rows_done,
        n_rows)`` callback.
    backend, device, precision : str
        Where the passes run (:func:`~streamclust.pipeline.fit.stage_backend`: ``auto`` is
        PyTorch on a GPU when there is one, NumPy otherwise and on a dask cluster).
        ``backend`` and ``device`` do not change the sweep (a checkpoint made on a GPU
        resumes on a CPU); ``precision`` does, so ``float32`` is part of its settings.

    Returns
    -------
    dict
        ``picked`` (criterion -> k: ``bic``, ``aic``, ``heldout_loglik`` for GMM,
        ``calinski_harabasz`` for k-means), ``rows`` (the CSV rows), ``csv``, ``png``,
        ``failed`` (k -> message), ``not_converged`` (ks), ``n_fit_rows``,
        ``n_heldout_rows``, and for k-means a ``note``.
    """
    where = _fit.stage_backend(backend, device, precision, client)  # refused before anything is written
    layout = RunLayout.of(run_dir)
    layout.require("fit")
    if method not in METHODS:
        raise UsageError(f"--method must be gmm or kmeans, got {method!r}")
    if method == "gmm" and covariance not in COVARIANCES:
        raise UsageError(f"--covariance must be diag, full, tied or spherical, got {covariance!r}")
    if int(max_iter) < 1:
        raise UsageError("--max-iter must be a positive integer")
    if batch_size is not None and int(batch_size) < 1:
        raise UsageError("--batch-size must be a positive integer")
    ks = parse_k_range(ks) if isinstance(ks, str) else parse_k_range(list(ks))
    feat_path = layout.features
    if not feat_path.exists():
        raise UsageError(f"{feat_path} is missing; run `streamclust fit {run_dir} --overwrite`")
    # checked against what the fit recorded (with --overwrite every chunk's checksum too) before anything goes
    features = verify_output(layout, "features", checksums=overwrite)
    n, n_feat = int(features.shape[0]), int(features.shape[1])
    saved_fit = load_run_config(layout.root).get("fit")
    fit_cfg = FitConfig.from_dict(saved_fit) if saved_fit else FitConfig()

    if method == "gmm":
        m = min(fit_cfg.gmm_pca_components or n_feat, n_feat)
        train, held = heldout_split(n)
        check_ks(ks, train.size, what=f"training images (every {HELDOUT_EVERY}th of the {n} is held out)")
        fit_source = RowSource(features, rows=train, columns=m if m < n_feat else None)
        score_source = RowSource(features, columns=m if m < n_feat else None)
    else:
        m = n_feat
        check_ks(ks, n)
        fit_source = score_source = RowSource(features)
        train, held = np.arange(n), np.zeros(0, dtype=np.int64)

    if method == "gmm":  # before anything is written
        mixture_memory_check("select-k", ks, m, covariance, fit_cfg.memory_limit)
    identity = {"ks": ks, "method": method, "covariance": covariance if method == "gmm" else None,
                "seed": int(seed), "max_iter": int(max_iter)}
    if where.precision != "float64":  # changes the sweep; the default leaves earlier sweeps' settings as they were
        identity["precision"] = where.precision
    _check_config(layout, identity, overwrite)
    extra = {"n_fit_rows": int(train.size), "n_heldout_rows": int(held.size)}
    if layout.is_done(STAGE) and not (layout.select_k_csv.exists() and stages.is_current(layout, STAGE)):
        _reset(layout)  # the outputs were removed, or the fit was redone since: sweep again
    if layout.is_done(STAGE):
        return _result(read_csv(layout.select_k_csv), method, layout, extra)

    bs, room = _batch_size(method, ks, m, covariance, fit_cfg, batch_size, numpy=where.is_numpy)
    key = fingerprint([STAGE, identity, fit_cfg.identity(), n, n_feat, m])
    fit_ck_path, score_ck_path = _checkpoint_paths(layout)
    estimators = [candidate_estimator(method, k, covariance=covariance, seed=seed, max_iter=max_iter, batch_size=bs,
                                      backend=where.name, device=where.device, precision=where.precision)
                  for k in ks]
    logger.log(logging.DEBUG if where.is_numpy else logging.INFO, "select-k: %d candidates with %s", len(ks),
               where.describe())
    fn, bars = _progress_fn(progress, lambda: select_k_phases(
        features, n, ks, method, covariance, int(max_iter), columns=m if m < n_feat else None, backend=where))
    try:
        fits = fit_candidates(estimators, fit_source, checkpoint=_checkpointer(fit_ck_path, key), progress=fn,
                              client=client, host_room=room)
        rows = score_candidates(method, fits, score_source, bs, n_fit_rows=int(train.size),
                                checkpoint=_checkpointer(score_ck_path, key), progress=fn, client=client)
    finally:
        if bars is not None:
            bars.close()
    for i, msg in fits.failed.items():
        logger.warning("select-k: k=%d failed: %s", ks[i], msg)
    write_csv(layout.select_k_csv, rows)
    plot(layout.select_k_png, rows)
    stages.complete(layout, STAGE)
    for p in (fit_ck_path, score_ck_path):
        p.unlink(missing_ok=True)
    extra.update(failed={ks[i]: msg for i, msg in fits.failed.items()},
                 not_converged=[ks[i] for i in fits.warnings], passes=fits.passes)
    return _result(rows, method, layout, extra)
