"""Member-steps per second of a population against the same runs one after another.

  python benchmarks/population.py                      # P in 1, 4, 16, 64; both member maps
  python benchmarks/population.py --sizes 16 --steps 50 --nets small

For each population size P, three ways to train P runs of the mlp family
(EBGAN, "norm" energy, batch 64) for --steps steps each:
  sequential   P single runs one after another, each with the real jitted
               train.make_multi_step of a single run (the pre-population way)
  vmap         one population, population.make_multi_step with member_map "vmap"
  sequential   the same with member_map "sequential" (each device steps its
  (in one      members one after another inside one program; the CPU default)
  program)
Every variant runs --steps_per_call steps per call, compiles and warms up
first (not timed), and ends its timing in block_until_ready; the three run in
turn, --repeats rounds, and each reports its median. Batches are
random images already on the device: the input pipeline is not measured.
Prints one JSON line per (nets, P) with member-steps per second of each and
the ratios to the sequential runs.
"""

import json
import statistics
import time

from absl import app, flags
import jax
import numpy as np

from ebgan_jax import population as population_lib, state as state_lib, train
from experiments.configs import mnist_mlp

_SIZES = flags.DEFINE_list("sizes", ["1", "4", "16", "64"], "Population sizes P.")
_STEPS = flags.DEFINE_integer("steps", 100, "Steps per member timed, after the warm-up call.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 50,
                                       "K: steps per jitted call (the grid's configs: 50).")
_NETS = flags.DEFINE_list("nets", ["small", "medium"], "Net sizes from NETS.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds of the three variants, in turn; the "
                                "median of each is reported.")

# Nets of the grid (experiments/configs/grid_mnist.py): the reduced grid's smallest
# and largest-but-one, and the full grid's largest (use small --sizes for it on CPU).
NETS = {
    "small": {"n_layer_g": 3, "size_g": 400, "n_layer_d": 2, "size_d": 128},
    "medium": {"n_layer_g": 4, "size_g": 800, "n_layer_d": 3, "size_d": 256},
    "largest": {"n_layer_g": 5, "size_g": 3200, "n_layer_d": 5, "size_d": 1024},
}


def make_config(nets: str):
  config = mnist_mlp.get_config()
  config.model = {"family": "mlp", **NETS[nets], "dropout_d": 0.0}
  config.batch_size = 64
  config.steps_per_call = _STEPS_PER_CALL.value
  return config


def _timed(run, calls: int) -> float:
  """Seconds for `calls` calls of run(), after one untimed call (compilation, warm-up)."""
  jax.block_until_ready(run())
  start = time.perf_counter()
  for _ in range(calls):
    out = run()
  jax.block_until_ready(out)
  return time.perf_counter() - start


def sequential_runs(config, size: int, batches: jax.Array, calls: int) -> float:
  """Seconds for `size` single runs of `calls` multi-step calls each, one run after another."""
  mesh = train.make_mesh()
  step = train.make_multi_step(config, mesh)
  batches = jax.device_put(batches, train.batches_sharded(mesh))
  total = 0.0
  for seed in range(size):
    holder = {"state": train.replicate(state_lib.create_state(config, jax.random.PRNGKey(seed)),
                                       mesh)}

    def run():
      holder["state"], metrics = step(holder["state"], batches)
      return metrics
    total += _timed(run, calls)
  return total


def population_run(config, size: int, batches: jax.Array, calls: int, member_map: str) -> float:
  mesh = population_lib.make_mesh()
  population = population_lib.shard(population_lib.create_population(
      config, seed=list(range(size)), lr_g=[1e-3] * size, lr_d=[1e-3] * size,
      margin=[10.0] * size, lambda_pt=[0.1] * size), mesh)
  streams = jax.device_put(np.zeros(size, np.int32), population_lib.member_sharded(mesh))
  step = population_lib.make_multi_step(mesh, member_map)
  holder = {"population": population}

  def run():
    holder["population"], metrics = step(holder["population"], batches[:, None], streams)
    return metrics
  return _timed(run, calls)


def main(argv):
  del argv
  calls = max(1, _STEPS.value // _STEPS_PER_CALL.value)
  member_steps = calls * _STEPS_PER_CALL.value
  for nets in _NETS.value:
    config = make_config(nets)
    rng = np.random.default_rng(0)
    batches = jax.device_put(rng.uniform(-1, 1, (config.steps_per_call, config.batch_size, 28, 28,
                                                 1)).astype(np.float32))
    for size in map(int, _SIZES.value):
      variants = {
          "sequential_runs": lambda: sequential_runs(config, size, batches, calls),
          "vmap": lambda: population_run(config, size, batches, calls, "vmap"),
          "sequential_in_program": lambda: population_run(config, size, batches, calls,
                                                          "sequential"),
      }
      # The variants in turn, round after round: a drift of the machine's speed
      # reaches all three alike.
      seconds = {name: [] for name in variants}
      for _ in range(_REPEATS.value):
        for name, run in variants.items():
          seconds[name].append(run())
      rates = {k: size * member_steps / statistics.median(s) for k, s in seconds.items()}
      print(json.dumps({
          "nets": nets, **NETS[nets], "population": size, "batch": config.batch_size,
          "steps_per_call": config.steps_per_call, "member_steps": member_steps,
          "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
          **{f"{k}_member_steps_per_s": round(r, 1) for k, r in rates.items()},
          "vmap_vs_sequential_runs": round(rates["vmap"] / rates["sequential_runs"], 3),
          "in_program_vs_sequential_runs": round(
              rates["sequential_in_program"] / rates["sequential_runs"], 3),
      }), flush=True)


if __name__ == "__main__":
  app.run(main)
