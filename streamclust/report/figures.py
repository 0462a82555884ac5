"""Pictures of the report: Pillow montages of images and matplotlib plots, as PNG bytes.

Matplotlib is used through :class:`matplotlib.figure.Figure` with the Agg canvas, never
``pyplot``, so building a report changes no global state (and needs no display).
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "display_scale",
    "to_png",
    "grid_png",
    "figure_png",
    "eigenfaces_png",
    "variance_png",
    "embedding_png",
    "map_png",
    "component_images",
    "compact",
]

#: a displayed image tile is at least about this many pixels wide (nearest-neighbour upscaling)
TILE_TARGET = 96
BACKGROUND = (255, 255, 255)
TEXT = (34, 34, 34)
MUTED = (110, 110, 110)


def compact(x: float) -> str:
    """A short number for a caption: 3 significant digits, k/M suffixes instead of exponents."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a < 999.5:
        return f"{x:.3g}"
    if a < 999_500:
        return f"{x / 1e3:.3g}k"
    if a < 999_500_000:
        return f"{x / 1e6:.3g}M"
    return f"{x:.2e}"


def display_scale(side: int, target: int = TILE_TARGET) -> int:
    """Integer nearest-neighbour factor bringing a ``side``-pixel image to about ``target`` pixels."""
    return max(1, int(round(target / max(1, side))))


def to_png(array: np.ndarray) -> bytes:
    """Encode a uint8 ``(h, w, 3)`` array (or a PIL image) as PNG bytes."""
    img = array if isinstance(array, Image.Image) else Image.fromarray(np.asarray(array, dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # FreeType font bundled with Pillow >= 10.1
    except (TypeError, ImportError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def grid_png(images: np.ndarray, *, labels=None, cols: int | None = None, scale: int | None = None,
             row_labels=None, font_size: int = 13) -> tuple[bytes, int, int]:
    """A montage of ``(n, h, w, 3)`` uint8 images, upscaled nearest-neighbour, with captions.

    Parameters
    ----------
    labels : list of str, optional
        One caption under each tile.
    cols : int, optional
        Tiles per row (default: about a square).
    scale : int, optional
        Upscaling factor (default :func:`display_scale`).
    row_labels : list of str, optional
        One label left of each row.

    Returns ``(png_bytes, width, height)``.
    """
    images = np.asarray(images, dtype=np.uint8)
    n, h, w = images.shape[:3]
    if n == 0:
        raise ValueError("no images to tile")
    cols = max(1, min(n, cols or int(math.ceil(math.sqrt(n)))))
    rows = int(math.ceil(n / cols))
    s = scale or display_scale(max(h, w))
    H, W = h * s, w * s
    font = _font(font_size)
    pad = 4
    cap_h = font_size + 6 if labels is not None else 0
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 0
    if row_labels is not None:
        left = int(max(scratch.textlength(str(t), font=font) for t in row_labels)) + 2 * pad
        left = min(left, 220)
    tile_w = max(W, 1)
    width = left + pad + cols * (tile_w + pad)
    height = pad + rows * (H + cap_h + pad)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, cols)
        x = left + pad + c * (tile_w + pad)
        y = pad + r * (H + cap_h + pad)
        tile = Image.fromarray(images[i])
        if s != 1:
            tile = tile.resize((W, H), Image.Resampling.NEAREST)
        canvas.paste(tile, (x, y))
        if labels is not None and labels[i]:
            text = _fit_text(draw, str(labels[i]), font, tile_w)
            tw = draw.textlength(text, font=font)
            draw.text((x + (tile_w - tw) / 2, y + H + 2), text, fill=TEXT, font=font)
    if row_labels is not None:
        for r, text in enumerate(row_labels[:rows]):
            text = _fit_text(draw, str(text), font, left - 2 * pad)
            y = pad + r * (H + cap_h + pad) + H / 2 - font_size / 2
            draw.text((pad, y), text, fill=TEXT, font=font)
    return to_png(canvas), width, height


def figure_png(fig: Figure, dpi: int = 100) -> tuple[bytes, int, int]:
    """Render a matplotlib figure (Agg) to PNG; returns ``(png_bytes, width, height)``."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    return data, width, height


def component_images(components: np.ndarray, side: int) -> np.ndarray:
    """PCA components (rows of pixels) as uint8 images, each stretched to 0..255 on its own."""
    comps = np.asarray(components, dtype=np.float64)
    lo = comps.min(axis=1, keepdims=True)
    hi = comps.max(axis=1, keepdims=True)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    out = np.rint((comps - lo) / span * 255.0)
    return np.clip(out, 0, 255).astype(np.uint8).reshape(len(comps), side, side, 3)


def eigenfaces_png(mean_image: np.ndarray, components: np.ndarray, ratios: np.ndarray,
                   cols: int = 8) -> tuple[bytes, int, int]:
    """The mean image then the leading eigenfaces, each titled with its explained variance."""
    side = mean_image.shape[0]
    panels = [(mean_image, "mean image")]
    comps = component_images(components, side)
    for i, (img, r) in enumerate(zip(comps, ratios)):
        panels.append((img, f"PC{i + 1}: {100 * r:.1f} %"))
    cols = min(cols, len(panels))
    rows = int(math.ceil(len(panels) / cols))
    fig = Figure(figsize=(1.45 * cols, 1.65 * rows), layout="constrained")
    for i, (img, title) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            for spine in ax.spines.values():
                spine.set_edgecolor("#c0392b")
                spine.set_linewidth(2)
    return figure_png(fig)


def variance_png(ratios: np.ndarray) -> tuple[bytes, int, int]:
    """Explained variance per principal component (bars) and cumulated (line)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    k = np.arange(1, ratios.size + 1)
    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(k, 100 * ratios, color="#4c72b0", width=0.85, label="per component")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance (%)")
    ax.set_xlim(0.3, ratios.size + 0.7)
    ax2 = ax.twinx()
    ax2.plot(k, 100 * np.cumsum(ratios), color="#dd8452", marker="o" if ratios.size <= 40 else None,
             markersize=3, label="cumulative")
    ax2.set_ylabel("cumulative (%)")
    ax2.set_ylim(0, 100)
    ax.set_title(f"{ratios.size} components explain {100 * ratios.sum():.1f} % of the pixel variance",
                 fontsize=10)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    return figure_png(fig)


def _colours(names: list[int]):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(names)}


def embedding_png(pcs: np.ndarray, tsne: np.ndarray | None, labels: np.ndarray, *, label_name: str,
                  pc_titles: tuple[str, str], tsne_note: str | None) -> tuple[bytes, int, int]:
    """Scatter plots of a sample: first two principal components, and t-SNE, coloured by cluster."""
    labels = np.asarray(labels)
    names = sorted(int(v) for v in np.unique(labels))
    colours = _colours(names)
    n = labels.size
    size = float(np.clip(6000 / max(n, 1), 5, 40))
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = [(axes[0], pcs, "first two principal components", pc_titles),
              (axes[1], tsne, "t-SNE of the PCA scores", ("t-SNE 1", "t-SNE 2"))]
    for ax, Y, title, (xl, yl) in panels:
        ax.set_title(title, fontsize=11)
        if Y is None:
            ax.text(0.5, 0.5, tsne_note or "not computed", ha="center", va="center", wrap=True,
                    fontsize=10, color="#555555", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for lab in names:
            sel = labels == lab
            ax.scatter(Y[sel, 0], Y[sel, 1], s=size, color=colours[lab], alpha=0.75, linewidths=0,
                       label=str(lab) if lab >= 0 else "none")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.tick_params(labelsize=8)
    if 1 < len(names) <= 20:
        handles, texts = axes[0].get_legend_handles_labels()
        fig.legend(handles, texts, title=label_name, loc="outside right center", fontsize=8,
                   title_fontsize=9, markerscale=max(1.0, 30 / size) ** 0.5)
    return figure_png(fig)


def map_png(extent: tuple[float, float, float, float], density: np.ndarray,
            groupings: list[tuple[str, np.ndarray, list[str]]]) -> tuple[bytes, int, int]:
    """Density of a 2-D map of every image, and the map coloured by groupings.

    ``density`` is an ``(ny, nx)`` histogram of all the images over ``extent`` (x0, x1,
    y0, y1); each grouping is ``(title, majority, names)``: per cell, the index in
    ``names`` of the group with most images there (``-1``: empty cell).  A coloured cell's
    opacity follows the density, so sparse regions fade.
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch

    panels = 1 + len(groupings)
    fig = Figure(figsize=(4.6 * panels + 1.2, 4.6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    n = int(density.sum())
    ax = axes[0]
    shown = np.where(density > 0, density, np.nan)
    im = ax.imshow(shown, origin="lower", extent=extent, aspect="auto", cmap="viridis",
                   norm=LogNorm(vmin=1, vmax=max(2.0, float(density.max()))), interpolation="nearest")
    from matplotlib.ticker import FuncFormatter

    fig.colorbar(im, ax=ax, shrink=0.8, label="images per cell", format=FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_title(f"density of all {n:,} images", fontsize=11)
    alpha = np.zeros(density.shape)
    if density.max() > 0:
        alpha = 0.25 + 0.75 * np.log1p(density) / np.log1p(density.max())
    for ax, (title, majority, names) in zip(axes[1:], groupings):
        cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
        rgba = np.ones((*density.shape, 4))
        filled = majority >= 0
        rgba[filled] = np.array([cmap(int(g) % cmap.N) for g in majority[filled]])
        rgba[..., 3] = np.where(filled, alpha, 0.0)
        ax.imshow(rgba, origin="lower", extent=extent, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=11)
        if len(names) <= 20:
            handles = [Patch(color=cmap(i % cmap.N), label=name) for i, name in enumerate(names)]
            ax.legend(handles=handles, fontsize=7, loc="upper right", ncols=2 if len(names) > 10 else 1,
                      framealpha=0.8)
    for ax in axes:
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.tick_params(labelsize=8)
    return figure_png(fig)


def loss_png(histories: dict[str, dict]) -> tuple[bytes, int, int]:
    """Training loss per logged step for each trained network (``{"ae": history, ...}``)."""
    fig = Figure(figsize=(7.5, 3.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for name, hist in histories.items():
        steps = hist.get("steps") or []
        if steps:
            ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], label=name.upper())
        else:
            epochs = hist.get("epochs") or []
            ax.plot(range(1, len(epochs) + 1), [e["loss"] for e in epochs], marker="o", label=name.upper())
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("training loss", fontsize=10)
    ax.legend(fontsize=8)
    return figure_png(fig)
