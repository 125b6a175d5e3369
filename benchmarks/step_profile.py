"""Where the train step's time goes: a jax.profiler trace of the compiled step, grouped by kind.

  python benchmarks/step_profile.py --family conv64
  python benchmarks/step_profile.py --family conv28 --top 30

Builds the step exactly as benchmarks/step_throughput.py does (same configs,
random batches on the device), runs --warmup steps, then traces --traced_steps steps
and sums the duration of every XLA:CPU thunk by the HLO instruction it runs.
Each instruction is put in one group by its name and the JAX source path XLA
keeps in its metadata (op_name):
  dots        the matmuls (XLA dots and the YNNPACK fusions that hold one)
  conv glue   the rest of the 4x4 stride-2 layers' matmul forms: pads, strided
              slices, stacks, concatenations, copies and the shifted sums
  reductions  sums over the batch (BatchNorm statistics, energies, losses)
  other       the rest: activations, BatchNorm's elementwise work, and Adam's
              updates (their op_name names no optimizer, so they cannot be told apart)
Prints one JSON line (milliseconds per step per group, their fractions, the
machine) and then the --top instructions. Thunks run one after another on
XLA:CPU, each using all cores, so the groups add up to about the step's time.
"""

import collections
import glob
import json
import re
import sys
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np

import machine
import step_throughput
from ebgan_jax import state as state_lib, train

_TRACED_STEPS = flags.DEFINE_integer("traced_steps", 3, "Steps traced.")
_TOP = flags.DEFINE_integer("top", 20, "Instructions listed after the JSON line, longest first.")

_OP_NAME = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]*)\"")
_LAYER = re.compile(r"/(Conv|ConvTranspose)_\d+/")


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the JAX source path of the op it came from."""
  return {m.group(1): m.group(2) for m in map(_OP_NAME.match, hlo_text.splitlines()) if m}


def group(instruction: str, op_name: str) -> str:
  last = op_name.rsplit("/", 1)[-1]
  if instruction.startswith(("dot", "ynn_fusion")) and last in ("dot_general", "transpose"):
    return "dots"  # A dot's transpose is the backward pass's dot.
  if "reduce" in last:
    return "reductions"
  if _LAYER.search(op_name):
    return "conv glue"
  return "other"


def profile(family: str, batch: int, warmup: int, num_steps: int):
  """(ms per step per group, ms per step per instruction, instruction -> op_name) of
  `family`'s single step."""
  config = step_throughput.make_config(family, batch, 1, "float32")
  mesh = train.make_mesh()
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(0)), mesh)
  images = np.random.default_rng(0).uniform(-1, 1, (batch, *config.image_shape))
  images = train.global_batch(images.astype(np.float32), mesh)
  compiled = train.make_train_step(config, mesh).lower(state, images).compile()
  names = op_names(compiled.as_text())
  for _ in range(warmup):
    state, _ = compiled(state, images)
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(num_steps):
        state, _ = compiled(state, images)
      jax.block_until_ready(state)
    trace = jax.profiler.ProfileData.from_file(
        glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
  per_instruction = collections.Counter()
  for plane in trace.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in names:
          per_instruction[event.name] += event.duration_ns / 1e6 / num_steps
  per_group = collections.Counter()
  for instruction, ms in per_instruction.items():
    per_group[group(instruction, names[instruction])] += ms
  return per_group, per_instruction, names


def main(argv):
  del argv  # Unused.
  family, batch = step_throughput._FAMILY.value, step_throughput._BATCH.value
  if family == "ladder":
    print("error: --family ladder is not profiled here (its batches are labelled and "
          "unlabelled pairs); use conv28, mlp or conv64", file=sys.stderr)
    sys.exit(2)
  per_group, per_instruction, names = profile(family, batch, step_throughput._WARMUP.value,
                                              _TRACED_STEPS.value)
  total = sum(per_group.values())
  print(json.dumps({
      "family": family, "batch": batch, "steps_traced": _TRACED_STEPS.value,
      "platform": jax.devices()[0].platform, "thunk_ms_per_step": round(total, 1),
      "ms_per_step": {g: round(ms, 1) for g, ms in per_group.most_common()},
      "fraction": {g: round(ms / total, 3) for g, ms in per_group.most_common()},
      **(machine.cpu_info() if jax.devices()[0].platform == "cpu" else {})}), flush=True)
  for instruction, ms in per_instruction.most_common(_TOP.value):
    print(f"{ms:8.1f} ms  {group(instruction, names[instruction]):11s} {instruction:26s} "
          f"{names[instruction]}")


if __name__ == "__main__":
  app.run(main)
