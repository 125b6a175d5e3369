"""The training job: CLI end to end, exact resume, the NaN guard, config validation, learning."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import checkpoint, state as state_lib, train
from experiments import trainer
from experiments.configs import tiny
from tests import data_fixtures, multidevice
from tests.test_cli import assert_one_error_line, run_in_process

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  """256 train / 64 test 28x28 images in IDX files."""
  return data_fixtures.write_idx_dir(tmp_path_factory.mktemp("idx"), num_train=256, num_test=64,
                                     height=28, width=28)


def _tiny(idx_dir, **overrides):
  config = tiny.get_config()
  config.idx_dir = str(idx_dir)
  config.update(overrides)
  return config


def _run_cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "experiments.mnist_ebgan", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, env=env)


def _leaves_equal(a, b) -> bool:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(leaves_a) == len(leaves_b) and all(
      np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


def test_cli_trains_then_samples(idx_dir, tmp_path):
  workdir = tmp_path / "run"
  tiny_config = str(REPO / "experiments/configs/tiny.py")
  # Without the suite's TF_CPP_MIN_LOG_LEVEL: the program itself keeps TensorFlow quiet.
  env = {name: value for name, value in os.environ.items()
         if name not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
  result = _run_cli(f"--config={tiny_config}", f"--workdir={workdir}",
                    f"--config.idx_dir={idx_dir}", "--config.num_steps=12", env=env)
  assert result.returncode == 0, result.stderr
  for banner in ("oneDNN", "cpu_feature_guard", "InitializeLog"):
    assert banner not in result.stderr, result.stderr
  assert "d_loss=" in result.stderr and "steps/s" in result.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "12"]
  assert list(workdir.glob("events.out.tfevents.*"))
  assert {p.name for p in workdir.glob("samples_*.png")} == {"samples_0000010.png",
                                                             "samples_0000012.png"}

  result = _run_cli(f"--config={tiny_config}", f"--workdir={workdir}", "--mode=sample",
                    "--config.num_samples=37")
  assert result.returncode == 0, result.stderr
  images = np.load(workdir / "samples.npz")["images"]
  assert images.shape == (37, 28, 28, 1) and images.dtype == np.uint8
  assert images.std() > 0
  assert (workdir / "samples.png").stat().st_size > 0


def test_cli_trains_the_gan_baseline_with_sgd(idx_dir, tmp_path):
  """The single-run CLI trains either objective; the GAN's metrics are its own."""
  workdir = tmp_path / "gan"
  tiny_config = str(REPO / "experiments/configs/tiny.py")
  common = (f"--config={tiny_config}", f"--workdir={workdir}", "--config.objective=gan")
  result = _run_cli(*common, f"--config.idx_dir={idx_dir}", "--config.num_steps=10",
                    "--config.optim_d.kind=sgd", "--config.optim_d.learning_rate=0.01")
  assert result.returncode == 0, result.stderr
  assert "d_real=" in result.stderr and "energy_real" not in result.stderr
  config = _tiny(idx_dir, objective="gan")
  config.optim_d.kind = "sgd"
  template = state_lib.create_state(config, jax.random.PRNGKey(0))
  state = checkpoint.restore(checkpoint.create_manager(str(workdir / "checkpoints"), 1), template)
  assert int(state.step) == 10
  logit = state.discriminator.params["Dense_1"]["kernel"]
  assert logit.shape == (32, 1)  # D ends in one logit
  assert "mu" not in str(jax.tree_util.tree_structure(state.discriminator.opt_state))  # plain SGD
  # A workdir of one objective does not resume as the other (D's head differs): the training
  # program's bad input as a process sees it (tests/test_cli.py checks the rest in-process).
  result = _run_cli(f"--config={tiny_config}", f"--workdir={workdir}",
                    f"--config.idx_dir={idx_dir}", "--config.num_steps=20")
  assert_one_error_line(result, "were trained with objective=gan")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10"]


def test_resume_is_exact(idx_dir, tmp_path, monkeypatch):
  straight = trainer.train_and_evaluate(_tiny(idx_dir, num_steps=20), str(tmp_path / "straight"))
  straight = jax.tree.map(np.asarray, straight)
  trainer.train_and_evaluate(_tiny(idx_dir, num_steps=7), str(tmp_path / "resumed"))
  counter = multidevice.StepCounter().install(monkeypatch.setattr)
  resumed = trainer.train_and_evaluate(_tiny(idx_dir, num_steps=20), str(tmp_path / "resumed"))
  assert int(resumed.step) == 20
  # Only the 13 remaining steps: retraining from step 0 would end in the same state.
  assert counter.steps == 13
  assert _leaves_equal(straight, resumed)  # params, batch_stats, Adam moments, step, key
  # And the checkpoints on disk agree.
  manager = checkpoint.create_manager(str(tmp_path / "resumed" / "checkpoints"), keep=2)
  assert manager.latest_step() == 20
  assert _leaves_equal(straight, checkpoint.restore(manager, resumed))


def test_train_seconds_stops_cleanly_with_a_checkpoint(idx_dir, tmp_path):
  final = trainer.train_and_evaluate(_tiny(idx_dir, num_steps=10_000, train_seconds=1e-9),
                                     str(tmp_path))
  assert int(final.step) == 1
  assert os.listdir(tmp_path / "checkpoints") == ["1"]


def test_nan_guard_keeps_the_last_good_checkpoint(idx_dir, tmp_path, monkeypatch):
  trainer.train_and_evaluate(_tiny(idx_dir, num_steps=10), str(tmp_path))
  real_make_train_step = train.make_train_step

  def poisoned_make_train_step(config, mesh):
    step = real_make_train_step(config, mesh)

    def poisoned(state, batch):
      state, metrics = step(state, batch)
      # From step 13 on, D's loss is NaN, as after a blow-up.
      metrics["d_loss"] = jnp.where(state.step >= 13, jnp.nan, metrics["d_loss"])
      return state, metrics
    return poisoned

  monkeypatch.setattr(train, "make_train_step", poisoned_make_train_step)
  with pytest.raises(trainer.TrainingDiverged, match=r"d_loss = nan at step 13; stopped "
                     r"without saving, the last good checkpoint is step 10"):
    trainer.train_and_evaluate(_tiny(idx_dir, num_steps=40), str(tmp_path))
  manager = checkpoint.create_manager(str(tmp_path / "checkpoints"), keep=2)
  assert manager.latest_step() == 10
  template = state_lib.create_state(_tiny(idx_dir), jax.random.PRNGKey(0))
  restored = checkpoint.restore(manager, template)
  assert int(restored.step) == 10
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored))


def test_nan_parameters_are_never_checkpointed(idx_dir, tmp_path, monkeypatch):
  real_make_train_step = train.make_train_step

  def poisoned_make_train_step(config, mesh):
    step = real_make_train_step(config, mesh)

    def poisoned(state, batch):
      state, metrics = step(state, batch)
      # The update of the last step, 10, blows up; its losses are still finite.
      bias = state.generator.params["Dense_1"]["bias"]
      bias = jnp.where(state.step == 10, jnp.nan, bias)
      params = {**state.generator.params, "Dense_1": {**state.generator.params["Dense_1"],
                                                      "bias": bias}}
      return state.replace(generator=state.generator.replace(params=params)), metrics
    return poisoned

  monkeypatch.setattr(train, "make_train_step", poisoned_make_train_step)
  with pytest.raises(trainer.TrainingDiverged, match="non-finite parameters at step 10"):
    trainer.train_and_evaluate(_tiny(idx_dir, num_steps=10), str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == []


@pytest.mark.parametrize("overrides, message", [
    ({"margin": -0.1}, "margin must be >= 0, got -0.1"),
    ({"lambda_pt": -1.0}, "lambda_pt must be >= 0, got -1.0"),
    ({"batch_size": 1}, "batch_size must be >= 2"),
    ({"num_samples": 0}, "num_samples must be > 0, got 0"),
    ({"energy_reduction": "l1"}, "energy_reduction must be one of"),
    ({"log_every": 0}, "log_every must be >= 1, got 0"),
    ({"train_seconds": -5.0}, "train_seconds must be >= 0"),
    ({"model": {"family": "resnet"}}, "unknown model family 'resnet'; known families: conv28, mlp"),
])
def test_bad_config_values_are_rejected(idx_dir, tmp_path, overrides, message):
  with pytest.raises(trainer.ConfigError, match=message):
    trainer.train_and_evaluate(_tiny(idx_dir, **overrides), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_unwritable_workdir_is_rejected(idx_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(trainer.ConfigError, match="is not writable"):
    trainer.train_and_evaluate(_tiny(idx_dir), str(blocker / "run"))


def test_workdir_of_another_architecture_is_rejected(idx_dir, tmp_path):
  trainer.train_and_evaluate(_tiny(idx_dir, num_steps=2), str(tmp_path))
  other = _tiny(idx_dir, num_steps=4)
  other.model.size_g = 128
  with pytest.raises(trainer.ConfigError, match="were trained with model=.*size_g': 64"):
    trainer.train_and_evaluate(other, str(tmp_path))
  with pytest.raises(trainer.ConfigError, match="were trained with model="):
    trainer.sample(other, str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_sampling_without_a_checkpoint_is_rejected(tmp_path):
  with pytest.raises(trainer.ConfigError, match="no checkpoint in .*; train first"):
    trainer.sample(tiny.get_config(), str(tmp_path))


@pytest.mark.parametrize("args, message", [
    (["--config.margin=-1"], "error: margin must be >= 0, got -1"),
    (["--config.idx_dir=/nonexistent/idx"], "error: "),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
  result = run_in_process("experiments.mnist_ebgan",
                          f"--config={REPO / 'experiments/configs/tiny.py'}",
                          f"--workdir={tmp_path / 'run'}", *args)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(error_lines) == 1 and error_lines[0].startswith(message)


def test_cli_diverged_training_is_one_line_and_exit_3(idx_dir, tmp_path):
  # Adam moves every parameter by about lr per step: at 1e38, D's first update
  # leaves weights near float32's largest value, and G's update on them is NaN.
  workdir = tmp_path / "run"
  result = _run_cli(f"--config={REPO / 'experiments/configs/tiny.py'}", f"--workdir={workdir}",
                    f"--config.idx_dir={idx_dir}", "--config.optim_d.learning_rate=1e38",
                    "--config.optim_g.learning_rate=1e38")
  assert result.returncode == 3, result.stderr[-4000:]
  assert "Traceback" not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(error_lines) == 1, result.stderr[-4000:]
  assert error_lines[0].startswith("error: training diverged: ")
  assert "no checkpoint was written" in error_lines[0]
  assert os.listdir(workdir / "checkpoints") == []
