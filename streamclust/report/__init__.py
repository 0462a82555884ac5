"""``streamclust report RUN_DIR``: an HTML page about a fitted run, viewable offline.

Writes ``RUN_DIR/report/index.html`` and its PNG pictures beside it (no scripts, no
external resources, inline CSS):

* run summary: images ok, duplicates, skipped by reason (with examples), settings, timings;
* the mean image and the leading eigenfaces with their explained variance, and the
  explained-variance curve;
* PCA reconstructions of a few images with increasing numbers of components;
* the k-means centroids as images, sorted by cluster size;
* per cluster, the members nearest to and farthest from the centroid;
* images sampled from the Gaussian mixture;
* the ``select-k`` curves, when ``select_k.csv`` exists;
* a 2-D embedding (first two principal components, and t-SNE) of a sample stratified
  by cluster;
* the map of every image (``embedding.zarr``, written by ``fit --embed tsne``): density,
  and cells coloured by cluster and, when ``evaluate`` had labels, by true label;
* the lowest-likelihood images (outliers);
* the methods side by side, when ``streamclust compare`` wrote ``compare.csv``;
* evaluation scores, when ``streamclust evaluate`` ran.

Only the image rows shown are read from ``images.zarr`` and only the sampled rows from
``features.zarr``; the manifest is streamed.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import stages
from .._atomic import write_bytes, write_text
from ..errors import StreamclustError
from ..integrity import verify_output
from ..store import RunLayout, image_array
from . import figures
from .data import manifest_overview, read_features, read_json, read_rows, stratified_sample
from .page import Picture, Section, collapsible, details, render_page, table

__all__ = ["build_report", "REPORT_DIR", "TSNE_MAX_SAMPLES", "TSNE_MIN_SAMPLES"]

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
#: the embedding uses a sample of at most this many images, stratified by cluster
TSNE_MAX_SAMPLES = 2000
#: fewer sampled images than this: t-SNE is skipped with a note
TSNE_MIN_SAMPLES = 10
TSNE_MAX_ITER = 500
#: t-SNE runs on at most this many leading PCA scores
TSNE_MAX_DIMS = 50
N_EIGENFACES = 15
N_RECONSTRUCTIONS = 8
N_GALLERY = 6  # nearest and farthest members shown per cluster
MAX_GALLERY_CLUSTERS = 40
N_SAMPLES = 32
N_OUTLIERS = 16
#: cells per side of the map's histograms: about 4 images per cell on a uniform map,
#: between these bounds
MAP_BINS = (40, 200)
#: rows of embedding.zarr read at a time
MAP_BATCH = 65536
FIT_STAGES = ("pca", "features", "kmeans", "gmm")

# what each skip word of the manifest means (docs/store-format.md)
STATUS_MEANING = {
    "empty": "no bytes",
    "not_image": "not an image Pillow can identify",
    "metadata": "operating-system metadata",
    "truncated": "image data ends early",
    "corrupt": "damaged data",
    "bomb": "declared canvas exceeds --max-pixels",
    "too_large": "member exceeds --max-member-bytes",
    "bad_crc": "zip CRC-32 mismatch",
    "too_small": "a side is shorter than --min-side",
    "bad_aspect": "more elongated than --max-aspect",
    "unreadable": "the archive could not deliver the member",
    "encrypted": "encrypted zip member",
    "not_file": "link, device or other non-regular member",
    "error": "unexpected decoder failure",
}


def build_report(run_dir: str | os.PathLike, *, seed: int = 0, progress: bool | None = None,
                 tsne_samples: int | None = None) -> Path:
    """Write the HTML report of a fitted and assigned run; returns the path of ``index.html``.

    Parameters
    ----------
    run_dir : path
        A run directory where ``streamclust fit`` and ``streamclust assign`` completed.
    seed : int, default=0
        Seeds the image samples, the mixture samples and t-SNE (the report is reproducible).
    progress : bool or None, default=None
        A progress bar over the sections; ``None`` shows it only on a terminal.
    tsne_samples : int or None, default=None
        Images in the 2-D embedding (stratified by cluster); ``None`` means
        :data:`TSNE_MAX_SAMPLES`.

    Raises
    ------
    StageNotDoneError
        When ingestion, the fit or the assignment has not run (names the command to run).
    """
    layout = RunLayout.of(run_dir)
    for name in ("ingest", *stages.reads("report")):
        layout.require(name)
    report = _Report(layout, seed=seed, tsne_samples=tsne_samples or TSNE_MAX_SAMPLES)
    return report.build(progress)


class _Report:
    def __init__(self, layout: RunLayout, *, seed: int, tsne_samples: int):
        from ..pipeline.assign import load_fitted, read_assignments

        self.layout = layout
        self.out = layout.report_dir
        #: what each stage's outputs are: current, stale or missing; only current ones are shown
        self.status = stages.statuses(layout)
        self.seed = int(seed)
        self.tsne_samples = max(1, int(tsne_samples))
        self.models = load_fitted(layout.root)
        self.pca = self.models["pca"]
        from ..config import load_run_config

        #: "pixels", or "latents" when the models were fitted on an autoencoder's latents
        self.features = (load_run_config(layout.root).get("fit") or {}).get("features", "pixels")
        self.km = self.models["kmeans"]
        self.gmm = self.models["gmm"]
        self.a = read_assignments(layout.root)
        self.images = image_array(layout.root)
        self.side = int(self.images.shape[1])
        self.written: set[str] = set()
        # images the models were fitted on: ok rows less byte-identical repeats
        self.unique = self.a["duplicate_of"] < 0
        if self.km is not None:
            self.n_clusters = int(self.km.cluster_centers_.shape[0])
            self.sizes = np.bincount(self.a["cluster"][self.a["cluster"] >= 0], minlength=self.n_clusters)
        else:
            self.n_clusters, self.sizes = 0, np.zeros(0, dtype=np.int64)

    # -- helpers ---------------------------------------------------------------------------
    def rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])

    def save(self, name: str, rendered: tuple[bytes, int, int], alt: str, caption: str = "",
             pixelated: bool = False) -> Picture:
        data, width, height = rendered
        write_bytes(self.out / name, data)
        self.written.add(name)
        return Picture(name, alt, width, height, caption, pixelated)

    def group_labels(self) -> tuple[np.ndarray, str]:
        """Per assigned image: the k-means cluster, else the mixture component, else 0."""
        if self.km is not None:
            return self.a["cluster"], "cluster"
        if self.gmm is not None:
            return self.a["component"], "component"
        return np.zeros(self.a["index"].size, dtype=np.int64), "group"

    def reconstruct(self, scores: np.ndarray) -> np.ndarray:
        pixels = self.pca.inverse_transform(np.asarray(scores, dtype=np.float64))
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, self.side, self.side, 3)

    # -- the page ----------------------------------------------------------------------------
    def build(self, progress: bool | None) -> Path:
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        steps = [
            ("summary", self.summary), ("eigenfaces", self.eigenfaces),
            ("reconstructions", self.reconstructions), ("centroids", self.centroids),
            ("clusters", self.clusters), ("samples", self.samples), ("select-k", self.select_k),
            ("embedding", self.embedding), ("map", self.map), ("outliers", self.outliers),
            ("compare", self.compare), ("evaluation", self.evaluation), ("deep", self.deep),
        ]
        sections = []
        with tqdm(total=len(steps), desc="report", unit="section", leave=False, file=sys.stderr,
                  disable=(not progress) if progress is not None else None) as bar:
            for name, step in steps:
                t = time.perf_counter()
                sections.append(step())
                logger.debug("report: %s in %.2f s", name, time.perf_counter() - t)
                bar.update(1)
        seconds = time.perf_counter() - t0
        root = self.layout.root.resolve()
        html = render_page(
            f"streamclust report: {root.name}",
            f"run directory {root} · {int(self.a['index'].size)} images assigned",
            sections,
            f"Written by streamclust in {seconds:.1f} s on {time.strftime('%Y-%m-%d %H:%M:%S')} "
            f"(seed {self.seed}). Pictures are PNG files beside this page.",
        )
        index = write_text(self.out / "index.html", html)
        for stale in self.out.glob("*.png"):  # pictures of an earlier report of this run
            if stale.name not in self.written:
                stale.unlink()
        stages.complete(self.layout, "report")
        logger.info("report written to %s (%.1f s)", index, seconds)
        return index

    # -- sections ----------------------------------------------------------------------------
    def summary(self) -> Section:
        sec = Section("summary", "Run summary")
        ingest = read_json(self.layout.ingest_summary) or {}
        fit_summary = read_json(self.layout.fit_summary) or {}
        config = read_json(self.layout.config) or {}
        assign_done = read_json(self.layout.marker("assign")) or {}
        over = manifest_overview(self.layout.manifest)
        counts = over["counts"]
        ok = counts.get("ok", 0)
        members = sum(counts.values())
        skipped = members - ok
        n_fit = int(fit_summary.get("n_images", int(self.unique.sum())))
        src = (config.get("ingest") or {}).get("source") or {}
        sec.text(f"{members} members in the source, {ok} images ingested as {self.side}x{self.side} "
                 f"pixels, {skipped} skipped; {n_fit} images used in the fit.")
        rows = [("members in the source", members), ("ok (ingested)", ok),
                ("of which byte-identical duplicates (kept, not fitted)", over["duplicates"]),
                ("used in the fit", n_fit), ("skipped", skipped)]
        sec.add(table(("images", "count"), rows, numeric={1}, caption="Images"))
        if skipped:
            srows = []
            for status, n in sorted(((s, c) for s, c in counts.items() if s != "ok"), key=lambda x: (-x[1], x[0])):
                ex = "; ".join(f"{m}: {r}" if r else m for m, r in over["examples"].get(status, []))
                srows.append((status, n, STATUS_MEANING.get(status, ""), ex))
            sec.add(table(("status", "count", "meaning", "examples (member: reason)"), srows, numeric={1},
                          caption="Skipped members by reason (all of them are listed in manifest.csv)"))
        # models
        pca = self.pca
        asked = (fit_summary.get("pca") or {}).get("requested")
        reached = float(np.sum(pca.explained_variance_ratio_))
        pca_text = f"{int(pca.n_components_)} components, {100 * reached:.1f} % of the variance"
        if isinstance(asked, float):
            pca_text = f"asked {asked:g} of the variance, reached {reached:.3f} with {int(pca.n_components_)} components"
        mrows = [("PCA", pca_text)]
        if self.km is not None:
            mrows.append(("k-means", f"{self.n_clusters} clusters, inertia {float(self.km.inertia_):.4g}"))
        else:
            mrows.append(("k-means", "not fitted"))
        if self.gmm is not None:
            cols = self.models.get("gmm_columns")
            mrows.append(("Gaussian mixture",
                          f"{int(self.gmm.means_.shape[0])} components, {self.gmm.covariance_type} covariance, "
                          f"on {cols or int(pca.n_components_)} PCA scores, "
                          f"lower bound {float(self.gmm.lower_bound_):.4g}"))
        else:
            mrows.append(("Gaussian mixture", "not fitted"))
        sec.add(table(("model", "fitted"), mrows, caption="Models"))
        for note in fit_summary.get("notes") or []:  # what differs from what was asked, in plain words
            sec.note(f"{note}.")
        # settings
        srows = []
        if src:
            srows.append(("ingest", "source", src.get("path", "")))
        for stage in ("ingest", "fit"):
            for key, value in sorted((config.get(stage) or {}).items()):
                if key == "source":
                    continue
                srows.append((stage, key, "" if value is None else value))
        if srows:
            sec.add(collapsible("Settings (config.json)", table(("stage", "setting", "value"), srows)))
        # timings
        trows = []
        if "seconds" in ingest:
            trows.append(("ingest", f"{float(ingest['seconds']):.2f}"))
        fit_seconds = fit_summary.get("seconds") or {}
        for stage in sorted(fit_seconds, key=lambda st: (FIT_STAGES.index(st) if st in FIT_STAGES else 99, st)):
            trows.append((f"fit: {stage}", f"{float(fit_seconds[stage]):.2f}"))
        if "seconds" in assign_done:
            trows.append(("assign", f"{float(assign_done['seconds']):.2f}"))
        if trows:
            trows.append(("total", f"{sum(float(t[1]) for t in trows):.2f}"))
            sec.add(table(("stage", "seconds"), trows, numeric={1}, caption="Timings"))
        else:
            sec.note("No timings recorded.")
        sec.add(table(("stage", "outputs", "state"), self.stage_rows(),
                      caption="Stages (only current outputs are shown in this report)"))
        stale = [n for n, st in self.status.items() if st == stages.STALE and n != "report"]
        if stale:
            sec.note(f"Stale (an earlier stage was redone since, so they are not shown): {', '.join(stale)}; "
                     "run their commands again.")
        return sec

    def stage_rows(self) -> list[tuple]:
        words = {stages.CURRENT: "current", stages.STALE: "stale: not shown", stages.MISSING: "not run"}
        rows = []
        for name, st in self.status.items():
            if name == "report":
                continue
            rows.append((name, stages.stage(name).help, words[st]))
        return rows

    def current(self, name: str) -> bool:
        """Whether the outputs of stage ``name`` may be shown: complete and current."""
        return self.status.get(name) == stages.CURRENT

    def eigenfaces(self) -> Section:
        sec = Section("eigenfaces", "Mean image and eigenfaces")
        if self.features != "pixels":
            return sec.note(f"The models were fitted on {self.features}, not pixels: eigenfaces cannot be drawn "
                            "as images (see the learned-features section for reconstructions).")
        pca = self.pca
        mean = np.clip(np.rint(pca.mean_), 0, 255).astype(np.uint8).reshape(self.side, self.side, 3)
        n = min(N_EIGENFACES, int(pca.n_components_))
        ratios = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
        sec.text("The mean image (framed) and the leading principal components (eigenfaces), each "
                 "stretched to the full 0-255 range for display; the percentage is the share of the "
                 "pixel variance the component explains. A component's sign is arbitrary.")
        sec.picture(self.save("eigenfaces.png", figures.eigenfaces_png(mean, pca.components_[:n], ratios[:n]),
                              f"mean image and the first {n} eigenfaces with their explained variance"))
        sec.picture(self.save("explained_variance.png", figures.variance_png(ratios),
                              "explained variance per principal component and cumulated",
                              f"{ratios.size} components: {100 * ratios.sum():.1f} % of the variance in total; "
                              f"first component {100 * ratios[0]:.1f} %."))
        return sec

    def reconstructions(self) -> Section:
        sec = Section("reconstructions", "PCA reconstructions")
        if self.features != "pixels":
            return sec.note(f"The models were fitted on {self.features}, not pixels: PCA reconstructions cannot be drawn "
                            "as images (see the learned-features section for reconstructions).")
        labels, _ = self.group_labels()
        pool = np.flatnonzero(self.unique)
        pos = pool[stratified_sample(labels[pool], N_RECONSTRUCTIONS, self.rng(1))]
        rows = self.a["index"][pos]
        originals = read_rows(self.images, rows)
        X = originals.reshape(rows.size, -1).astype(np.float32)
        scores = self.pca.transform(X).astype(np.float64)
        k = int(self.pca.n_components_)
        levels = [m for m in (5, 20, 50) if m < k][:3] + [k]
        tiles, row_labels, rmse_rows = [originals], ["original"], []
        for m in levels:
            Z = scores.copy()
            Z[:, m:] = 0.0
            rec = self.reconstruct(Z)
            tiles.append(rec)
            rmse = float(np.sqrt(np.mean((rec.astype(np.float64) - originals) ** 2)))
            row_labels.append(f"{m} PC{'s' if m > 1 else ''}")
            rmse_rows.append((m, f"{rmse:.2f}"))
        grid = np.concatenate(tiles)
        sec.text(f"{rows.size} images (one row each: the original, then reconstructions from the first "
                 f"{', '.join(str(m) for m in levels)} principal components).")
        sec.picture(self.save("reconstructions.png",
                              figures.grid_png(grid, cols=rows.size, row_labels=row_labels),
                              f"{rows.size} images and their PCA reconstructions with "
                              f"{', '.join(str(m) for m in levels)} components", pixelated=True))
        sec.add(table(("components", "RMS error (0-255)"), rmse_rows, numeric={0, 1}))
        sec.add(details("Images shown (left to right)", self.a["member"][pos]))
        return sec

    def centroids(self) -> Section:
        sec = Section("centroids", "k-means centroids")
        if self.features != "pixels":
            return sec.note(f"The models were fitted on {self.features}, not pixels: centroids cannot be drawn "
                            "as images (see the learned-features section for reconstructions).")
        if self.km is None:
            return sec.note("No k-means model in this run (fit with --clusters K).")
        order = np.argsort(-self.sizes, kind="stable")
        centres = np.asarray(self.km.cluster_centers_, dtype=np.float64)[order]
        full = np.zeros((centres.shape[0], int(self.pca.n_components_)))
        full[:, : centres.shape[1]] = centres
        imgs = self.reconstruct(full)
        labels = [f"#{c}  n={self.sizes[c]}" for c in order]
        sec.text(f"{self.n_clusters} cluster centre{'s' if self.n_clusters != 1 else ''} mapped back to "
                 "pixels, largest cluster first (#cluster and its number of images, duplicates included).")
        sec.picture(self.save("centroids.png",
                              figures.grid_png(imgs, labels=labels, cols=min(10, len(imgs))),
                              f"{self.n_clusters} k-means centroids sorted by cluster size", pixelated=True))
        return sec

    def clusters(self) -> Section:
        sec = Section("clusters", "Cluster members")
        if self.km is None:
            return sec.note("No k-means model in this run (fit with --clusters K).")
        order = [int(c) for c in np.argsort(-self.sizes, kind="stable") if self.sizes[c] > 0]
        shown = order[:MAX_GALLERY_CLUSTERS]
        sec.text(f"For each cluster, largest first: up to {N_GALLERY} images nearest to the centroid "
                 f"(top row) and up to {N_GALLERY} farthest from it (bottom row, most distant last); "
                 "captions are the distances in PCA space. Byte-identical duplicates are left out.")
        if len(order) > len(shown):
            sec.note(f"Showing the {len(shown)} largest of {len(order)} non-empty clusters.")
        cluster, dist = self.a["cluster"], self.a["distance"]
        picks = {}
        for c in shown:
            members = np.flatnonzero((cluster == c) & self.unique)
            members = members[np.argsort(dist[members], kind="stable")]
            near = members[:N_GALLERY]
            far = members[max(near.size, members.size - N_GALLERY):]
            picks[c] = (near, far)
        wanted = np.concatenate([np.concatenate(p) for p in picks.values()]) if picks else np.zeros(0, np.int64)
        pixels = dict(zip(wanted.tolist(), read_rows(self.images, self.a["index"][wanted])))
        for c in shown:
            near, far = picks[c]
            sec.add(f"<h3>Cluster {c} · {int(self.sizes[c])} image{'s' if self.sizes[c] != 1 else ''}</h3>")
            both = np.concatenate([near, far])
            if both.size == 0:
                sec.note("Only duplicates in this cluster.")
                continue
            imgs = np.stack([pixels[int(i)] for i in both])
            labels = [f"d={figures.compact(dist[i])}" for i in both]
            row_labels = ["nearest", "farthest"] if far.size else ["all, nearest first"]
            pic = self.save(f"cluster_{c:03d}.png",
                            figures.grid_png(imgs, labels=labels, cols=near.size, row_labels=row_labels),
                            f"cluster {c}: the {near.size} images nearest to its centroid"
                            + (f" and the {far.size} farthest" if far.size else ""), pixelated=True)
            sec.picture(pic)
            names = [f"{'nearest' if j < near.size else 'farthest'}: {self.a['member'][i]} "
                     f"(row {self.a['index'][i]}, distance {dist[i]:.4g})" for j, i in enumerate(both)]
            sec.add(details("Names", names))
        return sec

    def samples(self) -> Section:
        sec = Section("samples", "Gaussian mixture samples")
        if self.gmm is None:
            return sec.note("No Gaussian mixture in this run (fit with --gmm-components K).")
        if self.features != "pixels":
            return sec.note(f"The models were fitted on {self.features}, not pixels: mixture samples cannot be drawn "
                            "as images (see the learned-features section for reconstructions).")
        from ..pipeline.sample import sample_images

        imgs, comp = sample_images(self.layout.root, N_SAMPLES, seed=self.seed)
        order = np.argsort(comp, kind="stable")
        imgs, comp = imgs[order], np.asarray(comp)[order]
        sec.text(f"{N_SAMPLES} images drawn from the mixture in PCA space and mapped back to pixels, "
                 "grouped by the component they were drawn from (caption).")
        sec.picture(self.save("gmm_samples.png",
                              figures.grid_png(imgs, labels=[f"comp {c}" for c in comp], cols=8),
                              f"{N_SAMPLES} images sampled from the Gaussian mixture", pixelated=True))
        return sec

    def deep(self) -> Section:
        """Trained autoencoders: the loss curves, originals vs reconstructions, VAE samples."""
        sec = Section("deep", "Learned features (autoencoders)")
        trained = [m for m in stages.MODEL_NETS if self.current(f"train-{m}")]
        if not trained:
            return sec.note("No network trained in this run (`streamclust train RUN_DIR --model ae|vae`).")
        try:
            from ..deep.encode import reconstruct, vae_samples
            from ..deep.train import read_history
            histories = {m: read_history(self.layout.root, m) for m in trained}
        except StreamclustError as exc:  # e.g. PyTorch is not installed here
            return sec.note(f"Trained networks exist but cannot be shown: {exc}")
        sec.text("Training loss of each network, logged every few steps.")
        sec.picture(self.save("deep_loss.png", figures.loss_png(histories), "training loss curves"))
        rows = np.sort(self.rng(71).choice(self.a["index"], size=min(8, self.a["index"].size), replace=False))
        for m in trained:
            orig, rec = reconstruct(self.layout.root, rows, model=m)
            pairs = np.concatenate([orig, rec])
            labels = ["original"] * len(orig) + [f"{m.upper()}"] * len(rec)
            sec.text(f"{m.upper()}: originals (top row) and their reconstructions (bottom row).")
            sec.picture(self.save(f"deep_{m}_reconstructions.png",
                                  figures.grid_png(pairs, labels=labels, cols=len(orig)),
                                  f"{m.upper()} reconstructions of {len(orig)} images", pixelated=True))
        if "vae" in trained:
            imgs = vae_samples(self.layout.root, 32, seed=self.seed)
            sec.text("32 images decoded from latent vectors drawn from the VAE's prior N(0, I).")
            sec.picture(self.save("deep_vae_samples.png", figures.grid_png(imgs, cols=8),
                                  "32 images sampled from the VAE", pixelated=True))
        return sec

    def select_k(self) -> Section:
        sec = Section("select-k", "Choosing the number of clusters")
        if self.status.get("select-k") == stages.STALE:
            return sec.note("The select-k sweep of this run is stale (the fit was redone since); run "
                            "`streamclust select-k` again to compare numbers of clusters.")
        from ..pipeline.select_k import CSV_COLUMNS, figure, read_csv

        path = self.layout.select_k_csv
        if not (self.current("select-k") and path.exists()):
            return sec.note("No select_k.csv in this run (run `streamclust select-k` to compare numbers of clusters).")
        try:
            rows = read_csv(path)
        except (ValueError, KeyError) as exc:
            logger.warning("%s is not a select_k.csv (%s); skipping the select-k curve", path, exc)
            rows = []
        rows = [r for r in rows if r["k"] is not None and any(r[c] is not None for c in CSV_COLUMNS[3:])]
        fig = figure(rows) if rows else None
        if fig is None:
            return sec.note("select_k.csv has no usable rows.")
        ks = sorted({r["k"] for r in rows})
        sec.text(f"Criteria for k = {', '.join(str(k) for k in ks)}; a star marks the k each criterion picks.")
        sec.picture(self.save("select_k.png", figures.figure_png(fig), "model selection criteria as a function of k"))
        return sec

    def embedding(self) -> Section:
        sec = Section("embedding", "2-D embedding")
        labels, label_name = self.group_labels()
        pool = np.flatnonzero(self.unique)
        pos = pool[stratified_sample(labels[pool], self.tsne_samples, self.rng(2))]
        rows = self.a["index"][pos]
        F = read_features(self.layout, rows, self.pca, self.images)
        lab = labels[pos]
        pcs = np.zeros((rows.size, 2))
        pcs[:, : min(2, F.shape[1])] = F[:, :2]
        r = np.asarray(self.pca.explained_variance_ratio_)
        pc_titles = tuple(f"PC{i + 1} ({100 * r[i]:.1f} %)" if i < r.size else f"PC{i + 1} (not fitted)"
                          for i in range(2))
        Y, note = None, None
        if rows.size < TSNE_MIN_SAMPLES:
            note = f"t-SNE skipped: {rows.size} images are too few (it needs at least {TSNE_MIN_SAMPLES})."
        else:
            Y, note = self.tsne(F[:, :TSNE_MAX_DIMS])
        desc = (f"A sample of {rows.size} of the {pool.size} fitted images, stratified by {label_name} "
                f"(every {label_name} is represented), coloured by {label_name}.")
        sec.text(desc)
        if note:
            sec.note(note)
        sec.picture(self.save("embedding.png",
                              figures.embedding_png(pcs, Y, lab, label_name=label_name, pc_titles=pc_titles,
                                                    tsne_note=note),
                              f"scatter plots of {rows.size} images on the first two principal components "
                              f"and by t-SNE, coloured by {label_name}"))
        return sec

    def tsne(self, X: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        from sklearn.manifold import TSNE

        n = X.shape[0]
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        if not np.isfinite(X).all() or np.ptp(X, axis=0).max(initial=0.0) == 0.0:
            return None, "t-SNE skipped: the sampled images all have the same PCA scores."
        t = time.perf_counter()
        try:
            Y = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                     max_iter=TSNE_MAX_ITER, random_state=self.seed).fit_transform(X)
        except ValueError as exc:  # degenerate inputs
            logger.warning("t-SNE failed: %s", exc)
            return None, f"t-SNE failed on this sample: {exc}"
        logger.debug("t-SNE of %d images (perplexity %.1f) in %.1f s", n, perplexity, time.perf_counter() - t)
        return Y, None

    def map(self) -> Section:
        sec = Section("map", "Map of every image")
        path = self.layout.embedding
        if not (self.layout.is_done("fit-embedding") and path.exists()):
            return sec.note("No map of every image in this run (fit with `--embed tsne` to place every "
                            "image on a t-SNE map).")
        emb = verify_output(self.layout, "embedding")
        fit_rows = np.load(self.layout.fit_rows, allow_pickle=False)
        n = int(fit_rows.size)
        if emb.shape[0] != n or emb.ndim != 2 or emb.shape[1] < 2:
            return sec.note("embedding.zarr does not match the fitted images; run "
                            f"`streamclust fit {self.layout.root} --overwrite`.")
        # each fitted image's row in the assignments (the map's rows are the fitted images)
        order = np.argsort(self.a["index"], kind="stable")
        found = np.searchsorted(self.a["index"][order], fit_rows)
        found = np.minimum(found, order.size - 1)
        pos = order[found]
        if not np.array_equal(self.a["index"][pos], fit_rows):
            return sec.note("assignments.csv does not cover the fitted images; run "
                            f"`streamclust assign {self.layout.root}` again.")
        groupings = []  # (title, per fitted image: group number, group names)
        labels, label_name = self.group_labels()
        if self.km is not None or self.gmm is not None:
            g = labels[pos]
            names = [str(v) for v in range(int(g.max()) + 1)]
            groupings.append((f"{label_name} (the most frequent in each cell)", g, names))
        truth = self.true_labels()
        if truth is not None:
            y = np.array([truth.get(m, "") for m in self.a["member"][pos]], dtype=object)
            names = sorted({v for v in y if v != ""})
            if names:
                code = {name: i for i, name in enumerate(names)}
                groupings.append(("true label (the most frequent in each cell)",
                                  np.array([code.get(v, -1) for v in y], dtype=np.int64), names))
        # two streamed passes over the map: its extent, then the histograms
        x0 = y0 = np.inf
        x1 = y1 = -np.inf
        for lo in range(0, n, MAP_BATCH):
            Y = np.asarray(emb[lo : lo + MAP_BATCH, :2], dtype=np.float64)
            x0, x1 = min(x0, Y[:, 0].min()), max(x1, Y[:, 0].max())
            y0, y1 = min(y0, Y[:, 1].min()), max(y1, Y[:, 1].max())
        if not all(np.isfinite(v) for v in (x0, x1, y0, y1)):
            return sec.note("embedding.zarr holds non-finite positions; run "
                            f"`streamclust fit {self.layout.root} --overwrite`.")
        pad_x, pad_y = 0.02 * (x1 - x0) or 1.0, 0.02 * (y1 - y0) or 1.0
        x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
        B = int(np.clip(np.sqrt(n / 4), *MAP_BINS))
        density = np.zeros(B * B, dtype=np.int64)
        counts = [np.zeros(len(names) * B * B, dtype=np.int64) for _, _, names in groupings]
        for lo in range(0, n, MAP_BATCH):
            Y = np.asarray(emb[lo : lo + MAP_BATCH, :2], dtype=np.float64)
            ix = np.clip(((Y[:, 0] - x0) / (x1 - x0) * B).astype(np.int64), 0, B - 1)
            iy = np.clip(((Y[:, 1] - y0) / (y1 - y0) * B).astype(np.int64), 0, B - 1)
            cell = iy * B + ix
            density += np.bincount(cell, minlength=B * B)
            for c, (_, g, names) in zip(counts, groupings):
                gg = g[lo : lo + Y.shape[0]]
                ok = gg >= 0
                c += np.bincount(gg[ok] * (B * B) + cell[ok], minlength=len(names) * B * B)
        density = density.reshape(B, B)
        drawn = []
        for c, (title, _, names) in zip(counts, groupings):
            c = c.reshape(len(names), B, B)
            majority = np.where(c.sum(axis=0) > 0, np.argmax(c, axis=0), -1)
            drawn.append((title, majority, names))
        meta = read_json(self.layout.fit_summary) or {}
        sec.text(f"Every one of the {n:,} fitted images on the t-SNE map (`embedding.zarr`): t-SNE was fitted "
                 "on a sample and the other images were placed into it by streaming, so the map's cost is linear "
                 f"in the number of images. The map is cut into {B} x {B} cells; the first panel counts the images "
                 "in each cell (log scale), the others colour each cell by its most frequent group, fainter where "
                 "there are fewer images.")
        if "embedding" in (meta.get("seconds") or {}):
            sec.note(f"Placing the images took {meta['seconds']['embedding']:.1f} s.")
        if any(len(names) > 20 for _, _, names in groupings):
            sec.note("More than 20 groups: colours repeat, and no legend is drawn.")
        sec.picture(self.save("map.png", figures.map_png((x0, x1, y0, y1), density, drawn),
                              f"t-SNE map of all {n} images: density, and cells coloured by group"))
        return sec

    def true_labels(self) -> dict[str, str] | None:
        """The labels ``streamclust evaluate`` scored against (member -> label), if it ran."""
        from ..pipeline.evaluate import labels_from_folders, read_labels

        ev = read_json(self.layout.evaluation) if self.current("evaluate") else None
        source = (ev or {}).get("labels_source") or {}
        try:
            if source.get("from_folders"):
                return labels_from_folders(self.a["member"])
            if source.get("file"):
                return read_labels(source["file"])
        except StreamclustError as exc:  # the labels file moved away since: say so, draw the rest
            logger.warning("report: the labels of evaluate are not readable any more: %s", exc)
        return None

    def compare(self) -> Section:
        sec = Section("compare", "Methods side by side")
        path = self.layout.compare_csv
        if self.status.get("compare") == stages.STALE:
            return sec.note("The comparison of this run is stale (the fit was redone since); run "
                            "`streamclust compare RUN_DIR` again.")
        if not (self.current("compare") and path.exists()):
            return sec.note("No compare.csv in this run (run `streamclust compare RUN_DIR [--labels ...]` to "
                            "compare the fitted methods).")
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            records = list(reader)
            cols = [c for c in (reader.fieldnames or []) if any(r.get(c) for r in records)]
        if not records:
            return sec.note("compare.csv has no rows.")
        heads = {"n_clusters": "clusters", "recon_mae": "reconstruction MAE", "log_likelihood": "log-likelihood",
                 "ari": "ARI", "nmi": "NMI", "fit_seconds": "fit s"}
        numeric = {i for i, c in enumerate(cols) if c not in ("run", "features", "method", "reduction")}
        rows = [tuple(_score(r[c]) if i in numeric and c != "n_clusters" and r[c] else r[c] for i, c in enumerate(cols)) for r in records]
        sec.text("From compare.csv (`streamclust compare`): reconstruction MAE is the mean absolute pixel error of "
                 "the reduction the method's input comes from (0-255 units), inertia is in the method's own space, "
                 "log-likelihood is per image, silhouette is on a sample in PCA space; ARI, NMI and accuracy need "
                 "labels.")
        sec.add(table(tuple(heads.get(c, c) for c in cols), rows, numeric=numeric))
        return sec

    def outliers(self) -> Section:
        sec = Section("outliers", "Outliers")
        ll, dist = self.a["log_likelihood"], self.a["distance"]
        valid = np.flatnonzero(self.unique & np.isfinite(ll))
        if valid.size:
            pos = valid[np.argsort(ll[valid], kind="stable")[:N_OUTLIERS]]
            what = "lowest log-likelihood under the Gaussian mixture"
            score_name, score = "log-likelihood", ll
        else:
            valid = np.flatnonzero(self.unique & np.isfinite(dist))
            if not valid.size:
                return sec.note("Neither a mixture nor k-means was fitted: no outlier score.")
            pos = valid[np.argsort(-dist[valid], kind="stable")[:N_OUTLIERS]]
            what = "largest distance to their k-means centroid (no mixture was fitted)"
            score_name, score = "distance", dist
            sec.note("No Gaussian mixture in this run: outliers are ranked by k-means distance instead.")
        sec.text(f"The {pos.size} images with the {what}, most unusual first.")
        imgs = read_rows(self.images, self.a["index"][pos])
        sec.picture(self.save("outliers.png",
                              figures.grid_png(imgs, labels=[f"#{j + 1}  {figures.compact(score[i])}" for j, i in enumerate(pos)],
                                               cols=min(8, pos.size)),
                              f"the {pos.size} images with the {what}", pixelated=True))
        rows = []
        for rank, i in enumerate(pos, 1):
            rows.append((rank, self.a["member"][i], int(self.a["index"][i]), f"{score[i]:.5g}",
                         _label(self.a["cluster"][i]), _label(self.a["component"][i])))
        sec.add(table(("#", "member", "row", score_name, "cluster", "component"), rows, numeric={0, 2, 3}))
        return sec

    def evaluation(self) -> Section:
        sec = Section("evaluation", "Evaluation against labels")
        if self.status.get("evaluate") == stages.STALE:
            return sec.note("The evaluation of this run is stale (the assignments were redone since); run "
                            "`streamclust evaluate RUN_DIR --labels labels.csv` again.")
        ev = read_json(self.layout.evaluation) if self.current("evaluate") else None
        if not ev:
            return sec.note("No labels were given (run `streamclust evaluate RUN_DIR --labels labels.csv` "
                            "or `--labels-from-folders`).")
        sec.text(f"{ev.get('n_labelled', '?')} labelled images in {ev.get('n_classes', '?')} classes. "
                 "ARI: adjusted Rand index; NMI: normalised mutual information; accuracy: share of images "
                 "whose cluster is matched to their label by the best one-to-one matching.")
        cols = ("n_clusters", "ari", "nmi", "homogeneity", "completeness", "accuracy")
        rows = []
        methods = ev.get("methods") or {}
        for method in sorted(methods, key=lambda m: (m not in ("kmeans", "gmm"), m != "kmeans", m)):
            scores = methods[method] or {}
            rows.append((method, *(_score(scores.get(c)) for c in cols)))
        if rows:
            sec.add(table(("method", "clusters", "ARI", "NMI", "homogeneity", "completeness", "accuracy"),
                          rows, numeric=set(range(1, 7))))
        else:
            sec.note("evaluation.json holds no scores.")
        return sec


def _label(v) -> str:
    return "" if int(v) < 0 else str(int(v))


def _score(v) -> str:
    if v is None:
        return ""
    if isinstance(v, int):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{f:.4f}" if math.isfinite(f) else ""
