"""`streamclust report`: the HTML page, its pictures, escaping, small runs, and a real browser."""

from __future__ import annotations

import csv
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

import streamclust.report as report_mod
import streamclust.report.data as report_data
from streamclust.config import FitConfig
from streamclust.errors import StageNotDoneError
from streamclust.integrity import verify_output as real_verify_output
from streamclust.pipeline.assign import read_assignments
from streamclust.report import build_report

from .conftest import HOSTILE_NAMES, HOSTILE_SKIPPED, blob_images, make_run, png

SECTIONS = ("summary", "eigenfaces", "reconstructions", "centroids", "clusters", "samples",
            "select-k", "embedding", "map", "outliers", "compare", "evaluation", "deep")


class Page(HTMLParser):
    """Tags, attributes and text of a page (as a browser's parser sees them)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag):
        return [a for t, a in self.tags if t == tag]

    @property
    def plain(self) -> str:
        return "".join(self.text)


def read_page(index: Path) -> tuple[str, Page]:
    raw = index.read_text(encoding="utf-8")
    return raw, Page(raw)


def check_pictures(index: Path, page: Page) -> list[str]:
    """Every <img>: a PNG file beside the page, with alt text and its true width/height."""
    srcs = []
    for img in page.all("img"):
        src = img["src"]
        assert "/" not in src and not src.startswith(("http:", "https:", "data:", "//")), src
        path = index.parent / src
        assert path.is_file(), src
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert (int(img["width"]), int(img["height"])) == im.size, src
        assert img.get("alt", "").strip(), f"{src} has no alt text"
        srcs.append(src)
    return srcs


def section_text(page_raw: str, section_id: str) -> str:
    start = page_raw.index(f'<section id="{section_id}">')
    return Page(page_raw[start:page_raw.index("</section>", start)]).plain


# -- the digits run ---------------------------------------------------------------------------


def test_digits_report_has_every_section_and_only_local_pictures(digits_report):
    raw, page = read_page(digits_report)
    assert digits_report.name == "index.html" and digits_report.parent.name == "report"
    ids = [a.get("id") for t, a in page.tags if t == "section"]
    assert ids == list(SECTIONS)
    srcs = check_pictures(digits_report, page)
    for name in ("eigenfaces.png", "explained_variance.png", "reconstructions.png", "centroids.png",
                 "gmm_samples.png", "select_k.png", "embedding.png", "map.png", "outliers.png"):
        assert name in srcs
    assert sum(s.startswith("cluster_") for s in srcs) == 10  # one gallery per cluster
    assert len(set(srcs)) == len(srcs)
    # offline: no scripts, no external stylesheets, fonts or links
    assert not page.all("script")
    assert all(not a.get("href", "").startswith(("http", "//")) for a in page.all("link") + page.all("a"))
    assert "http://" not in raw and "https://" not in raw and "@import" not in raw and "url(" not in raw
    # nothing but the page and its pictures in report/
    assert sorted(p.name for p in digits_report.parent.iterdir()) == sorted([*srcs, "index.html"])


def test_digits_report_content(digits_run, digits_report):
    raw, page = read_page(digits_report)
    summary = section_text(raw, "summary")
    # the demo archive: 1797 digits and five broken members, one per skip reason
    assert "1802 members in the source, 1797 images ingested" in summary
    for status in ("empty", "metadata", "not_image", "too_small", "truncated"):
        assert status in summary
    assert "broken/readme.png" in summary  # an example member of a skip reason
    assert "seconds" in summary and "fit: pca" in summary and "assign" in summary
    eig = section_text(raw, "eigenfaces")
    ratios = np.load(digits_run / "model" / "pca.npz")["explained_variance_ratio_"]
    assert f"first component {100 * ratios[0]:.1f} %" in eig
    cl = section_text(raw, "clusters")
    sizes = np.bincount(read_assignments(digits_run)["cluster"], minlength=10)
    assert f"Cluster {int(np.argmax(sizes))} · {int(sizes.max())} images" in cl
    assert cl.index(f"Cluster {int(np.argmax(sizes))} ") < cl.index(f"Cluster {int(np.argmin(sizes))} ")
    ev = json.loads((digits_run / "evaluation.json").read_text())
    evaluation = section_text(raw, "evaluation")
    for method in ("kmeans", "gmm"):
        assert f"{ev['methods'][method]['ari']:.4f}" in evaluation
        assert f"{ev['methods'][method]['accuracy']:.4f}" in evaluation
    assert "k = 2, 4, 6, 8, 10, 12, 14" in section_text(raw, "select-k")
    assert f"A sample of {200} of the 1797 fitted images" in section_text(raw, "embedding")
    assert "lowest log-likelihood" in section_text(raw, "outliers")
    assert "Every one of the 1,797 fitted images on the t-SNE map" in section_text(raw, "map")
    assert "cut into 40 x 40 cells" in section_text(raw, "map")  # sqrt(1797 / 4) = 21, raised to the floor
    with open(digits_run / "compare.csv", newline="", encoding="utf-8") as fh:
        cmp_rows = list(csv.DictReader(fh))
    comparison = section_text(raw, "compare")
    for r in cmp_rows:  # every method's row, with its scores as compare.csv holds them
        assert r["method"] in comparison
        assert f"{float(r['ari']):.4f}" in comparison and f"{float(r['accuracy']):.4f}" in comparison


def test_map_is_drawn_from_every_image_and_coloured_by_cluster_and_label(digits_run, digits_report):
    """The map's counts come from all of embedding.zarr; the colour panels from assignments and labels."""
    import zarr

    emb = zarr.open_array(digits_run / "embedding.zarr", mode="r")[:]
    assert emb.shape == (1797, 2) and np.isfinite(emb).all()
    with Image.open(digits_report.parent / "map.png") as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
    # three panels (density, cluster, true label): many distinct colours, not a blank canvas
    assert rgb.shape[1] > 3 * rgb.shape[0] * 0.8
    colours = {tuple(c) for c in rgb.reshape(-1, 3)[:: 7]}
    assert len(colours) > 50
    ev = json.loads((digits_run / "evaluation.json").read_text())
    assert ev["labels_source"]["file"].endswith(".labels.csv")


def test_pictures_are_not_blank(digits_report):
    for name in ("eigenfaces.png", "centroids.png", "embedding.png", "select_k.png", "cluster_000.png"):
        with Image.open(digits_report.parent / name) as im:
            arr = np.asarray(im.convert("L"), dtype=np.float64)
        assert arr.std() > 10, name  # something drawn, not a flat image
        assert min(im.size) >= 80, name  # 8x8 pixels were upscaled for visibility


def test_report_reads_only_the_rows_it_shows(digits_run, tmp_path, monkeypatch):
    """No `[:]` on the store: every read of images.zarr / features.zarr names a few rows (the
    map of every image streams embedding.zarr in bounded batches)."""
    run = Path(shutil.copytree(digits_run, tmp_path / "run"))
    shutil.rmtree(run / "report", ignore_errors=True)
    reads = {"images": 0, "features": 0, "embedding": 0}

    class Spy:
        def __init__(self, arr, kind):
            self._arr, self._kind = arr, kind

        def __getattr__(self, name):
            return getattr(self._arr, name)

        def __getitem__(self, sel):
            if self._kind != "embedding":
                raise AssertionError(f"basic indexing of {self._kind}: {sel!r}")
            block = self._arr[sel]  # the map of every image is read whole, in bounded batches
            assert block.shape[0] <= report_mod.MAP_BATCH
            reads["embedding"] += block.shape[0]
            return block

        @property
        def oindex(self):
            spy = self

            class O:
                def __getitem__(self, sel):
                    rows = sel[0] if isinstance(sel, tuple) else sel
                    rows = np.asarray(rows)
                    assert rows.dtype.kind == "i", sel
                    reads[spy._kind] += rows.size
                    return spy._arr.oindex[sel]

            return O()

    def verify_output(layout, artefact, **kw):  # how the report opens features.zarr and embedding.zarr
        arr = real_verify_output(layout, artefact, **kw)
        return Spy(arr, artefact if artefact in ("images", "embedding") else "features")

    monkeypatch.setattr(report_mod, "verify_output", verify_output)
    monkeypatch.setattr(report_data, "verify_output", verify_output)
    monkeypatch.setattr(report_mod, "image_array",
                        lambda root, mode="r": Spy(zarr.open_array(Path(root) / "images.zarr", mode=mode), "images"))
    build_report(run, progress=False, tsne_samples=50)
    assert 0 < reads["images"] < 200  # of 1797 rows
    assert reads["features"] == 50
    assert reads["embedding"] == 2 * 1797  # two passes: the map's extent, then its histograms


# -- escaping ---------------------------------------------------------------------------------


def test_hostile_member_names_are_escaped(hostile_run):
    index = build_report(hostile_run, progress=False)
    raw, page = read_page(index)
    for name in HOSTILE_NAMES:
        assert name in page.plain  # shown, as text
    assert HOSTILE_SKIPPED in page.plain
    assert "<script>alert(1)</script>" not in raw
    assert "<img src=x" not in raw and "<b>bold</b>" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in raw
    assert "a&amp;b&quot;.png" in raw
    assert not page.all("script") and not page.all("b")
    assert all(set(a) <= {"src", "alt", "width", "height", "class"} for a in page.all("img"))
    check_pictures(index, page)


# -- small and partial runs ---------------------------------------------------------------------


def test_five_images_one_cluster_renders(tiny_run):
    index = build_report(tiny_run, progress=False)
    raw, page = read_page(index)
    assert [a.get("id") for t, a in page.tags if t == "section"] == list(SECTIONS)
    srcs = check_pictures(index, page)
    assert "centroids.png" in srcs and "cluster_000.png" in srcs and "gmm_samples.png" in srcs
    assert "t-SNE skipped: 5 images are too few" in section_text(raw, "embedding")
    assert "Cluster 0 · 5 images" in section_text(raw, "clusters")
    assert "No select_k.csv" in section_text(raw, "select-k")
    assert "No labels were given" in section_text(raw, "evaluation")


def test_run_without_models_beyond_pca_renders(tmp_path):
    members = [(f"img/{i:02d}.png", png(a)) for i, a in enumerate(blob_images(12, seed=3))]
    run = make_run(tmp_path, "run", members, size=16,
                   fit=FitConfig(pca_components=4, clusters=0, gmm_components=0))
    index = build_report(run, progress=False)
    raw, page = read_page(index)
    check_pictures(index, page)
    assert "No k-means model" in section_text(raw, "centroids")
    assert "No Gaussian mixture" in section_text(raw, "samples")
    assert "no outlier score" in section_text(raw, "outliers")


def test_kmeans_only_ranks_outliers_by_distance(tmp_path):
    members = [(f"img/{i:02d}.png", png(a)) for i, a in enumerate(blob_images(30, seed=4))]
    run = make_run(tmp_path, "run", members, size=16,
                   fit=FitConfig(pca_components=4, clusters=2, gmm_components=0))
    index = build_report(run, progress=False)
    raw, page = read_page(index)
    check_pictures(index, page)
    assert "ranked by k-means distance" in section_text(raw, "outliers")
    assert "t-SNE skipped" not in section_text(raw, "embedding")


def test_rebuild_replaces_pictures_of_an_earlier_report(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    index = build_report(run, progress=False)
    stale = index.parent / "cluster_099.png"
    stale.write_bytes(b"old")
    first = index.read_text(encoding="utf-8")
    build_report(run, progress=False)
    assert not stale.exists()
    strip = lambda s: s[: s.index("<footer>")]  # the footer holds the time
    assert strip(index.read_text(encoding="utf-8")) == strip(first)  # same seed, same page


def test_missing_stages_raise_naming_the_command(tmp_path):
    members = [(f"img/{i}.png", png(a)) for i, a in enumerate(blob_images(6, seed=5))]
    run = make_run(tmp_path, "run", members, size=16, fit=None)
    with pytest.raises(StageNotDoneError, match="streamclust fit"):
        build_report(run)
    from streamclust.pipeline.fit import fit_run

    fit_run(run, FitConfig(pca_components=3, clusters=2, gmm_components=1, covariance="diag"), progress=False)
    with pytest.raises(StageNotDoneError, match="streamclust assign"):
        build_report(run)
    assert not (run / "report").exists()
    with pytest.raises(StageNotDoneError, match="streamclust ingest"):
        build_report(tmp_path / "nowhere")


# -- a real browser ---------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _browser(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def test_report_renders_in_a_real_browser(digits_report, hostile_run, tmp_path):
    driver = _browser(tmp_path)
    try:
        for name, index in (("digits", digits_report), ("hostile", build_report(hostile_run, progress=False))):
            driver.get(index.resolve().as_uri())
            assert driver.title.startswith("streamclust report")
            state = driver.execute_script(
                "return Array.from(document.images).map("
                "i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight]);")
            assert len(state) >= 6
            broken = [s for s in state if not (s[1] and s[2] > 0)]
            assert not broken, broken
            severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            assert not severe, severe
            sections = driver.execute_script(
                "return Array.from(document.querySelectorAll('section')).map(s => s.id);")
            assert sections == list(SECTIONS)
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(1280, min(int(height) + 100, 16000))
            shot = tmp_path / f"{name}.png"
            assert driver.save_screenshot(str(shot))
            with Image.open(shot) as im:
                assert im.size[0] >= 1000 and im.size[1] > 900
                assert np.asarray(im.convert("L")).std() > 5
    finally:
        driver.quit()
