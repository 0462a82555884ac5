"""The other methods of ``streamclust fit``: kernel PCA, agglomerative clustering, a t-SNE map.

Run after the PCA features exist, each as its own resumable stage with a marker
(``fit-kpca``, ``fit-agglomerative``, ``fit-tsne``, ``fit-embedding``, ``fit-tsne_kmeans``):

- ``--reduce kpca``: :class:`~streamclust.models.kpca.StreamingKernelPCA` (RBF kernel,
  ``gamma="scale"``, Nystroem landmarks) on ``features.zarr`` → ``model/kpca.npz``;
- ``--cluster ...,agglomerative``: :class:`~streamclust.models.agglomerative.StreamingAgglomerative`
  with ``--clusters`` clusters (Ward on k-means micro-clusters) → ``model/agglomerative.npz``;
- ``--embed tsne``: :class:`~streamclust.models.embed.StreamingTSNE` fitted on a sample of
  the kernel-PCA scores (or of the PCA features without ``--reduce kpca``), every image
  placed by streaming ``transform`` into ``embedding.zarr`` (float32, ``(n, 2)``), then
  k-means with ``--clusters`` clusters on that map → ``model/tsne_kmeans.npz`` (the
  notebook pipeline features → kernel PCA → t-SNE → k-means is
  ``--reduce kpca --embed tsne --clusters 2``).
"""

from __future__ import annotations

import time


from .. import stages
from ..integrity import array_record, verify_output
from ..models.io import load_model, save_model

__all__ = ["fit_methods"]


def _stage(layout, name, summary, run):
    if layout.is_done(f"fit-{name}"):
        return
    t0 = time.perf_counter()
    run()
    extra = {"array": array_record(layout.embedding)} if name == "embedding" else {}  # checked on open
    stages.complete(layout, f"fit-{name}", **extra)
    summary.seconds[name] = time.perf_counter() - t0


def fit_methods(layout, config, features, data_key, summary, *, progress, client, fit_stage, backend=None) -> None:
    """Fit the methods that ``config`` asks for on ``features`` (the PCA scores).

    ``backend`` (a :class:`~streamclust.engine.Backend`, default NumPy) is where the
    t-SNE map's k-means runs; kernel PCA, agglomerative clustering and t-SNE run with NumPy.
    """
    from ..engine import NUMPY

    backend = backend or NUMPY
    n = int(features.shape[0])
    bs = int(features.chunks[0])
    if "agglomerative" in config.cluster and config.clusters:
        from ..models.agglomerative import StreamingAgglomerative

        def agglomerative():
            est = StreamingAgglomerative(config.clusters, n_subclusters=min(1000, n), batch_size=bs,
                                         random_state=config.seed)
            fit_stage(layout, "agglomerative", est, features, None, data_key, config, progress, client)
            save_model(est, layout.model("agglomerative"))

        _stage(layout, "agglomerative", summary, agglomerative)
    scores = features
    if config.reduce == "kpca":
        from ..models.kpca import StreamingKernelPCA

        def kpca():
            est = StreamingKernelPCA(min(config.kpca_components, n), gamma="scale", fit_inverse_transform=True,
                                     batch_size=bs, random_state=config.seed)
            fit_stage(layout, "kpca", est, features, None, data_key, config, progress, client)
            save_model(est, layout.model("kpca"))

        _stage(layout, "kpca", summary, kpca)
        scores = None  # computed below when needed
    if config.embed == "tsne":
        from ..engine import TransformedRows
        from ..models.embed import StreamingTSNE, embed_to_zarr
        from ..models.kmeans import StreamingKMeans

        if scores is None:  # the kernel-PCA scores, computed batch by batch as they are read
            kp = load_model(layout.model("kpca"))
            scores = TransformedRows(features, kp.transform, kp.n_components_)

        def tsne():
            est = StreamingTSNE(sample_size=min(5000, n), batch_size=bs, random_state=config.seed)
            fit_stage(layout, "tsne", est, scores, None, data_key, config, progress, client)
            save_model(est, layout.model("tsne"))

        _stage(layout, "tsne", summary, tsne)
        _stage(layout, "embedding", summary,
               lambda: embed_to_zarr(load_model(layout.model("tsne")), scores, layout.embedding))

        def tsne_kmeans():
            emb = verify_output(layout, "embedding")
            est = StreamingKMeans(max(1, min(config.clusters or 2, n)), method="lloyd", batch_size=bs,
                                  random_state=config.seed, backend=backend.name, device=backend.device,
                                  precision=backend.precision)
            fit_stage(layout, "tsne_kmeans", est, emb, None, data_key, config, progress, client)
            save_model(est, layout.model("tsne_kmeans"))

        _stage(layout, "tsne_kmeans", summary, tsne_kmeans)
