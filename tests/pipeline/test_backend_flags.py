"""``--backend``, ``--device``, ``--precision``: they parse, reach the estimators, refuse what cannot
run here (exit 2, nothing written), and leave what a fit is unchanged (same models, same checkpoint)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streamclust.cli import build_parser, main
from streamclust.config import FitConfig, IngestConfig
from streamclust.ingest import ingest

from ..ingest.hostile import synthetic_jpegs, write_zip

SUBCOMMANDS = {  # the arguments each one needs besides RUN_DIR
    "fit": [], "assign": [], "select-k": ["--k", "2:3"], "sample": ["-n", "4"], "compare": [],
}
FIT = ["--pca-components", "6", "--pca-method", "covariance", "--clusters", "4", "--gmm-components", "3", "--seed", "1", "--batch-size", "40",
       "--max-iter", "15", "--quiet"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backend")
    return write_zip(tmp / "s.zip", list(synthetic_jpegs(150, side=16, seed=5)))


@pytest.fixture(scope="module")
def ingested(source, tmp_path_factory):
    run = tmp_path_factory.mktemp("backend-run") / "base"
    ingest(IngestConfig(str(source), size=8, chunk_size=32, workers=1), run, progress=False)
    return run


@pytest.fixture(scope="module")
def fitted(ingested, tmp_path_factory):
    """A run with every stage the refusals below are tried on (fit with NumPy)."""
    run = shutil.copytree(ingested, tmp_path_factory.mktemp("backend-fitted") / "run")
    assert main(["fit", str(run), *FIT, "--backend", "numpy"]) == 0
    assert main(["assign", str(run), "--quiet", "--backend", "numpy"]) == 0
    return run


def _snapshot(root: Path) -> dict:
    """Every path under ``root``, and each file's bytes and mtime (a folder's mtime moves with the lock file)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def _assert_same_models(a: Path, b: Path, names=("pca", "kmeans", "gmm")) -> None:
    for name in names:
        with np.load(a / "model" / f"{name}.npz", allow_pickle=False) as x, \
                np.load(b / "model" / f"{name}.npz", allow_pickle=False) as y:
            assert x.files == y.files
            for key in x.files:
                u, v = x[key], y[key]
                if u.dtype.kind == "f":
                    scale = float(np.abs(u).max()) if u.size else 0.0
                    np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-10 * scale, err_msg=f"{name}:{key}")
                else:
                    np.testing.assert_array_equal(u, v, err_msg=f"{name}:{key}")


# ------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("command", [*SUBCOMMANDS, "run"])
def test_the_flags_parse_on_every_command_with_their_defaults(command):
    parser = build_parser()
    head = [command, "SRC", "RUN"] if command == "run" else [command, "RUN", *SUBCOMMANDS[command]]
    args = parser.parse_args(head)
    # no --precision: float64, or for fit and run the run's own (streamclust.cli._backend_settings, _fit_settings)
    assert (args.backend, args.device, args.precision) == ("auto", "auto", None)
    args = parser.parse_args([*head, "--backend", "torch", "--device", "cuda:1", "--precision", "float32"])
    assert (args.backend, args.device, args.precision) == ("torch", "cuda:1", "float32")


@pytest.mark.parametrize("flags", [["--backend", "jax"], ["--device", "gpu"], ["--device", "cuda:x"],
                                   ["--device", "mps"], ["--precision", "float16"]])
def test_a_misspelt_choice_is_a_usage_error(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(tmp_path / "run"), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and flags[0] in err[0]
    assert not (tmp_path / "run").exists()


def test_compare_device_also_takes_mps_for_the_decoder():
    args = build_parser().parse_args(["compare", "RUN", "--device", "mps"])
    assert args.device == "mps"


# ------------------------------------------------------------------------------ refusals
def _no_gpu():
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


@pytest.mark.skipif(not _no_gpu(), reason="a GPU is present: --device cuda is usable here")
@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_device_cuda_without_a_gpu_is_one_line_exit_2_and_writes_nothing(fitted, command, capsys):
    before = _snapshot(fitted)
    rc = main([command, str(fitted), *SUBCOMMANDS[command], "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and f"streamclust {command}: error: --device cuda" in err[0]
    assert "--device cpu" in err[0]  # the fix
    assert _snapshot(fitted) == before


@pytest.mark.skipif(not _no_gpu(), reason="a GPU is present: --device cuda is usable here")
def test_run_with_device_cuda_without_a_gpu_creates_nothing(source, tmp_path, capsys):
    rc = main(["run", str(source), str(tmp_path / "new"), "--size", "8", "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--device cuda" in err[0]
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["fit", "assign", "select-k"])
@pytest.mark.parametrize("flags,needle", [
    (["--backend", "numpy", "--device", "cuda"], "--backend numpy runs on the CPU only"),
    (["--backend", "torch", "--scheduler", "local"], "--backend torch runs the passes in this process"),
    (["--device", "cuda:0", "--scheduler", "local"], "--device cuda:0 runs the passes in this process"),
])
def test_impossible_combinations_are_one_line_exit_2_and_write_nothing(fitted, command, flags, needle, capsys):
    before = _snapshot(fitted)
    rc = main([command, str(fitted), *SUBCOMMANDS[command], *flags, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert _snapshot(fitted) == before


def test_the_run_command_refuses_torch_with_a_scheduler_before_starting_anything(source, tmp_path, capsys):
    rc = main(["run", str(source), str(tmp_path / "new"), "--size", "8", "--backend", "torch",
               "--scheduler", "local", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--backend torch" in err[0] and "--scheduler" in err[0]
    assert not (tmp_path / "new").exists()


def test_auto_with_a_scheduler_is_numpy():
    from streamclust.pipeline.fit import stage_backend

    assert stage_backend("auto", "auto", "float64", client=object()).name == "numpy"
    assert stage_backend("auto", "cpu", "float32", client=object()).precision == "float32"


def test_the_api_refuses_as_the_command_line(fitted):
    from streamclust import Run
    from streamclust.engine import BackendError

    before = _snapshot(fitted)
    with pytest.raises(BackendError, match="--backend numpy runs on the CPU only"):
        Run(fitted).assign(backend="numpy", device="cuda")
    with pytest.raises(BackendError, match="--scheduler"):
        Run(fitted).select_k([2, 3], backend="torch", scheduler="local")
    assert _snapshot(fitted) == before


# ------------------------------------------------------------------------------ the PyTorch path
def test_torch_on_the_cpu_reaches_the_estimators_and_fits_the_numpy_models(ingested, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    import streamclust.pipeline.fit as fit_module

    seen = []
    real = fit_module.fit_streaming

    def spy(estimator, X, **kw):
        params = estimator.get_params(deep=False)
        seen.append((type(estimator).__name__, params.get("backend"), params.get("device"), params.get("precision")))
        return real(estimator, X, **kw)

    monkeypatch.setattr(fit_module, "fit_streaming", spy)
    ref = shutil.copytree(ingested, tmp_path / "numpy")
    run = shutil.copytree(ingested, tmp_path / "torch")
    assert main(["fit", str(ref), *FIT, "--backend", "numpy"]) == 0
    assert seen == [("StreamingPCA", "numpy", "cpu", None), ("StreamingKMeans", "numpy", "cpu", "float64"),
                    ("StreamingGaussianMixture", "numpy", "cpu", "float64")]
    seen.clear()
    capsys.readouterr()
    assert main(["fit", str(run), *FIT[:-1], "--backend", "torch", "--device", "cpu"]) == 0
    assert seen == [("StreamingPCA", "torch", "cpu", None), ("StreamingKMeans", "torch", "cpu", "float64"),
                    ("StreamingGaussianMixture", "torch", "cpu", "float64")]
    err = capsys.readouterr().err
    assert "fitting gmm with PyTorch" in err and "on cpu" in err  # the log says where each stage ran
    _assert_same_models(ref, run)
    # backend and device are not saved in the model files (they load on any machine), nor in what a fit is
    from streamclust.models.io import load_model

    for name in ("pca", "kmeans", "gmm"):
        params = load_model(run / "model" / f"{name}.npz").get_params()
        assert (params["backend"], params["device"]) == ("auto", "auto")
    saved = json.loads((run / "config.json").read_text())["fit"]
    assert saved["backend"] == "torch" and saved["precision"] == "float64"
    # the same fit re-run with another backend is complete, not refused
    assert main(["fit", str(run), *FIT, "--backend", "numpy"]) == 0

    # assign, select-k, compare and sample give the NumPy results
    for r, flags in ((ref, ["--backend", "numpy"]), (run, ["--backend", "torch", "--device", "cpu"])):
        assert main(["assign", str(r), "--quiet", *flags]) == 0
        assert main(["select-k", str(r), "--k", "2:3", "--max-iter", "10", "--quiet", *flags]) == 0
        assert main(["compare", str(r), "--quiet", *flags]) == 0
        assert main(["sample", str(r), "-n", "4", "--quiet", *flags]) == 0
    for name in ("assignments.csv", "select_k.csv", "compare.csv"):
        a = list(csv.reader((ref / name).read_text().splitlines()))
        b = list(csv.reader((run / name).read_text().splitlines()))
        assert a[0] == b[0] and len(a) == len(b)
        for x, y in zip(a[1:], b[1:]):
            for column, u, v in zip(a[0], x, y):
                if column == "fit_seconds":
                    continue
                try:
                    np.testing.assert_allclose(float(u), float(v), rtol=1e-5, err_msg=name)
                except ValueError:
                    assert u == v, name
    assert (ref / "samples.png").read_bytes() == (run / "samples.png").read_bytes()


def test_precision_is_part_of_what_a_fit_is(ingested, tmp_path, capsys):
    pytest.importorskip("torch")
    run = shutil.copytree(ingested, tmp_path / "run")
    assert main(["fit", str(run), *FIT, "--backend", "torch", "--device", "cpu", "--precision", "float32"]) == 0
    assert main(["fit", str(run), *FIT]) == 0  # no --precision: the run's own, float32
    assert main(["fit", str(run), *FIT, "--precision", "float64"]) == 2
    err = capsys.readouterr().err
    assert "precision float32 then, float64 now" in err and "--overwrite" in err


def test_backend_and_device_are_not_in_the_checkpoint_key_but_precision_is():
    from streamclust.models import StreamingGaussianMixture, StreamingKMeans, StreamingPCA
    from streamclust.pipeline.fit import checkpoint_key

    def key(cls, **kw):
        return checkpoint_key("stage", cls(3, random_state=0, **kw), "data")

    for cls in (StreamingKMeans, StreamingGaussianMixture, StreamingPCA):
        assert key(cls, backend="torch", device="cuda:0") == key(cls, backend="numpy", device="cpu") == key(cls)
    for cls in (StreamingKMeans, StreamingGaussianMixture):
        assert key(cls, precision="float32") != key(cls, precision="float64")
    assert FitConfig(backend="torch", device="cuda").identity() == FitConfig().identity()
    assert FitConfig(precision="float32").identity() != FitConfig().identity()


def test_a_fit_checkpointed_with_torch_resumes_with_numpy(ingested, tmp_path, monkeypatch):
    """Interrupted mid-mixture with ``--backend torch --device cpu``, resumed with ``--backend numpy``
    from the same checkpoint (a key that differed would be refused): the NumPy fit's models."""
    pytest.importorskip("torch")
    import streamclust.pipeline.fit as fit_module
    from streamclust.models import StreamingGaussianMixture

    ref = shutil.copytree(ingested, tmp_path / "ref")
    assert main(["fit", str(ref), *FIT, "--backend", "numpy"]) == 0

    monkeypatch.setattr(fit_module, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every batch
    real = fit_module.fit_streaming
    calls = {"first": 0, "resumed": 0}

    class Stop(Exception):
        pass

    def interrupted(estimator, X, *, progress, **kw):
        def counting(name, done, total):
            progress(name, done, total)
            if isinstance(estimator, StreamingGaussianMixture):
                calls[phase] += 1
                if phase == "first" and calls[phase] == 12:
                    raise Stop

        return real(estimator, X, progress=counting, **kw)

    monkeypatch.setattr(fit_module, "fit_streaming", interrupted)
    run = shutil.copytree(ingested, tmp_path / "run")
    phase = "first"
    with pytest.raises(Stop):
        main(["fit", str(run), *FIT, "--backend", "torch", "--device", "cpu"])
    assert (run / ".streamclust" / "fit-gmm.ckpt.npz").exists()
    assert not (run / "model" / "gmm.npz").exists()
    phase = "resumed"
    assert main(["fit", str(run), *FIT, "--backend", "numpy"]) == 0
    phase = "full"
    calls["full"] = 0
    full = shutil.copytree(ingested, tmp_path / "full")
    assert main(["fit", str(full), *FIT, "--backend", "numpy"]) == 0
    assert calls["resumed"] < calls["full"]  # it went on from the checkpoint, not from the start
    _assert_same_models(ref, run)


def test_a_gpu_out_of_memory_is_one_line_and_exit_75(monkeypatch, capsys, tmp_path):
    torch = pytest.importorskip("torch")
    from streamclust import cli

    def full(args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                          "capacity of 15.77 GiB of which 1.06 GiB is free.\nmore text")

    monkeypatch.setattr(cli, "_cmd_fit", full)
    code = cli.main(["fit", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_GPU_MEMORY == 75
    assert "\n" not in err
    assert err == ("streamclust fit: error: the GPU ran out of memory (CUDA out of memory. Tried to allocate "
                   "2.00 GiB); free it (other programs, "
                   "notebooks holding tensors) or run on the CPU with --device cpu; re-running resumes from the "
                   "last checkpoint")


def test_fit_settings_not_given_are_the_runs_own(ingested, tmp_path):
    """`fit RUN` alone resumes or reuses the run's fit; a flag given is compared with it (CLI and API alike)."""
    from streamclust import Run

    run = shutil.copytree(ingested, tmp_path / "run")
    assert main(["fit", str(run), "--pca-components", "6", "--clusters", "4", "--gmm-components", "2",
                 "--seed", "3", "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in (run / "model").iterdir()}
    assert main(["fit", str(run), "--quiet"]) == 0  # not "other settings": nothing to do
    assert main(["fit", str(run), "--seed", "3", "--quiet"]) == 0
    assert main(["fit", str(run), "--clusters", "5", "--quiet"]) == 2  # a flag that differs is still refused
    assert {p.name: p.read_bytes() for p in (run / "model").iterdir()} == before
    saved = json.loads((run / "config.json").read_text())["fit"]
    assert (saved["clusters"], saved["gmm_components"], saved["seed"], saved["pca_components"]) == (4, 2, 3, 6)
    assert Run(run, progress=False).fit().kmeans.n_clusters == 4  # the Python API: the same
    # --overwrite with one new flag: the others are still the run's own
    assert main(["fit", str(run), "--clusters", "5", "--overwrite", "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())["fit"]
    assert (saved["clusters"], saved["gmm_components"], saved["seed"]) == (5, 2, 3)


def test_a_memory_limit_keeps_the_read_ahead_of_a_gpus_batches_within_it(ingested, tmp_path, monkeypatch, capsys):
    """On a backend sized as a GPU (on the CPU), ``--memory-limit`` caps each stage's batch to what its
    plan leaves for the host's read-ahead, says so, and the models are NumPy's; without it, a GPU's batch."""
    pytest.importorskip("torch")
    import streamclust.pipeline.fit as fit_module
    import streamclust.pipeline.select_k as select_k_module
    from streamclust.engine.transfer import read_ahead_bytes, read_ahead_rows
    from streamclust.pipeline.memory import BASELINE_BYTES
    from streamclust.pipeline.pca_choice import choose_pca
    from streamclust.store import image_array, ok_rows

    from ..models.gpu_batches import batches_sized_as_on_a_gpu

    sizes = batches_sized_as_on_a_gpu(monkeypatch)
    rooms = []
    for module, name in ((fit_module, "fit_streaming"), (select_k_module, "fit_candidates")):
        def spy(*args, host_room=None, _real=getattr(module, name), **kw):
            rooms.append(host_room)
            return _real(*args, host_room=host_room, **kw)

        monkeypatch.setattr(module, name, spy)
    images = image_array(ingested)
    d = int(np.prod(images.shape[1:]))
    n = int(ok_rows(ingested).size)
    pca = choose_pca(FitConfig(pca_components=6, pca_method="covariance", batch_size=40), n, d,
                     int(images.chunks[0]), int(np.prod(images.chunks)) * images.dtype.itemsize)
    limit = pca.bytes_needed + read_ahead_bytes(100, d, np.uint8)  # the PCA's plan leaves room for 100 rows

    ref = shutil.copytree(ingested, tmp_path / "numpy")
    assert main(["fit", str(ref), *FIT, "--backend", "numpy"]) == 0
    assert main(["select-k", str(ref), "--k", "2:3", "--max-iter", "10", "--quiet", "--backend", "numpy"]) == 0
    sizes.clear()
    rooms.clear()
    capsys.readouterr()
    run = shutil.copytree(ingested, tmp_path / "limited")
    torch_flags = ["--backend", "torch", "--device", "cpu"]
    assert main(["fit", str(run), *FIT[:-1], *torch_flags, "--memory-limit", str(limit)]) == 0
    assert main(["select-k", str(run), "--k", "2:3", "--max-iter", "10", *torch_flags]) == 0
    err = capsys.readouterr().err
    # the fit's stages: PCA on the pixels (stored uint8), k-means and the mixture on the float32 features
    assert [(f, w) for f, _, w in sizes] == [(d, np.uint8), (6, np.float32), (6, np.float32)]
    assert len(rooms) == 4 and all(r is not None and 0 <= r.bytes < limit - BASELINE_BYTES for r in rooms)
    assert rooms[0].bytes == read_ahead_bytes(100, d, np.uint8)
    assert sizes[0][1] == 100  # the PCA's pixels: 100 rows, not the 65,536 of a GPU
    for (features, rows, wire), room in zip(sizes, rooms):  # the most rows whose read-ahead fits
        assert 40 < rows < 65536
        assert read_ahead_bytes(rows, features, wire) <= room.bytes < read_ahead_bytes(rows + 1, features, wire)
    said = f"a GPU needs to be busy: --memory-limit {limit / 2**20:,.0f} MiB leaves room for no more"
    assert "on cuda:0 a batch is 100 rows (0 MiB in float32), not the 65536 rows (48 MiB) " + said in err
    assert f"on cuda:0 a batch is {sizes[1][1]} rows (0 MiB in float64), not the 65536 rows (3 MiB) " + said in err
    # select-k: its plan leaves no room beyond its own batch, which it keeps (and says so)
    planned, room = select_k_module._batch_size("gmm", [2, 3], 6, "diag", FitConfig(memory_limit=limit), None)
    assert room == rooms[3] and read_ahead_rows(room.bytes, 6, np.float32) < planned
    assert f"on cuda:0 a batch is {planned} rows (0 MiB in float64), not the 65536 rows (3 MiB) " + said in err
    assert err.count(said) == 4
    _assert_same_models(ref, run)
    a, b = (list(csv.DictReader((r / "select_k.csv").read_text().splitlines())) for r in (ref, run))
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        for column in ("k", "bic", "aic", "heldout_loglik"):
            np.testing.assert_allclose(float(x[column]), float(y[column]), rtol=1e-8, err_msg=column)

    sizes.clear()
    rooms.clear()
    free = shutil.copytree(ingested, tmp_path / "free")
    assert main(["fit", str(free), *FIT, *torch_flags]) == 0
    assert rooms == [None, None, None] and [rows for _, rows, _ in sizes] == [65536] * 3  # no limit: as before
    _assert_same_models(ref, free)


def test_the_room_a_stages_plan_leaves_of_the_memory_limit():
    from streamclust.engine import HostRoom
    from streamclust.pipeline.memory import BASELINE_BYTES, host_room

    assert host_room(None, fixed=1, per_row=1, rows=1) is None  # no limit: a GPU's batches as before
    room = host_room(2**30, fixed=100 * 2**20, per_row=1000, rows=1024)
    assert room == HostRoom(2**30 - BASELINE_BYTES - 100 * 2**20 - 1_024_000, "--memory-limit 1.00 GiB")
    assert room.bytes == 600_858_624
    assert host_room(400 * 2**20, fixed=100 * 2**20, per_row=1000, rows=1024).bytes == 0  # no room left


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fit_and_select_k_plan_a_mixtures_memory_alike(ingested, tmp_path, monkeypatch, backend):
    """One count of a mixture stage's memory (its models and an EM pass's working bytes): fit's
    mixture plans its batch with what select-k plans for the same mixture; on a device a
    lone diagonal mixture holds a joint step's stacked arrays (on NumPy it takes its own)."""
    if backend == "torch":
        pytest.importorskip("torch")
    import streamclust.pipeline.fit as fit_module
    import streamclust.pipeline.select_k as select_k_module
    from streamclust.pipeline.memory import mixture_stage_bytes

    planned = {}
    real = fit_module.batch_rows

    def spy(what, **kw):
        planned[what] = (kw["fixed"], kw["per_row"])
        return real(what, **kw)

    monkeypatch.setattr(fit_module, "batch_rows", spy)
    run = shutil.copytree(ingested, tmp_path / "run")
    assert main(["fit", str(run), *FIT, "--backend", backend, "--device", "cpu"]) == 0
    numpy = backend == "numpy"
    want = mixture_stage_bytes([3], 6, "diag", numpy=numpy)  # FIT: 3 components on the 6 PCA scores
    assert planned["the Gaussian mixture"] == want
    monkeypatch.setattr(select_k_module, "batch_rows", spy)
    select_k_module._batch_size("gmm", [3], 6, "diag", FitConfig(), None, numpy=numpy)
    assert planned["select-k"] == want
    lone, joint = mixture_stage_bytes([3], 6, "diag"), mixture_stage_bytes([3], 6, "diag", numpy=False)
    assert joint[0] - lone[0] == 12 * 3 * 6 * 8  # the joint step's stacked (K, d) arrays
    # a diagonal model holds k x d numbers, not the d x d of a tied one
    assert mixture_stage_bytes([50], 2000, "diag")[0] < 2000 * 2000 * 8 < mixture_stage_bytes([50], 2000, "tied")[0]
