"""The EBGAN training and sampling jobs: config -> state -> step -> metrics / checkpoints.

`train_and_evaluate(config, workdir)` trains, resuming from the newest
checkpoint in `workdir/checkpoints`; `sample(config, workdir)` writes
`workdir/samples.npz` from it. Both validate the config first and raise
`ConfigError` (one line, for the user) on bad input. The loop trains a
`Task`: GENERATIVE (EBGAN, or the GAN baseline) unless another is passed, as
experiments.semi_supervised passes EBGAN-LN's.
"""

import dataclasses
import functools
import json
import math
import os
import signal
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from ebgan_jax import (checkpoint, data, evaluation, models, objectives,
                       population as population_lib, state as state_lib, train, viz)
from experiments import cli, train_classifier

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
  # kinds, model fields and D's head, compute_dtype and matmul_operands.
  try:
    objective = objectives.from_config(config)
    objectives.hyperparameters(objective, config)
    for name in ("optim_g", "optim_d"):
      state_lib.optimizer_settings(config[name])
      state_lib.learning_rate_decay(config[name])
    models.build_models(config.model, config.image_shape, config.compute_dtype,
                        d_head=objective.d_head,
                        matmul_operands=config.get("matmul_operands", "float32"))
  except ValueError as e:
    raise ConfigError(str(e)) from None


Evaluation = Callable[[state_lib.GANState], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Task:
  """What train_and_evaluate's one loop trains: its checks, data, steps and evaluation.

  Attributes:
    validate: config -> None; raises ConfigError on a value that cannot work.
    create_dataset: (config, start_step, process_index, process_count) ->
      (the endless host batches of that process (None: this one) of that many
      (None: all), arrays or dicts of arrays, resumed at start_step; a line
      saying what they are). A population's members read whole batches (1, 1).
    make_steps: (config, mesh) -> (one-step, K-step) jitted steps that
      donate the state, like train.make_train_step and make_multi_step.
    make_evaluation: config -> a function of the state giving the scalars
      to log (full names) every config.eval_every steps and at the end.
    draws_samples: config -> whether G's sample grids are worth writing.
    fixed_fields: config fields that the checkpoints of a workdir fix.
    upgrade_saved: a saved config (dict) -> the same in today's fields, for the
      checks of fixed_fields on workdirs of older code.
  """

  validate: Callable[[ml_collections.ConfigDict], None]
  create_dataset: Callable[..., tuple[Iterator[Any], str]]
  make_steps: Callable[[ml_collections.ConfigDict, Any], tuple[train.Step, train.Step]]
  make_evaluation: Callable[[ml_collections.ConfigDict], Evaluation]
  draws_samples: Callable[[ml_collections.ConfigDict], bool] = lambda config: True
  fixed_fields: tuple[str, ...] = ARCHITECTURE_FIELDS
  upgrade_saved: Callable[[dict], dict] = lambda saved: saved


def _generative_dataset(config, start_step: int, process_index: int | None = None,
                        process_count: int | None = None) -> tuple[Iterator[np.ndarray], str]:
  batches, info = data.create_dataset(config, "train", start_step=start_step,
                                      process_index=process_index, process_count=process_count)
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


def _check_architecture(manager, config, fields, upgrade_saved) -> None:
  saved = checkpoint.saved_config(manager)
  if saved is None:
    return
  saved = upgrade_saved(saved)
  asked = json.loads(config.to_json_best_effort())  # the form it was saved in
  for field in fields:
    saved_value = saved.get(field, _SAVED_BEFORE_FIELD.get(field))
    asked_value = asked.get(field, _SAVED_BEFORE_FIELD.get(field))
    if saved_value != asked_value:
      raise ConfigError(
          f"the checkpoints in {manager.directory} were trained with {field}={saved_value}, "
          f"but the config asks for {field}={asked_value}; use a new --workdir or the saved "
          f"config")


def _open_checkpoints(config, workdir, task: Task | None = None, extra_fields=()):
  """The workdir's checkpoint manager, once the saved config fits the task's fixed fields."""
  task = GENERATIVE if task is None else task
  manager = checkpoint.create_manager(os.path.join(workdir, "checkpoints"), config.keep)
  _check_architecture(manager, config, (*task.fixed_fields, *extra_fields), task.upgrade_saved)
  return manager


def _restored(manager, fresh):
  """`fresh` (a GANState or a Population, laid out where it trains), or the newest
  checkpoint restored into its structure."""
  if manager is None or manager.latest_step() is None:
    return fresh
  logging.info("Restoring checkpoint %d from %s", manager.latest_step(), manager.directory)
  return checkpoint.restore(manager, fresh)


def _initial_state(config, manager, mesh):
  """A fresh state, or the newest checkpoint, replicated on `mesh`."""
  # Jitted: all the initialisers compile as one program, not op by op (at start-up on 2 CPU
  # cores: conv28 4.6 s instead of 11.6, ladder 5.5 instead of 14.9).
  create = jax.jit(functools.partial(state_lib.create_state, config),
                   out_shardings=train.replicated(mesh))
  fresh = create(jax.random.PRNGKey(config.seed))
  return _restored(manager, fresh)


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
    train_classifier.ensure_classifier(config)
    evaluator = evaluation.Evaluator(config)
  except (evaluation.EvaluationError, train_classifier.ConfigError) as e:
    raise ConfigError(f"eval_every={config.eval_every} needs the built-in metrics: {e}") from None
  logging.info("Every %d steps: %d samples against %s, scored by the %s", config.eval_every,
               evaluator.settings.num_samples, evaluator.description["real"], evaluator.network)
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


def _host_calls(batches: Iterator[Any], call_sizes: Iterator[int]):
  """(size, a host batch, or `size` of them stacked along a new leading axis).

  A batch is an array or a pytree of them (a dict of labelled and unlabelled images).
  """
  for size in call_sizes:
    if size == 1:
      yield size, next(batches)
    else:
      yield size, jax.tree.map(lambda *b: np.stack(b), *(next(batches) for _ in range(size)))


@dataclasses.dataclass
class _Run:
  """What the one loop trains: a single run or a population, and how it steps and saves.

  Attributes:
    state: a replicated GANState, or a Population laid along its member mesh.
    batches: the endless host batches of one step.
    to_device: (size, host batch(es) of a call) -> the call's device input.
    step_for: size -> the jitted step of a call of that many steps, taking
      (state, device input) and returning (state, metrics), the state donated.
    check_before_save: (state, step, last_saved) -> None, raising
      TrainingDiverged on a state not worth saving.
    last_saved: the step of the newest checkpoint (None: none), kept by the loop.
  """

  state: Any
  batches: Iterator[Any]
  to_device: Callable[[int, Any], Any]
  step_for: Callable[[int], Callable]
  check_before_save: Callable[[Any, int, int | None], None] = lambda *args: None
  last_saved: int | None = None


def _agreed_signal(received: list[int]) -> int | None:
  """The signal every process stops on, or None: a signal any process received, so that all
  save the same step (one small collective per call when there are several processes)."""
  local = received[0] if received else 0
  if jax.process_count() > 1:
    local = int(np.max(multihost_utils.process_allgather(np.int32(local))))
  return local or None


def _train_loop(config, run: _Run, start_step: int, manager, after_call, saved_config=None):
  """The one host loop, for single runs and populations alike: calls of config.steps_per_call
  steps (_call_sizes), batches stacked on the host and prefetched to the devices, the
  config.train_seconds budget, and a checkpoint every config.checkpoint_every steps, at
  config.num_steps, when the budget is spent and when one of cli.STOP_SIGNALS arrives (none
  without a `manager`). A signal ends the call in flight, saves it, waits for the checkpoint
  and raises cli.Stopped.

  `after_call(step, state, metrics, saving)` runs after every call, before its
  checkpoint (`saving`: one follows); it logs, draws and evaluates. Returns the state
  and the step reached.
  """
  run.last_saved = manager.latest_step() if manager is not None else None
  deadline = time.monotonic() + config.train_seconds if config.train_seconds else math.inf
  state, step, in_flight = run.state, start_step, None
  host_calls = _host_calls(run.batches, _call_sizes(start_step, config))
  calls = train.prefetch((size, run.to_device(size, batch)) for size, batch in host_calls)
  with cli.stop_signals() as received:
    for size, device_batch in calls:
      state, metrics = run.step_for(size)(state, device_batch)
      # Wait for the call before this one: the device always has the next call
      # queued, but the host never runs further ahead (up to log_every steps
      # otherwise), so train_seconds and steps/s count finished steps.
      jax.block_until_ready(in_flight)
      in_flight = metrics
      step += size
      out_of_time = time.monotonic() >= deadline
      signum = _agreed_signal(received)
      saving = manager is not None and (step % config.checkpoint_every == 0 or out_of_time
                                        or step == config.num_steps or signum is not None)
      after_call(step, state, metrics, saving)
      if saving:
        run.check_before_save(state, step, run.last_saved)
        checkpoint.save(manager, state, saved_config or config, step)
        run.last_saved = step
      if signum is not None:
        name = signal.Signals(signum).name
        if manager is not None:
          manager.wait_until_finished()
        saved = (f"checkpoint {step} written to {manager.directory}" if manager is not None
                 else "nothing saved (no workdir)")
        logging.info("%s: stopped at step %d, %s", name, step, saved)
        raise cli.Stopped(f"{name} at step {step}, {saved}; run the same command to resume",
                          signum)
      if out_of_time:
        logging.info("train_seconds=%s spent at step %d", config.train_seconds, step)
        break
  return state, step


def _write_sample_grid(writer, state, key, workdir) -> None:
  images = train.generate(state, key, GRID_SIZE)  # every process takes part
  if jax.process_index() != 0:
    return
  step = int(state.step)
  grid = viz.save_png(os.path.join(workdir, f"samples_{step:07d}.png"), images)
  writer.write_images(step, {"samples": grid[None]})


def _single_run(config, task: Task, state, start_step: int, mesh) -> _Run:
  try:  # the data's or the config's fault, never the code's
    batches, description = task.create_dataset(config, start_step)
    steps = task.make_steps(config, mesh)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  logging.info("Training on %s, global batch %d over %d devices in %d processes",
               description, config.batch_size, mesh.size, jax.process_count())

  def to_device(size, batch):
    put = train.global_batch if size == 1 else train.global_batches
    return jax.tree.map(lambda b: put(b, mesh), batch)

  def check_before_save(state, step, last_saved):
    # Losses lag the update by one step: check the parameters themselves too.
    if not bool(train.all_finite(state)):
      raise TrainingDiverged(
          f"training diverged: non-finite parameters at step {step}; stopped without saving, "
          f"the last good checkpoint is step {last_saved}")
  return _Run(state, batches, to_device, lambda size: steps[0] if size == 1 else steps[1],
              check_before_save)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       task: Task | None = None) -> state_lib.GANState:
  """Trains `task` (default GENERATIVE) until config.num_steps (or config.train_seconds),
  then checkpoints."""
  task = GENERATIVE if task is None else task
  task.validate(config)
  _prepare_workdir(workdir)
  manager = _open_checkpoints(config, workdir, task)
  mesh = train.make_mesh()
  state = _initial_state(config, manager, mesh)
  start_step = int(state.step)
  run = _single_run(config, task, state, start_step, mesh)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config.items()})
  grid_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5A3)  # fixed z for grids
  progress = periodic_actions.ReportProgress(num_train_steps=config.num_steps, writer=writer,
                                             every_secs=30.0)
  metrics_log = _MetricsLog(writer)
  evaluation = task.make_evaluation(config) if config.eval_every else None
  draws_samples = task.draws_samples(config)

  def after_call(step, state, metrics, saving):
    metrics_log.append(step, metrics)
    progress(step)
    if step % config.log_every == 0 or saving:  # before a checkpoint: never save a diverged run
      metrics_log.flush(run.last_saved)
    if draws_samples and step % config.sample_every == 0:
      _write_sample_grid(writer, state, grid_key, workdir)
    if evaluation and (step % config.eval_every == 0 or step == config.num_steps):
      writer.write_scalars(step, evaluation(state))

  try:
    state, step = _train_loop(config, run, start_step, manager, after_call)
    metrics_log.flush(run.last_saved)
    if draws_samples and step % config.sample_every:
      _write_sample_grid(writer, state, grid_key, workdir)
  except data.CorruptImageError as e:  # an image folder's file, found out when its batch came
    kept = (f"the last checkpoint is step {run.last_saved}" if run.last_saved
            else "no checkpoint was saved")
    raise ConfigError(f"{e} Training stopped; {kept}") from None
  finally:
    # Also when training diverged: the last good checkpoint may still be in flight.
    manager.wait_until_finished()
    writer.flush()
  return state


GENERATIVE = Task(validate=validate_config, create_dataset=_generative_dataset,
                  make_steps=_generative_steps, make_evaluation=_generative_evaluation)


def _with_seed(config, seed: int):
  config = config.copy_and_resolve_references()
  config.seed = int(seed)
  return config


def train_population(config: ml_collections.ConfigDict, members: Sequence[dict],
                     workdir: str | None = None, task: Task | None = None,
                     mesh=None, member_map: str | None = None
                     ) -> tuple[population_lib.Population, dict[str, np.ndarray]]:
  """Trains `members` (dicts of population.settings_of(objective)) of `task` (default
  GENERATIVE) as one population, through the loop of train_and_evaluate: until
  config.num_steps or config.train_seconds, and with a `workdir`, checkpoints of the
  whole population there every config.checkpoint_every steps and at the end, resumed
  exactly from the newest (the members must be the same). Logs the step and steps/s
  every config.log_every steps.

  Member i reads the batches its single run with its seed would (task.create_dataset
  with config.seed set to it, whole batches) and ends where that run ends, up to float
  rounding. A member whose losses or parameters turn non-finite is frozen at its state
  before that call and flagged (population.member_steps); the others go on.

  Args:
    config: the population's config (objective, model, optimisers, data, batch_size,
      num_steps, steps_per_call and the loop's intervals).
    members: one dict of settings per member.
    workdir: where the checkpoints go (None: none, and nothing is resumed).
    task: what is trained; its data stream and its validate (not run here: the caller
      validates the population's config).
    mesh: a member mesh (population.make_mesh; default all devices). The members are
      padded to a multiple of its size with copies, dropped from the result.
    member_map: see population.make_multi_step.

  Returns:
    The population (padding dropped) on every process, and the training metrics, each
    (P, calls) of per-call means, for the calls made by this process's loop (those
    before a resume are not kept).
  """
  task = GENERATIVE if task is None else task
  mesh = population_lib.make_mesh() if mesh is None else mesh
  padded = population_lib.pad_members(list(members), mesh.size)
  fresh, streams = population_lib.initialise(config, padded, mesh)
  manager = None
  saved_config = config.copy_and_resolve_references()
  with saved_config.unlocked():  # the members, so that other members do not resume here
    saved_config.population_members = json.dumps(list(members), sort_keys=True)
  if workdir is not None:
    _prepare_workdir(workdir)
    manager = _open_checkpoints(saved_config, workdir, task, ("population_members",))
  population = _restored(manager, fresh)
  start_step = int(population.step)
  seeds = sorted({m["seed"] for m in padded})
  # One stream per distinct seed, read whole by every process: members live on any device.
  try:
    datasets = [task.create_dataset(_with_seed(config, seed), start_step, 0, 1)[0]
                for seed in seeds]
  except ValueError as e:
    raise ConfigError(str(e)) from None
  step = population_lib.make_multi_step(mesh, member_map)
  replicated = NamedSharding(mesh, PartitionSpec())

  def to_device(size, batch):  # a call's batches (K, S, B, ...), K = 1 too
    batch = batch if size > 1 else jax.tree.map(lambda b: b[None], batch)
    return jax.tree.map(lambda b: population_lib.global_array(b, replicated), batch)

  streams_of_steps = (jax.tree.map(lambda *b: np.stack(b), *batches)
                      for batches in zip(*datasets))
  run = _Run(population, streams_of_steps, to_device,
             lambda size: lambda population, batches: step(population, batches, streams))
  history = []
  logging.info("Training a population of %d members (%d streams) from step %d over %d devices",
               len(members), len(seeds), start_step, mesh.size)
  progress = {"step": start_step, "time": time.monotonic()}

  def after_call(step, population, metrics, saving):
    del population, saving  # its members' metrics are kept; scored by the caller
    history.append(metrics)
    if step % config.log_every == 0:  # progress only: the metrics may live on other hosts
      now = time.monotonic()
      logging.info("Population step %d of %d: %.2f steps/s", step, config.num_steps,
                   (step - progress["step"]) / (now - progress["time"]))
      progress.update(step=step, time=now)
  try:
    population, _ = _train_loop(config, run, start_step, manager, after_call, saved_config)
  finally:
    if manager is not None:
      manager.wait_until_finished()
  # Every process gets every member back, on its default device, for sampling and scoring.
  population, history = jax.device_put(
      multihost_utils.process_allgather((population, history), tiled=True))
  history = {name: np.stack([h[name] for h in history], axis=1)[:len(members)]
             for name in history[0]} if history else {}
  return jax.tree.map(lambda x: x[:len(members)], population), history


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
