"""docs/examples/quickstart.ipynb runs clean: every cell, no error and nothing on stderr."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")  # tqdm.auto warns on stderr in a notebook without it

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "examples" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_clean(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            assert out.output_type != "error", out
            assert not (out.output_type == "stream" and out.name == "stderr"), out.text
            shown.append(out)
    html = [o["data"]["text/html"] for o in shown if o.output_type == "execute_result" and "text/html" in o["data"]]
    assert any("data:image/png;base64" in h for h in html)  # montages and the select-k curve inline
    assert (tmp_path / "runs" / "digits" / "report" / "index.html").exists()
