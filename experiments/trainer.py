"""The EBGAN training and sampling jobs: config -> state -> step -> metrics / checkpoints.

`train_and_evaluate(config, workdir)` trains, resuming from the newest
checkpoint in `workdir/checkpoints`; `sample(config, workdir)` writes
`workdir/samples.npz` from it. Both validate the config first and raise
`ConfigError` (one line, for the user) on bad input. The loop trains a
`Task`: GENERATIVE (EBGAN, or the GAN baseline) unless another is passed, as
experiments.semi_supervised passes EBGAN-LN's.
"""

import dataclasses
import json
import math
import os
import tempfile
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from ebgan_jax import (checkpoint, data, evaluation, models, objectives, state as state_lib,
                       train, viz)

# Part of the config that fixes parameter shapes: a checkpoint restores only
# into the same values.
# The objective too: it sets D's head. Checkpoints saved before the field existed, and
# configs without it, are EBGAN's.
ARCHITECTURE_FIELDS = ("model", "image_shape", "z_dim", "objective")
_SAVED_BEFORE_FIELD = {"objective": "ebgan"}
GRID_SIZE = 64


class ConfigError(ValueError):
  """Bad user input: a config value, the workdir, or a checkpoint that does not fit."""


class TrainingDiverged(RuntimeError):
  """A loss became NaN or infinite; nothing after the last good checkpoint was saved."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first config value that cannot work."""
  checks = [
      (config.batch_size >= 2,
       f"batch_size must be >= 2 (the pulling-away term compares pairs), got {config.batch_size}"),
      (config.z_dim >= 1, f"z_dim must be >= 1, got {config.z_dim}"),
      (config.num_steps >= 0, f"num_steps must be >= 0, got {config.num_steps}"),
      (config.train_seconds >= 0, f"train_seconds must be >= 0 (0 = no budget), "
                                  f"got {config.train_seconds}"),
      (config.num_samples > 0, f"num_samples must be > 0, got {config.num_samples}"),
      (config.keep >= 1, f"keep must be >= 1, got {config.keep}"),
      (config.steps_per_call >= 1,
       f"steps_per_call must be >= 1, got {config.steps_per_call}"),
      (len(config.image_shape) == 3, f"image_shape must be (H, W, C), got {config.image_shape}"),
  ]
  for field in ("log_every", "sample_every", "checkpoint_every"):
    checks.append((config[field] >= 1, f"{field} must be >= 1, got {config[field]}"))
  checks.append((config.eval_every >= 0,
                 f"eval_every must be >= 0 (0 = never), got {config.eval_every}"))
  for name in ("optim_g", "optim_d"):
    optim = config[name]
    checks.append((optim.learning_rate > 0,
                   f"{name}.learning_rate must be > 0, got {optim.learning_rate}"))
    checks.append((0 <= optim.b1 < 1 and 0 <= optim.b2 < 1,
                   f"{name}.b1 and {name}.b2 must be in [0, 1), got {optim.b1} and {optim.b2}"))
    checks.append((optim.eps > 0, f"{name}.eps must be > 0, got {optim.eps}"))
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  # The checks that the library owns: objective and its hyperparameters, optimiser
  # kinds, model fields and D's head, compute_dtype.
  try:
    objective = objectives.from_config(config)
    objectives.hyperparameters(objective, config)
    for name in ("optim_g", "optim_d"):
      state_lib.optimizer_settings(config[name])
      state_lib.learning_rate_decay(config[name])
    models.build_models(config.model, config.image_shape, config.compute_dtype,
                        d_head=objective.d_head)
  except ValueError as e:
    raise ConfigError(str(e)) from None


Evaluation = Callable[[state_lib.GANState], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Task:
  """What train_and_evaluate's one loop trains: its checks, data, steps and evaluation.

  Attributes:
    validate: config -> None; raises ConfigError on a value that cannot work.
    create_dataset: (config, start_step) -> (this process's endless host
      batches, arrays or dicts of arrays, resumed at start_step; a line
      saying what they are).
    make_steps: (config, mesh) -> (one-step, K-step) jitted steps that
      donate the state, like train.make_train_step and make_multi_step.
    make_evaluation: config -> a function of the state giving the scalars
      to log (full names) every config.eval_every steps and at the end.
    draws_samples: config -> whether G's sample grids are worth writing.
    fixed_fields: config fields that the checkpoints of a workdir fix.
  """

  validate: Callable[[ml_collections.ConfigDict], None]
  create_dataset: Callable[[ml_collections.ConfigDict, int], tuple[Iterator[Any], str]]
  make_steps: Callable[[ml_collections.ConfigDict, Any], tuple[train.Step, train.Step]]
  make_evaluation: Callable[[ml_collections.ConfigDict], Evaluation]
  draws_samples: Callable[[ml_collections.ConfigDict], bool] = lambda config: True
  fixed_fields: tuple[str, ...] = ARCHITECTURE_FIELDS


def _generative_dataset(config, start_step: int) -> tuple[Iterator[np.ndarray], str]:
  batches, info = data.create_dataset(config, "train", start_step=start_step)
  return batches, f"{info.source}: {info.num_examples} examples of shape {info.image_shape}"


def _generative_steps(config, mesh) -> tuple[train.Step, train.Step]:
  # Compiled on first use only: with K = 1, or boundaries at multiples of K, one
  # of the two never runs.
  return train.make_train_step(config, mesh), train.make_multi_step(config, mesh)


def _generative_evaluation(config) -> Evaluation:
  evaluator = _make_evaluator(config)
  return lambda state: {f"eval/{name}": value
                        for name, value in evaluator.score_generator(state).items()}


def _prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    # A name of its own: every process of a multi-host run probes the same workdir.
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_probe"):
      pass
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} is not writable ({e.strerror}); "
                      f"pass a --workdir you can write to") from None


def _check_architecture(manager, config, fields) -> None:
  saved = checkpoint.saved_config(manager)
  if saved is None:
    return
  asked = json.loads(config.to_json_best_effort())  # the form it was saved in
  for field in fields:
    saved_value = saved.get(field, _SAVED_BEFORE_FIELD.get(field))
    asked_value = asked.get(field, _SAVED_BEFORE_FIELD.get(field))
    if saved_value != asked_value:
      raise ConfigError(
          f"the checkpoints in {manager.directory} were trained with {field}={saved_value}, "
          f"but the config asks for {field}={asked_value}; use a new --workdir or the saved "
          f"config")


def _open_checkpoints(config, workdir, fields=ARCHITECTURE_FIELDS):
  manager = checkpoint.create_manager(os.path.join(workdir, "checkpoints"), config.keep)
  _check_architecture(manager, config, fields)
  return manager


def _initial_state(config, manager, mesh):
  """A fresh state, or the newest checkpoint, replicated on `mesh`."""
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(config.seed)), mesh)
  if manager.latest_step() is None:
    return state
  logging.info("Restoring checkpoint %d from %s", manager.latest_step(), manager.directory)
  return checkpoint.restore(manager, state)


def _is_finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(jax.device_get(tree)))


class _MetricsLog:
  """Per-step metrics kept on device, fetched and checked once per interval."""

  def __init__(self, writer):
    self._writer = writer
    self._pending: list[tuple[int, dict]] = []

  def append(self, last_step: int, metrics) -> None:
    """Adds the metrics of one call: scalars, or stacked (K,) for K steps ending at last_step."""
    self._pending.append((last_step, metrics))

  def flush(self, last_good_step: int | None) -> None:
    """Writes the interval's means; raises TrainingDiverged on a non-finite value."""
    if not self._pending:
      return
    steps, values = [], []
    for last_step, metrics in jax.device_get(self._pending):
      metrics = {name: np.atleast_1d(value) for name, value in metrics.items()}
      num_steps = len(next(iter(metrics.values())))
      for i in range(num_steps):
        steps.append(last_step - num_steps + 1 + i)
        values.append({name: value[i] for name, value in metrics.items()})
    self._pending = []
    for step, metrics in zip(steps, values):
      for name, value in metrics.items():
        if not np.isfinite(value):
          kept = (f"the last good checkpoint is step {last_good_step}"
                  if last_good_step is not None else "no checkpoint was written")
          raise TrainingDiverged(
              f"training diverged: {name} = {value} at step {step}; stopped without saving, "
              f"{kept}. Lower the learning rates or check the data")
    means = {name: float(np.mean([m[name] for m in values])) for name in values[0]}
    self._writer.write_scalars(steps[-1], means)


def _make_evaluator(config) -> evaluation.Evaluator:
  try:
    evaluator = evaluation.Evaluator(config)
  except evaluation.EvaluationError as e:
    raise ConfigError(f"eval_every={config.eval_every} needs the built-in metrics: {e}") from None
  logging.info("Every %d steps: %d samples against %s, scored by the classifier %s (sha256 %s)",
               config.eval_every, evaluator.settings.num_samples, evaluator.description["real"],
               evaluator.description["classifier"], evaluator.description["classifier_sha256"])
  return evaluator


def _call_sizes(step: int, config) -> Iterator[int]:
  """Steps per call from `step` to config.num_steps: steps_per_call K, or 1.

  A call of K covers a block [jK, jK + K) with no log, sample, checkpoint or
  evaluation boundary inside, so every boundary is reached exactly, and a run that
  stops at a multiple of K continues with the same calls when resumed.
  """
  k = config.steps_per_call
  intervals = [config.log_every, config.sample_every, config.checkpoint_every]
  if config.eval_every:
    intervals.append(config.eval_every)
  while step < config.num_steps:
    boundary = min(config.num_steps, *((step // i + 1) * i for i in intervals))
    size = k if step % k == 0 and step + k <= boundary else 1
    yield size
    step += size


def _device_batches(batches: Iterator[Any], call_sizes: Iterator[int], mesh):
  """(size, the global batch of a single step or the `size` stacked batches of a multi-step).

  A batch is an array or a pytree of them (a dict of labelled and unlabelled images).
  """
  for size in call_sizes:
    if size == 1:
      yield size, jax.tree.map(lambda b: train.global_batch(b, mesh), next(batches))
    else:
      stacked = jax.tree.map(lambda *b: np.stack(b), *(next(batches) for _ in range(size)))
      yield size, jax.tree.map(lambda b: train.global_batches(b, mesh), stacked)


def _write_sample_grid(writer, state, key, workdir) -> None:
  images = train.generate(state, key, GRID_SIZE)  # every process takes part
  if jax.process_index() != 0:
    return
  step = int(state.step)
  grid = viz.save_png(os.path.join(workdir, f"samples_{step:07d}.png"), images)
  writer.write_images(step, {"samples": grid[None]})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       task: Task | None = None) -> state_lib.GANState:
  """Trains `task` (default GENERATIVE) until config.num_steps (or config.train_seconds),
  then checkpoints."""
  task = GENERATIVE if task is None else task
  task.validate(config)
  _prepare_workdir(workdir)
  manager = _open_checkpoints(config, workdir, task.fixed_fields)
  mesh = train.make_mesh()
  state = _initial_state(config, manager, mesh)
  start_step = int(state.step)
  try:  # the data's or the config's fault, never the code's
    batches, description = task.create_dataset(config, start_step)
    train_step, multi_step = task.make_steps(config, mesh)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  logging.info("Training on %s, global batch %d over %d devices in %d processes",
               description, config.batch_size, mesh.size, jax.process_count())

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config.items()})
  grid_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5A3)  # fixed z for grids
  progress = periodic_actions.ReportProgress(num_train_steps=config.num_steps, writer=writer,
                                             every_secs=30.0)
  metrics_log = _MetricsLog(writer)
  evaluation = task.make_evaluation(config) if config.eval_every else None
  draws_samples = task.draws_samples(config)
  deadline = time.monotonic() + config.train_seconds if config.train_seconds else math.inf
  last_saved = manager.latest_step()

  step = start_step
  calls = train.prefetch(_device_batches(batches, _call_sizes(start_step, config), mesh))
  in_flight = None
  try:
    for size, device_batch in calls:
      step_fn = train_step if size == 1 else multi_step
      state, metrics = step_fn(state, device_batch)
      # Wait for the call before this one: the device always has the next call
      # queued, but the host never runs further ahead (up to log_every steps
      # otherwise), so train_seconds and steps/s count finished steps.
      jax.block_until_ready(in_flight)
      in_flight = metrics
      step += size
      metrics_log.append(step, metrics)
      progress(step)
      out_of_time = time.monotonic() >= deadline
      if step % config.log_every == 0:
        metrics_log.flush(last_saved)
      if step % config.checkpoint_every == 0 or step == config.num_steps or out_of_time:
        metrics_log.flush(last_saved)
        last_saved = _save(manager, state, config, step, last_saved)
      if draws_samples and step % config.sample_every == 0:
        _write_sample_grid(writer, state, grid_key, workdir)
      if evaluation and (step % config.eval_every == 0 or step == config.num_steps):
        writer.write_scalars(step, evaluation(state))
      if out_of_time:
        logging.info("train_seconds=%s spent at step %d", config.train_seconds, step)
        break
    metrics_log.flush(last_saved)
    if draws_samples and step % config.sample_every:
      _write_sample_grid(writer, state, grid_key, workdir)
  except data.CorruptImageError as e:  # an image folder's file, found out when its batch came
    kept = f"the last checkpoint is step {last_saved}" if last_saved else "no checkpoint was saved"
    raise ConfigError(f"{e} Training stopped; {kept}") from None
  finally:
    # Also when training diverged: the last good checkpoint may still be in flight.
    manager.wait_until_finished()
    writer.flush()
  return state


GENERATIVE = Task(validate=validate_config, create_dataset=_generative_dataset,
                  make_steps=_generative_steps, make_evaluation=_generative_evaluation)


def _save(manager, state, config, step, last_saved):
  # Losses lag the update by one step: check the parameters themselves too.
  if not _is_finite(state):
    raise TrainingDiverged(
        f"training diverged: non-finite parameters at step {step}; stopped without saving, "
        f"the last good checkpoint is step {last_saved}")
  checkpoint.save(manager, state, config)
  return step


def sample(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  """Writes config.num_samples uint8 images from the newest checkpoint to workdir/samples.npz."""
  validate_config(config)
  manager = _open_checkpoints(config, workdir)
  if manager.latest_step() is None:
    raise ConfigError(f"no checkpoint in {manager.directory}; train first with --mode=train")
  state = _initial_state(config, manager, train.make_mesh())
  images = evaluation.generate_images(state, jax.random.PRNGKey(config.seed + 1),
                                      config.num_samples)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "samples.npz")
    np.savez(path, images=images)
    viz.save_png(os.path.join(workdir, "samples.png"), images[:GRID_SIZE])
    logging.info("Wrote %d samples of step %d to %s", len(images), int(state.step), path)
  return images
