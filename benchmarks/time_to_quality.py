"""Sample quality after fixed wall-clock budgets of training conv28 on Fashion-MNIST.

  python benchmarks/time_to_quality.py                         # budgets of 60, 300, 600 s
  python benchmarks/time_to_quality.py --budgets=20 --steps_per_call=1

One training run (experiments.trainer, experiments/configs/fashion_conv.py)
is stopped at each budget, counted from its start (compilation included),
then resumed from its checkpoint: the budgets cost max(budgets) seconds of
training, not their sum. Each stop prints one JSON line: the steps done, the
losses and energies on held-out data, and the built-in metrics of
ebgan_jax.evaluation (Frechet distance, Inception Score, precision / recall /
density / coverage, ... in the cached Fashion-MNIST classifier's feature
space). Without that classifier (train it with `python -m
experiments.train_classifier --config=experiments/configs/classifier_fashion.py`)
the line says "metrics": "unavailable" and why.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from ebgan_jax import data, evaluation, losses, train
from experiments import trainer
from experiments.configs import fashion_conv

_IDX_DIR = flags.DEFINE_string("idx_dir", "/usr/share/datasets/fashion-mnist",
                               "Directory of the four Fashion-MNIST IDX files.")
_BUDGETS = flags.DEFINE_list("budgets", ["60", "300", "600"],
                             "Wall-clock training budgets in seconds, ascending.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory; default: a new temp dir.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", None,
                                       "config.steps_per_call; default: the config's.")
_EVAL_SAMPLES = flags.DEFINE_integer(
    "eval_samples", None, "Samples scored per budget; default: config.eval.num_samples.")
# Held-out images the losses and energies are measured on.
_HELD_OUT = 1000


def make_config(train_seconds: float):
  config = fashion_conv.get_config()
  config.idx_dir = _IDX_DIR.value
  if _STEPS_PER_CALL.value is not None:
    config.steps_per_call = _STEPS_PER_CALL.value
  config.train_seconds = train_seconds
  config.num_steps = 10**9  # the budget stops training, never the step count
  # Only the stops write checkpoints (one per budget) and sample grids.
  config.checkpoint_every = config.sample_every = config.num_steps
  config.log_every = 100 * config.steps_per_call
  return config


def make_evaluator(config):
  """ebgan_jax.evaluation's scorer, or (None, why not) when the metrics cannot run here."""
  try:
    evaluator = evaluation.Evaluator(config)
  except evaluation.EvaluationError as e:
    return None, str(e)
  num_samples = _EVAL_SAMPLES.value or evaluator.settings.num_samples
  key = jax.random.PRNGKey(evaluator.settings.seed)

  def scores(state):
    results = evaluator(evaluation.generate_images(state, key, num_samples))
    results.pop("class_histogram", None)
    return {"num_samples": num_samples, **results}
  return scores, None


def held_out_losses(state, config, test_images: np.ndarray) -> dict[str, float]:
  """The step's quantities on held-out real images and fresh samples, nets in training mode."""
  real = data.pixels_to_signed(test_images.astype(np.float32))
  fake = train.generate(state, jax.random.PRNGKey(1), len(real))
  d = state.discriminator

  def energy_and_embedding(x):
    (reconstruction, embedding), _ = d.apply_fn(
        {"params": d.params, "batch_stats": d.batch_stats}, x, train=True, mutable=["batch_stats"])
    return losses.energy(x, reconstruction, config.energy_reduction), embedding

  energy_real, _ = energy_and_embedding(real)
  energy_fake, embedding = energy_and_embedding(fake)
  return {
      "d_loss": float(losses.discriminator_loss(energy_real, energy_fake, config.margin)),
      "g_loss": float(losses.generator_loss(energy_fake, embedding, config.lambda_pt)),
      "energy_real": float(np.mean(energy_real)),
      "energy_fake": float(np.mean(energy_fake)),
      "pt": float(losses.pulling_away(embedding)),
      "hinge_active": float(np.mean(energy_fake < config.margin)),
  }


def main(argv):
  del argv  # Unused.
  budgets = sorted(float(b) for b in _BUDGETS.value)
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="ebgan_time_to_quality_")
  scores, unavailable = make_evaluator(make_config(0.0))
  if unavailable:
    logging.warning("Metrics unavailable: %s", unavailable)
  test_images, _ = data.load_split(make_config(0.0), "test")
  test_images = test_images[:_HELD_OUT]

  trained_s = 0.0
  for budget in budgets:
    # What is left of this budget; a run past it still takes one call.
    config = make_config(max(budget - trained_s, 1e-9))
    start = time.perf_counter()
    state = trainer.train_and_evaluate(config, workdir)
    trained_s += time.perf_counter() - start
    result = {
        "budget_s": budget,
        "trained_s": round(trained_s, 1),
        "steps": int(state.step),
        "steps_per_call": config.steps_per_call,
        "batch": config.batch_size,
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "held_out": held_out_losses(state, config, test_images),
        "metrics": scores(state) if scores else "unavailable",
    }
    if unavailable:
      result["metrics_unavailable_because"] = unavailable
    print(json.dumps(result), flush=True)
  logging.info("Checkpoints in %s", os.path.join(workdir, "checkpoints"))


if __name__ == "__main__":
  app.run(main)
