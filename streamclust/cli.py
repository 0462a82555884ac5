"""The ``streamclust`` command line: a thin layer over the Python API.

Every error streamclust raises on purpose becomes one line on stderr and exit status 2;
an error of the machine (a full disk, a read-only or failing file system, a permission)
becomes one line saying what failed and where, and exit status :data:`EXIT_OS_ERROR`; a GPU
out of memory one line and :data:`EXIT_GPU_MEMORY`.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import warnings
from typing import Sequence

from . import __version__
from .errors import StreamclustError

__all__ = ["main", "build_parser", "EXIT_OS_ERROR", "EXIT_GPU_MEMORY"]

logger = logging.getLogger("streamclust")

#: exit status when the operating system failed a read or write (``EX_IOERR`` of sysexits.h):
#: the command was right, the machine was not; fix it and run the same command again to resume
EXIT_OS_ERROR = 74
#: exit status when the GPU ran out of memory (``EX_TEMPFAIL``): free it or use ``--device cpu``,
#: and run again to resume
EXIT_GPU_MEMORY = 75

#: the operating-system errors said in one line: errno -> (what happened, what to do)
_OS_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or raise the quota"),
    errno.EROFS: ("read-only file system", "make it writable, or copy the run directory to a writable place"),
    errno.EACCES: ("permission denied", "fix the permissions"),
    errno.EPERM: ("operation not permitted", "fix the permissions"),
    errno.EIO: ("input/output error (a failing disk or a lost network mount)", "check the device"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, and where to look)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _os_error(exc: BaseException) -> OSError | None:
    """The OS error of :data:`_OS_ERRORS` that ``exc`` is, or was raised from (``None``: another error)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _OS_ERRORS:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _is_backend_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a :class:`streamclust.engine.backend.BackendError` (without importing
    the engine: when it was not imported, nothing raised one)."""
    module = sys.modules.get("streamclust.engine.backend")
    return module is not None and isinstance(exc, module.BackendError)


def _is_gpu_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch's out-of-memory error of a GPU (without importing PyTorch)."""
    module = sys.modules.get("torch")
    return module is not None and isinstance(exc, module.cuda.OutOfMemoryError)


def gpu_memory_line(exc: BaseException) -> str:
    """One line for a GPU that ran out of memory: what PyTorch said, what to do, and that it resumes."""
    said = ". ".join(str(exc).split("\n")[0].split(". ")[:2]).strip().rstrip(".")  # what failed, how much
    return (f"the GPU ran out of memory ({said}); free it (other programs, notebooks holding tensors) or run on "
            "the CPU with --device cpu; re-running resumes from the last checkpoint")


def os_error_line(exc: OSError, where: str) -> str:
    """One line for an OS error: what failed, at which path (else ``where``), what to do, and that it resumes."""
    what, fix = _OS_ERRORS[exc.errno]
    path = exc.filename if exc.filename is not None else where
    return (f"{what} at {str(path)!r}; {fix}, then run the same command again: it resumes where it stopped, "
            "keeping what was done")


def _seed(text: str) -> int:
    from .config import check_seed

    try:
        return check_seed(int(text))
    except (ValueError, StreamclustError):
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**32 - 1, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_scheduler(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on dask.distributed: 'local' starts a LocalCluster (one worker per core), "
                        "tcp://host:8786 connects to a running scheduler (default: in-process)")


def _device(text: str, *, mps: bool = False) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (and mps for ``compare``'s decoder), checked for its spelling;
    whether that device is there is :func:`streamclust.engine.resolve_backend`'s to say."""
    value = text.strip().lower()
    index = value.split(":", 1)[1] if value.startswith("cuda:") else "0"
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and index.isdigit()) or (mps and value == "mps"):
        return value
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N{' or mps' if mps else ''}, got {text!r}")


def _add_backend(p: argparse.ArgumentParser, *, decoder: bool = False) -> None:
    """``--backend``, ``--device``, ``--precision``: where the passes' arithmetic runs (the same on every command)."""
    p.add_argument("--backend", choices=("auto", "numpy", "torch"), default="auto",
                   help="where the passes' arithmetic runs: auto (default) is PyTorch on a GPU when one is present, "
                        "NumPy otherwise (and NumPy with --scheduler); numpy; torch (with --device cpu: the PyTorch "
                        "path on the CPU). Does not change the results beyond rounding")
    device_help = ("the PyTorch backend's device: auto (default: the first GPU when PyTorch sees one, else the CPU), "
                   "cpu, cuda or cuda:N")
    if decoder:
        device_help += "; also where a latents run's decoder runs (which also takes mps; the passes then use the CPU)"
    p.add_argument("--device", type=lambda t: _device(t, mps=decoder), default="auto", help=device_help)
    p.add_argument("--precision", choices=("float64", "float32"), default=None,
                   help="dtype of the k-means and mixture products on the PyTorch backend: float64 (default, NumPy's "
                        "results to rounding; for fit and run: the run's saved precision) or float32 (products in "
                        "float32, sums in float64), for GPUs with slow float64; changes the results, so it is part "
                        "of a fit's settings")


def _backend_settings(args) -> dict:
    return dict(backend=args.backend, device=args.device, precision=args.precision or "float64")


def _client(args):
    """A context manager yielding the dask client for ``--scheduler`` (or None)."""
    from .distributed import scheduler_client

    return scheduler_client(getattr(args, "scheduler", None), memory_limit=getattr(args, "memory_limit", None))


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings and errors only")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _add_ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=_positive_int, default=64, help="output side in pixels (default 64)")
    p.add_argument("--chunk-size", type=_positive_int, default=None,
                   help="images per zarr chunk (default: largest power of two under 16 MiB)")
    p.add_argument("--workers", type=_positive_int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--max-member-bytes", type=_positive_int, default=64 * 2**20,
                   help="skip members larger than this many bytes (default 64 MiB)")
    p.add_argument("--max-pixels", type=_positive_int, default=64_000_000,
                   help="skip images whose canvas is larger, before decoding (default 64,000,000)")
    p.add_argument("--min-side", type=_positive_int, default=8, help="skip images with a shorter side (default 8)")
    p.add_argument("--max-aspect", type=float, default=4.0,
                   help="skip images more elongated than this ratio (default 4)")
    p.add_argument("--store", default=None, metavar="PATH_OR_URL",
                   help="write the image array here instead of RUN_DIR/images.zarr: a path or an fsspec URL "
                        "(s3://bucket/x/images.zarr, gs://...; needs s3fs / gcsfs) that a cluster's workers can read")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in RUN_DIR with other settings")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamclust", description="Cluster and model image collections far larger than memory.")
    parser.add_argument("--version", action="version", version=f"streamclust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("ingest", help="turn a zip, tar or folder of images into a zarr store",
                       description="Turn a zip, tar or folder of images into RUN_DIR/images.zarr "
                                   "and RUN_DIR/manifest.csv; re-run the same command to resume.")
    p.add_argument("source", metavar="SOURCE", help="a .zip, .tar, .tar.gz/.tgz or a folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder (created if missing)")
    _add_ingest_args(p)
    _add_scheduler(p)
    _add_common(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("fit", help="fit PCA, k-means and a Gaussian mixture by streaming over the store",
                       description="Fit PCA on the ingested images, then k-means and a Gaussian mixture "
                                   "in PCA space; writes RUN_DIR/model/*.npz. Re-run the same command to resume.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `streamclust ingest`")
    _add_fit_args(p)
    p.add_argument("--overwrite", action="store_true", help="discard an earlier fit with other settings")
    _add_backend(p)
    _add_scheduler(p)
    _add_common(p)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("assign", help="cluster and mixture component of every ok image → assignments.csv",
                       description="Write RUN_DIR/assignments.csv: index, member, cluster, distance, "
                                   "component, log_likelihood for every ok image (streamed).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    _add_backend(p)
    _add_scheduler(p)
    _add_common(p)
    p.set_defaults(func=_cmd_assign)

    p = sub.add_parser("select-k", help="fit one model per k (shared passes) and compare BIC/AIC/...",
                       description="Fit one model per candidate k on the PCA features, sharing every read "
                                   "of the data; write RUN_DIR/select_k.csv and select_k.png.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--k", required=True, help="candidates: START:STOP:STEP (e.g. 10:200:10), a list 2,4,8, or one k")
    p.add_argument("--method", choices=("gmm", "kmeans"), default="gmm")
    p.add_argument("--covariance", choices=("diag", "full", "tied", "spherical"), default="diag")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--max-iter", type=_positive_int, default=100)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--overwrite", action="store_true", help="discard an earlier sweep with other settings")
    _add_backend(p)
    _add_scheduler(p)
    _add_common(p)
    p.set_defaults(func=_cmd_select_k)

    p = sub.add_parser("sample", help="draw images from the Gaussian mixture, decoded through the PCA",
                       description="Sample images from the mixture in PCA space, map them back to pixels "
                                   "and write a grid PNG.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("-n", type=_positive_int, default=64, help="number of images (default 64)")
    p.add_argument("-o", "--output", default=None, help="PNG path (default RUN_DIR/samples.png)")
    p.add_argument("--npy", default=None, help="also save the images as a .npy array (uint8, N x s x s x 3)")
    p.add_argument("--seed", type=_seed, default=0)
    _add_backend(p)
    _add_common(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("evaluate", help="score the clusterings against labels (ARI, NMI, accuracy, ...)",
                       description="Score k-means and mixture assignments against known labels; "
                                   "prints a table and writes RUN_DIR/evaluation.json.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    _add_label_args(p)
    _add_common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="one table comparing every fitted method (errors, scores, labels)",
                       description="Compare the fitted methods of one or more runs (e.g. a pixels run and a latents "
                                   "run of the same images): reconstruction error, inertia / log-likelihood, "
                                   "silhouette on a sample, and ARI/NMI/accuracy with labels; writes each run's "
                                   "compare.csv.")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="+", help="run directories whose fit has completed")
    _add_label_args(p, required=False)
    p.add_argument("--sample", type=_positive_int, default=2000, help="images in the silhouette sample")
    p.add_argument("--seed", type=_seed, default=0)
    _add_backend(p, decoder=True)
    _add_common(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("report", help="write RUN_DIR/report/index.html with pictures of the results",
                       description="Write an offline HTML report of the run with its pictures beside it.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--tsne-samples", type=_positive_int, default=None,
                   help="images in the t-SNE embedding, a sample stratified by cluster (default 2000)")
    _add_common(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("train", help="train a convolutional autoencoder or VAE by streaming over the store",
                       description="Train a convolutional autoencoder (ae) or variational autoencoder (vae) on "
                                   "RUN_DIR/images.zarr with shuffled streamed mini-batches; checkpoints let a "
                                   "killed run resume. Needs PyTorch: pip install \"streamclust[deep]\".")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--model", choices=("ae", "vae"), default="ae")
    p.add_argument("--latent", type=_positive_int, default=128, help="latent dimension (default 128)")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--width", type=_positive_int, default=32, help="channels of the first conv layer (default 32)")
    p.add_argument("--buffer-chunks", type=_positive_int, default=4,
                   help="store chunks in the shuffle buffer (default 4)")
    p.add_argument("--checkpoint-steps", type=_positive_int, default=200)
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads; a resume must use the same number to be bit-identical")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier training with other settings")
    _add_common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("encode", help="write the trained network's latents to RUN_DIR/latents.zarr",
                       description="Encode every fitted image with a trained ae/vae into RUN_DIR/latents.zarr "
                                   "(then `streamclust fit RUN_DIR --features latents`).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--model", choices=("ae", "vae"), default="ae")
    p.add_argument("--batch-size", type=_positive_int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("run", help="ingest → fit → assign → (evaluate) → report, resumable as a whole",
                       description="Run every stage on SOURCE; re-running skips the stages already done.")
    p.add_argument("source", metavar="SOURCE", help="a .zip, .tar, .tar.gz/.tgz or a folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder (created if missing)")
    _add_ingest_args(p)
    _add_fit_args(p)
    _add_label_args(p, required=False)
    _add_backend(p)
    _add_scheduler(p)
    _add_common(p)
    p.set_defaults(func=_cmd_run)
    return parser


def _add_label_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--labels FILE | --labels-from-folders`` (one of them; both optional unless ``required``)."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--labels", default=None, help="CSV with columns member,label")
    g.add_argument("--labels-from-folders", action="store_true",
                   help="the label of each image is the name of its folder")


def _progress(args):
    return False if args.quiet else None


def _run(args):
    """The :class:`streamclust.Run` of ``args.run_dir``: every command is one or more of its calls."""
    from .api import Run

    return Run(args.run_dir)


def _cmd_assign(args) -> int:
    path = _run(args).assign(progress=_progress(args), scheduler=args.scheduler, frame=False,
                             **_backend_settings(args))
    print(f"wrote {path}")
    return 0


def _cmd_select_k(args) -> int:
    result = _run(args).select_k(args.k, method=args.method, covariance=args.covariance, seed=args.seed,
                                 max_iter=args.max_iter, batch_size=args.batch_size, overwrite=args.overwrite,
                                 progress=_progress(args), scheduler=args.scheduler,
                                 **_backend_settings(args)).details
    picks = ", ".join(f"{crit} picks k={k}" for crit, k in result["picked"].items())
    print(f"wrote {args.run_dir}/select_k.csv and select_k.png: {picks}")
    if result.get("note"):
        print(result["note"])
    for key, what in (("failed", "degenerated (no model)"), ("not_converged", "did not converge within --max-iter")):
        if result.get(key):
            print(f"k = {', '.join(map(str, result[key]))}: {what}")
    return 0


def _cmd_sample(args) -> int:
    path = _run(args).sample(args.n, output=args.output, seed=args.seed, npy=args.npy,
                             **_backend_settings(args)).path
    print(f"wrote {path}" + (f" and {args.npy}" if args.npy else ""))
    return 0


def _cmd_evaluate(args) -> int:
    print(_run(args).evaluate(args.labels, from_folders=args.labels_from_folders))
    return 0


def _cmd_compare(args) -> int:
    from .api import Run
    from .pipeline.compare import format_compare

    first, *others = args.run_dir
    table = Run(first).compare(*others, labels=args.labels, from_folders=args.labels_from_folders,
                               sample=args.sample, seed=args.seed, **_backend_settings(args))
    print(format_compare(table.attrs["rows"]))
    return 0


def _cmd_report(args) -> int:
    path = _run(args).report(seed=args.seed, tsne_samples=args.tsne_samples, progress=_progress(args))
    print(f"report: {path}")
    return 0


def _cmd_train(args) -> int:
    out = _run(args).train(model=args.model, latent=args.latent, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed, width=args.width, buffer_chunks=args.buffer_chunks,
                           checkpoint_steps=args.checkpoint_steps, device=args.device, threads=args.threads,
                           progress=_progress(args), overwrite=args.overwrite)
    print(json.dumps(out))
    return 0


def _cmd_encode(args) -> int:
    path = _run(args).encode(model=args.model, batch_size=args.batch_size, device=args.device,
                             progress=_progress(args), overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def _cmd_run(args) -> int:
    from . import stages
    from .config import IngestConfig
    from .pipeline.fit import stage_backend

    run = _run(args)
    progress = _progress(args)
    fit_settings = _fit_settings(args)
    _fit_config(args)  # flags are checked before anything runs
    IngestConfig(source=args.source, **_ingest_settings(args))
    stage_backend(args.backend, args.device, args.precision or "float64", client=args.scheduler)  # and the backend
    with run.lock("run"), _client(args) as client:  # no other writer between the stages
        summary = run.ingest(args.source, **_ingest_settings(args), overwrite=args.overwrite, progress=progress,
                             client=client)
        print(summary.line())
        fitted = run.fit(**fit_settings, overwrite=args.overwrite, progress=progress, client=client)
        print(fitted.summary.line())
        if not stages.is_current(run.layout, "assign"):
            run.assign(progress=progress, client=client, frame=False, **_backend_settings(args))
        if args.labels or args.labels_from_folders:
            print(run.evaluate(args.labels, from_folders=args.labels_from_folders))
        path = run.report(progress=progress)
    print(f"report: {path}")
    return 0


def _pca_components(text: str):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or a fraction in (0, 1), got {text!r}") from None
    if 0 < value < 1:
        return value
    if value >= 1 and value == int(value):
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a positive integer or a fraction in (0, 1), got {text!r}")


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _memory(text: str) -> int:
    from .config import parse_bytes

    try:
        return parse_bytes(text)
    except StreamclustError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--memory-limit must", "must")) from None


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    """The ``fit`` settings; a flag not given is absent from the parsed arguments, so that the run's
    saved settings (else the defaults) fill it in (:meth:`streamclust.Run.fit`)."""
    p.add_argument("--pca-components", type=_pca_components, default=argparse.SUPPRESS,
                   help="principal components, or a variance fraction like 0.99 (default: 256, or fewer for small data)")
    p.add_argument("--pca-method", choices=("auto", "covariance", "randomized", "incremental"), default=argparse.SUPPRESS,
                   help="auto (default): the exact covariance method up to 64x64 RGB, else randomized")
    p.add_argument("--pca-max-components", type=_positive_int, default=argparse.SUPPRESS,
                   help="with a fraction, keep at most this many components (default: as many as it needs)")
    p.add_argument("--clusters", type=_nonneg_int, default=argparse.SUPPRESS, help="k-means clusters; 0 skips k-means (default 100)")
    p.add_argument("--kmeans-method", choices=("lloyd", "minibatch"), default=argparse.SUPPRESS)
    p.add_argument("--gmm-components", type=_nonneg_int, default=argparse.SUPPRESS,
                   help="mixture components; 0 skips the mixture (default 50)")
    p.add_argument("--covariance", choices=("diag", "full", "tied", "spherical"), default=argparse.SUPPRESS)
    p.add_argument("--gmm-pca-components", type=_positive_int, default=argparse.SUPPRESS,
                   help="fit the mixture on only this many leading components")
    p.add_argument("--max-iter", type=_positive_int, default=argparse.SUPPRESS, help="Lloyd / EM passes at most (default 100)")
    p.add_argument("--seed", type=_seed, default=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=_positive_int, default=argparse.SUPPRESS, help="rows per batch (default: from --memory-limit)")
    p.add_argument("--memory-limit", type=_memory, default=argparse.SUPPRESS, help="e.g. 1GB: choose batch sizes to stay under it")
    p.add_argument("--keep-duplicates", action="store_true", default=argparse.SUPPRESS, help="fit on byte-identical duplicate images too")
    p.add_argument("--reduce", choices=("pca", "kpca"), default=argparse.SUPPRESS,
                   help="kpca: also fit a streaming RBF kernel PCA on the PCA features")
    p.add_argument("--kpca-components", type=_positive_int, default=argparse.SUPPRESS)
    p.add_argument("--embed", choices=("tsne",), default=argparse.SUPPRESS,
                   help="tsne: a t-SNE map of every image (embedding.zarr) and k-means on it")
    p.add_argument("--cluster", default=argparse.SUPPRESS, type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
                   help="clusterings to fit, comma-separated: kmeans, gmm, agglomerative (default kmeans,gmm)")
    p.add_argument("--features", choices=("pixels", "latents"), default=argparse.SUPPRESS,
                   help="fit on the pixels, or on a trained autoencoder's latents "
                        "(after `streamclust train` and `streamclust encode`)")


#: ``fit`` flags (their ``argparse`` names) that are :class:`~streamclust.config.FitConfig` fields of the same name
_FIT_FLAGS = ("pca_components", "pca_method", "pca_max_components", "clusters", "kmeans_method", "gmm_components",
              "covariance", "gmm_pca_components", "seed", "max_iter", "batch_size", "memory_limit", "features",
              "reduce", "kpca_components", "embed", "cluster")


def _fit_settings(args) -> dict:
    """The ``fit`` flags given, as :meth:`streamclust.Run.fit` settings (:class:`~streamclust.config.FitConfig`
    fields); the settings not given are the run's saved ones, else the defaults (``Run.fit`` fills them in)."""
    settings = {name: getattr(args, name) for name in _FIT_FLAGS if hasattr(args, name)}
    if hasattr(args, "keep_duplicates"):
        settings["drop_duplicates"] = not args.keep_duplicates
    if args.precision is not None:
        settings["precision"] = args.precision
    return dict(settings, backend=args.backend, device=args.device)


def _fit_config(args):
    from .config import FitConfig

    return FitConfig(**_fit_settings(args))


def _cmd_fit(args) -> int:
    fitted = _run(args).fit(**_fit_settings(args), overwrite=args.overwrite, progress=_progress(args),
                            scheduler=args.scheduler)
    print(fitted.summary.line())
    return 0


def _ingest_settings(args) -> dict:
    """The ``ingest`` flags as :meth:`streamclust.Run.ingest` settings (:class:`~streamclust.config.IngestConfig` fields)."""
    return dict(size=args.size, chunk_size=args.chunk_size, workers=args.workers,
                max_member_bytes=args.max_member_bytes, max_pixels=args.max_pixels,
                min_side=args.min_side, max_aspect=args.max_aspect, store=args.store)


def _cmd_ingest(args) -> int:
    from .config import default_workers
    from .ingest._server import NO_BLAS_THREADS, start_decoder_server

    if "numpy" not in sys.modules:  # this command multiplies no matrices: no BLAS threads to spin
        for key, value in NO_BLAS_THREADS.items():
            os.environ.setdefault(key, value)
    if args.scheduler is None and (args.workers or default_workers()) > 1:
        start_decoder_server()  # the decoders load on another core while this process imports the rest
    summary = _run(args).ingest(args.source, **_ingest_settings(args), overwrite=args.overwrite,
                                progress=_progress(args), scheduler=args.scheduler)
    print(summary.line())
    return 0


def _setup_logging(args) -> None:
    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning on the command line: one line through the log, not a source excerpt."""
    logger.warning("warning: %s", message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamclust`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    _setup_logging(args)
    try:
        return _dispatch(args)
    finally:  # the logger as it was: a later library call in this process (a test, a notebook) does not
        # write to this call's stderr, which may be gone by then
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def _dispatch(args) -> int:
    """Run the command of ``args``; an error streamclust raises on purpose is one line and exit status 2."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            return int(args.func(args) or 0)
    except StreamclustError as exc:
        print(f"streamclust {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - re-raised unless the machine failed a read or write
        if _is_backend_error(exc):  # a backend or device that cannot be used here: a refusal, like a bad flag
            print(f"streamclust {args.command}: error: {exc}", file=sys.stderr)
            return 2
        if _is_gpu_out_of_memory(exc):  # the device's resources, not the command: one line, resumable
            print(f"streamclust {args.command}: error: {gpu_memory_line(exc)}", file=sys.stderr)
            return EXIT_GPU_MEMORY
        os_error = _os_error(exc)
        if os_error is None:
            raise
        where = args.run_dir if isinstance(args.run_dir, str) else ", ".join(args.run_dir)
        print(f"streamclust {args.command}: error: {os_error_line(os_error, where)}", file=sys.stderr)
        return EXIT_OS_ERROR
    except KeyboardInterrupt:
        print(f"streamclust {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
