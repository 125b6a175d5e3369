"""experiments.grid_search: the paper's grids, their groups, a tiny grid end to end, resume."""

import collections
import csv
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from ebgan_jax import classifier
from experiments import grid_search
from experiments.configs import grid_fashion, grid_mnist
from tests.test_classifier import save_pattern_classifier, write_pattern_idx_dir
from tests.test_cli import assert_one_error_line, run_in_process, run_program

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = f"{REPO / 'experiments/configs/grid_fashion.py'}:tiny"


def _runs(subset):
  config = grid_mnist.get_config(subset)
  return grid_search.select(grid_search.enumerate_runs(config), config)


def test_the_full_grid_is_the_papers():
  runs = _runs("full")
  by_objective = collections.Counter(run["objective"] for run in runs)
  assert by_objective == {"ebgan": 512, "gan": 6_144}
  assert len({grid_search.run_id(run) for run in runs}) == len(runs)
  architectures = {grid_search._key(run, grid_search.ARCHITECTURE) for run in runs}
  assert len(architectures) == 4 * 4 * 4 * 4 * 2
  gan_settings = {(run["lr"], run["optim_d"], run["optim_g"]) for run in runs
                  if run["objective"] == "gan"}
  assert len(gan_settings) == 3 * 2 * 2
  assert {run["lr"] for run in runs if run["objective"] == "ebgan"} == {1e-3}


def test_groups_share_every_static_setting_and_differ_in_learning_rate():
  groups = grid_search.groups(_runs("full"))
  sizes = collections.Counter((members[0]["objective"], len(members))
                              for members in groups.values())
  # EBGAN: one run per architecture. GAN: (architecture, optimD, optimG), 3 learning rates.
  assert sizes == {("ebgan", 1): 512, ("gan", 3): 512 * 4}
  for members in groups.values():
    assert len({grid_search._key(run, grid_search.GROUP_FIELDS) for run in members}) == 1
    assert len({run["lr"] for run in members}) == len(members)


def test_the_reduced_grid_keeps_the_small_widths_and_balances_the_gan_settings():
  runs = _runs("reduced")
  config = grid_mnist.get_config("reduced")
  ebgan = [run for run in runs if run["objective"] == "ebgan"]
  gan = [run for run in runs if run["objective"] == "gan"]
  assert len(ebgan) == config.grid.reduced_architectures == 64 and len(gan) == 3 * 64
  assert {run["size_g"] for run in runs} <= set(config.grid.reduced_size_g)
  assert {run["size_d"] for run in runs} <= set(config.grid.reduced_size_d)
  # The same architectures for both objectives, and every depth and dropout among them.
  arch = lambda rs: {grid_search._key(r, grid_search.ARCHITECTURE) for r in rs}
  assert arch(ebgan) == arch(gan)
  assert {run["n_layer_g"] for run in ebgan} == {run["n_layer_d"] for run in ebgan} == {2, 3, 4, 5}
  pairs = collections.Counter((r["optim_d"], r["optim_g"]) for r in gan if r["lr"] == 1e-3)
  assert pairs == {pair: 16 for pair in pairs} and len(pairs) == 4
  assert _runs("reduced") == runs  # a fixed draw


def test_the_tiny_grid_has_a_few_runs_of_each_objective():
  runs = _runs("tiny")
  assert collections.Counter(run["objective"] for run in runs) == {"ebgan": 2, "gan": 6}
  assert len(grid_search.groups(runs)) == 4


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("grid")
  idx_dir = write_pattern_idx_dir(tmp / "idx", num_train=256, num_test=64)
  cache = save_pattern_classifier(tmp / "classifiers", datasets=("fashion_mnist",))
  return [f"--config={TINY}", f"--config.idx_dir={idx_dir}",
          f"--config.eval.classifier_dir={cache}", "--config.grid.eval_samples=50"]


def _trained_groups(stderr: str) -> list[str]:
  return [line.split("] group ", 1)[1].split(":")[0].split(" ", 1)[1]
          for line in stderr.splitlines() if "] group " in line]


def _rows(workdir):
  with open(workdir / grid_search.RESULTS, newline="") as f:
    return list(csv.DictReader(f))


def test_summary_counts_the_share_of_runs_above_each_threshold():
  rows = [{"objective": "ebgan", "lr_d": 1e-3, "optim_d": "adam", "optim_g": "adam",
           "diverged": False, "log_is": v, "i_prime_torch": v / 2, "i_prime": 3 * v,
           "fid": 10.0, "classes_1pct": 10}
          for v in (0.2, 0.5, 1.2, 1.6)]
  rows += [{"objective": "gan", "lr_d": 1e-2, "optim_d": "sgd", "optim_g": "adam",
            "diverged": d, "log_is": 0.1, "i_prime_torch": "", "i_prime": "", "fid": 300.0,
            "classes_1pct": 1}
           for d in (True, False)]
  real = {"log_is": 2.1, "i_prime_torch": 1.43, "i_prime": 8.2, "fid": 0.5, "kid": 0.0}
  table = grid_search.summary_table(rows, real, 2000).splitlines()
  assert table[0].startswith("| model | runs | diverged | log_is > 0.4 | log_is > 1 | log_is > "
                             "1.5 | i_prime_torch > 0.4 | i_prime_torch > 1 | i_prime_torch > 1.5 "
                             "| i_prime > 0.4 |")
  # log-IS > 0.4, 1, 1.5: 3, 2, 1 of 4; Torch7's I' = log-IS / 2 (0.1 ... 0.8): 2, 0, 0 of 4;
  # I' = 3 log-IS (0.6 ... 4.8) > 0.4, 2, 4: 4, 2, 1 of 4.
  assert table[2] == ("| **EBGAN** | 4 | 0% | 75% | 50% | 25% | 50% | 0% | 0% | 100% | 50% | 25% "
                      "| 10 | 10 |")
  assert table[3] == "| **GAN** | 2 | 50% | 0% | 0% | 0% |  |  |  |  |  |  | 300 | 1 |"
  assert table[4].startswith("| GAN lr 0.01, D sgd, G adam | 2 |")
  assert table[-1] == ("2000 real test images: log_is 2.1, i_prime_torch 1.43, i_prime 8.2, "
                       "fid 0.5")


def test_a_killed_grid_resumes_then_scores_every_run_and_draws_figures(tiny_inputs, tmp_path,
                                                                       tmp_path_factory):
  """The tiny grid end to end, killed after its first group and resumed: the one full run.

  It starts without a scoring classifier: the first process trains one (classifier_fashion.py
  on the 256 pattern digits, seconds), the resumed one finds it cached.
  """
  cache = tmp_path_factory.mktemp("empty_cache")
  inputs = [arg for arg in tiny_inputs if not arg.startswith("--config.eval.classifier_dir=")]
  inputs.append(f"--config.eval.classifier_dir={cache}")
  results = tmp_path / grid_search.RESULTS
  command = [sys.executable, "-m", "experiments.grid_search", *inputs, f"--workdir={tmp_path}"]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  deadline = time.monotonic() + 300
  while not results.exists() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  _, killed_stderr = process.communicate()
  training = (f"no scoring classifier cached for fashion_mnist at {cache / 'fashion_mnist'}: "
              "training one (experiments/configs/classifier_fashion.py), about 8 minutes")
  assert sum(training in line for line in killed_stderr.splitlines()) == 1, killed_stderr[-3000:]
  assert classifier.is_saved(cache / "fashion_mnist")
  finished = _rows(tmp_path)
  assert 0 < len(finished) < len(_runs("tiny")), "the kill came too late to test resuming"
  result = run_program("experiments.grid_search", *inputs, f"--workdir={tmp_path}", timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "no scoring classifier cached" not in result.stderr
  rows = _rows(tmp_path)
  assert [row["run"] for row in rows] == [grid_search.run_id(run) for run in _runs("tiny")]
  assert rows[:len(finished)] == finished  # the finished runs' rows, untouched
  finished_groups = {row["group"] for row in finished}
  retrained = _trained_groups(result.stderr)
  assert retrained and not finished_groups & set(retrained)
  assert finished_groups | set(retrained) == {row["group"] for row in rows}

  # Every run scored, before and after the kill.
  assert set(grid_search.COLUMNS) == set(rows[0])
  for row in rows:
    assert row["steps"] == "20" and row["diverged"] in ("True", "False")
    assert all(float(row[key]) >= 0 for key in ("i_prime", "i_prime_torch", "log_is", "fid"))
    assert (row["margin"] == "10.0") == (row["objective"] == "ebgan")
    assert (tmp_path / "samples" / f"{row['run']}.png").exists()
  assert {p.name for p in tmp_path.glob("fig*.png")} == {
      f"fig{n}_{key}.png" for n in (2, 3) for key in ("i_prime", "i_prime_torch", "log_is")}
  summary = (tmp_path / grid_search.SUMMARY).read_text().splitlines()
  assert summary[2].startswith("| **EBGAN** | 2 |") and summary[3].startswith("| **GAN** | 6 |")
  # Header, the two models, the tiny grid's 6 GAN settings; then the real images' scores.
  assert len(summary) == 2 + 2 + 6 + 2
  assert summary[-1].startswith("50 real test images: log_is ")


# Bad input: in this process (tests/test_cli.py's run_in_process), but for one case that runs
# the program as a subprocess, for its exit status 2 and its one-line stderr.
@pytest.mark.parametrize("run, args, message", [
    (run_in_process, ["--config.grid.subset=huge"],
     "grid.subset must be one of ('full', 'reduced', 'tiny')"),
    (run_program, ["--config.grid.epochs=0"], "grid.epochs must be > 0, got 0"),
    (run_in_process, ["--config.grid.eval_samples=2"], "grid.eval_samples must be >= 10, got 2"),
    (run_in_process, ["--config.margin=-1"], "margin must be >= 0, got -1"),
    (run_in_process, ["--config.grid.n_layer_d=(1,2)"],
     "model family 'mlp' needs n_layer_g >= 1 and n_layer_d >= 2"),
], ids=["subset", "subprocess-epochs", "eval_samples", "margin", "n_layer_d"])
def test_bad_grid_config_is_one_line_and_writes_nothing(run, args, message, tmp_path):
  workdir = tmp_path / "grid"
  result = run("experiments.grid_search", f"--config={TINY}", f"--workdir={workdir}", *args)
  assert_one_error_line(result, message)
  assert not workdir.exists()


def test_a_missing_classifier_without_its_data_fails_before_anything_is_written(tmp_path):
  workdir = tmp_path / "grid"
  result = run_in_process("experiments.grid_search", f"--config={TINY}", f"--workdir={workdir}",
                          f"--config.eval.classifier_dir={tmp_path / 'none'}",
                          f"--config.idx_dir={tmp_path / 'no_idx'}")
  assert_one_error_line(result, f"IDX directory {tmp_path / 'no_idx'} does not exist")
  assert not workdir.exists() and not (tmp_path / "none").exists()


def test_results_of_another_grid_are_refused(tiny_inputs, tmp_path):
  grid_search.write_results([{"run": "gan-g9x9-d9x9-adam-adam-lr1"}], str(tmp_path / "results.csv"))
  before = (tmp_path / "results.csv").read_text()
  result = run_in_process("experiments.grid_search", *tiny_inputs, f"--workdir={tmp_path}")
  assert_one_error_line(result, "holds runs of another grid (e.g. gan-g9x9-d9x9-adam-adam-lr1)")
  assert (tmp_path / "results.csv").read_text() == before


def test_fashion_config_reads_the_idx_files():
  config = grid_fashion.get_config("reduced")
  assert config.dataset == "fashion_mnist" and config.idx_dir.endswith("fashion-mnist")
  assert config.grid.subset == "reduced" and config.objective == "ebgan"
