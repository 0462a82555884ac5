#!/usr/bin/env python
"""Benchmark the streaming kernel PCA, agglomerative clustering and t-SNE map against the
in-memory calls, in time, peak memory and agreement.

    python scripts/bench_methods.py [--faces 10000] [--side 32|64] [--double] [--workdir DIR]
                                    [--out results.json]

Data sets
---------
``digits``
    scikit-learn's 1,797 8x8 digits (64 features, 10 classes).
``faces``
    ``--faces`` synthetic RGB faces (the seeded generator of ``bench_fit.py``: 64x64, or
    downsampled 2x2 to 32x32 with ``--side 32``; 24 identities as classes), reduced to
    50 principal components by ``sklearn.decomposition.PCA`` (not timed): the methods
    run on these features, as the pipeline runs them on ``features.zarr``.

An in-memory call whose memory is known in advance to exceed the machine's (exact
``KernelPCA`` holds two N x N float64 matrices: the kernel and its centred copy) is not
started; the table says how much it would need.

Each method runs in its own child process, once streamed (the data read from a zarr
array) and once in memory (NumPy); time is measured in the child, and so is its peak
RSS: the kernel's high-water mark of the child's own address space (``VmHWM``; the
``ru_maxrss`` of ``getrusage(RUSAGE_CHILDREN)`` would also count the parent's memory
copied at fork, hundreds of MiB here once the faces are generated).

Methods and agreement figures
-----------------------------
``kpca``
    ``StreamingKernelPCA(k, kernel="rbf", gamma=1/(d var X))`` with the default
    landmarks vs ``KernelPCA(k, eigen_solver="arpack")``: mean (and minimum) canonical
    correlation of the two score matrices, and the ARI of ``KMeans(n_classes)`` on
    either.
``agglomerative``
    ``StreamingAgglomerative(n_classes)`` (1000 k-means sub-clusters, Ward) vs
    ``AgglomerativeClustering(n_classes, linkage="ward")``: ARI against the exact
    clustering (over seeds 0-2) and of each against the classes.  For the record, the
    same weighted Ward on BIRCH ``partial_fit`` sub-clusters (threshold set to give about
    as many sub-clusters) is scored too.
``tsne``
    ``StreamingTSNE()`` (5,000-row sample, the rest placed) vs openTSNE's ``TSNE`` on
    every row: leave-one-out 5-NN class accuracy in the map and the ARI of
    ``KMeans(n_classes)`` on the map against the classes.  With ``--double`` the
    streamed map is also made for twice as many faces: its placement time per row shows
    the cost is linear in N.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


# ---------------------------------------------------------------------------- data
def _faces(n: int, seed: int = 0, side: int = 32):
    spec = importlib.util.spec_from_file_location("bench_fit", ROOT / "scripts" / "bench_fit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    imgs = mod.face_batch(0, n, seed).astype(np.float32)
    if side == 32:
        imgs = imgs.reshape(n, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    blocks = -(-n // 1024)
    who = np.concatenate([np.random.default_rng([seed, 2, b]).integers(mod.N_IDENTITIES, size=1024)
                          for b in range(blocks)])[:n]
    return imgs.reshape(n, -1), who


def make_datasets(workdir: Path, n_faces: int, double: bool, side: int = 32) -> dict:
    import zarr
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    out = {}
    d = load_digits()
    sets = {"digits": (d.data.astype(np.float64), d.target)}
    if n_faces and not (ROOT / "scripts" / "bench_fit.py").exists():
        print("scripts/bench_fit.py (the face generator) is missing: digits only", file=sys.stderr)
        n_faces = 0
    if n_faces:
        X, y = _faces(2 * n_faces if double else n_faces, side=side)
        F = PCA(50, random_state=0).fit(X[:n_faces]).transform(X)
        del X
        sets[f"faces{n_faces // 1000}k-{side}px"] = (F[:n_faces], y[:n_faces])
        if double:
            sets[f"faces{2 * n_faces // 1000}k-{side}px"] = (F, y)
    for name, (X, y) in sets.items():
        np.save(workdir / f"{name}.npy", X)
        np.save(workdir / f"{name}.labels.npy", y)
        z = zarr.create_array(store=str(workdir / f"{name}.zarr"), shape=X.shape, chunks=(1024, X.shape[1]),
                              dtype="float64", overwrite=True)
        z[:] = X
        out[name] = {"n": int(X.shape[0]), "d": int(X.shape[1]), "classes": int(np.unique(y).size),
                     "gamma": float(1.0 / (X.shape[1] * X.var()))}
    return out


# --------------------------------------------------------------------------- child
def child(method: str, route: str, dataset: str, workdir: Path, params: dict) -> dict:
    import zarr

    X = np.load(workdir / f"{dataset}.npy") if route != "stream" else zarr.open_array(
        str(workdir / f"{dataset}.zarr"), mode="r")
    out_file = workdir / f"{dataset}.{method}.{route}.{params.get('seed', 0)}.npy"
    res: dict = {}
    t0 = time.perf_counter()
    if method == "kpca":
        if route == "stream":
            from streamclust.models.kpca import StreamingKernelPCA

            est = StreamingKernelPCA(params["k"], gamma=params["gamma"], random_state=0).fit(X)
            Z = est.transform(X)
            res["n_landmarks"] = est.n_landmarks_
        else:
            from sklearn.decomposition import KernelPCA

            Z = KernelPCA(params["k"], kernel="rbf", gamma=params["gamma"], eigen_solver="arpack",
                          random_state=0).fit_transform(X)
        np.save(out_file, Z)
    elif method == "agglomerative":
        if route == "stream":
            from streamclust.models.agglomerative import StreamingAgglomerative

            labels = StreamingAgglomerative(params["classes"], random_state=params.get("seed", 0)).fit(X).labels_
        else:
            from sklearn.cluster import AgglomerativeClustering

            labels = AgglomerativeClustering(params["classes"]).fit_predict(X)
        np.save(out_file, labels)
    elif method == "tsne":
        if route == "stream":
            from streamclust.models.embed import StreamingTSNE, embed_to_zarr

            est = StreamingTSNE(random_state=0).fit(X)
            res["fit_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            arr = embed_to_zarr(est, X, workdir / f"{dataset}.embedding.zarr")
            res["place_s"] = time.perf_counter() - t1
            res["placed_rows"] = int(X.shape[0] - est.sample_indices_.size)
            Y = arr[:]
        else:
            import openTSNE

            Y = np.asarray(openTSNE.TSNE(random_state=0).fit(X))
        np.save(out_file, Y)
    res["seconds"] = time.perf_counter() - t0
    res["peak_rss_mib"] = _peak_rss_mib()
    return res


def _peak_rss_mib() -> float:
    """This process's high-water resident set (``VmHWM``), in MiB.

    Not ``ru_maxrss``: on Linux that also counts the memory the child had between fork
    and exec, i.e. the parent's resident set (here the parent holds the generated images).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(method, route, dataset, workdir: Path, params: dict) -> dict:
    res_file = workdir / f"res.{os.getpid()}.{time.monotonic_ns()}.json"
    cmd = [sys.executable, __file__, "--child", method, route, dataset, str(workdir), json.dumps(params),
           str(res_file)]
    proc = subprocess.run(cmd, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"child {method}/{route}/{dataset} failed with status {proc.returncode}")
    return json.loads(res_file.read_text())


# ------------------------------------------------------------------------ agreement
def canonical_correlations(A, B):
    qa = np.linalg.qr(A - A.mean(axis=0))[0]
    qb = np.linalg.qr(B - B.mean(axis=0))[0]
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


def knn_accuracy(Y, y, k=5):
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(Y).kneighbors(Y, return_distance=False)[:, 1:]
    votes = y[idx]
    pred = np.array([np.bincount(v).argmax() for v in votes])
    return float((pred == y).mean())


def birch_ari(X, exact, k, target_sub=1000):
    from sklearn.cluster import Birch
    from sklearn.metrics import adjusted_rand_score

    from streamclust.models.agglomerative import cut_linkage, weighted_linkage

    scale = np.sqrt(X.var(axis=0).sum())
    best = None
    for f in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5):
        b = Birch(n_clusters=None, threshold=f * scale)
        for lo in range(0, len(X), 1024):
            b.partial_fit(X[lo : lo + 1024])
        subs = [(sc.centroid_, sc.n_samples_) for leaf in b._get_leaves() for sc in leaf.subclusters_]
        if best is None or abs(len(subs) - target_sub) < abs(best[0] - target_sub):
            best = (len(subs), subs)
    c = np.array([s[0] for s in best[1]])
    n = np.array([s[1] for s in best[1]], dtype=float)
    lab = cut_linkage(weighted_linkage(c, n), k)
    d2 = (X**2).sum(1)[:, None] - 2 * X @ c.T + (c**2).sum(1)[None]
    return best[0], float(adjusted_rand_score(exact, lab[d2.argmin(1)]))


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def bench(workdir: Path, n_faces: int, double: bool, side: int = 32) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    info = make_datasets(workdir, n_faces, double, side)
    results = {"datasets": info, "rows": []}
    for name, meta in info.items():
        if double and name.startswith("faces") and meta["n"] == 2 * n_faces:
            continue  # only the streamed t-SNE, below
        X, y = np.load(workdir / f"{name}.npy"), np.load(workdir / f"{name}.labels.npy")
        kc = meta["classes"]
        # ---- kernel PCA
        k = 10
        p = {"k": k, "gamma": meta["gamma"]}
        s = run_child("kpca", "stream", name, workdir, p)
        need_gib = 2 * meta["n"] ** 2 * 8 / 2**30
        if need_gib > 0.8 * _memory_gib():
            Zs = np.load(workdir / f"{name}.kpca.stream.0.npy")
            km = KMeans(kc, n_init=4, random_state=0).fit_predict(Zs)
            results["rows"].append({
                "dataset": name, "method": f"kernel PCA (k={k}, {s['n_landmarks']} landmarks)", "stream": s,
                "memory": None,
                "agreement": f"exact KernelPCA not run: it would need about {need_gib:.0f} GiB (two "
                             f"{meta['n']:,} x {meta['n']:,} float64 matrices), this machine has "
                             f"{_memory_gib():.0f} GiB; ARI of k-means on the streamed scores vs classes "
                             f"{adjusted_rand_score(y, km):.3f}"})
        else:
            m = run_child("kpca", "sklearn", name, workdir, p)
            Zs, Zm = np.load(workdir / f"{name}.kpca.stream.0.npy"), np.load(workdir / f"{name}.kpca.sklearn.0.npy")
            cc = canonical_correlations(Zm, Zs)
            km_exact = KMeans(kc, n_init=4, random_state=0).fit_predict(Zm)
            ari = adjusted_rand_score(km_exact, KMeans(kc, n_init=4, random_state=0).fit_predict(Zs))
            # how far k-means itself moves between seeds on the exact scores, for scale
            ari_seed = adjusted_rand_score(km_exact, KMeans(kc, n_init=4, random_state=1).fit_predict(Zm))
            results["rows"].append({"dataset": name, "method": f"kernel PCA (k={k}, {s['n_landmarks']} landmarks)",
                                    "stream": s, "memory": m,
                                    "agreement": f"canon. corr. mean {cc.mean():.4f} (min {cc.min():.4f}); "
                                                 f"ARI k-means(Z) vs k-means(Z_exact) {ari:.3f} "
                                                 f"(k-means on Z_exact, seed 0 vs 1: {ari_seed:.3f})"})
        # ---- agglomerative
        p = {"classes": kc}
        m = run_child("agglomerative", "sklearn", name, workdir, p)
        exact = np.load(workdir / f"{name}.agglomerative.sklearn.0.npy")
        aris, s0 = [], None
        for seed in range(3):
            s = run_child("agglomerative", "stream", name, workdir, {**p, "seed": seed})
            s0 = s0 or s
            aris.append(adjusted_rand_score(exact, np.load(workdir / f"{name}.agglomerative.stream.{seed}.npy")))
        lab0 = np.load(workdir / f"{name}.agglomerative.stream.0.npy")
        nb, bari = birch_ari(X, exact, kc)
        results["rows"].append({
            "dataset": name, "method": "agglomerative (ward, 1000 k-means sub-clusters)", "stream": s0, "memory": m,
            "agreement": f"ARI vs exact {np.mean(aris):.3f} (seeds 0-2: {', '.join(f'{a:.3f}' for a in aris)}); "
                         f"vs classes {adjusted_rand_score(y, lab0):.3f} (exact {adjusted_rand_score(y, exact):.3f}); "
                         f"BIRCH first stage ({nb} sub-clusters) ARI vs exact {bari:.3f}"})
        # ---- t-SNE
        s, m = run_child("tsne", "stream", name, workdir, {}), run_child("tsne", "sklearn", name, workdir, {})
        Ys, Ym = np.load(workdir / f"{name}.tsne.stream.0.npy"), np.load(workdir / f"{name}.tsne.sklearn.0.npy")
        fig = []
        for label, Y in (("stream", Ys), ("openTSNE all rows", Ym)):
            km = KMeans(kc, n_init=4, random_state=0).fit_predict(Y)
            fig.append(f"{label}: 5-NN acc {knn_accuracy(Y, y):.3f}, ARI k-means vs classes "
                       f"{adjusted_rand_score(y, km):.3f}")
        if s.get("placed_rows"):
            fig.append(f"placement {1e3 * s['place_s'] / max(s['placed_rows'], 1):.2f} ms/row "
                       f"({s['placed_rows']} rows)")
        results["rows"].append({"dataset": name, "method": "t-SNE map (openTSNE, 5000-row sample)", "stream": s,
                                "memory": m, "agreement": "; ".join(fig)})
    if double:
        name = f"faces{2 * n_faces // 1000}k-{side}px"
        s = run_child("tsne", "stream", name, workdir, {})
        y = np.load(workdir / f"{name}.labels.npy")
        Ys = np.load(workdir / f"{name}.tsne.stream.0.npy")
        results["rows"].append({
            "dataset": name, "method": "t-SNE map (openTSNE, 5000-row sample)", "stream": s, "memory": None,
            "agreement": f"stream: 5-NN acc {knn_accuracy(Ys, y):.3f}; placement "
                         f"{1e3 * s['place_s'] / s['placed_rows']:.2f} ms/row ({s['placed_rows']} rows)"})
    return results


def report(results: dict) -> str:
    lines = ["| data | method | streamed s | streamed peak RSS MiB | in-memory s | in-memory peak RSS MiB | agreement |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        s, m = r["stream"], r["memory"]
        m_s = "-" if m is None else f"{m['seconds']:.1f}"
        m_rss = "-" if m is None else f"{m['peak_rss_mib']:.0f}"
        lines.append(f"| {r['dataset']} | {r['method']} | {s['seconds']:.1f} | {s['peak_rss_mib']:.0f} | "
                     f"{m_s} | {m_rss} | {r['agreement']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        method, route, dataset, workdir, params, res_file = argv[1:7]
        res = child(method, route, dataset, Path(workdir), json.loads(params))
        Path(res_file).write_text(json.dumps(res))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=10000, help="synthetic faces (0: digits only)")
    ap.add_argument("--side", type=int, choices=(32, 64), default=32, help="face images' side (default 32)")
    ap.add_argument("--double", action="store_true", help="also map twice as many faces (linear cost)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = bench(Path(tmp), args.faces, args.double, args.side)
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
