"""`fit --features latents`: the models are fitted on a trained autoencoder's latents."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from streamclust.cli import main  # noqa: E402
from streamclust.config import FitConfig, IngestConfig  # noqa: E402
from streamclust.deep.encode import encode_run  # noqa: E402
from streamclust.deep.train import train_run  # noqa: E402
from streamclust.demo import make_digits_archive  # noqa: E402
from streamclust.errors import StageNotDoneError  # noqa: E402
from streamclust.ingest import ingest  # noqa: E402
from streamclust.models.io import load_model  # noqa: E402
from streamclust.pipeline.assign import assign_run, read_assignments  # noqa: E402
from streamclust.pipeline.evaluate import evaluate_run  # noqa: E402
from streamclust.pipeline.fit import fit_run  # noqa: E402


def test_fit_assign_evaluate_on_latents(tmp_path):
    src = make_digits_archive(tmp_path / "d.zip")
    run = tmp_path / "run"
    ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    cfg = FitConfig(pca_components=6, clusters=10, gmm_components=4, features="latents")
    with pytest.raises(StageNotDoneError, match="streamclust encode"):
        fit_run(run, cfg, progress=False)
    train_run(run, model="ae", latent=8, epochs=2, batch_size=256, width=8, threads=1, progress=False)
    encode_run(run, model="ae", progress=False)
    fit_run(run, cfg, progress=False)
    pca = load_model(run / "model" / "pca.npz")
    assert pca.components_.shape == (6, 8)  # PCA in the 8-D latent space
    assign_run(run, progress=False)
    a = read_assignments(run)
    assert a["index"].size == 1797 and (a["cluster"] >= 0).all() and np.isfinite(a["log_likelihood"]).all()
    res = evaluate_run(run, labels=str(src) + ".labels.csv")
    assert res["methods"]["kmeans"]["ari"] > 0.2
    assert main(["report", str(run), "--tsne-samples", "50", "--quiet"]) == 0
    assert "not pixels" in (run / "report" / "index.html").read_text()
