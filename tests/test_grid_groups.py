"""experiments.grid_search's groups: row i is member i, and a grid stopped inside a group
resumes that group from its checkpoint, not from step 0."""

import csv
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np

from ebgan_jax import evaluation
from experiments import grid_search, trainer
from experiments.configs import grid_fashion
from tests import xla_levels
from tests.test_classifier import save_pattern_classifier, write_pattern_idx_dir

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_row_i_is_member_i_with_its_own_learning_rate(tmp_path, monkeypatch):
  config = grid_fashion.get_config("tiny")
  config.idx_dir = str(write_pattern_idx_dir(tmp_path / "idx", num_train=64, num_test=16))
  config.num_steps, config.grid.eval_samples = 4, 20
  runs = grid_search.groups(grid_search.select(grid_search.enumerate_runs(config), config))
  gan_group = next(group for group in runs.values() if len(group) == 3)
  trained = {}

  def recording_train_population(*args, **kwargs):
    trained["population"], history = real_train_population(*args, **kwargs)
    return trained["population"], history
  real_train_population = trainer.train_population
  monkeypatch.setattr(trainer, "train_population", recording_train_population)
  # A score that tells every member's samples apart.
  fake_evaluator = lambda images: {"fid": float(np.mean(images, dtype=np.float64))}
  fake_evaluator.settings = types.SimpleNamespace(seed=0)
  (tmp_path / "samples").mkdir()
  rows = grid_search.train_group(config, gan_group, fake_evaluator, str(tmp_path))
  population = trained["population"]
  learning_rates = population.states.generator.opt_state.hyperparams["learning_rate"]
  for i, (run, row) in enumerate(zip(gan_group, rows, strict=True)):
    assert row["run"] == grid_search.run_id(run) and row["lr_g"] == row["lr_d"] == run["lr"]
    np.testing.assert_allclose(learning_rates[i], run["lr"], rtol=1e-6)
    images = evaluation.generate_images(population.member(i),
                                        jax.random.PRNGKey(fake_evaluator.settings.seed),
                                        config.grid.eval_samples)
    assert row["fid"] == fake_evaluator(images)["fid"]
  assert len({row["fid"] for row in rows}) == 3


def test_a_grid_stopped_inside_a_group_resumes_it_from_its_checkpoint(tmp_path):
  idx_dir = write_pattern_idx_dir(tmp_path / "idx", num_train=256, num_test=64)
  cache = save_pattern_classifier(tmp_path / "classifiers", datasets=("fashion_mnist",))
  workdir = tmp_path / "grid"
  args = [f"--config={REPO / 'experiments/configs/grid_fashion.py'}:tiny",
          f"--config.idx_dir={idx_dir}", f"--config.eval.classifier_dir={cache}",
          "--config.grid.eval_samples=50", "--config.grid.tiny_steps=200",
          "--config.checkpoint_every=20", f"--workdir={workdir}"]
  command = [sys.executable, "-m", "experiments.grid_search", *args]
  env = {**os.environ, **xla_levels.optimized_env()}  # 8 x 200 steps
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
  first_group = workdir / "groups"
  deadline = time.monotonic() + 300
  saved = lambda: [p for p in first_group.glob("*/checkpoints/*") if p.name.isdigit()]
  while not saved() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  assert saved() and not (workdir / grid_search.RESULTS).exists(), \
      "the kill came too late to test a group's resume"
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  restored = [line for line in result.stderr.splitlines() if "Restoring checkpoint" in line]
  assert restored and "/groups/" in restored[0], result.stderr[-3000:]
  assert int(restored[0].split("Restoring checkpoint ")[1].split()[0]) >= 20
  with open(workdir / grid_search.RESULTS, newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8 and all(row["steps"] == "200" for row in rows)
  assert not any((workdir / "groups").iterdir())  # removed once their rows are written
