"""Train steps per second of the real jitted step, on whatever devices JAX sees.

  python benchmarks/step_throughput.py --family conv28 --batch 64 --steps 300
  python benchmarks/step_throughput.py --all   # conv28 and mlp at batch 64 and 256, conv64 at 64
  python benchmarks/step_throughput.py --family mlp --steps_per_call 16
  python benchmarks/step_throughput.py --family conv64 --steps 20 --warmup 4   # 64x64x3, z_dim 100
  python benchmarks/step_throughput.py --family ladder --batch 100 --steps_per_call 50 \
      [--noebgan]   # the semi-supervised EBGAN-LN step (its LN baseline with --noebgan)

Builds the state and the step exactly as training does (train.make_train_step,
or train.make_multi_step for --steps_per_call K > 1; for "ladder" those of
semi_supervised.py, on --batch labelled and --batch unlabelled images), compiles it ahead of
time (compile_s), runs --warmup steps, then times --steps steps --repeats
times, each ending in block_until_ready, and prints one JSON line per setting
with the median rate. Batches are random images already on the device, so
the input pipeline is not measured (benchmarks/input_pipeline.py does that).

flops_per_step is XLA's cost analysis of the compiled single step;
attained_fraction divides the FLOP/s it reaches by the FLOP/s of a large
float32 matmul (jnp.dot) on the same device, a practical peak. On CPU the
line also names the machine (benchmarks/machine.py: model, clock, SIMD flags,
cores) and gives physical_peak_fraction, the FLOP/s reached over the cores'
float32 multiply-add peak at that clock.
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import machine

from ebgan_jax import state as state_lib, train
from experiments import semi_supervised
from experiments.configs import ladder_mnist, mnist_conv, mnist_mlp

_FAMILY = flags.DEFINE_enum("family", "conv28", ["conv28", "mlp", "conv64", "ladder"],
                            "Model family (its config; ladder: ladder_mnist's EBGAN-LN).")
_EBGAN = flags.DEFINE_bool("ebgan", True, "ladder: EBGAN-LN; --noebgan: the LN baseline.")
_BATCH = flags.DEFINE_integer("batch", 64, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 300, "Steps timed per repeat.")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Steps run before timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs of --steps; the median is reported.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 1, "K: steps per jitted call.")
_COMPUTE_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"],
                                   "dtype of the nets' activations (params stay float32).")
_MATMUL_OPERANDS = flags.DEFINE_enum("matmul_operands", "float32", ["float32", "bfloat16"],
                                     "conv families: the matmul forms' operand dtype "
                                     "(float32 sums either way).")
_ALL = flags.DEFINE_bool("all", False, "conv28 and mlp at batch 64 and 256, conv64 at 64 "
                         "(overrides --family and --batch).")
# Distinct batches cycled through: enough that no cache holds the input.
_NUM_BATCHES = 8
_MATMUL_SIZE = 2048


def make_config(family: str, batch: int, steps_per_call: int, compute_dtype: str):
  config = {"mlp": mnist_mlp, "ladder": ladder_mnist}.get(family, mnist_conv).get_config()
  if family == "ladder":
    config.ebgan = _EBGAN.value
    semi_supervised.resolve_objective(config)  # --noebgan: the objective "ln"
    config.labelled_batch_size = batch
  if family == "conv64":
    # The paper's 64x64 nets with the conv objective of mnist_conv (the same work per step).
    config.model = ml_collections.ConfigDict({"family": "conv64"})
    config.image_shape = (64, 64, 3)
    config.z_dim = 100
  config.batch_size = batch
  config.steps_per_call = steps_per_call
  config.compute_dtype = compute_dtype
  config.matmul_operands = _MATMUL_OPERANDS.value
  return config


def matmul_flops_per_s(repeats: int = 10) -> float:
  """FLOP/s of an n x n float32 matmul: the device's attainable peak for dense work."""
  n = _MATMUL_SIZE
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.float32) for i in range(2))
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times)


def _compile(step, state, batch):
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return compiled, time.perf_counter() - start


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  # A list of one dict per program in older JAX versions, the dict in newer.
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", float("nan")))


def measure(family: str, batch: int, steps_per_call: int, compute_dtype: str,
            peak_flops_per_s: float) -> dict:
  config = make_config(family, batch, steps_per_call, compute_dtype)
  mesh = train.make_mesh()
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(0)), mesh)
  rng = np.random.default_rng(0)
  shape = (steps_per_call, batch, *config.image_shape)
  images = lambda: rng.uniform(-1, 1, shape).astype(np.float32)
  if family == "ladder":
    host_batches = [{"labelled": images(), "unlabelled": images(),
                     "label": rng.integers(0, 10, shape[:2]).astype(np.int32)}
                    for _ in range(_NUM_BATCHES)]
  else:
    host_batches = [images() for _ in range(_NUM_BATCHES)]
  make_train_step, make_multi_step = train.make_train_step, train.make_multi_step
  on_devices = lambda to_global, x: jax.tree.map(lambda b: to_global(b, mesh), x)

  # The single step's FLOPs: cost analysis counts a scan's body once, not K times.
  single_batches = [on_devices(train.global_batch, jax.tree.map(lambda b: b[0], x))
                    for x in host_batches]
  compiled, compile_s = _compile(make_train_step(config, mesh), state, single_batches[0])
  flops_per_step = _flops(compiled)
  batches = single_batches
  if steps_per_call > 1:
    batches = [on_devices(train.global_batches, x) for x in host_batches]
    compiled, compile_s = _compile(make_multi_step(config, mesh), state, batches[0])

  def run(num_calls):
    nonlocal state
    for i in range(num_calls):
      state, _ = compiled(state, batches[i % _NUM_BATCHES])
    jax.block_until_ready(state)

  run(max(1, _WARMUP.value // steps_per_call))
  num_calls = max(1, _STEPS.value // steps_per_call)
  rates = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    run(num_calls)
    rates.append(num_calls * steps_per_call / (time.perf_counter() - start))
  steps_per_s = statistics.median(rates)
  return {
      "family": family,
      **({"ebgan": _EBGAN.value} if family == "ladder" else {}),
      "batch": batch,
      "steps_per_call": steps_per_call,
      "compute_dtype": compute_dtype,
      "matmul_operands": _MATMUL_OPERANDS.value,
      "devices": mesh.size,
      "platform": jax.devices()[0].platform,
      "compile_s": round(compile_s, 2),
      "steps_per_s": round(steps_per_s, 2),
      "images_per_s": round(steps_per_s * batch),
      "steps_per_s_repeats": [round(r, 2) for r in rates],
      "steps": num_calls * steps_per_call,
      "flops_per_step": flops_per_step,
      "matmul_flops_per_s": round(peak_flops_per_s),
      "attained_fraction": round(flops_per_step * steps_per_s / peak_flops_per_s, 3),
      "cpu_count": os.cpu_count(),
      "loadavg_1m": round(os.getloadavg()[0], 2),
      **_on_cpu(flops_per_step * steps_per_s),
  }


def _on_cpu(flops_per_s: float) -> dict:
  """The CPU's description and the fraction of its physical peak reached; {} on accelerators."""
  if jax.devices()[0].platform != "cpu":
    return {}
  info = machine.cpu_info()
  return {**info, "physical_peak_fraction": round(flops_per_s / info["cpu_peak_flops_per_s"], 3)}


def main(argv):
  del argv  # Unused.
  peak = matmul_flops_per_s()
  settings = ([(f, b) for f in ("conv28", "mlp") for b in (64, 256)] + [("conv64", 64)]
              if _ALL.value else [(_FAMILY.value, _BATCH.value)])
  for family, batch in settings:
    print(json.dumps(measure(family, batch, _STEPS_PER_CALL.value, _COMPUTE_DTYPE.value, peak)),
          flush=True)


if __name__ == "__main__":
  app.run(main)
