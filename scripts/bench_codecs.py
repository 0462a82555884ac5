#!/usr/bin/env python
"""Compare zarr v3 codecs for ``images.zarr``: write time, read time, bytes on disk.

    python scripts/bench_codecs.py [--n 5000] [--side 256] [--repeat 3] [--out codecs.json]

The images are what ``streamclust ingest`` stores: ``--side`` px JPEGs (quality 90),
decoded and resized to 64x64 by streamclust's own decoder
(:func:`streamclust.ingest.decode_image`), so they carry JPEG-like texture.  Two contents
(``--content``): ``faces``, the synthetic faces of ``scripts/bench_ingest.py`` (smooth,
light noise), and ``photo``, random square crops (96 px to full size, mirrored, colour
jittered) of a real photograph, matplotlib's ``grace_hopper.jpg`` sample, for real-photo
texture.  The array is ``(N, 64, 64, 3)`` uint8 in chunks of 1024 images along N, like the
store; the default N = 5120 fills 5 chunks, so that no padded last chunk skews the ratios.

For each codec (``--repeat`` times; the best time is kept, as the least disturbed by
the rest of the machine):

* write: a new array written chunk by chunk (``a[i:i+1024] = x``), as the ingester does;
* read (chunks): a full pass reading 1024-row slices one after the other, as the models
  read the store; files are in the page cache (warm), so this is the decompression cost;
* read (all): ``a[:]`` at once (zarr may decode chunks concurrently on its thread pool);
* bytes: the sum of the chunk files; ratio = raw bytes / stored bytes.

Every array read back is checked equal to the data written.  Prints a markdown table;
``--out`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs as zc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import face_jpeg  # noqa: E402  (the same generator)

MiB = 2**20
CHUNK = 1024


def codecs() -> list[tuple[str, object]]:
    return [
        ("none", None),
        ("zstd(level=1)", zc.ZstdCodec(level=1)),
        ("zstd(level=3)", zc.ZstdCodec(level=3)),
        ("zstd(level=5)", zc.ZstdCodec(level=5)),
        ("blosc zstd clevel=5 bitshuffle", zc.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")),
        ("blosc zstd clevel=5 noshuffle", zc.BloscCodec(cname="zstd", clevel=5, shuffle="noshuffle")),
        ("blosc lz4 clevel=5 bitshuffle", zc.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")),
        ("blosc lz4 clevel=5 noshuffle", zc.BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")),
        ("gzip(level=5)", zc.GzipCodec(level=5)),
    ]


def _photo_jpeg(photo, rng: np.random.Generator, side: int) -> bytes:
    """A random square crop of a real photograph (flipped, colour-jittered) as a JPEG."""
    from PIL import Image, ImageOps

    w, h = photo.size
    s = int(rng.integers(96, min(w, h) + 1))
    x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    im = photo.crop((x0, y0, x0 + s, y0 + s)).resize((side, side), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    arr = np.asarray(im, np.float32) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _mark_current(rows: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Label the codec that streamclust's ingester uses now (``image_compressors()``)."""
    try:
        from streamclust.ingest.writer import image_compressors

        cur = image_compressors()
        cur = cur.to_dict() if cur is not None else None
    except Exception:  # noqa: BLE001 - the label is a convenience
        return rows
    return [(f"{name} [streamclust's]" if (c.to_dict() if c is not None else None) == cur else name, c)
            for name, c in rows]


def make_images(n: int, side: int, seed: int, content: str = "faces") -> np.ndarray:
    """``n`` 64x64 images through streamclust's decoder, from face or photo-crop JPEGs."""
    from streamclust.ingest.decode import DecodeParams, decode_image

    params = DecodeParams(64, 64_000_000, 8, 4.0, (255, 255, 255))
    rng = np.random.default_rng(seed)
    photo = None
    if content == "photo":
        import matplotlib.cbook
        from PIL import Image

        photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    out = np.empty((n, 64, 64, 3), np.uint8)
    for i in range(n):
        data = face_jpeg(rng, side) if photo is None else _photo_jpeg(photo, rng, side)
        dec = decode_image(data, f"img_{i}.jpg", params)
        assert dec.status == "ok", dec
        out[i] = dec.pixels
    return out


def stored_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


def bench_one(x: np.ndarray, compressor, tmp: Path, repeat: int) -> dict:
    n = x.shape[0]
    writes, reads_chunked, reads_all = [], [], []
    nbytes = 0
    for r in range(repeat):
        path = tmp / f"a{r}.zarr"
        t0 = time.perf_counter()
        a = zarr.create_array(store=str(path), shape=x.shape, chunks=(CHUNK, *x.shape[1:]), dtype="uint8",
                              compressors=compressor if compressor is not None else None, fill_value=0,
                              overwrite=True)
        for i in range(0, n, CHUNK):
            a[i:i + CHUNK] = x[i:i + CHUNK]
        writes.append(time.perf_counter() - t0)
        nbytes = stored_bytes(path)
        b = zarr.open_array(str(path), mode="r")
        t0 = time.perf_counter()
        for i in range(0, n, CHUNK):
            b[i:i + CHUNK]
        reads_chunked.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        y = b[:]
        reads_all.append(time.perf_counter() - t0)
        if r == 0:  # checked once, outside the timings
            if not np.array_equal(y, x):
                raise AssertionError(f"read back differs for {compressor!r}")
            for i in range(0, n, CHUNK):
                if not np.array_equal(b[i:i + CHUNK], x[i:i + CHUNK]):
                    raise AssertionError(f"read back differs for {compressor!r}")
        del y
        if r:
            shutil.rmtree(tmp / f"a{r - 1}.zarr")
    shutil.rmtree(tmp / f"a{repeat - 1}.zarr")
    return {"write_s": min(writes), "read_chunks_s": min(reads_chunked),
            "read_all_s": min(reads_all), "bytes": nbytes, "ratio": x.nbytes / nbytes,
            "write_s_runs": writes, "read_chunks_s_runs": reads_chunked, "read_all_s_runs": reads_all}


def table(rows: list[dict], raw: int) -> str:
    lines = ["| codec | write s | write MB/s | read s (1024-row slices) | read MB/s | read s (`a[:]`) "
             "| stored MiB | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['codec']} | {r['write_s']:.3f} | {raw / 1e6 / r['write_s']:,.0f} "
                     f"| {r['read_chunks_s']:.3f} | {raw / 1e6 / r['read_chunks_s']:,.0f} | {r['read_all_s']:.3f} "
                     f"| {r['bytes'] / MiB:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5120, help="images (default 5120 = 5 chunks)")
    ap.add_argument("--content", choices=("faces", "photo", "both"), default="both")
    ap.add_argument("--side", type=int, default=256, help="side of the source JPEGs (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per codec, best kept (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the figures as JSON to this file, or into this folder")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the arrays (default: system temp)")
    ap.add_argument("--cache", type=Path, default=None, help="keep the generated images here as .npy for re-runs")
    args = ap.parse_args(argv)
    if args.out is not None and (args.out.is_dir() or str(args.out).endswith(("/", "\\")) or not args.out.suffix):
        args.out = args.out / "bench_codecs.json"  # a folder: the JSON goes inside it

    result = {"date": _dt.date.today().isoformat(), "n": args.n, "side": args.side, "chunk": CHUNK,
              "zarr": zarr.__version__, "cpus": len(os.sched_getaffinity(0)), "contents": {}}
    contents = ("faces", "photo") if args.content == "both" else (args.content,)
    for content in contents:
        t0 = time.perf_counter()
        cached = args.cache / f"{content}_{args.n}_{args.side}_{args.seed}.npy" if args.cache else None
        if cached is not None and cached.exists():
            x = np.load(cached)
        else:
            x = make_images(args.n, args.side, args.seed, content)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, x)
        print(f"made {args.n} 64x64 {content} images from {args.side}px JPEGs in {time.perf_counter() - t0:.1f} s "
              f"({x.nbytes / MiB:.1f} MiB raw); zarr {zarr.__version__}", file=sys.stderr)
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench_codecs_", dir=args.tmp) as td:
            for name, comp in _mark_current(codecs()):
                res = bench_one(x, comp, Path(td), args.repeat)
                res["codec"] = name
                rows.append(res)
                print(f"  {name}: write {res['write_s']:.3f} s, read {res['read_chunks_s']:.3f} s, "
                      f"ratio {res['ratio']:.2f}", file=sys.stderr)
        print(f"\n{content}: N = {args.n:,} images 64x64x3 uint8 ({x.nbytes / MiB:.1f} MiB raw), chunks of "
              f"{CHUNK} images; best of {args.repeat}; reads from the page cache.\n")
        print(table(rows, x.nbytes))
        result["contents"][content] = {"raw_bytes": int(x.nbytes), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
