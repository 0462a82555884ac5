"""Benchmark deep-feature training: streaming from images.zarr vs an in-memory tensor, and accuracy.

Part 1 (throughput): a store of ``--n`` augmented digit images (``--size`` pixels) is
ingested, then the AE is trained ``--epochs`` epoch(s) from the store (``train_run``:
chunked reads, shuffle windows, prefetch thread, checkpoints) and from the whole set held
as one float tensor (``train_tensor``, the notebooks' way), each in its own child
process; we report images/s and the child's peak RSS
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read by a wrapper process around each
child, so no figure leaks into another).  The two paths alternate ``--repeats`` times and
the median is shown.

Part 2 (accuracy): best-match accuracy (Hungarian matching of clusters to labels, as in
``streamclust evaluate``) of k-means (k = number of classes, scikit-learn, 10 inits) on
raw-pixel PCA scores and on the AE and VAE latents (``encode_run``), on: the digits demo
archive (10 classes), two digits (3 vs 8), and 16x16 patches cut from scikit-learn's two
bundled photos (china vs flower).

Run:  python scripts/bench_train.py            (a few minutes on 2 cores)
      python scripts/bench_train.py --n 4000 --acc-epochs 5   (a quick smoke run)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# -- data -------------------------------------------------------------------------------------
def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _write_zip(path: Path, images, labels) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf, \
            open(str(path) + ".labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["member", "label"])
        for i, (img, lab) in enumerate(zip(images, labels)):
            name = f"img/{lab}/{i:06d}.png"
            zf.writestr(name, _png(img))
            w.writerow([name, lab])
    return path


def augmented_digits(n: int, size: int, seed: int = 0, classes=None):
    """``n`` digits, each rescaled, rotated (+-20 deg) and shifted on a ``size`` canvas."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, classes) if classes is not None else np.ones(d.target.size, bool)
    src, tgt = d.images[keep], d.target[keep]
    rng = np.random.default_rng(seed)
    inner = max(8, int(size * 0.75))
    out, labels = [], []
    for _ in range(n):
        j = int(rng.integers(src.shape[0]))
        im = Image.fromarray(np.clip(src[j] * 16, 0, 255).astype(np.uint8)).resize((inner, inner), Image.LANCZOS)
        im = im.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
        canvas = Image.new("L", (size, size))
        dx, dy = rng.integers(0, size - inner + 1, 2)
        canvas.paste(im, (int(dx), int(dy)))
        out.append(np.asarray(canvas))
        labels.append(int(tgt[j]))
    return out, labels


def digit_pair(a: int, b: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, [a, b])
    return [np.clip(x * 16, 0, 255).astype(np.uint8) for x in d.images[keep]], [int(t) for t in d.target[keep]]


def photo_patches(n_per: int, crop: int = 48, size: int = 16, seed: int = 0):
    """Random ``crop``-pixel squares of china.jpg (label 0) and flower.jpg (label 1), resized."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    out, labels = [], []
    for lab, im in enumerate(load_sample_images().images):
        h, w, _ = im.shape
        for _ in range(n_per):
            r, c = int(rng.integers(0, h - crop)), int(rng.integers(0, w - crop))
            out.append(np.asarray(Image.fromarray(im[r:r + crop, c:c + crop]).resize((size, size), Image.LANCZOS)))
            labels.append(lab)
    return out, labels


def ingest_zip(zip_path: Path, run: Path, size: int, chunk: int) -> Path:
    from streamclust.config import IngestConfig
    from streamclust.ingest import ingest

    ingest(IngestConfig(str(zip_path), size=size, chunk_size=chunk, workers=None), run, progress=False)
    return run


# -- part 1: children ----------------------------------------------------------------------------
def child(argv) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("store", "memory"))
    p.add_argument("run")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--latent", type=int)
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.mode == "store":
        from streamclust.deep.train import train_run

        out = train_run(a.run, model="ae", latent=a.latent, epochs=a.epochs, batch_size=a.batch_size,
                        threads=a.threads, device="cpu", progress=False, overwrite=True)
        res = {"images_per_s": out["images_per_s"], "seconds": out["seconds"], "load_seconds": 0.0,
               "data_wait_share": out["data_wait_share"]}
    else:
        import zarr

        from streamclust.deep.train import train_tensor
        from streamclust.store import ok_rows

        t = time.perf_counter()
        X = zarr.open_array(str(Path(a.run) / "images.zarr"), mode="r")[:][ok_rows(a.run)]
        load = time.perf_counter() - t
        _, hist = train_tensor(X, model="ae", latent=a.latent, epochs=a.epochs, batch_size=a.batch_size,
                               threads=a.threads, device="cpu", progress=False)
        secs = sum(e["seconds"] for e in hist["epochs"])
        res = {"images_per_s": round(sum(e["images"] for e in hist["epochs"]) / secs, 1), "seconds": round(secs, 3),
               "load_seconds": round(load, 3), "data_wait_share": 0.0}
    print(json.dumps(res))


def wrap(argv) -> None:
    """Run one child and report its result with its peak RSS."""
    done = subprocess.run([sys.executable, str(HERE), "_child", *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    res = json.loads(done.stdout.strip().splitlines()[-1])
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    print(json.dumps(res))


def throughput(args, tmp: Path) -> list[str]:
    import zarr

    t = time.perf_counter()
    imgs, labels = augmented_digits(args.n, args.size, seed=1)
    zp = _write_zip(tmp / "aug.zip", imgs, labels)
    run = ingest_zip(zp, tmp / "aug", args.size, args.chunk)
    arr = zarr.open_array(str(run / "images.zarr"), mode="r")
    prep = time.perf_counter() - t
    store_mib = sum(f.stat().st_size for f in (run / "images.zarr").rglob("*") if f.is_file()) / 2**20
    float_mib = arr.shape[0] * 3 * args.size ** 2 * 4 / 2**20
    res = {"store": [], "memory": []}
    for _ in range(args.repeats):
        for mode in ("store", "memory"):
            done = subprocess.run([sys.executable, str(HERE), "_wrap", mode, str(run), "--epochs", str(args.epochs),
                                   "--batch-size", str(args.batch_size), "--latent", str(args.latent),
                                   "--threads", str(args.threads)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr)
            res[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in res.items()}
    lines = [
        f"## Throughput: AE, {arr.shape[0]} images {args.size}x{args.size}, chunks of {args.chunk}, "
        f"batch {args.batch_size}, latent {args.latent}, {args.epochs} epoch(s), {args.threads} torch thread(s), "
        f"CPU; median of {args.repeats} (store built in {prep:.0f} s; images.zarr {store_mib:.1f} MiB on disk, "
        f"{float_mib:.0f} MiB as a float tensor)",
        "",
        "| source | images/s | peak RSS (MiB) | load before training (s) | share of time waiting for batches |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, label in (("store", "streamed from images.zarr (train_run)"), ("memory", "in-memory float tensor")):
        m = med[mode]
        lines.append(f"| {label} | {m['images_per_s']:.0f} | {m['peak_rss_mib']:.0f} | {m['load_seconds']:.1f} "
                     f"| {100 * m['data_wait_share']:.1f} % |")
    lines += ["", f"store/memory throughput: {med['store']['images_per_s'] / med['memory']['images_per_s']:.2f}x; "
              f"peak RSS: {med['store']['peak_rss_mib'] / med['memory']['peak_rss_mib']:.2f}x",
              f"all runs: {json.dumps(res)}"]
    return lines


# -- part 2: accuracy ------------------------------------------------------------------------------
def accuracy(args, tmp: Path) -> list[str]:
    import zarr
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from streamclust.deep.encode import encode_run
    from streamclust.deep.train import train_run
    from streamclust.demo import make_digits_archive
    from streamclust.ingest.manifest import read_manifest
    from streamclust.pipeline.evaluate import best_match_accuracy, read_labels
    from streamclust.store import ok_rows

    sets = []
    zp = make_digits_archive(tmp / "digits.zip")
    sets.append(("digits (10 classes, 8x8)", zp, 8))
    imgs, labels = digit_pair(3, 8)
    sets.append(("digits 3 vs 8 (8x8)", _write_zip(tmp / "pair.zip", imgs, labels), 8))
    imgs, labels = photo_patches(args.patches)
    sets.append(("china vs flower patches (16x16)", _write_zip(tmp / "photos.zip", imgs, labels), 16))

    seeds = list(range(args.acc_seeds))
    lines = [f"## Accuracy: k-means (k = classes, 10 inits) on raw-pixel PCA scores vs on latents "
             f"(latent {args.acc_latent}, {args.acc_epochs} epochs, batch 64), best-match accuracy, "
             f"mean ± standard deviation over seeds {seeds} (the seed of the training and of k-means)",
             "", "| data set | images | pixel PCA k-means | AE latents k-means | VAE latents k-means | train s (AE, VAE) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, zp, size in sets:
        run = ingest_zip(zp, tmp / (zp.stem + "_run"), size, 256)
        rows = ok_rows(run)
        member = {int(r["index"]): r["member"] for r in read_manifest(run / "manifest.csv") if r["index"] != ""}
        lab = read_labels(str(zp) + ".labels.csv")
        y = np.array([lab[member[int(r)]] for r in rows])
        k = len(set(y))
        X = zarr.open_array(str(run / "images.zarr"), mode="r")[:][rows].reshape(rows.size, -1).astype(np.float64)
        pcs = PCA(n_components=min(args.pca_components, X.shape[1]), random_state=0).fit_transform(X)
        acc = {"pca": [best_match_accuracy(y, KMeans(k, n_init=10, random_state=s).fit_predict(pcs))
                       for s in seeds]}
        secs = []
        for model in ("ae", "vae"):
            acc[model] = []
            for s in seeds:
                out = train_run(run, model=model, latent=args.acc_latent, epochs=args.acc_epochs, batch_size=64,
                                seed=s, threads=args.threads, device="cpu", progress=False, overwrite=True)
                secs.append(out["seconds"])
                encode_run(run, model=model, device="cpu", progress=False, overwrite=True)
                Z = zarr.open_array(str(run / "latents.zarr"), mode="r")[:]
                acc[model].append(best_match_accuracy(y, KMeans(k, n_init=10, random_state=s).fit_predict(Z)))
        ms = {m: f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}" for m, v in acc.items()}
        per = len(seeds)
        lines.append(f"| {name} | {rows.size} | {ms['pca']} | {ms['ae']} | {ms['vae']} | "
                     f"{np.mean(secs[:per]):.0f}, {np.mean(secs[per:]):.0f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    lines.append(f"(pixel PCA: {args.pca_components} components, or fewer when the images have fewer pixels)")
    return lines


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return child(argv[1:])
    if argv and argv[0] == "_wrap":
        return wrap(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=12000, help="images in the throughput store")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--acc-epochs", type=int, default=20)
    p.add_argument("--acc-latent", type=int, default=16)
    p.add_argument("--acc-seeds", type=int, default=1, help="seeds averaged in the accuracy table")
    p.add_argument("--patches", type=int, default=1000, help="patches per photo")
    p.add_argument("--pca-components", type=int, default=30)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    args = p.parse_args(argv)
    import torch

    print(f"# bench_train: torch {torch.__version__}, {torch.get_num_threads()} cores visible to torch\n")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as d:
        tmp = Path(d)
        if not args.skip_throughput:
            print("\n".join(throughput(args, tmp)) + "\n", flush=True)
        if not args.skip_accuracy:
            print("\n".join(accuracy(args, tmp)), flush=True)


if __name__ == "__main__":
    main()
