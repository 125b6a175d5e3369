"""Checks that need several (simulated CPU) devices or processes, run in a subprocess.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice CHECK ...

The device count is fixed when JAX starts, so tests/test_sharding.py runs
these in fresh processes and the rest of the suite keeps one device. Each
check raises on failure (non-zero exit) and prints one JSON line.
"""

import json
import sys
import time

import jax
import numpy as np

from ebgan_jax import state as state_lib, train
from experiments import trainer
from experiments.configs import mnist_conv, tiny

GLOBAL_BATCH = 16


def family_config(family: str):
  config = mnist_conv.get_config() if family == "conv28" else tiny.get_config()
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


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_close(actual, expected, what: str) -> float:
  """Asserts rtol 1e-5 (atol 1e-6 for values near 0); returns the largest absolute error."""
  worst = 0.0
  for a, b in zip(leaves(actual), leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=what)
    worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
  return worst


def run_steps(config, mesh, batches):
  """Runs the sharded step over `batches`; returns the state, per-step metrics, steps/s."""
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(0)), mesh)
  step = train.make_train_step(config, mesh)
  metrics = []
  state, first = step(state, train.global_batch(batches[0], mesh))  # compiles
  metrics.append(first)
  start = time.perf_counter()
  for batch in batches[1:]:
    state, m = step(state, train.global_batch(batch, mesh))
    metrics.append(m)
  jax.block_until_ready(state)
  steps_per_s = (len(batches) - 1) / (time.perf_counter() - start)
  return state, metrics, steps_per_s


def check_step_equality(family: str, num_steps: str = "3"):
  """k sharded steps on all devices == k steps of one device on the same global batches."""
  config = family_config(family)
  rng = np.random.default_rng(0)
  batches = [rng.uniform(-1, 1, (GLOBAL_BATCH, 28, 28, 1)).astype(np.float32)
             for _ in range(int(num_steps))]
  sharded, sharded_metrics, sharded_rate = run_steps(config, train.make_mesh(), batches)
  single, single_metrics, single_rate = run_steps(
      config, train.make_mesh(jax.devices()[:1]), batches)
  param_error = assert_trees_close(sharded.generator.params, single.generator.params, "G params")
  param_error = max(param_error, assert_trees_close(
      sharded.discriminator.params, single.discriminator.params, "D params"))
  stats_error = assert_trees_close(
      (sharded.generator.batch_stats, sharded.discriminator.batch_stats),
      (single.generator.batch_stats, single.discriminator.batch_stats), "batch_stats")
  metrics_error = assert_trees_close(sharded_metrics, single_metrics, "metrics")
  assert sharded.generator.params["Dense_0"]["kernel"].sharding.is_fully_replicated
  print(json.dumps({"family": family, "devices": jax.device_count(), "steps": int(num_steps),
                    "max_abs_error_params": param_error, "max_abs_error_batch_stats": stats_error,
                    "max_abs_error_metrics": metrics_error}))


def check_batch_statistics_are_global():
  """BatchNorm in the sharded step normalises by the global batch, not each device's slice."""
  config = family_config("conv28")
  mesh = train.make_mesh()
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(0)), mesh)
  # Each device's slice holds a different constant image: per-slice statistics
  # would differ from the global ones.
  batch = np.repeat(np.linspace(-1, 1, mesh.size, dtype=np.float32), GLOBAL_BATCH // mesh.size)
  batch = np.broadcast_to(batch[:, None, None, None], (GLOBAL_BATCH, 28, 28, 1)).copy()
  d = state.discriminator

  @jax.jit
  def batch_mean_of_bn_input(params, x):
    _, intermediates = d.apply_fn({"params": params, "batch_stats": d.batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    return intermediates["batch_stats"]["BatchNorm_0"]["mean"]

  sharded_x = train.global_batch(batch, mesh)
  sharded = batch_mean_of_bn_input(d.params, sharded_x)
  whole = batch_mean_of_bn_input(jax.device_put(d.params, jax.devices()[0]),
                                 jax.device_put(batch, jax.devices()[0]))
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(whole), rtol=1e-5, atol=1e-7)
  print(json.dumps({"devices": mesh.size, "running_mean_matches_global_batch": True}))


def check_train(workdir: str, idx_dir: str, num_steps: str, out: str):
  """Trains the tiny config with the training job; saves the final state's leaves."""
  config = tolerant_adam(tiny.get_config())
  config.idx_dir = idx_dir
  config.num_steps = int(num_steps)
  config.checkpoint_every = 1_000
  state = trainer.train_and_evaluate(config, workdir)
  np.savez(out, *leaves(state))
  print(json.dumps({"devices": jax.device_count(), "step": int(state.step)}))


def measure_rates(family: str):
  """Steps/s of the sharded step on all devices and on one, same global batch."""
  config = family_config(family)
  rng = np.random.default_rng(0)
  batches = [rng.uniform(-1, 1, (GLOBAL_BATCH, 28, 28, 1)).astype(np.float32)
             for _ in range(11)]
  _, _, all_rate = run_steps(config, train.make_mesh(), batches)
  _, _, one_rate = run_steps(config, train.make_mesh(jax.devices()[:1]), batches)
  print(json.dumps({"family": family, "global_batch": GLOBAL_BATCH,
                    f"steps_per_s_{jax.device_count()}_devices": all_rate,
                    "steps_per_s_1_device": one_rate}))


if __name__ == "__main__":
  globals()[sys.argv[1]](*sys.argv[2:])
