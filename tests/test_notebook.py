"""The Colab notebook runs top to bottom, in its tiny CPU setting, and evaluates its run."""

import pathlib
import subprocess
import sys

import nbclient
import nbformat
import pytest

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


def _run_install_cell(monkeypatch, cwd, ebgan_source=None):
  """Runs the notebook's first cell as if ebgan_jax were not installed; returns pip's args."""
  notebook = nbformat.read(REPO / "notebooks" / "ebgan_colab.ipynb", as_version=4)
  installs = []
  monkeypatch.setitem(sys.modules, "ebgan_jax", None)  # `import ebgan_jax` raises ImportError
  monkeypatch.setattr(subprocess, "run", lambda args, check: installs.append(args[4:]))
  monkeypatch.chdir(cwd)
  if ebgan_source is None:
    monkeypatch.delenv("EBGAN_SOURCE", raising=False)
  else:
    monkeypatch.setenv("EBGAN_SOURCE", ebgan_source)
  exec(notebook.cells[1].source, {})  # pylint: disable=exec-used
  return installs


def test_notebook_installs_from_the_clone_it_sits_in(monkeypatch):
  assert _run_install_cell(monkeypatch, REPO / "notebooks") == [["-q", str(REPO)]]


def test_notebook_installs_from_ebgan_source_when_set(monkeypatch, tmp_path):
  assert (_run_install_cell(monkeypatch, tmp_path, "git+https://example.org/fork.git")
          == [["-q", "git+https://example.org/fork.git"]])


def test_notebook_outside_a_clone_asks_for_ebgan_source(monkeypatch, tmp_path):
  with pytest.raises(SystemExit, match="set EBGAN_SOURCE"):
    _run_install_cell(monkeypatch, tmp_path)
