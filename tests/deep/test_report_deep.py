"""The report shows trained networks: loss curves, reconstructions, VAE samples."""

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from streamclust.config import FitConfig, IngestConfig  # noqa: E402
from streamclust.deep.train import train_run  # noqa: E402
from streamclust.demo import make_digits_archive  # noqa: E402
from streamclust.ingest import ingest  # noqa: E402
from streamclust.pipeline.assign import assign_run  # noqa: E402
from streamclust.pipeline.fit import fit_run  # noqa: E402
from streamclust.report import build_report  # noqa: E402


def test_report_has_the_deep_section(tmp_path):
    src = make_digits_archive(tmp_path / "d.zip")
    run = tmp_path / "run"
    ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    fit_run(run, FitConfig(pca_components=8, clusters=4, gmm_components=2), progress=False)
    assign_run(run, progress=False)
    for model in ("ae", "vae"):
        train_run(run, model=model, latent=4, epochs=1, batch_size=256, width=8, threads=1, progress=False)
    index = build_report(run, tsne_samples=50)
    html = index.read_text()
    assert 'id="deep"' in html
    for name in ("deep_loss.png", "deep_ae_reconstructions.png", "deep_vae_reconstructions.png",
                 "deep_vae_samples.png"):
        assert name in html
        with Image.open(index.parent / name) as im:
            assert im.size[0] > 50
