"""The Colab notebook runs top to bottom, in its tiny CPU setting, and evaluates its run."""

import pathlib

import nbclient
import nbformat

from tests import data_fixtures
from tests.test_classifier import save_pattern_classifier

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_colab_notebook_executes(tmp_path, monkeypatch):
  idx_dir = data_fixtures.write_idx_dir(tmp_path / "idx", num_train=256, num_test=64,
                                        height=28, width=28)
  # A classifier of its own for the config's dataset ("mnist"), so that the
  # evaluation cell scores the run whatever the home directory's cache holds.
  cache_dir = save_pattern_classifier(tmp_path / "classifiers")
  monkeypatch.setenv("EBGAN_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("EBGAN_IDX_DIR", str(idx_dir))
  monkeypatch.setenv("EBGAN_CLASSIFIER_DIR", str(cache_dir))
  notebook = nbformat.read(REPO / "notebooks" / "ebgan_colab.ipynb", as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(REPO)}}).execute()
  outputs = "".join(output.get("text", "") for cell in notebook.cells
                    if cell.cell_type == "code" for output in cell.outputs)
  assert "steps in" in outputs
  assert "not evaluated" not in outputs
  assert "'fid'" in outputs and "'coverage'" in outputs
  assert any(output.get("data", {}).get("image/png") for cell in notebook.cells
             if cell.cell_type == "code" for output in cell.outputs)
