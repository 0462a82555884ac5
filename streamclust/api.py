"""``streamclust.Run``: a run directory from Python, the face the command line is a thin layer over.

::

    from streamclust import Run

    run = Run("runs/faces")
    run.ingest("faces.zip", size=64)
    run.fit(pca_components=0.99, clusters=100)
    table = run.select_k(range(10, 201, 10))
    df = run.assign()                 # a pandas DataFrame, one row per ok image
    samples = run.sample(64)          # samples.images: uint8 (64, 64, 64, 3)
    run.evaluate("labels.csv")
    run.report()

Every method has the defaults, validation, resume and errors of its command
(``streamclust ingest``, ``fit``, ...; see docs/cli.md and docs/api.md), writes the same
files, and returns an object to use in a notebook: the fitted estimators, the
assignments as a DataFrame, the select-k table, the samples as an array.  In Jupyter or
Colab, :class:`Run` and its results draw themselves (``_repr_html_``) and the progress
bars are tqdm's notebook widget (when ipywidgets is installed).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import io
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import stages
from .config import check_seed
from .errors import UsageError
from .store import RunLayout

__all__ = ["Run", "FitResult", "Models", "SelectKResult", "Samples", "Evaluation", "ReportResult"]


# ------------------------------------------------------------------------------ helpers
#: the commands that write a run directory: those of the declared stages (``streamclust train`` for
#: ``train-ae`` and ``train-vae``)
WRITING_COMMANDS = frozenset(s.command.split()[1] for s in stages.STAGES.values())

#: the commands that may make the run directory: those of the stages that read no other (``ingest``),
#: and ``run``, which starts with it
CREATING_COMMANDS = frozenset({"run", *(s.command.split()[1] for s in stages.STAGES.values()
                                        if not stages.reads(s.name))})


def _writes(command: str):
    """Decorator of a :class:`Run` method that runs ``command``'s stage: it holds the run
    directory's writer lock (:meth:`Run.lock`) while it runs."""
    if command not in WRITING_COMMANDS:
        raise AssertionError(f"{command!r} is not the command of a declared stage")

    def decorate(method):
        @functools.wraps(method)
        def locked(self, *args, **kwargs):
            with self.lock(command):
                return method(self, *args, **kwargs)

        return locked

    return decorate


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _progress(progress: bool | None) -> bool | None:
    """``None``: bars on a terminal, and in a notebook when tqdm can draw its widget there."""
    if progress is None and _in_notebook():
        try:
            import ipywidgets  # noqa: F401  tqdm.auto's notebook bar needs it
        except ImportError:
            return None
        return True
    return progress


@contextlib.contextmanager
def _client(client, scheduler: str | None, memory_limit: int | None = None):
    """The caller's dask ``client``, else one for ``scheduler`` (``None``: in-process)."""
    if client is not None:
        if scheduler is not None:
            raise UsageError("give either client or scheduler, not both")
        yield client
        return
    from .distributed import scheduler_client

    with scheduler_client(scheduler, memory_limit=memory_limit) as c:
        yield c


def _check_backend(backend: str, device: str, precision: str, scheduler=None, client=None):
    """The backend a method's passes run with (:func:`~streamclust.pipeline.fit.stage_backend`),
    checked before a dask cluster is started or anything is written: a
    :class:`~streamclust.engine.BackendError` names what is wrong and the fix."""
    from .pipeline.fit import stage_backend

    on_cluster = client is not None or scheduler is not None
    return stage_backend(backend, device, precision, client=True if on_cluster else None)


def _png_tag(data: bytes, alt: str, width: int | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    return (f'<img alt="{html.escape(alt)}"{w} style="image-rendering: pixelated" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def _array_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _montage_tag(images: np.ndarray, alt: str, *, cols: int | None = None) -> str:
    from .pipeline.sample import montage

    images = np.asarray(images)
    if images.shape[0] == 0:
        return ""
    side = int(images.shape[1])
    grid = montage(images, cols=cols, scale=max(1, 48 // max(side, 1)))
    return _png_tag(_array_png(grid), alt, width=min(grid.shape[1], 640))


def _table(rows: Iterable[Sequence], head: Sequence[str]) -> str:
    out = ["<table><thead><tr>", *(f"<th>{html.escape(str(h))}</th>" for h in head), "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _kwargs_for(cls, settings: Mapping[str, Any], what: str) -> dict:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise UsageError(f"{what} takes no setting {', '.join(unknown)}; the settings are {', '.join(sorted(names))}")
    return dict(settings)


# ------------------------------------------------------------------------------ results
class Models:
    """The fitted models of a run, loaded from ``model/`` on first use (``None`` where not fitted)."""

    def __init__(self, layout: RunLayout):
        layout.require("fit")
        self._layout = layout
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in stages.MODEL_FILES:
            raise AttributeError(name)
        if name not in self._cache:
            from .models.io import load_model

            path = self._layout.model(name)
            self._cache[name] = load_model(path) if path.exists() else None
        return self._cache[name]

    def fitted(self) -> list[str]:
        return [n for n in stages.MODEL_FILES if self._layout.model(n).exists()]

    def __repr__(self) -> str:
        return f"Models({', '.join(self.fitted())})"

    def centroid_images(self) -> np.ndarray | None:
        """The k-means centres mapped back to pixels through the PCA (``None`` without k-means or on latents)."""
        km, pca = self.kmeans, self.pca
        if km is None or (stages._run_config(self._layout).get("fit") or {}).get("features") == "latents":
            return None
        full = np.zeros((km.cluster_centers_.shape[0], int(pca.n_components_)))
        full[:, : km.cluster_centers_.shape[1]] = km.cluster_centers_
        pixels = pca.inverse_transform(full)
        side = int(round(np.sqrt(pixels.shape[1] / 3)))
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, side, side, 3)

    def _repr_html_(self) -> str:
        rows = []
        for name in self.fitted():
            est = getattr(self, name)
            rows.append((name, type(est).__name__, _describe(est)))
        parts = [_table(rows, ("model", "class", "fitted"))]
        centres = self.centroid_images()
        if centres is not None:
            parts.append(f"<p>k-means centroids ({centres.shape[0]}):</p>")
            parts.append(_montage_tag(centres[:100], "k-means centroids", cols=min(10, centres.shape[0])))
        return "".join(parts)


def _describe(est) -> str:
    if hasattr(est, "explained_variance_ratio_"):
        return (f"{int(est.n_components_)} components, "
                f"{100 * float(np.sum(est.explained_variance_ratio_)):.1f} % of the variance")
    if hasattr(est, "cluster_centers_"):
        return f"{est.cluster_centers_.shape[0]} clusters, inertia {float(est.inertia_):.4g}"
    if hasattr(est, "means_"):
        return (f"{est.means_.shape[0]} components, {est.covariance_type} covariance, "
                f"lower bound {float(est.lower_bound_):.4g}")
    return ""


@dataclass
class FitResult:
    """What :meth:`Run.fit` did (``summary``: the command's summary) and the fitted estimators."""

    summary: Any
    models: Models

    @property
    def pca(self):
        return self.models.pca

    @property
    def kmeans(self):
        return self.models.kmeans

    @property
    def gmm(self):
        return self.models.gmm

    def __str__(self) -> str:
        return self.summary.line()

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(self.summary.line())}</p>" + self.models._repr_html_()


@dataclass
class SelectKResult:
    """:meth:`Run.select_k`: ``table`` (a DataFrame, the rows of ``select_k.csv``), ``picked``
    (criterion -> k), the curve (``png``) and what ``select_k_run`` returns, less its rows, in ``details``."""

    table: Any
    picked: dict
    png: Path
    details: dict = field(default_factory=dict)

    def _repr_html_(self) -> str:
        picks = ", ".join(f"{c} picks k={k}" for c, k in self.picked.items())
        img = _png_tag(self.png.read_bytes(), "select-k criteria against k") if self.png.exists() else ""
        return f"<p>select-k: {html.escape(picks)}</p>{img}{self.table.to_html(index=False, na_rep='')}"


@dataclass
class Samples:
    """:meth:`Run.sample`: ``images`` (uint8 ``(n, s, s, 3)``), the mixture ``components``
    they were drawn from, and the PNG written (``path``).  ``np.asarray(samples)`` is the images."""

    images: np.ndarray
    components: np.ndarray
    path: Path | None = None

    def __array__(self, dtype=None, copy=None):
        return self.images if dtype is None else self.images.astype(dtype)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _repr_html_(self) -> str:
        return (f"<p>{len(self)} images sampled from the mixture</p>"
                + _montage_tag(self.images, "images sampled from the mixture"))


@dataclass
class Evaluation:
    """:meth:`Run.evaluate`: ``scores`` (what ``evaluation.json`` holds) and ``table``, a DataFrame per method."""

    scores: dict
    table: Any

    def __str__(self) -> str:
        from .pipeline.evaluate import format_table

        return format_table(self.scores)

    def _repr_html_(self) -> str:
        return (f"<p>{self.scores['n_labelled']} labelled images, {self.scores['n_classes']} classes</p>"
                + self.table.to_html(float_format=lambda v: f"{v:.4f}"))


@dataclass
class ReportResult:
    """:meth:`Run.report`: the path of ``report/index.html``."""

    path: Path

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def _repr_html_(self) -> str:
        href = self.path.as_uri() if self.path.is_absolute() else self.path.as_posix()
        return f'<p>report: <a href="{html.escape(href)}" target="_blank">{html.escape(str(self.path))}</a></p>'


# ------------------------------------------------------------------------------ Run
class Run:
    """A run directory: the stages as methods, and what they wrote.

    Parameters
    ----------
    path : path
        The run directory (created by :meth:`ingest` if missing).
    progress : bool or None, default=None
        The default of every method's ``progress``: ``None`` shows bars on a terminal,
        and in a notebook when ipywidgets is installed; ``False`` never.
    """

    def __init__(self, path: str | os.PathLike, *, progress: bool | None = None):
        self.path = Path(path)
        self.layout = RunLayout.of(path)
        self.progress = progress

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def _bars(self, progress: bool | None) -> bool | None:
        return _progress(self.progress if progress is None else progress)

    @contextlib.contextmanager
    def lock(self, command: str = "run"):
        """Hold the run directory's writer lock (:mod:`streamclust.lock`) across several calls.

        Every method that writes takes it itself, re-entrantly; hold it around several to
        keep any other writer out between them, as ``streamclust run`` does.  Raises
        :class:`~streamclust.errors.RunLockedError` at once when another process writes
        here, and :class:`~streamclust.errors.RunDirError` when ``config.json`` is damaged
        (both before anything is written).  Taking it removes the temp files a killed
        write left (:func:`streamclust.stages.stray_partials`).  ``command`` names the
        holder in the refusal another writer gets.
        """
        from .config import load_run_config
        from .lock import run_lock

        with run_lock(self.path, command, create=command in CREATING_COMMANDS):
            load_run_config(self.path)  # a damaged config.json is refused before anything is written
            for stray in stages.stray_partials(self.layout):  # no write is under way: a killed one's
                stray.unlink(missing_ok=True)
            yield self

    # -- stages ---------------------------------------------------------------------------
    @_writes("ingest")
    def ingest(self, source: str | os.PathLike, *, overwrite: bool = False, progress: bool | None = None,
               scheduler: str | None = None, client=None, **settings):
        """``streamclust ingest SOURCE RUN_DIR``; returns the :class:`~streamclust.ingest.IngestSummary`.

        ``settings`` are :class:`~streamclust.config.IngestConfig`'s (``size=64``,
        ``chunk_size``, ``workers``, ``max_member_bytes``, ``max_pixels``, ``min_side``,
        ``max_aspect``, ``store``), with its defaults.  In a script, call it under
        ``if __name__ == "__main__":`` (the decode workers import the main module).
        """
        from .config import IngestConfig

        config = IngestConfig(source=str(source), **_kwargs_for(IngestConfig, settings, "ingest"))
        if scheduler is None and client is None and config.resolved_workers > 1:
            from .ingest._server import start_decoder_server

            start_decoder_server()  # it loads the decoder on another core while we import the rest
        from .ingest import ingest

        with _client(client, scheduler) as c:
            return ingest(config, self.path, overwrite=overwrite, progress=self._bars(progress), client=c)

    @_writes("fit")
    def fit(self, *, overwrite: bool = False, progress: bool | None = None, scheduler: str | None = None,
            client=None, **settings) -> FitResult:
        """``streamclust fit RUN_DIR``; returns the summary and the fitted estimators.

        ``settings`` are :class:`~streamclust.config.FitConfig`'s; those not given are the
        run's saved settings (of its last ``fit``), else these defaults (the command's), so
        ``run.fit()`` resumes or redoes (``overwrite=True``) the last fit as it was asked for: ``pca_components`` (an int, or a fraction like 0.99), ``pca_method``,
        ``pca_max_components``, ``clusters=100``, ``kmeans_method``, ``gmm_components=50``,
        ``covariance="diag"``, ``gmm_pca_components``, ``seed``, ``max_iter``,
        ``batch_size``, ``memory_limit`` (bytes or ``"1GB"``), ``drop_duplicates``,
        ``features``, ``reduce``, ``kpca_components``, ``embed``, ``cluster`` (a tuple or
        ``"kmeans,gmm"``), and where the passes run: ``backend="auto"`` (``"numpy"``,
        ``"torch"``), ``device="auto"`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``),
        ``precision="float64"`` (``"float32"``; part of the fit's settings, as
        ``backend`` and ``device`` are not: a fit checkpointed on a GPU resumes on a CPU).
        A backend that cannot be used here is a :class:`~streamclust.engine.BackendError`,
        raised before anything is written.
        """
        from .config import FitConfig, load_run_config, parse_bytes
        from .pipeline.fit import fit_run

        settings = _kwargs_for(FitConfig, settings, "fit")
        if isinstance(settings.get("cluster"), str):
            settings["cluster"] = tuple(x.strip() for x in settings["cluster"].split(",") if x.strip())
        if "memory_limit" in settings:
            settings["memory_limit"] = parse_bytes(settings["memory_limit"])
        saved = load_run_config(self.path).get("fit")
        # the settings not given are the run's saved ones (else the defaults); where the passes run is not one
        base = replace(FitConfig.from_dict(saved), backend="auto", device="auto") if saved else FitConfig()
        config = replace(base, **settings)
        _check_backend(config.backend, config.device, config.precision, scheduler, client)
        with _client(client, scheduler, config.memory_limit) as c:
            summary = fit_run(self.path, config, overwrite=overwrite, progress=self._bars(progress), client=c)
        return FitResult(summary, Models(self.layout))

    @_writes("assign")
    def assign(self, *, progress: bool | None = None, scheduler: str | None = None, client=None,
               frame: bool = True, backend: str = "auto", device: str = "auto", precision: str = "float64"):
        """``streamclust assign RUN_DIR``; returns :attr:`assignments` (``frame=False``: the CSV's path,
        for runs too large to hold the table in memory).  ``backend``, ``device``, ``precision``:
        where the passes run, as :meth:`fit`'s."""
        from .pipeline.assign import assign_run

        _check_backend(backend, device, precision, scheduler, client)
        with _client(client, scheduler) as c:
            path = assign_run(self.path, progress=self._bars(progress), client=c, backend=backend, device=device,
                              precision=precision)
        return self.assignments if frame else path

    @_writes("select-k")
    def select_k(self, ks, *, method: str = "gmm", covariance: str = "diag", seed: int = 0, max_iter: int = 100,
                 batch_size: int | None = None, overwrite: bool = False, progress: bool | None = None,
                 scheduler: str | None = None, client=None, backend: str = "auto", device: str = "auto",
                 precision: str = "float64") -> SelectKResult:
        """``streamclust select-k RUN_DIR --k ...``: ``ks`` is a range, a list or a spec like ``"10:200:10"``.
        ``backend``, ``device``, ``precision``: where the passes run, as :meth:`fit`'s."""
        from .pipeline.select_k import parse_k_range, select_k_run

        ks = parse_k_range(ks if isinstance(ks, (str, int, np.integer)) else list(ks))
        check_seed(seed)
        _check_backend(backend, device, precision, scheduler, client)
        with _client(client, scheduler) as c:
            result = select_k_run(self.path, ks, method=method, covariance=covariance, seed=seed,
                                  max_iter=max_iter, batch_size=batch_size, overwrite=overwrite,
                                  progress=self._bars(progress), client=c, backend=backend, device=device,
                                  precision=precision)
        return self._select_k_result(result)

    def _select_k_result(self, result: dict) -> SelectKResult:
        import pandas as pd

        from .pipeline.select_k import CSV_COLUMNS

        table = pd.DataFrame(result["rows"], columns=list(CSV_COLUMNS))
        return SelectKResult(table, dict(result["picked"]), Path(result["png"]),
                             {k: v for k, v in result.items() if k != "rows"})

    @_writes("sample")
    def sample(self, n: int = 64, *, output: str | os.PathLike | None = None, npy: str | os.PathLike | None = None,
               seed: int = 0, backend: str = "auto", device: str = "auto", precision: str = "float64") -> Samples:
        """``streamclust sample RUN_DIR -n N``: the images (and ``samples.png``, or ``output``).
        ``backend``, ``device``, ``precision`` are checked as :meth:`fit`'s (sampling itself is small)."""
        from .pipeline.sample import write_samples

        path, images, comps = write_samples(self.path, n, out=output, seed=seed, npy=npy, backend=backend,
                                            device=device, precision=precision)
        return Samples(images, comps, Path(path))

    @_writes("evaluate")
    def evaluate(self, labels: str | os.PathLike | None = None, *, from_folders: bool = False) -> Evaluation:
        """``streamclust evaluate RUN_DIR --labels FILE`` (a CSV ``member,label``) or ``--labels-from-folders``."""
        import pandas as pd

        from .pipeline.evaluate import evaluate_run

        scores = evaluate_run(self.path, labels=labels, from_folders=from_folders)
        table = pd.DataFrame.from_dict(scores["methods"], orient="index")
        table.index.name = "method"
        return Evaluation(scores, table)

    @_writes("compare")
    def compare(self, *others: str | os.PathLike, labels: str | os.PathLike | None = None, from_folders: bool = False,
                sample: int = 2000, seed: int = 0, device: str = "auto", backend: str = "auto",
                precision: str = "float64"):
        """``streamclust compare RUN_DIR [OTHER ...]``: the table of every fitted method, a DataFrame.
        ``backend``, ``device``, ``precision``: where the passes run, as :meth:`fit`'s; ``device``
        is also where a latents run's decoder runs (which also takes ``"mps"``)."""
        import pandas as pd

        from .pipeline.compare import compare_backend, compare_runs

        check_seed(seed)
        compare_backend(backend, device, precision)  # before any other run is locked or anything written

        with contextlib.ExitStack() as held:  # compare.csv is written in each run
            for other in others:
                held.enter_context(Run(other).lock("compare"))
            rows = compare_runs([self.path, *others], labels=labels, from_folders=from_folders, sample=sample,
                                seed=seed, device=device, backend=backend, precision=precision)
        table = pd.DataFrame(rows)
        table.attrs["rows"] = rows  # as compare_runs returned them (None where a figure does not apply)
        return table

    @_writes("report")
    def report(self, *, seed: int = 0, tsne_samples: int | None = None, progress: bool | None = None) -> ReportResult:
        """``streamclust report RUN_DIR``: writes ``report/index.html``."""
        from .report import build_report

        check_seed(seed)

        return ReportResult(build_report(self.path, seed=seed, tsne_samples=tsne_samples,
                                         progress=self._bars(progress)))

    @_writes("train")
    def train(self, *, model: str = "ae", overwrite: bool = False, progress: bool | None = None, **settings) -> dict:
        """``streamclust train RUN_DIR`` (needs PyTorch); ``settings`` as the command's flags
        (``latent``, ``epochs``, ``batch_size``, ``lr``, ``seed``, ``width``, ``buffer_chunks``,
        ``checkpoint_steps``, ``device``, ``threads``)."""
        from .deep.train import train_run

        check_seed(settings.get("seed", 0))

        return train_run(self.path, model=model, progress=self._bars(progress), overwrite=overwrite, **settings)

    @_writes("encode")
    def encode(self, *, model: str = "ae", batch_size: int = 512, device: str = "auto", overwrite: bool = False,
               progress: bool | None = None) -> Path:
        """``streamclust encode RUN_DIR``: writes ``latents.zarr``; returns its path."""
        from .deep.encode import encode_run

        return encode_run(self.path, model=model, batch_size=batch_size, device=device,
                          progress=self._bars(progress), overwrite=overwrite)

    # -- what is there --------------------------------------------------------------------
    def status(self) -> dict[str, str]:
        """Every stage: ``"current"``, ``"stale"`` or ``"missing"`` (see :mod:`streamclust.stages`)."""
        return stages.statuses(self.layout)

    @property
    def models(self) -> Models:
        """The fitted estimators (``run.models.pca``, ``.kmeans``, ``.gmm``, ...)."""
        return Models(self.layout)

    @property
    def assignments(self):
        """``assignments.csv`` as a pandas DataFrame (``cluster`` / ``component`` are -1 where not fitted)."""
        import pandas as pd

        from .pipeline.assign import read_assignments

        a = read_assignments(self.path)
        return pd.DataFrame({k: a[k] for k in a})

    @property
    def manifest(self):
        """``manifest.csv`` as a pandas DataFrame (one row per member of the source)."""
        import pandas as pd

        self.layout.require("ingest")
        return pd.read_csv(self.layout.manifest, keep_default_na=False)

    @property
    def images(self):
        """The ingested image array (zarr, read-only), ``uint8 (N, size, size, 3)``."""
        from .store import open_images

        return open_images(self.path)

    def select_k_table(self) -> SelectKResult:
        """The current ``select_k.csv`` (without sweeping again)."""
        from .pipeline.select_k import pick, read_csv

        self.layout.require("select-k")
        rows = read_csv(self.layout.select_k_csv)
        method = rows[0]["method"] if rows else "gmm"
        return self._select_k_result({"rows": rows, "picked": pick(rows, method), "png": self.layout.select_k_png})

    def _repr_html_(self) -> str:
        from .report.data import read_json

        root = html.escape(str(self.path))
        parts = [f"<h4>streamclust run {root}</h4>"]
        summary = read_json(self.layout.ingest_summary) if stages.is_current(self.layout, "ingest") else None
        if summary:
            skipped = summary.get("skipped") or {}
            rows = [("ok", summary.get("ok", 0)), ("of which duplicates", summary.get("duplicates", 0)),
                    *((f"skipped: {k}", v) for k, v in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))]
            parts.append(f"<p>{summary.get('members', 0)} members in the source</p>")
            parts.append(_table(rows, ("images", "count")))
        else:
            parts.append("<p>Not ingested yet.</p>")
        status = self.status()
        parts.append(_table(((n, stages.stage(n).help, s) for n, s in status.items()), ("stage", "outputs", "state")))
        stale = [n for n, s in status.items() if s == stages.STALE]
        if stale:
            parts.append(f"<p><b>Stale</b> (an earlier stage was redone since): {html.escape(', '.join(stale))}</p>")
        if status["fit"] == stages.CURRENT:
            parts.append(self.models._repr_html_())
        return "".join(parts)
