"""The Colab notebook runs top to bottom (nbclient), with the small model and 2 DDIM steps."""

import pathlib

import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colabs" / "inference.ipynb"


def test_inference_notebook_executes(tmp_path, monkeypatch, upstream_dir):
  from nbclient import NotebookClient
  monkeypatch.setenv("DIFF2LIP_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("DIFF2LIP_NOTEBOOK_WORKDIR", str(tmp_path))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()
  assert (tmp_path / "result.mp4").is_file() and (tmp_path / "side_by_side.mp4").is_file()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  html = [o for o in outputs if "text/html" in o.get("data", {})]
  assert len(html) == 2 and "data:video/mp4;base64," in html[0]["data"]["text/html"]
  text = "".join(o.get("text", "") for o in outputs)
  assert "wrote" in text and "frames at 25 fps" in text
