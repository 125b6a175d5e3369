"""Checks that need several (simulated CPU) devices or processes, run in a subprocess.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice CHECK ARG... [+ ..]

The device count is fixed when JAX starts, so tests/test_sharding.py runs
these in fresh processes and the rest of the suite keeps one device. Each
check raises on failure and returns a report; `main` prints one JSON line per check.
"""

import json
import os
import signal
import sys
import time
import traceback

import jax
import ml_collections
import numpy as np

from ebgan_jax import population, state as state_lib, train
from experiments import cli, trainer
from experiments.configs import ladder_mnist, mnist_conv, tiny
from tests import stateful_objective

GLOBAL_BATCH = 16


def small_conv64_config():
  """conv64 at small widths: the paper's 64x64 layer structure at a fraction of the work."""
  config = mnist_conv.get_config()
  config.model = ml_collections.ConfigDict({"family": "conv64", "g_width": 16, "d_width": 4})
  config.image_shape = (64, 64, 3)
  config.z_dim = 8
  return config


def family_config(family: str):
  """The config of a family's check; "counting": the mlp nets with the toy objective that
  carries state (tests/stateful_objective.py)."""
  config = {"conv28": mnist_conv.get_config, "conv64": small_conv64_config,
            "mlp": tiny.get_config, "counting": tiny.get_config}[family]()
  if family == "counting":
    config.objective = stateful_objective.CountingEBGAN.name
  config.batch_size = GLOBAL_BATCH
  return tolerant_adam(config)


def tolerant_adam(config):
  """Adam with eps 1e-3: a step that is Lipschitz in the gradient.

  With eps 1e-8, Adam's first update is lr * sign(g), so a gradient that is 0
  up to rounding (BatchNorm's, say) moves by +-lr on either side of a
  sharded / single-device comparison, whose float sums differ in order. A
  larger eps keeps such noise at its own size, so the comparison measures
  the sharding, not Adam's amplification of rounding.
  """
  config.optim_g.eps = config.optim_d.eps = 1e-3
  return config


class StepCounter:
  """Counts the training steps that the trainer's jitted calls run.

  `install(setattr)` (or pytest's `monkeypatch.setattr`) wraps
  train.make_train_step and train.make_multi_step, which the trainer looks up
  at each run: a resumed run that silently retrained from step 0 would end in
  the same state (training is deterministic) but run more steps.
  """

  def __init__(self):
    self.steps = 0

  def install(self, set_attribute=setattr) -> "StepCounter":
    real_train_step, real_multi_step = train.make_train_step, train.make_multi_step

    def make_train_step(config, mesh=None):
      step = real_train_step(config, mesh)

      def counted(state, batch):
        self.steps += 1
        return step(state, batch)
      return counted

    def make_multi_step(config, mesh=None):
      multi_step = real_multi_step(config, mesh)

      def counted(state, batches):
        self.steps += batches.shape[0]
        return multi_step(state, batches)
      return counted

    set_attribute(train, "make_train_step", make_train_step)
    set_attribute(train, "make_multi_step", make_multi_step)
    return self


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


# After a few Adam steps, a weight whose gradient cancels to about 0 gets a
# different fraction of a step (lr = 4e-4) when its sum is taken in another
# order, and the later steps' metrics follow (seen after 3 conv28 steps at -O0:
# 4.6e-6 in a weight and a relative 3e-5 in a metric on an Intel Xeon, 2.4e-5
# in one G unit's weights on an AMD EPYC). 4e-5 is 10% of one step; a sharding
# error moves whole steps and changes metrics by far more.
PARAMS_ATOL = 4e-5
# BatchNorm's running statistics follow those weights: after the same 3 steps, 1.1e-6
# apart on the AMD EPYC in statistics of 0.002-0.07. Statistics of each device's slice
# instead of the global batch would differ by the batch's sampling noise, 1e-2 or more.
STATS_ATOL = 1e-5
METRICS_RTOL = 1e-4


def assert_trees_close(actual, expected, what: str, atol: float = 1e-6,
                       rtol: float = 1e-5) -> float:
  """Asserts rtol (atol for values near 0); returns the largest absolute error."""
  worst = 0.0
  for a, b in zip(leaves(actual), leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)
    worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
  return worst


def run_steps(config, mesh, batches, make_step=train.make_train_step):
  """Runs the sharded step over `batches` (arrays, or dicts of them); returns the state,
  per-step metrics, steps/s."""
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(0)), mesh)
  step = make_step(config, mesh)
  to_global = lambda batch: jax.tree.map(lambda b: train.global_batch(b, mesh), batch)
  metrics = []
  state, first = step(state, to_global(batches[0]))  # compiles
  metrics.append(first)
  start = time.perf_counter()
  for batch in batches[1:]:
    state, m = step(state, to_global(batch))
    metrics.append(m)
  jax.block_until_ready(state)
  steps_per_s = (len(batches) - 1) / (time.perf_counter() - start)
  return state, metrics, steps_per_s


def _semi_supervised_setting(num_steps: int):
  """A small EBGAN-LN and its batches: 8 labelled and GLOBAL_BATCH unlabelled images."""
  config = ladder_mnist.get_config()
  config.model.update(n_layer_g=2, size_g=32, widths_d=(32, 16))
  config.batch_size, config.labelled_batch_size = GLOBAL_BATCH, 8
  rng = np.random.default_rng(0)
  images = lambda n: rng.uniform(-1, 1, (n, *config.image_shape)).astype(np.float32)
  batches = [{"labelled": images(8), "label": rng.integers(0, 10, 8).astype(np.int32),
              "unlabelled": images(GLOBAL_BATCH)} for _ in range(num_steps)]
  return tolerant_adam(config), batches


def check_step_equality(family: str, num_steps: str = "3"):
  """k sharded steps on all devices == k steps of one device on the same global batches.

  family "ladder" is the semi-supervised EBGAN-LN step (semi_supervised.py).
  """
  make_step = train.make_train_step
  if family == "ladder":
    config, batches = _semi_supervised_setting(int(num_steps))
  else:
    config = family_config(family)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (GLOBAL_BATCH, *config.image_shape)).astype(np.float32)
               for _ in range(int(num_steps))]
  sharded, sharded_metrics, sharded_rate = run_steps(config, train.make_mesh(), batches,
                                                     make_step)
  single, single_metrics, single_rate = run_steps(
      config, train.make_mesh(jax.devices()[:1]), batches, make_step)
  param_error = assert_trees_close(sharded.generator.params, single.generator.params, "G params",
                                   atol=PARAMS_ATOL)
  param_error = max(param_error, assert_trees_close(
      sharded.discriminator.params, single.discriminator.params, "D params", atol=PARAMS_ATOL))
  stats_error = assert_trees_close(
      (sharded.generator.batch_stats, sharded.discriminator.batch_stats),
      (single.generator.batch_stats, single.discriminator.batch_stats), "batch_stats",
      atol=STATS_ATOL)
  metrics_error = assert_trees_close(sharded_metrics, single_metrics, "metrics",
                                     rtol=METRICS_RTOL)
  assert_trees_close(sharded.objective_state, single.objective_state, "objective state",
                     rtol=METRICS_RTOL)
  assert sharded.generator.params["Dense_0"]["kernel"].sharding.is_fully_replicated
  return {"family": family, "devices": jax.device_count(), "steps": int(num_steps),
          "max_abs_error_params": param_error, "max_abs_error_batch_stats": stats_error,
          "max_abs_error_metrics": metrics_error}


def _stats_after_one_step(config, mesh, batch):
  """G's and D's BatchNorm running statistics after one library step on `batch`."""
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(0)), mesh)
  state, _ = train.make_train_step(config, mesh)(state, train.global_batch(batch, mesh))
  return jax.device_get((state.generator.batch_stats, state.discriminator.batch_stats))


def _max_abs_difference(a, b) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b), strict=True))


def check_batch_statistics_are_global():
  """BatchNorm in the sharded step normalises by the global batch, not each device's slice.

  Runs the library's sharded step on all devices and on one, and compares the
  running statistics both nets' BatchNorm layers keep. Each device's slice of
  the batch holds a different constant image, so statistics of a slice would
  be far from those of the whole batch: the step on one slice alone shows
  how far.
  """
  config = family_config("conv28")
  mesh = train.make_mesh()
  batch = np.repeat(np.linspace(-1, 1, mesh.size, dtype=np.float32), GLOBAL_BATCH // mesh.size)
  batch = np.broadcast_to(batch[:, None, None, None], (GLOBAL_BATCH, 28, 28, 1)).copy()
  sharded = _stats_after_one_step(config, mesh, batch)
  one_device = train.make_mesh(jax.devices()[:1])
  whole = _stats_after_one_step(config, one_device, batch)
  error = assert_trees_close(sharded, whole, "batch_stats, sharded vs 1 device")
  # What per-device statistics would give: each device's slice stepped alone.
  slice_size = GLOBAL_BATCH // mesh.size
  per_slice = [_stats_after_one_step(config, one_device, batch[i:i + slice_size])
               for i in range(0, GLOBAL_BATCH, slice_size)]
  slice_gap = min(_max_abs_difference(stats[1], whole[1]) for stats in per_slice)
  assert slice_gap > 1e3 * max(error, 1e-6), (slice_gap, error)
  return {"devices": mesh.size, "running_stats_match_global_batch": True,
          "max_abs_error_batch_stats": error, "min_abs_gap_of_per_slice_d_stats": slice_gap}


def check_train(workdir: str, idx_dir: str, num_steps: str, out: str):
  """Trains the tiny config with the training job; saves the final state's leaves.

  Reports the final step and the number of steps this run executed (fewer
  than the final step when it resumed from a checkpoint in `workdir`).
  """
  config = tolerant_adam(tiny.get_config())
  config.idx_dir = idx_dir
  config.num_steps = int(num_steps)
  config.checkpoint_every = 1_000
  counter = StepCounter().install()
  state = trainer.train_and_evaluate(config, workdir)
  np.savez(out, *leaves(state))
  return {"devices": jax.device_count(), "step": int(state.step), "steps_run": counter.steps}


def population_setting(idx_dir: str):
  """Five members of the tiny config, 4 steps; member 3 diverges (lr 1e38)."""
  config = tolerant_adam(tiny.get_config())
  config.idx_dir = idx_dir
  config.batch_size = GLOBAL_BATCH
  config.num_steps, config.steps_per_call = 4, 2
  members = [{"seed": i % 3, "margin": 0.1 * (i + 1), "lambda_pt": 0.1, "lr_g": 1e-3,
              "lr_d": 1e-3} for i in range(5)]
  members[3]["lr_d"] = 1e38
  return config, members


def check_population_sharding(idx_dir: str):
  """A population over all devices (members along MEMBER_AXIS) equals it on one device.

  Five members on 8 devices: padded to 8, the padding dropped; the frozen
  member is compared too.
  """
  config, members = population_setting(idx_dir)
  mesh = population.make_mesh()
  # Each device holds one member's slice of every leaf.
  padded = population.pad_members(members, mesh.size)
  laid_out = population.shard(population.create_population(
      config, **{name: [m[name] for m in padded] for name in padded[0]}), mesh)
  for leaf in jax.tree.leaves(laid_out):
    assert len(leaf.sharding.device_set) == mesh.size
    assert {shard.data.shape[0] for shard in leaf.addressable_shards} == {1}
  sharded, sharded_history = trainer.train_population(config, members, mesh=mesh)
  one, one_history = trainer.train_population(
      config, members, mesh=population.make_mesh(jax.devices()[:1]))
  assert sharded.diverged.tolist() == one.diverged.tolist() == [False, False, False, True, False]
  error = assert_trees_close(sharded.states, one.states, "population states, 8 vs 1 device",
                             atol=PARAMS_ATOL)
  assert_trees_close(sharded_history, one_history, "metrics", rtol=METRICS_RTOL)
  return {"devices": mesh.size, "members": len(members), "max_abs_error": error}


def check_population_processes(idx_dir: str, port: str, process_id: str, out: str):
  """One process of a population trained by two (jax.distributed on localhost)."""
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
  config, members = population_setting(idx_dir)
  trained, history = trainer.train_population(config, members)
  np.savez(out, *leaves(trained.states), diverged=np.asarray(trained.diverged),
           d_loss=history["d_loss"])
  return {"process": jax.process_index(), "devices": jax.device_count(),
          "local_devices": jax.local_device_count()}


def check_stop_processes(idx_dir: str, port: str, process_id: str, workdir: str):
  """One of two processes training one run (jax.distributed on localhost); process 1
  alone receives SIGTERM, after its third call. Both must stop at the same step, saved."""
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
  config = family_config("mlp")
  config.idx_dir = idx_dir
  config.num_steps, config.steps_per_call = 10_000, 2
  config.log_every = config.sample_every = 2
  config.checkpoint_every = 10**9
  real_multi_step, calls = train.make_multi_step, []

  def make_multi_step(config, mesh=None):
    step = real_multi_step(config, mesh)

    def signalled(state, batches):
      calls.append(1)
      if jax.process_index() == 1 and len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      return step(state, batches)
    return signalled
  train.make_multi_step = make_multi_step
  try:
    trainer.train_and_evaluate(config, workdir)
    raise AssertionError("process %d was not stopped" % jax.process_index())
  except cli.Stopped as e:
    return {"process": jax.process_index(), "calls": len(calls), "signal": e.signum,
            "message": str(e)}


def main(argv: list[str]) -> int:
  """Runs each CHECK ARG... of `argv` (several are separated by "+") in this one process.

  Prints a JSON line per check, {"check": [CHECK, ARG...], "seconds": S} with its
  "report" or the "error" it raised, and returns 1 if any failed. Several checks in one
  process pay JAX's and TF's imports once (about 6.5 s on 2 cores).
  """
  failed = False
  while argv:
    check = argv[:argv.index("+")] if "+" in argv else argv
    argv = argv[len(check) + 1:]
    start = time.perf_counter()
    try:
      line = {"check": check, "report": globals()[check[0]](*check[1:])}
    except Exception:  # pylint: disable=broad-exception-caught  # reported, the rest still run
      line, failed = {"check": check, "error": traceback.format_exc()}, True
    line["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(line), flush=True)
  return int(failed)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
