"""Small fitted runs for the report tests (built once per session; nothing is committed as data)."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamclust import stages
from streamclust.config import FitConfig, IngestConfig
from streamclust.ingest import ingest
from streamclust.pipeline.assign import assign_run
from streamclust.pipeline.fit import fit_run
from streamclust.store import RunLayout

#: hostile member names that must come out escaped in the HTML
HOSTILE_NAMES = (
    "<script>alert(1)</script>.png",
    'a&b".png',
    "it's \"quoted\" & <b>bold</b>.png",
)
#: a skipped member (not an image) with a hostile name: shown in the summary's examples
HOSTILE_SKIPPED = "<img src=x onerror=alert(2)>.png"

#: the t-SNE sample of the test reports (small, for speed)
TSNE_SAMPLES = 200


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def blob_images(n: int, side: int = 16, seed: int = 0):
    """``n`` distinct smooth RGB images (two families, so clusters mean something)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(n):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        r = rng.uniform(0.15, 0.3)
        base = np.array([40, 60, 200]) if i % 2 else np.array([220, 120, 30])
        inside = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        arr = np.empty((side, side, 3))
        arr[:] = rng.uniform(200, 255, 3)
        arr[inside] = base + rng.normal(0, 15, 3)
        arr += rng.normal(0, 6, arr.shape)
        yield np.clip(arr, 0, 255).astype(np.uint8)


def write_zip(path: Path, members) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def make_run(tmp: Path, name: str, members, *, size: int, fit: FitConfig | None, assign: bool = True) -> Path:
    src = write_zip(tmp / f"{name}.zip", members)
    run = tmp / name
    ingest(IngestConfig(str(src), size=size, workers=1), run, progress=False)
    if fit is not None:
        fit_run(run, fit, progress=False)
        if assign:
            assign_run(run, progress=False)
    return run


def write_select_k(run: Path) -> None:
    """A ``select_k.csv`` as ``streamclust select-k`` writes it (columns per docs)."""
    with open(run / "select_k.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["k", "method", "covariance", "bic", "aic", "heldout_loglik", "inertia", "calinski_harabasz"])
        for k in (2, 4, 6, 8, 10, 12, 14):
            w.writerow([k, "kmeans", "", "", "", "", 9e8 / k ** 0.5, 300 - (k - 9) ** 2])
            w.writerow([k, "gmm", "diag", 4e5 + 900 * (k - 10) ** 2, 3.9e5 + 500 * (k - 9) ** 2,
                        -180 - 0.2 * (k - 10) ** 2, "", ""])


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """The demo digits (1797 8x8 images + broken members): fitted (with the t-SNE map of every
    image), assigned, evaluated, compared, select-k."""
    from streamclust.demo import make_digits_archive
    from streamclust.pipeline.compare import compare_run
    from streamclust.pipeline.evaluate import evaluate_run

    tmp = tmp_path_factory.mktemp("digits")
    zip_path = make_digits_archive(tmp / "digits.zip")
    run = tmp / "run"
    ingest(IngestConfig(str(zip_path), size=8, workers=1), run, progress=False)
    fit_run(run, FitConfig(pca_components=30, clusters=10, gmm_components=10, covariance="diag", embed="tsne"),
            progress=False)
    assign_run(run, progress=False)
    evaluate_run(run, labels=str(zip_path) + ".labels.csv")
    compare_run(run, labels=str(zip_path) + ".labels.csv")
    write_select_k(run)
    stages.complete(RunLayout.of(run), "select-k")
    return run


@pytest.fixture(scope="session")
def digits_report(digits_run) -> Path:
    from streamclust.report import build_report

    return build_report(digits_run, seed=0, progress=False, tsne_samples=TSNE_SAMPLES)


@pytest.fixture(scope="session")
def hostile_run(tmp_path_factory) -> Path:
    """14 images, three with hostile names, plus a skipped member with a hostile name."""
    tmp = tmp_path_factory.mktemp("hostile")
    images = list(blob_images(14, seed=1))
    names = list(HOSTILE_NAMES) + [f"ok/{i:02d}.png" for i in range(len(images) - len(HOSTILE_NAMES))]
    members = [(n, png(a)) for n, a in zip(names, images)]
    members.append((HOSTILE_SKIPPED, b"<html>not a picture</html>"))
    return make_run(tmp, "run", members, size=16,
                    fit=FitConfig(pca_components=5, clusters=3, gmm_components=2, covariance="diag"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Five images, one cluster, one mixture component."""
    tmp = tmp_path_factory.mktemp("tiny")
    members = [(f"img/{i}.png", png(a)) for i, a in enumerate(blob_images(5, seed=2))]
    return make_run(tmp, "run", members, size=16,
                    fit=FitConfig(pca_components=3, clusters=1, gmm_components=1, covariance="diag"))
