"""``streamclust evaluate``: score the clusterings against known labels.

Scores per method (k-means, GMM): adjusted Rand index, normalised mutual information,
homogeneity, completeness and best-match accuracy — clusters are matched one-to-one to
labels by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the
contingency table, so with two classes and two clusters it is ``max(acc, 1 - acc)``.
With more clusters than labels only the matched clusters count as correct.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics

from .. import stages
from .._atomic import write_json
from ..errors import UsageError
from ..store import RunLayout
from .assign import read_assignments

__all__ = ["best_match_accuracy", "score_labels", "evaluate_run", "read_labels", "labels_from_folders"]


def best_match_accuracy(labels_true, labels_pred) -> float:
    """Share of items whose cluster is matched to their label by the optimal one-to-one matching."""
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.size == 0:
        raise UsageError("no labelled images to score")
    table = metrics.cluster.contingency_matrix(labels_true, labels_pred)
    r, c = linear_sum_assignment(table, maximize=True)
    return float(table[r, c].sum() / labels_true.size)


def score_labels(labels_true, labels_pred) -> dict[str, float]:
    """ARI, NMI, homogeneity, completeness and best-match accuracy."""
    h, c, _ = metrics.homogeneity_completeness_v_measure(labels_true, labels_pred)
    return {
        "ari": float(metrics.adjusted_rand_score(labels_true, labels_pred)),
        "nmi": float(metrics.normalized_mutual_info_score(labels_true, labels_pred)),
        "homogeneity": float(h),
        "completeness": float(c),
        "accuracy": best_match_accuracy(labels_true, labels_pred),
    }


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """A CSV with columns ``member,label`` (a header row is required)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"labels file {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"member", "label"} <= set(reader.fieldnames):
            raise UsageError(f"{path} needs a header with the columns member,label")
        return {row["member"]: row["label"] for row in reader}


def labels_from_folders(members) -> dict[str, str]:
    """The label of ``a/b/cat/001.jpg`` is its parent folder, ``cat``."""
    out = {}
    for m in members:
        parts = m.replace("\\", "/").split("/")
        if len(parts) >= 2:
            out[m] = parts[-2]
    return out


def evaluate_run(run_dir, *, labels: str | os.PathLike | None = None, from_folders: bool = False) -> dict:
    """Score the run's assignments against labels; writes ``RUN_DIR/evaluation.json``."""
    if (labels is None) == (not from_folders):
        raise UsageError("give either --labels labels.csv or --labels-from-folders")
    a = read_assignments(run_dir)
    members = list(a["member"])
    mapping = labels_from_folders(members) if from_folders else read_labels(labels)
    keep = np.array([m in mapping for m in members], dtype=bool)
    if not keep.any():
        raise UsageError("none of the run's images has a label; check the member names in the labels file")
    y = np.array([mapping[m] for m, k in zip(members, keep) if k])
    source = {"from_folders": True} if from_folders else {"file": str(Path(labels).resolve())}
    result = {"n_labelled": int(keep.sum()), "n_classes": int(len(set(y))), "methods": {},
              "labels_source": source}
    for method, col in (("kmeans", "cluster"), ("gmm", "component")):
        pred = a[col][keep]
        if (pred >= 0).all():
            result["methods"][method] = {"n_clusters": int(len(set(pred))), **score_labels(y, pred)}
    layout = RunLayout.of(run_dir)
    write_json(layout.evaluation, result)
    stages.complete(layout, "evaluate")
    return result


def format_table(result: dict) -> str:
    cols = ("ari", "nmi", "homogeneity", "completeness", "accuracy")
    lines = [f"{'method':<8} {'clusters':>8} " + " ".join(f"{c:>12}" for c in cols)]
    for name, r in result["methods"].items():
        lines.append(f"{name:<8} {r['n_clusters']:>8} " + " ".join(f"{r[c]:>12.4f}" for c in cols))
    lines.append(f"({result['n_labelled']} labelled images, {result['n_classes']} classes)")
    return "\n".join(lines)
