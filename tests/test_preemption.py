"""Training stopped by SIGTERM, SIGINT or SIGUSR1 saves the step it reached and resumes from
it exactly: the main runner and a grid search group, real subprocesses and real signals."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ebgan_jax import checkpoint, classifier, state as state_lib
from experiments import cli, train_classifier, trainer
from experiments.configs import tiny
from tests import data_fixtures
from tests.test_classifier import (classifier_config, save_pattern_classifier,
                                   write_pattern_idx_dir)

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments/configs/tiny.py")
STEPS_PER_CALL = 10


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  return data_fixtures.write_idx_dir(tmp_path_factory.mktemp("idx"), num_train=256, num_test=64,
                                     height=28, width=28)


def _config(idx_dir, num_steps):
  config = tiny.get_config()
  config.idx_dir = str(idx_dir)
  config.num_steps = num_steps
  config.steps_per_call = STEPS_PER_CALL
  # Periodic checkpoints and grids off: only the signal saves.
  config.log_every = config.sample_every = STEPS_PER_CALL
  config.checkpoint_every = 10**9
  return config


def _start(module, *args):
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signal_once_training(process, marker: str, signals, pause=0.0, delay=0.0):
  """Sends `signals` (one after another, `pause` apart) `delay` seconds after a line of the
  run's log holds `marker`: it is training. Returns (seconds from the first signal to the
  exit, stderr)."""
  seen = []
  for line in process.stderr:
    seen.append(line)
    if marker in line:
      break
  time.sleep(delay)
  assert process.poll() is None, "the run ended before the signal: " + "".join(seen)[-3000:]
  sent = time.monotonic()
  for signum in signals:
    process.send_signal(signum)
    time.sleep(pause)
  _, stderr = process.communicate(timeout=300)
  return time.monotonic() - sent, "".join(seen) + stderr


def _saved_steps(directory: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())


def _stop_training(idx_dir, workdir, signals, pause=0.0):
  """Starts the main runner on a long tiny run, periodic checkpoints off, and sends it
  `signals` once it trains; returns (its exit status, seconds to exit, the saved steps)."""
  process = _start("experiments.mnist_ebgan", f"--config={TINY}", f"--workdir={workdir}",
                   f"--config.idx_dir={idx_dir}", "--config.num_steps=100000",
                   f"--config.steps_per_call={STEPS_PER_CALL}",
                   "--config.checkpoint_every=1000000", f"--config.log_every={STEPS_PER_CALL}",
                   "--config.sample_every=1000000")
  seconds, stderr = _signal_once_training(process, "d_loss", signals, pause)
  assert "Traceback" not in stderr
  stopped = [line for line in stderr.splitlines() if line.startswith("stopped: ")]
  assert len(stopped) == 1 and signal.Signals(signals[0]).name in stopped[0], stderr[-3000:]
  return process.returncode, seconds, _saved_steps(workdir / "checkpoints")


def test_sigterm_saves_the_step_reached_and_the_run_resumes_from_it_exactly(idx_dir, tmp_path):
  workdir = tmp_path / "run"
  status, seconds, steps = _stop_training(idx_dir, workdir, [signal.SIGTERM])
  assert status == cli.EXIT_SIGNAL_BASE + signal.SIGTERM == 143
  assert len(steps) == 1 and 0 < steps[0] < 100000 and steps[0] % STEPS_PER_CALL == 0
  assert seconds < 30, seconds
  # The same command resumes there and ends where a run that never stopped ends.
  num_steps = steps[0] + 2 * STEPS_PER_CALL
  resumed = trainer.train_and_evaluate(_config(idx_dir, num_steps), str(workdir))
  straight = trainer.train_and_evaluate(_config(idx_dir, num_steps), str(tmp_path / "straight"))
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("signals", [
    [signal.SIGINT], [signal.SIGUSR1],
    # A second signal while the checkpoint is written does not cut it short.
    [signal.SIGTERM, signal.SIGTERM, signal.SIGINT]])
def test_each_stop_signal_leaves_a_restorable_checkpoint(idx_dir, tmp_path, signals):
  workdir = tmp_path / "run"
  status, _, steps = _stop_training(idx_dir, workdir, signals, pause=0.01)
  assert status == cli.EXIT_SIGNAL_BASE + signals[0]
  assert len(steps) == 1 and steps[0] > 0
  config = _config(idx_dir, steps[0])
  manager = checkpoint.create_manager(str(workdir / "checkpoints"), 1)
  restored = checkpoint.restore(manager, state_lib.create_state(config, jax.random.PRNGKey(0)))
  assert int(restored.step) == steps[0]


def test_sigterm_saves_a_grid_search_group_mid_run(tmp_path):
  idx_dir = write_pattern_idx_dir(tmp_path / "idx", num_train=256, num_test=64)
  cache = save_pattern_classifier(tmp_path / "classifiers", datasets=("fashion_mnist",))
  workdir = tmp_path / "grid"
  process = _start("experiments.grid_search",
                   f"--config={REPO / 'experiments/configs/grid_fashion.py'}:tiny",
                   f"--config.idx_dir={idx_dir}", f"--config.eval.classifier_dir={cache}",
                   "--config.grid.eval_samples=50", "--config.grid.tiny_steps=100000",
                   "--config.checkpoint_every=1000000", f"--workdir={workdir}")
  # Its first group's loop is about to start (and catch signals): a second later it trains.
  _, stderr = _signal_once_training(process, "Training a population", [signal.SIGTERM],
                                    delay=1.0)
  assert process.returncode == 143, stderr[-3000:]
  saved = [p for p in (workdir / "groups").glob("*/checkpoints/*") if p.name.isdigit()]
  assert len(saved) == 1 and int(saved[0].name) > 0, stderr[-3000:]
  assert not (workdir / "results.csv").exists()


# --- experiments.train_classifier ------------------------------------------------------------


def _classifier_config(idx_dir, cache):
  # 3 epochs of 8 steps on pattern digits.
  return classifier_config(idx_dir=str(idx_dir), cache_dir=str(cache), num_epochs=3,
                           learning_rate=3e-3)


def test_a_signal_saves_classifier_training_and_the_call_goes_on_exactly(tmp_path, monkeypatch):
  idx_dir = write_pattern_idx_dir(tmp_path / "idx", num_train=256, num_test=64)
  straight = train_classifier.train_and_save(_classifier_config(idx_dir, tmp_path / "straight"))

  # A real SIGTERM to this process after the 11th step, mid-epoch 2 (8 steps an epoch).
  train_step, calls = classifier.train_step, []

  def step_then_signal(*args):
    calls.append(None)
    if len(calls) == 11:
      os.kill(os.getpid(), signal.SIGTERM)
    return train_step(*args)
  monkeypatch.setattr(classifier, "train_step", step_then_signal)
  config = _classifier_config(idx_dir, tmp_path / "cache")
  with pytest.raises(cli.Stopped, match="saved at step 11 of 24") as stopped:
    train_classifier.train_and_save(config)
  assert stopped.value.signum == signal.SIGTERM
  training = tmp_path / "cache" / "mnist.training"
  assert _saved_steps(training) == [11]  # the epoch-1 checkpoint (8) is replaced
  assert not classifier.is_saved(tmp_path / "cache" / "mnist")

  monkeypatch.undo()
  resumed = train_classifier.train_and_save(config)
  assert resumed["params_sha256"] == straight["params_sha256"]
  assert resumed["test_accuracy"] == straight["test_accuracy"]
  assert not training.exists()  # the finished classifier replaces its training checkpoints

  # A stopped training of another recipe is not silently resumed, nor thrown away.
  monkeypatch.setattr(classifier, "train_step", step_then_signal)
  calls.clear()
  config.retrain = True
  with pytest.raises(cli.Stopped):
    train_classifier.train_and_save(config)
  monkeypatch.undo()
  config.learning_rate = 1e-3
  with pytest.raises(train_classifier.ConfigError, match="stopped training of another"):
    train_classifier.train_and_save(config)
  assert _saved_steps(training) == [11]


def test_sigterm_stops_the_train_classifier_program_with_its_status(tmp_path):
  idx_dir = write_pattern_idx_dir(tmp_path / "idx", num_train=256, num_test=64)
  process = _start("experiments.train_classifier",
                   f"--config={REPO / 'experiments/configs/classifier_mnist.py'}",
                   f"--config.idx_dir={idx_dir}", f"--config.cache_dir={tmp_path}",
                   "--config.num_epochs=100000", "--config.batch_size=32")
  seconds, stderr = _signal_once_training(process, "Training the mnist classifier",
                                          [signal.SIGTERM], delay=2.0)
  assert process.returncode == 143, stderr[-3000:]
  assert "Traceback" not in stderr and seconds < 30, seconds
  stopped = [line for line in stderr.splitlines() if line.startswith("stopped: ")]
  assert len(stopped) == 1 and "SIGTERM: classifier training saved at step" in stopped[0]
  assert len(_saved_steps(tmp_path / "mnist.training")) == 1
