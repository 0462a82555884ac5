"""The latents cluster digits about as well as raw-pixel PCA does (best-match accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

pytest.importorskip("torch")

from sklearn.cluster import KMeans  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from streamclust.deep.encode import encode_run  # noqa: E402
from streamclust.deep.train import train_run  # noqa: E402
from streamclust.ingest.manifest import read_manifest  # noqa: E402
from streamclust.pipeline.evaluate import best_match_accuracy, labels_from_folders  # noqa: E402
from streamclust.store import ok_rows  # noqa: E402

from . import digits_run  # noqa: E402


def test_ae_latents_kmeans_matches_pixel_pca_kmeans_on_digits(tmp_path):
    run = digits_run(tmp_path, size=8, chunk_size=256)
    rows = ok_rows(run)
    member = {int(r["index"]): r["member"] for r in read_manifest(run / "manifest.csv") if r["index"] != ""}
    labels = labels_from_folders(member.values())  # digits/<label>/<n>.png
    y = np.array([labels[member[int(r)]] for r in rows])

    X = zarr.open_array(run / "images.zarr", mode="r")[:][rows].reshape(rows.size, -1).astype(np.float64)
    pcs = PCA(n_components=30, random_state=0).fit_transform(X)
    acc_pca = best_match_accuracy(y, KMeans(10, n_init=10, random_state=0).fit_predict(pcs))

    out = train_run(run, model="ae", latent=16, epochs=20, batch_size=64, threads=1, device="cpu", progress=False)
    assert out["final_loss"] < 0.5 * out["first_loss"]
    Z = zarr.open_array(encode_run(run, model="ae", device="cpu", progress=False), mode="r")[:]
    acc_ae = best_match_accuracy(y, KMeans(10, n_init=10, random_state=0).fit_predict(Z))
    assert acc_pca > 0.7  # real structure: both find the digits
    print(f"digits best-match accuracy: pixel PCA k-means {acc_pca:.3f}, AE latents k-means {acc_ae:.3f}")
    assert acc_ae >= acc_pca - 0.05, (acc_ae, acc_pca)
