#!/usr/bin/env python
"""Benchmark ``streamclust ingest`` against the naive notebook loop, in one script run.

    python scripts/bench_ingest.py [--n 3000] [--repeat 3] [--out results.json] [--rss-sweep]
    python scripts/bench_ingest.py --small cifar10,mnist,cifar96,synthetic256 --repeat 3
    python scripts/bench_ingest.py --member-sweep 100000,1000000,10000000

What it does
------------
1. Generates (seeded, in a temp dir, not timed) a zip of ``--n`` 256x256 RGB "face-like"
   JPEGs (quality 90): a smooth synthetic face (ellipse, hair, eyes, mouth, shading) on
   a gradient background, random colours, light noise.
2. Times, each in its own child process, ``--repeat`` times (alternating, median kept):

   (a) the naive route: one process, ``zipfile`` + ``Image.open().convert('RGB')
       .resize((64, 64))`` per member, every array held in a list, then ``np.stack``;
   (b) ``streamclust ingest ZIP RUN --quiet`` (the CLI's ``main()``; default workers =
       all cores), writing ``images.zarr`` and ``manifest.csv``.

   Timing runs are not monitored.  Before each run the script waits (``--idle-wait``) for
   the machine to be idle, and it records how many cores the whole machine kept busy
   during each run (ours included), so that a run disturbed by other work shows.  One more run of each is monitored for memory:

   * ``main ru_maxrss``: the kernel's high-water RSS of the main process
     (``getrusage(RUSAGE_SELF).ru_maxrss``, reported by the child itself at its end);
   * ``tree RSS sum``: peak over time of the summed RSS of the main process and all its
     descendants (streamclust's decode workers are children of a forkserver process,
     i.e. grandchildren: ``RUSAGE_CHILDREN`` does not see them), polled with psutil every
     50 ms.  Shared pages (libraries, copy-on-write) are counted once per process, so
     this over-states the real footprint;
   * ``tree PSS sum``: the same, with the proportional set size (shared pages divided
     among their sharers; from /proc/PID/smaps_rollup): the fairest "memory used" figure;
   * ``max worker VmHWM``: the largest kernel high-water RSS seen for any descendant.

3. ``--rss-sweep``: the same memory figures for streamclust alone at N = 10k, 30k, 100k
   smaller (128x128) JPEGs, built from a pool of 2,000 distinct images; each member gets a
   unique JPEG comment segment so that every member's bytes (and sha256) differ and the
   duplicate index grows as with a real collection.  The decoder decodes every member.

4. ``--small cifar10,mnist,cifar96,synthetic256``: the same comparison (naive loop and
   streamclust alternating, medians of ``--repeat``) on small images, real ones from
   ``$STREAMCLUST_DATA`` (default ``../shared/data`` beside the repository; a case whose
   data are absent is skipped with the reason printed; nothing is copied): CIFAR-10
   (60,000 32 px JPEGs, to 32), MNIST (20,000 28 px grey PNGs, to 28), ``--n96`` CIFAR-10
   images upscaled to 96 px and saved as JPEG q95 (to 64), and the synthetic 256 px faces
   (``--n``, to 64).  Each case also reports the ceiling: streamclust's decoder alone
   (CPU ms per image on one core, best of 5 over 2,000 members) times N, divided by the
   cores; and how much of streamclust's wall time (less its fixed cost, a 16-member run)
   that ceiling accounts for.  The decoder is also timed with every member left to Pillow
   (its fast decoders for plain JPEGs and PNGs switched off), in the same rounds.
5. ``--filters``: cost and distance from Lanczos of each resize filter on small real
   sources (ORL 92x112 faces, CIFAR-10 upscaled to 96), to 64 px.
6. ``--member-sweep 10000,1000000,10000000``: the main process's peak RSS against the
   member count, on zips written by hand of distinct 8x8 grey PGM images (every member
   an ok image with its own digest) or, with ``--member-kind empty``, of empty members.

Prints markdown tables; ``--out`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as _dt
import io
import json
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20

# ----------------------------------------------------------------------------- images

_SKIN = np.array([[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66],
                  [141, 85, 36], [255, 205, 148], [234, 192, 134]], dtype=np.float32)
_HAIR = np.array([[20, 15, 10], [60, 40, 20], [120, 80, 40], [200, 170, 90],
                  [90, 30, 10], [150, 150, 150], [30, 30, 30]], dtype=np.float32)

_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (d < 1), 0 outside, with a smooth edge of relative width ``edge``."""
    return np.float32(1.0) / (np.float32(1.0) + np.exp(np.clip((d - np.float32(1.0)) / np.float32(edge), -30, 30)))


def face_array(rng: np.random.Generator, side: int = 256) -> np.ndarray:
    """One smooth synthetic face, ``(side, side, 3)`` uint8."""
    if side not in _GRIDS:
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
        _GRIDS[side] = (yy, xx)
    yy, xx = _GRIDS[side]
    # background: a linear gradient between two random colours
    c1, c2 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    ang = float(rng.uniform(0, 2 * np.pi))
    t = np.clip(0.5 + (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang), 0, 1)[..., None]
    img = c1 * (1 - t) + c2 * t
    # face ellipse with shading
    # (python floats, so that numpy keeps float32 arithmetic)
    cx, cy = (float(v) for v in 0.5 + rng.normal(0, 0.04, 2))
    rx = float(rng.uniform(0.24, 0.34))
    ry = rx * float(rng.uniform(1.15, 1.4))
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.85, 1.1, 3).astype(np.float32)
    shade = (1.0 - 0.3 * d ** 2 + 0.15 * (xx - cx) * rng.uniform(-1, 1))[..., None]
    face = _soft(d, 0.015)[..., None]
    img = img * (1 - face) + np.clip(skin * shade, 0, 255) * face
    # hair: a cap over the top of the head
    hair_c = _HAIR[rng.integers(len(_HAIR))]
    dh = np.sqrt(((xx - cx) / (rx * 1.08)) ** 2 + ((yy - cy + 0.1 * ry) / (ry * 1.02)) ** 2)
    hair = (_soft(dh, 0.015) * _soft((yy - (cy - ry * rng.uniform(0.2, 0.5))) / 0.02 + 1, 1.0))[..., None]
    img = img * (1 - hair) + hair_c * hair
    # eyes, mouth, nose: soft blobs
    ex, ey = rx * rng.uniform(0.32, 0.45), cy - ry * rng.uniform(0.1, 0.25)
    eye_r = rx * rng.uniform(0.09, 0.14)
    eye_c = rng.uniform(0, 90, 3).astype(np.float32)
    for sx in (-1, 1):
        de = np.sqrt(((xx - cx - sx * ex) / eye_r) ** 2 + ((yy - ey) / (eye_r * 0.7)) ** 2)
        m = _soft(de, 0.15)[..., None]
        img = img * (1 - m) + eye_c * m
    my = cy + ry * rng.uniform(0.4, 0.55)
    dm = np.sqrt(((xx - cx) / (rx * rng.uniform(0.25, 0.45))) ** 2 + ((yy - my) / (ry * 0.06)) ** 2)
    m = _soft(dm, 0.2)[..., None]
    img = img * (1 - m) + np.array([150, 40, 50], np.float32) * rng.uniform(0.6, 1.1) * m
    dn = np.sqrt(((xx - cx) / (rx * 0.08)) ** 2 + ((yy - cy - ry * 0.15) / (ry * 0.15)) ** 2)
    img = img * (1 - 0.15 * _soft(dn, 0.3)[..., None])
    # light sensor noise
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 6))
    return np.clip(img, 0, 255).astype(np.uint8)


def face_jpeg(rng: np.random.Generator, side: int = 256, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(face_array(rng, side), "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The same JPEG with a COM segment after SOI: other bytes, identical pixels."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def make_zip(path: Path, n: int, *, side: int = 256, seed: int = 0, pool: int | None = None) -> dict:
    """A zip of ``n`` face JPEGs (stored: JPEG does not deflate).

    With ``pool``, only ``pool`` distinct images are encoded and member ``i`` is image
    ``i % pool`` with a unique comment segment (distinct bytes, same pixels).
    """
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    cache: list[bytes] = []
    nbytes = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            if pool is None:
                data = face_jpeg(rng, side)
            else:
                if i < pool:
                    cache.append(face_jpeg(rng, side))
                data = with_comment(cache[i % pool], b"member %d" % i)
            nbytes += len(data)
            zf.writestr(f"faces/{i // 1000:03d}/face_{i:06d}.jpg", data)
    return {"n": n, "side": side, "zip_bytes": path.stat().st_size, "jpeg_bytes": nbytes,
            "generation_s": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------- children

NAIVE_CODE = r"""
import json, sys, time, resource
t_start = time.perf_counter()
import io, zipfile
import numpy as np
from PIL import Image
size = int(sys.argv[3]) if len(sys.argv) > 3 else 64
t0 = time.perf_counter()
imgs = []
with zipfile.ZipFile(sys.argv[1]) as zf:
    for info in zf.infolist():
        if info.is_dir():
            continue
        im = Image.open(io.BytesIO(zf.read(info))).convert("RGB").resize((size, size))
        imgs.append(np.asarray(im))
X = np.stack(imgs)
t1 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"work_s": t1 - t0, "import_s": t0 - t_start, "n": int(X.shape[0]), "nbytes": int(X.nbytes),
           "ru_maxrss_kib": ru.ru_maxrss,
           "ru_maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss},
          open(sys.argv[2], "w"))
"""

STREAMCLUST_CODE = r"""
import json, sys, time, resource
t_start = time.perf_counter()
import streamclust.ingest, streamclust.cli
t0 = time.perf_counter()
rc = streamclust.cli.main(["ingest", sys.argv[1], sys.argv[2], "--quiet", *sys.argv[4:]])
t1 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"work_s": t1 - t0, "import_s": t0 - t_start, "rc": rc, "ru_maxrss_kib": ru.ru_maxrss,
           "ru_maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss},
          open(sys.argv[3], "w"))
sys.exit(rc)
"""


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


IDLE = {"max_wait": 120.0, "threshold": 25.0}


def wait_idle() -> dict:
    """Wait (up to ``IDLE['max_wait']`` s) until the machine's CPUs are under
    ``IDLE['threshold']`` % busy over one second; returns what was seen."""
    import psutil

    t0 = time.perf_counter()
    busy = psutil.cpu_percent(interval=1.0)
    while busy >= IDLE["threshold"] and time.perf_counter() - t0 < IDLE["max_wait"]:
        busy = psutil.cpu_percent(interval=1.0)
    return {"busy_before_pct": busy, "waited_s": round(time.perf_counter() - t0, 1),
            "idle": busy < IDLE["threshold"]}


def run_child(argv: list[str], *, monitor: bool, interval: float = 0.05) -> dict:
    """Run ``argv`` (a python child writing a JSON result file, argv[-1] or as placed).

    Returns wall time and, with ``monitor``, the process-tree memory figures.
    """
    import psutil

    out: dict = wait_idle()
    cpu0 = psutil.cpu_times()
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull, tempfile.TemporaryFile() as err:
        proc = psutil.Popen(argv, stdout=devnull, stderr=err, cwd=ROOT)
        peak_rss = peak_pss = 0
        hwm: dict[int, int] = {}
        nprocs = 1
        samples = 0
        cpu: dict[int, float] = {}  # pid -> last seen user+system CPU seconds
        while proc.poll() is None:
            try:
                procs = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = [proc]
            nprocs = max(nprocs, len(procs))
            rss = pss = 0
            for p in procs:
                try:
                    ct = p.cpu_times()
                    cpu[p.pid] = ct.user + ct.system
                    if monitor:
                        full = p.memory_full_info()
                        rss += full.rss
                        pss += getattr(full, "pss", full.rss)
                        if p.pid != proc.pid:
                            hwm[p.pid] = max(hwm.get(p.pid, 0), _vm_hwm_kib(p.pid))
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            if monitor:
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            samples += 1
            time.sleep(interval)
        rc = proc.wait()
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if rc != 0:
        raise RuntimeError(f"child {argv[:3]}... failed with {rc}:\n{stderr[-3000:]}")
    out["wall_s"] = wall
    out["tree_cpu_s"] = sum(cpu.values())  # polled: may miss the last <= 50 ms of each process
    cpu1 = psutil.cpu_times()
    idle = (cpu1.idle + getattr(cpu1, "iowait", 0)) - (cpu0.idle + getattr(cpu0, "iowait", 0))
    out["machine_busy_cores"] = round(psutil.cpu_count() - idle / wall, 2)  # all processes, ours included
    if monitor:
        out.update(tree_rss_peak_mib=peak_rss / MiB, tree_pss_peak_mib=peak_pss / MiB,
                   max_descendant_hwm_mib=max(hwm.values(), default=0) / 1024,
                   processes=nprocs, samples=samples)
    return out


def run_naive(zip_path: Path, tmp: Path, *, monitor: bool, size: int = 64) -> dict:
    res = tmp / "naive.json"
    out = run_child([sys.executable, "-c", NAIVE_CODE, str(zip_path), str(res), str(size)], monitor=monitor)
    out.update(json.loads(res.read_text()))
    return out


def run_streamclust(zip_path: Path, tmp: Path, *, monitor: bool, extra: list[str] | None = None) -> dict:
    run_dir = tmp / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    res = tmp / "sc.json"
    out = run_child([sys.executable, "-c", STREAMCLUST_CODE, str(zip_path), str(run_dir), str(res),
                     *(extra or [])], monitor=monitor)
    out.update(json.loads(res.read_text()))
    summary = json.loads((run_dir / "ingest_summary.json").read_text())
    out["ok"] = summary["ok"]
    out["store_bytes"] = sum(f.stat().st_size for f in (run_dir / "images.zarr").rglob("*") if f.is_file())
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- report

def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def compare(n: int, repeat: int, tmp: Path, seed: int, pool: int | None = None) -> dict:
    zip_path = tmp / "faces.zip"
    gen = make_zip(zip_path, n, side=256, seed=seed, pool=pool)
    gen["pool"] = pool
    print(f"generated {n} 256x256 JPEGs ({gen['zip_bytes'] / MiB:.1f} MiB zip) in {gen['generation_s']} s "
          "(not timed)", file=sys.stderr)
    naive, sc = [], []
    for r in range(repeat):
        # alternate the order so that neither route always runs on a warmer machine
        order = (("naive", naive), ("streamclust", sc)) if r % 2 == 0 else (("streamclust", sc), ("naive", naive))
        for name, runs in order:
            fn = run_naive if name == "naive" else run_streamclust
            runs.append(fn(zip_path, tmp, monitor=False))
            print(f"  timing run {r + 1}/{repeat} {name}: {runs[-1]['wall_s']:.2f} s", file=sys.stderr)
    # the fixed cost of each route: the same on a 16-image zip
    small = tmp / "small.zip"
    make_zip(small, 16, side=256, seed=seed + 1)
    fixed = {"naive": [], "streamclust": []}
    for _ in range(repeat):
        fixed["naive"].append(run_naive(small, tmp, monitor=False)["wall_s"])
        fixed["streamclust"].append(run_streamclust(small, tmp, monitor=False)["wall_s"])
    naive_mem = run_naive(zip_path, tmp, monitor=True)
    sc_mem = run_streamclust(zip_path, tmp, monitor=True)
    assert naive[0]["n"] == n and sc[0]["ok"] == n, (naive[0]["n"], sc[0]["ok"])
    routes = {}
    for name, runs, mem in (("naive", naive, naive_mem), ("streamclust", sc, sc_mem)):
        routes[name] = {
            "wall_s": _median(runs, "wall_s"), "work_s": _median(runs, "work_s"),
            "wall_s_min": min(r["wall_s"] for r in runs), "tree_cpu_s": _median(runs, "tree_cpu_s"),
            "wall_s_runs": [round(r["wall_s"], 3) for r in runs],
            "busy_cores_runs": [r["machine_busy_cores"] for r in runs],
            "idle_before_runs": [r["idle"] for r in runs],
            "main_ru_maxrss_mib": mem["ru_maxrss_kib"] / 1024,
            "tree_rss_peak_mib": mem["tree_rss_peak_mib"], "tree_pss_peak_mib": mem["tree_pss_peak_mib"],
            "max_descendant_hwm_mib": mem["max_descendant_hwm_mib"], "processes": mem["processes"],
            "monitored_wall_s": mem["wall_s"],
        }
    routes["streamclust"]["store_bytes"] = sc[0]["store_bytes"]
    for name in routes:
        routes[name]["fixed_wall_s"] = statistics.median(fixed[name])
    return {"generation": gen, "repeat": repeat, "routes": routes,
            "ratio_wall": routes["streamclust"]["wall_s"] / routes["naive"]["wall_s"],
            "ratio_wall_min": routes["streamclust"]["wall_s_min"] / routes["naive"]["wall_s_min"],
            "ratio_work": routes["streamclust"]["work_s"] / routes["naive"]["work_s"]}


def compare_table(res: dict) -> str:
    n = res["generation"]["n"]
    pool = res["generation"].get("pool")
    lines = [
        f"N = {n:,} JPEGs 256x256 (q90"
        + (f"; {pool:,} distinct images, each member made unique by a JPEG comment" if pool else "")
        + f") in a {res['generation']['zip_bytes'] / MiB:.1f} MiB zip -> 64x64; "
        f"median of {res['repeat']} runs; memory from one more monitored run.",
        "",
        "| route | wall s (median) | wall s (min) | work s | CPU s (all processes) | images/s (wall) "
        "| main ru_maxrss MiB | tree RSS sum peak MiB | tree PSS sum peak MiB | max worker HWM MiB | processes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("naive", "(a) naive loop, 1 process"), ("streamclust", "(b) streamclust ingest")):
        r = res["routes"][name]
        hwm = f"{r['max_descendant_hwm_mib']:.0f}" if r["processes"] > 1 else "-"
        lines.append(f"| {label} | {r['wall_s']:.2f} | {r['wall_s_min']:.2f} | {r['work_s']:.2f} | {r['tree_cpu_s']:.2f} "
                     f"| {n / r['wall_s']:,.0f} "
                     f"| {r['main_ru_maxrss_mib']:.0f} | {r['tree_rss_peak_mib']:.0f} | {r['tree_pss_peak_mib']:.0f} "
                     f"| {hwm} | {r['processes']} |")
    lines += ["", "Fixed cost (median wall time on a 16-image zip: interpreter, imports and, for streamclust, "
              f"the forkserver and decode workers starting): naive {res['routes']['naive']['fixed_wall_s']:.2f} s, "
              f"streamclust {res['routes']['streamclust']['fixed_wall_s']:.2f} s."]
    busy = "; ".join(f"{name} {', '.join(f'{b:.2f}' for b in res['routes'][name]['busy_cores_runs'])}"
                     for name in ("naive", "streamclust"))
    lines += ["", f"Busy cores of the whole machine during each timing run (ours included; 2 = saturated): {busy}."]
    lines += ["", f"ratio (b)/(a): **{res['ratio_wall']:.2f}x** wall, medians (whole process, interpreter start "
                  f"and imports included); {res['ratio_wall_min']:.2f}x on the fastest runs; "
                  f"{res['ratio_work']:.2f}x work (after imports). Target <= 0.5x."]
    return "\n".join(lines)


def per_image(n: int = 400, seed: int = 0, repeat: int = 5) -> list[dict]:
    """CPU cost per image of each step, in this process, one core (best of ``repeat``)."""
    from PIL import Image as _Image

    from streamclust.ingest.decode import DecodeParams, decode_image

    rng = np.random.default_rng(seed)
    datas = [face_jpeg(rng, 256) for _ in range(n)]
    params = DecodeParams(64, 64_000_000, 8, 4.0, (255, 255, 255))

    def load(d, draft=None):
        im = _Image.open(io.BytesIO(d))
        if draft:
            im.draft("RGB", (draft, draft))
        im.load()
        return im

    steps = [
        ("naive: open + full decode + convert + resize((64,64)) [bicubic]",
         lambda d: np.asarray(_Image.open(io.BytesIO(d)).convert("RGB").resize((64, 64)))),
        ("streamclust decode_image (draft to 128, Lanczos to 64, sha256, checks)",
         lambda d: decode_image(d, "x.jpg", params)),
        ("full decode only (256x256)", lambda d: load(d)),
        ("draft('RGB', (128, 128)) decode only", lambda d: load(d, 128)),
        ("draft('RGB', (64, 64)) decode only (DCT scaling 1/4)", lambda d: load(d, 64)),
        ("draft 128 + Lanczos to 64", lambda d: load(d, 128).resize((64, 64), _Image.Resampling.LANCZOS)),
        ("draft 128 + reduce(2)", lambda d: load(d, 128).reduce(2)),
    ]
    rows = []
    for label, fn in steps:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for d in datas:
                fn(d)
            best = min(best, (time.perf_counter() - t0) / n)
        rows.append({"step": label, "ms_per_image": best * 1e3})
    return rows


def per_image_table(rows: list[dict]) -> str:
    lines = ["| step (256x256 q90 face JPEG, one core) | ms per image |", "|---|---:|"]
    lines += [f"| {r['step']} | {r['ms_per_image']:.3f} |" for r in rows]
    return "\n".join(lines)


def sweep(sizes: list[int], tmp: Path, seed: int, pool: int) -> list[dict]:
    rows = []
    for n in sizes:
        zip_path = tmp / f"sweep_{n}.zip"
        gen = make_zip(zip_path, n, side=128, seed=seed, pool=pool)
        print(f"sweep: generated {n:,} 128x128 JPEGs ({gen['zip_bytes'] / MiB:.0f} MiB) in "
              f"{gen['generation_s']} s", file=sys.stderr)
        mem = run_streamclust(zip_path, tmp, monitor=True)
        zip_path.unlink()
        assert mem["ok"] == n, mem
        rows.append({"n": n, "zip_mib": gen["zip_bytes"] / MiB, "wall_s": mem["wall_s"],
                     "main_ru_maxrss_mib": mem["ru_maxrss_kib"] / 1024,
                     "tree_rss_peak_mib": mem["tree_rss_peak_mib"], "tree_pss_peak_mib": mem["tree_pss_peak_mib"],
                     "max_descendant_hwm_mib": mem["max_descendant_hwm_mib"], "store_mib": mem["store_bytes"] / MiB,
                     "machine_busy_cores": mem["machine_busy_cores"], "tree_cpu_s": mem["tree_cpu_s"]})
        print(f"  ingest {n:,}: {mem['wall_s']:.1f} s, main {rows[-1]['main_ru_maxrss_mib']:.0f} MiB", file=sys.stderr)
    return rows


def sweep_table(rows: list[dict]) -> str:
    lines = ["| N | zip MiB | store MiB | wall s | images/s | main ru_maxrss MiB | tree RSS sum peak MiB "
             "| tree PSS sum peak MiB | max worker HWM MiB | naive would hold (N x 64x64x3) MiB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['zip_mib']:.0f} | {r['store_mib']:.0f} | {r['wall_s']:.1f} "
                     f"| {r['n'] / r['wall_s']:,.0f} | {r['main_ru_maxrss_mib']:.0f} | {r['tree_rss_peak_mib']:.0f} "
                     f"| {r['tree_pss_peak_mib']:.0f} | {r['max_descendant_hwm_mib']:.0f} "
                     f"| {r['n'] * 64 * 64 * 3 / MiB:,.0f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- small images (real data)

def data_dir() -> Path:
    """The real image sets: ``$STREAMCLUST_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("STREAMCLUST_DATA") or ROOT.parent / "shared" / "data")


def make_upscaled_zip(src: Path, path: Path, n: int, side: int = 96, quality: int = 95) -> dict:
    """The first ``n`` images of ``src`` upscaled (bicubic) to ``side`` px, as JPEG ``quality``."""
    t0 = time.perf_counter()
    nbytes = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in [i for i in zin.infolist() if not i.is_dir()][:n]:
            im = Image.open(io.BytesIO(zin.read(info))).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality)
            nbytes += buf.tell()
            zout.writestr(Path(info.filename).with_suffix(".jpg").name, buf.getvalue())
    return {"jpeg_bytes": nbytes, "generation_s": round(time.perf_counter() - t0, 2)}


def head_zip(src: Path, path: Path, n: int) -> Path:
    """The first ``n`` file members of ``src`` (for the fixed cost of a route)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in [i for i in zin.infolist() if not i.is_dir()][:n]:
            zout.writestr(info.filename, zin.read(info))
    return path


def small_cases(names: list[str], tmp: Path, n96: int, n256: int, seed: int) -> list[dict]:
    """The cases to compare: ``{"name", "zip", "n", "size", "data"}``, or ``{"name", "skipped"}``."""
    data = data_dir()
    cases = []
    for name in names:
        if name in ("cifar10", "mnist", "cifar96") and not (data / f"{name.replace('96', '10')}.zip").exists():
            cases.append({"name": name, "skipped": f"{data / name.replace('96', '10')}.zip not found "
                          "(set STREAMCLUST_DATA to the folder of the real image sets)"})
            continue
        if name == "cifar10":
            src = data / "cifar10.zip"
            cases.append({"name": name, "zip": src, "size": 32, "data": "real: CIFAR-10, 32x32 JPEG, to 32x32"})
        elif name == "mnist":
            src = data / "mnist.zip"
            cases.append({"name": name, "zip": src, "size": 28, "data": "real: MNIST, 28x28 grey PNG, to 28x28"})
        elif name == "cifar96":
            src = tmp / "cifar96.zip"
            gen = make_upscaled_zip(data / "cifar10.zip", src, n96)
            print(f"generated {n96} 96 px q95 JPEGs from CIFAR-10 in {gen['generation_s']} s (not timed)",
                  file=sys.stderr)
            cases.append({"name": name, "zip": src, "size": 64,
                          "data": "real pictures: CIFAR-10 upscaled (bicubic) to 96x96, JPEG q95, to 64x64"})
        elif name == "synthetic256":
            src = tmp / "faces256.zip"
            make_zip(src, n256, side=256, seed=seed)
            cases.append({"name": name, "zip": src, "size": 64,
                          "data": "synthetic: 256x256 face JPEGs q90 (generated), to 64x64"})
        else:
            raise SystemExit(f"unknown case {name!r}")
        with zipfile.ZipFile(cases[-1]["zip"]) as zf:
            cases[-1]["n"] = sum(not i.is_dir() for i in zf.infolist())
    return cases


def decoder_alone(zip_path: Path, size: int, sample: int = 2000, repeat: int = 5) -> dict:
    """CPU ms per image, one core, of streamclust's decoder alone (what a worker runs per
    member: ``decode_members``), of the same with every member left to Pillow (the fast
    decoders of ``streamclust.ingest.fastdecode`` switched off), and of the naive loop's
    step; best of ``repeat`` rounds, the three alternating so that none always runs on a
    warmer machine."""
    from streamclust.ingest import fastdecode
    from streamclust.ingest.decode import DecodeParams, decode_members

    with zipfile.ZipFile(zip_path) as zf:
        datas = [zf.read(i) for i in zf.infolist() if not i.is_dir()][:sample]
    params = DecodeParams(size, 64_000_000, 8, 4.0, (255, 255, 255))

    def decoder():
        for _ in decode_members(((d, "x") for d in datas), params):
            pass

    def pillow_only():
        probe = fastdecode.probe
        fastdecode.probe = lambda data: None
        try:
            decoder()
        finally:
            fastdecode.probe = probe

    def naive():
        for d in datas:
            np.asarray(Image.open(io.BytesIO(d)).convert("RGB").resize((size, size)))

    best = {"decoder_ms": float("inf"), "decoder_pillow_ms": float("inf"), "naive_step_ms": float("inf")}
    for _ in range(repeat):
        for key, fn in (("decoder_ms", decoder), ("decoder_pillow_ms", pillow_only), ("naive_step_ms", naive)):
            t0 = time.process_time()
            fn()
            best[key] = min(best[key], (time.process_time() - t0) / len(datas) * 1e3)
    return best


def compare_small(case: dict, repeat: int, tmp: Path) -> dict:
    zip_path, size, n = case["zip"], case["size"], case["n"]
    extra = ["--size", str(size)]
    naive, sc = [], []
    for r in range(repeat):
        order = ((run_naive, naive), (run_streamclust, sc)) if r % 2 == 0 else ((run_streamclust, sc), (run_naive, naive))
        for fn, runs in order:
            runs.append(fn(zip_path, tmp, monitor=False, size=size) if fn is run_naive
                        else fn(zip_path, tmp, monitor=False, extra=extra))
        print(f"  {case['name']} run {r + 1}/{repeat}: naive {naive[-1]['wall_s']:.2f} s, "
              f"streamclust {sc[-1]['wall_s']:.2f} s", file=sys.stderr)
    small = head_zip(zip_path, tmp / "head16.zip", 16)
    fixed = [run_streamclust(small, tmp, monitor=False, extra=extra)["wall_s"] for _ in range(repeat)]
    naive_mem = run_naive(zip_path, tmp, monitor=True, size=size)
    sc_mem = run_streamclust(zip_path, tmp, monitor=True, extra=extra)
    assert naive[0]["n"] == n, (naive[0]["n"], n)
    wait_idle()
    alone = decoder_alone(zip_path, size)
    cores = len(os.sched_getaffinity(0))
    out = {k: v for k, v in case.items() if k != "zip"}
    out.update(
        cores=cores, repeat=repeat,
        naive_wall_s=_median(naive, "wall_s"), sc_wall_s=_median(sc, "wall_s"),
        naive_wall_runs=[round(r["wall_s"], 3) for r in naive], sc_wall_runs=[round(r["wall_s"], 3) for r in sc],
        naive_busy=[r["machine_busy_cores"] for r in naive], sc_busy=[r["machine_busy_cores"] for r in sc],
        naive_cpu_s=_median(naive, "tree_cpu_s"), sc_cpu_s=_median(sc, "tree_cpu_s"),
        sc_ok=sc[0]["ok"], sc_fixed_s=statistics.median(fixed),
        naive_ru_maxrss_mib=naive_mem["ru_maxrss_kib"] / 1024, sc_ru_maxrss_mib=sc_mem["ru_maxrss_kib"] / 1024,
        naive_pss_mib=naive_mem["tree_pss_peak_mib"], sc_pss_mib=sc_mem["tree_pss_peak_mib"], **alone)
    out["ratio"] = out["sc_wall_s"] / out["naive_wall_s"]
    out["ceiling_s"] = n * alone["decoder_ms"] / 1e3 / cores  # the decoder alone, spread over the cores
    out["ceiling_share"] = out["ceiling_s"] / max(out["sc_wall_s"] - out["sc_fixed_s"], 1e-9)
    return out


def small_table(rows: list[dict]) -> str:
    lines = ["| case | data | N | naive wall s | streamclust wall s | ratio | CPU s naive / streamclust (all processes) "
             "| images/s naive | images/s streamclust "
             "| main ru_maxrss MiB naive / streamclust | tree PSS peak MiB naive / streamclust "
             "| decoder alone ms/image (1 core) | ceiling s (N x decoder / cores) | streamclust wall - fixed s "
             "| share of the ceiling |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['name']} | skipped: {r['skipped']} |" + " |" * 13)
            continue
        lines.append(
            f"| {r['name']} | {r['data']} | {r['n']:,} | {r['naive_wall_s']:.2f} | {r['sc_wall_s']:.2f} "
            f"| **{r['ratio']:.2f}x** | {r['naive_cpu_s']:.2f} / {r['sc_cpu_s']:.2f} "
            f"| {r['n'] / r['naive_wall_s']:,.0f} | {r['n'] / r['sc_wall_s']:,.0f} "
            f"| {r['naive_ru_maxrss_mib']:.0f} / {r['sc_ru_maxrss_mib']:.0f} | {r['naive_pss_mib']:.0f} / {r['sc_pss_mib']:.0f} "
            f"| {r['decoder_ms']:.3f} (Pillow only {r.get('decoder_pillow_ms', float('nan')):.3f}; naive step "
            f"{r['naive_step_ms']:.3f}) | {r['ceiling_s']:.2f} "
            f"| {r['sc_wall_s'] - r['sc_fixed_s']:.2f} | {r['ceiling_share']:.0%} |")
    busy = "; ".join(f"{r['name']}: naive {', '.join(f'{b:.2f}' for b in r['naive_busy'])} / streamclust "
                     f"{', '.join(f'{b:.2f}' for b in r['sc_busy'])}" for r in rows if "skipped" not in r)
    lines += ["", f"Busy cores of the whole machine during each timing run (ours included): {busy}.",
              "Fixed cost (streamclust on the first 16 members): "
              + ", ".join(f"{r['name']} {r['sc_fixed_s']:.2f} s" for r in rows if "skipped" not in r) + "."]
    return "\n".join(lines)


def filter_costs(tmp: Path, sample: int = 400, repeat: int = 5) -> list[dict]:
    """Cost and distance from Lanczos of each resize filter on small real sources:
    ORL faces (92x112 grey photos) and CIFAR-10 upscaled to 96 px (JPEG q95), to 64 px."""
    data = data_dir()
    sets = []
    if (data / "orl_faces.zip").exists():
        with zipfile.ZipFile(data / "orl_faces.zip") as zf:
            sets.append(("ORL faces 92x112 -> 64", [Image.open(io.BytesIO(zf.read(i))).convert("RGB")
                                                    for i in zf.infolist() if not i.is_dir()][:sample]))
    if (data / "cifar10.zip").exists():
        make_upscaled_zip(data / "cifar10.zip", tmp / "cifar96_filters.zip", sample)
        with zipfile.ZipFile(tmp / "cifar96_filters.zip") as zf:
            sets.append(("CIFAR-10 upscaled 96 q95 -> 64", [Image.open(io.BytesIO(zf.read(i))).convert("RGB")
                                                            for i in zf.infolist()]))
    rows = []
    for label, images in sets:
        boxes = []
        for im in images:
            w, h = im.size
            side = min(w, h)
            boxes.append(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        ref = [np.asarray(im.resize((64, 64), Image.Resampling.LANCZOS, box=b, reducing_gap=2.0)).astype(np.int16)
               for im, b in zip(images, boxes)]
        for name in ("LANCZOS", "BICUBIC", "BILINEAR", "BOX"):
            f = getattr(Image.Resampling, name)
            best = float("inf")
            for _ in range(repeat):
                t0 = time.process_time()
                outs = [im.resize((64, 64), f, box=b, reducing_gap=2.0) for im, b in zip(images, boxes)]
                best = min(best, (time.process_time() - t0) / len(images))
            diff = float(np.mean([np.abs(np.asarray(o).astype(np.int16) - r).mean() for o, r in zip(outs, ref)]))
            rows.append({"set": label, "filter": name, "ms_per_image": best * 1e3, "mean_abs_diff_vs_lanczos": diff})
    return rows


def filter_table(rows: list[dict]) -> str:
    lines = ["| source | filter | ms per image (resize only, 1 core) | mean abs difference from Lanczos (grey levels) |",
             "|---|---|---:|---:|"]
    lines += [f"| {r['set']} | {r['filter'].lower()} | {r['ms_per_image']:.3f} | {r['mean_abs_diff_vs_lanczos']:.2f} |"
              for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- memory per member

def write_tiny_zip(path: Path, n: int, kind: str) -> dict:
    """``n`` members written by hand (fast): ``kind`` "empty" (0 bytes) or "pgm" (distinct
    8x8 grey PGM images, so the duplicate index grows by one key a member)."""
    t0 = time.perf_counter()
    local = struct.Struct("<4s2B4HL2L2H")
    central = struct.Struct("<4s4B4HL2L5H2L")
    with open(path, "wb") as fh, tempfile.TemporaryFile(dir=path.parent) as cd:
        offset = 0
        for i in range(n):
            name = b"m/%09d.pgm" % i
            if kind == "empty":
                data = b""
            else:
                data = b"P5 8 8 255\n" + i.to_bytes(8, "little") * 8
            crc = zlib.crc32(data)
            fh.write(local.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, 0x21, crc, len(data), len(data), len(name), 0))
            fh.write(name)
            fh.write(data)
            cd.write(central.pack(b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0x21, crc, len(data), len(data),
                                  len(name), 0, 0, 0, 0, 0o644 << 16, offset))
            cd.write(name)
            offset += local.size + len(name) + len(data)
        cd_size = cd.tell()
        cd.seek(0)
        shutil.copyfileobj(cd, fh, 16 * MiB)
        fh.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), cd_size, offset, 0)
                 if n < 0xFFFF else _zip64_end(n, cd_size, offset))
    return {"zip_bytes": path.stat().st_size, "generation_s": round(time.perf_counter() - t0, 1)}


def _zip64_end(n: int, cd_size: int, cd_offset: int) -> bytes:
    end64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, cd_offset + cd_size, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return end64 + locator + end


def member_sweep(sizes: list[int], kind: str, tmp: Path) -> list[dict]:
    """The main process's peak RSS against the member count (streamclust alone, 8x8 output)."""
    rows = []
    for n in sizes:
        zip_path = tmp / f"tiny_{kind}_{n}.zip"
        gen = write_tiny_zip(zip_path, n, kind)
        print(f"member sweep: {n:,} {kind} members ({gen['zip_bytes'] / MiB:.0f} MiB zip) in "
              f"{gen['generation_s']} s", file=sys.stderr)
        mem = run_streamclust(zip_path, tmp, monitor=True, extra=["--size", "8"])
        zip_path.unlink()
        rows.append({"n": n, "kind": kind, "zip_mib": gen["zip_bytes"] / MiB, "wall_s": mem["wall_s"], "ok": mem["ok"],
                     "main_ru_maxrss_mib": mem["ru_maxrss_kib"] / 1024, "tree_pss_peak_mib": mem["tree_pss_peak_mib"],
                     "max_descendant_hwm_mib": mem["max_descendant_hwm_mib"]})
        print(f"  ingest {n:,}: {mem['wall_s']:.1f} s, main {rows[-1]['main_ru_maxrss_mib']:.0f} MiB", file=sys.stderr)
    return rows


def member_table(rows: list[dict]) -> str:
    base = rows[0]
    lines = ["| members | kind | ok images | zip MiB | wall s | members/s | main ru_maxrss MiB | bytes per member "
             f"over N = {base['n']:,} | tree PSS peak MiB | max worker HWM MiB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per = ((r["main_ru_maxrss_mib"] - base["main_ru_maxrss_mib"]) * MiB / (r["n"] - base["n"])
               if r["n"] != base["n"] else float("nan"))
        lines.append(f"| {r['n']:,} | {r['kind']} | {r['ok']:,} | {r['zip_mib']:.0f} | {r['wall_s']:.1f} "
                     f"| {r['n'] / r['wall_s']:,.0f} | {r['main_ru_maxrss_mib']:.0f} | {per:.0f} "
                     f"| {r['tree_pss_peak_mib']:.0f} | {r['max_descendant_hwm_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="images in the comparison (default 3000)")
    ap.add_argument("--pool", type=int, default=None,
                    help="encode only this many distinct images for the comparison and reuse them with a unique "
                         "JPEG comment each (distinct bytes, same pixels; to keep generation short at large --n)")
    ap.add_argument("--repeat", type=int, default=3, help="timing runs per route (median; default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the figures as JSON to this file, or into this folder")
    ap.add_argument("--rss-sweep", action="store_true", help="also sweep N over --sweep-sizes (128x128 JPEGs)")
    ap.add_argument("--sweep-sizes", default="10000,30000,100000")
    ap.add_argument("--sweep-pool", type=int, default=2000, help="distinct images in the sweep (default 2000)")
    ap.add_argument("--skip-compare", action="store_true", help="skip the naive-vs-streamclust comparison")
    ap.add_argument("--per-image", action="store_true",
                    help="also time each decoding step per image, in this process (where the time goes)")
    ap.add_argument("--small", default=None, metavar="CASES",
                    help="compare on these cases instead: cifar10, mnist, cifar96, synthetic256 (comma-separated; "
                         "the real sets come from $STREAMCLUST_DATA, default ../shared/data)")
    ap.add_argument("--n96", type=int, default=20000, help="images in the cifar96 case (default 20000)")
    ap.add_argument("--filters", action="store_true",
                    help="time each resize filter on small real sources and compare it with Lanczos")
    ap.add_argument("--member-sweep", default=None, metavar="SIZES",
                    help="main-process RSS against the member count, e.g. 10000,1000000,10000000")
    ap.add_argument("--member-kind", default="pgm", choices=("pgm", "empty"),
                    help="members of the member sweep: distinct 8x8 PGM images, or empty members")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the temporary files (default: system temp)")
    ap.add_argument("--idle-wait", type=float, default=120.0,
                    help="before each run, wait up to this many seconds for the CPUs to be < 25%% busy (default 120)")
    args = ap.parse_args(argv)
    if args.out is not None and (args.out.is_dir() or str(args.out).endswith(("/", "\\")) or not args.out.suffix):
        args.out = args.out / "bench_ingest.json"  # a folder: the JSON goes inside it
    IDLE["max_wait"] = args.idle_wait
    # as an installed package has them (where PYTHONDONTWRITEBYTECODE is set, every child
    # would otherwise compile streamclust's modules again)
    compileall.compile_dir(str(ROOT / "streamclust"), quiet=1)

    result = {"date": _dt.date.today().isoformat(), "machine": {
        "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
        "platform": platform.platform(), "pillow": Image.__version__}}
    with tempfile.TemporaryDirectory(prefix="bench_ingest_", dir=args.tmp) as td:
        tmp = Path(td)
        if args.small:
            cases = small_cases(args.small.split(","), tmp, args.n96, args.n, args.seed)
            for case in cases:
                if "skipped" in case:
                    print(f"skipping {case['name']}: {case['skipped']}", file=sys.stderr)
            result["small"] = [c if "skipped" in c else compare_small(c, args.repeat, tmp) for c in cases]
            print("\n" + small_table(result["small"]) + "\n")
        if args.filters:
            wait_idle()
            result["filters"] = filter_costs(tmp)
            print("\n" + filter_table(result["filters"]) + "\n")
        if args.member_sweep:
            sizes = [int(v) for v in args.member_sweep.split(",") if v]
            result["members"] = member_sweep(sizes, args.member_kind, tmp)
            print("\n" + member_table(result["members"]) + "\n")
        if not args.skip_compare and not args.small and not args.member_sweep and not args.filters:
            result["compare"] = compare(args.n, args.repeat, tmp, args.seed, args.pool)
            print("\n" + compare_table(result["compare"]) + "\n")
        if args.per_image:
            wait_idle()
            result["per_image"] = per_image(seed=args.seed)
            print("\n" + per_image_table(result["per_image"]) + "\n")
        if args.rss_sweep:
            sizes = [int(s) for s in args.sweep_sizes.split(",") if s]
            result["sweep"] = sweep(sizes, tmp, args.seed, args.sweep_pool)
            print("\n" + sweep_table(result["sweep"]) + "\n")
    if any(k in result for k in ("compare", "sweep", "small", "members")):
        print("main ru_maxrss: kernel high-water RSS of the main process (getrusage RUSAGE_SELF in the child). "
              "tree RSS/PSS sum peak: peak of the summed RSS/PSS of the main process and all its descendants "
              "(forkserver + decode workers), psutil polling every 50 ms; RSS counts shared pages once per process. "
              "max worker HWM: largest VmHWM (kernel high-water RSS) of any descendant. CPU s: user+system CPU "
              "seconds of the main process and all its descendants (polled).")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
