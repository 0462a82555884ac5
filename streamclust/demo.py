"""Build the demo archive: scikit-learn's bundled 8x8 digits as PNGs in a zip, plus broken members.

Run ``python -m streamclust.demo OUT.zip``.  The labels go to ``OUT.labels.csv``
(``member,label``); members are named ``digits/<label>/<n>.png`` so that
``--labels-from-folders`` works too.
"""

from __future__ import annotations

import csv
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_digits_archive"]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, "PNG")
    return buf.getvalue()


def make_digits_archive(path: str | Path) -> Path:
    """Write the digits demo zip to ``path`` (and ``<path>.labels.csv``); return the path."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, (img, label) in enumerate(zip(digits.images, digits.target)):
            arr = np.clip(img * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
            name = f"digits/{label}/{i:04d}.png"
            zf.writestr(name, _png(arr))
            labels.append((name, int(label)))
        good = _png(np.clip(digits.images[0] * 16, 0, 255).astype(np.uint8))
        zf.writestr("broken/truncated.png", good[: len(good) // 2])
        zf.writestr("broken/empty.png", b"")
        zf.writestr("broken/readme.png", b"<html>not a picture</html>")
        zf.writestr("__MACOSX/digits/._0000.png", b"\x00\x05\x16\x07")
        zf.writestr("broken/one_pixel.png", _png(np.zeros((1, 1), np.uint8)))
    with open(str(path) + ".labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["member", "label"])
        writer.writerows(labels)
    return path


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 2:
        sys.exit("usage: python -m streamclust.demo OUT.zip")
    print(make_digits_archive(sys.argv[1]))
