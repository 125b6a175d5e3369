r"""The tuning study of docs/tuning.md: margin, lambda_pt, lr_G / lr_D and the energy.

  python -m experiments.tuning_study --idx_dir=/usr/share/datasets/fashion-mnist \
      --steps=10000 --out=/tmp/study
  python -m experiments.tuning_study ... --studies=margin_pt --seeds=2

Each study is one population (ebgan_jax/population.py, its one training loop):
its settings times its seeds are the members, trained together for --steps
steps of the conv28 nets on Fashion-MNIST (experiments/configs/fashion_conv.py),
each member on the batches its single run with its seed would read
(data.create_dataset). The budget is a step
count, not seconds, so that every setting gets the same work on any device:
docs/tuning.md takes it from what a `train_seconds=600` run of
experiments.mnist_ebgan completed on the 2-core CPU at one step per call. The
studies:

  margin_pt  "mean" energy, margin x lambda_pt, lr_G = lr_D
  lr_ratio   "mean" energy, margin x lr_G / lr_D in {2, 5} (lr_D fixed), lambda_pt 0.1
  norm       the paper's "norm" energy ||r|| (Eq. 13) and its scale of margins
  stacked    stacked Fashion-MNIST (1000 modes), lambda_pt x seeds at margin 0.3
  objective_NAME, stacked_objective_NAME
             the comparison of docs/objectives.md: the objective NAME (ebgan, gan,
             began, magan) at its config's settings (fashion_conv.py:NAME), x seeds

Each member is then scored by ebgan_jax.evaluation (the cached Fashion-MNIST
classifier) on --eval_samples samples; so are the training images and the
blurred test images (evaluation.reference_images) as references. Outputs in
--out: results.jsonl (one row per member and reference) and samples.npz (64
samples per member from a fixed z, key "STUDY/MEMBER");
experiments/tuning_report.py turns them into tables and figures.
"""

import itertools
import json
import os
import time

from absl import flags, logging
import jax
import ml_collections
import numpy as np

from ebgan_jax import data, evaluation, objectives
from experiments import cli, trainer
from experiments.configs import fashion_conv, mnist_conv, stacked_mnist_conv

MARGINS = (0.1, 0.2, 0.3, 0.5, 1.0)
# ||r|| = 28 sqrt(mean r^2) for 28x28 images: 5 to 28 spans the "mean" grid's
# 0.03 to 1 (28 ~ a flat grey image against tanh-bounded reconstructions);
# 10 is the paper's MNIST margin.
NORM_MARGINS = (5.0, 10.0, 15.0, 20.0, 28.0)
GRID_SAMPLES = 64


def objective_setting(objective: str) -> dict:
  """The settings of a member (no seed) that the config variant `objective` gives."""
  config = fashion_conv.get_config(objective)
  hparams = objectives.hyperparameters(objectives.from_config(config), config)
  return {"lr_g": config.optim_g.learning_rate, "lr_d": config.optim_d.learning_rate, **hparams}


def studies(base_lr: float) -> dict[str, tuple[dict, list[dict], int]]:
  """name -> (config overrides, settings without seed, default seeds)."""
  def setting(margin, lambda_pt=0.1, ratio=1.0):
    return {"margin": margin, "lambda_pt": lambda_pt, "lr_g": ratio * base_lr, "lr_d": base_lr}
  comparison = {}
  for objective in mnist_conv.OBJECTIVE_VARIANTS:
    comparison[f"objective_{objective}"] = (
        {"objective": objective}, [objective_setting(objective)], 3)
    comparison[f"stacked_objective_{objective}"] = (
        {"objective": objective, "stacked": True}, [objective_setting(objective)], 3)
  return {
      "margin_pt": ({}, [setting(m, pt) for m, pt in itertools.product(MARGINS, (0.0, 0.1, 1.0))],
                    3),
      "lr_ratio": ({}, [setting(m, ratio=r) for m, r in itertools.product(MARGINS, (2.0, 5.0))],
                   2),
      "norm": ({"energy_reduction": "norm"}, [setting(m) for m in NORM_MARGINS], 2),
      "stacked": ({"stacked": True}, [setting(0.3, pt) for pt in (0.0, 0.1, 1.0)], 3),
      **comparison,
  }


def define_flags() -> None:
  """The program's flags; only when it runs as one (the tests import this module)."""
  flags.DEFINE_string("idx_dir", "/usr/share/datasets/fashion-mnist",
                      "Directory of the four Fashion-MNIST IDX files.")
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_integer("steps", 10_000, "Training steps of every member.")
  flags.DEFINE_list("studies", ["margin_pt", "lr_ratio", "norm", "stacked"],
                    "Studies to run, in order.")
  flags.DEFINE_integer("seeds", 0, "Seeds per setting; 0: each study's own (2 or 3).")
  flags.DEFINE_integer("eval_samples", 10_000, "Samples scored per member.")
  flags.DEFINE_integer("steps_per_call", 50, "Steps per jitted call.")
  flags.DEFINE_string("classifier_dir", None,
                      "Cache of experiments.train_classifier; default: the configs'.")


def make_config(overrides: dict, idx_dir: str, classifier_dir: str | None,
                eval_samples: int) -> ml_collections.ConfigDict:
  objective = overrides.get("objective", "ebgan")
  if overrides.get("stacked"):
    config = stacked_mnist_conv.get_config(objective)
    config.dataset = "fashion_mnist"  # the digits of the stack, and the classifier
  else:
    config = fashion_conv.get_config(objective)
  config.idx_dir = idx_dir
  if classifier_dir:
    config.eval.classifier_dir = classifier_dir
  config.energy_reduction = overrides.get("energy_reduction", config.energy_reduction)
  config.num_samples = eval_samples  # of each reference, as of each member
  config.eval.kid_subsets = 10  # KID's spread over 100 subsets cost 2 s more per member
  return config


def score_row(evaluator: evaluation.Evaluator, images: np.ndarray) -> dict:
  """The built-in metrics, plus the share of the rarest class (plain data only)."""
  results = evaluator(images)
  if "class_histogram" in results:
    histogram = np.asarray(results["class_histogram"])
    results["min_class_fraction"] = float(histogram.min() / histogram.sum())
  return results


def run_study(name: str, config, evaluator: evaluation.Evaluator, references: dict[str, np.ndarray],
              settings: list[dict], seeds: int, args, grids: dict) -> list[dict]:
  """Trains the study's population, then scores every member; returns the result rows."""
  members = [{"seed": seed, **s} for s, seed in itertools.product(settings, range(seeds))]
  config = config.copy_and_resolve_references()
  config.num_steps, config.steps_per_call = args.steps, args.steps_per_call
  start = time.perf_counter()
  # Checkpointed under --out, so a study stopped in training resumes there.
  population, history = trainer.train_population(config, members,
                                                 os.path.join(args.out, "checkpoints", name))
  jax.block_until_ready(population)
  train_s = time.perf_counter() - start
  logging.info("%s: %d members x %d steps in %.0f s", name, len(members), args.steps, train_s)

  sample_key = jax.random.PRNGKey(evaluator.settings.seed)
  grid_key = jax.random.PRNGKey(1)
  rows = []
  # Training metrics at the end: the mean of the last tenth of the calls.
  tail = max(1, next(iter(history.values())).shape[1] // 10)
  for i, member in enumerate(members):
    state = population.member(i)
    grids[f"{name}/{i}"] = evaluation.generate_images(state, grid_key, GRID_SAMPLES)
    rows.append({
        "study": name, "member": i, "objective": config.objective,
        "energy": config.energy_reduction, **member,
        "lr_ratio": member["lr_g"] / member["lr_d"], "steps": int(state.step),
        "population_size": len(members), "train_s": round(train_s, 1),
        **{f"train_{k}": float(np.mean(v[i, -tail:])) for k, v in history.items()},
        **score_row(evaluator, evaluation.generate_images(state, sample_key, args.eval_samples)),
    })
  for label, reference in references.items():
    rows.append({"study": name, "member": f"reference:{label}",
                 **score_row(evaluator, reference)})
  return rows


def write_rows(rows: list[dict], out: str) -> None:
  with open(os.path.join(out, "results.jsonl"), "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)


class StudyError(ValueError):
  """Bad flags, or a classifier or data split the studies need is missing."""


def main(argv):
  del argv  # cli.run rejects positional arguments
  args = flags.FLAGS
  base_lr = fashion_conv.get_config().optim_d.learning_rate
  known = studies(base_lr)
  unknown = sorted(set(args.studies) - set(known))
  if (unknown or args.steps < 1 or args.steps_per_call < 1 or args.eval_samples < 10
          or args.seeds < 0):
    raise StudyError(f"give --studies from {sorted(known)} (unknown: {unknown}), --steps >= 1, "
                     "--steps_per_call >= 1, --eval_samples >= 10 and --seeds >= 0")
  plan, evaluators, references = [], {}, {}
  try:
    # Every classifier and data split before any training: a missing one fails at once.
    for name in args.studies:
      overrides, settings, seeds = known[name]
      config = make_config(overrides, args.idx_dir, args.classifier_dir, args.eval_samples)
      stacked = data.is_stacked(config)
      if stacked not in evaluators:
        evaluators[stacked] = evaluation.Evaluator(config)
        references[stacked] = evaluation.reference_images(config)
      plan.append((name, config, evaluators[stacked], references[stacked], settings,
                   args.seeds or seeds))
    os.makedirs(args.out, exist_ok=True)
  except (ValueError, OSError) as e:  # EvaluationError is a ValueError
    raise StudyError(str(e)) from None
  rows, grids = [], {}
  for name, config, evaluator, reference, settings, seeds in plan:
    rows += run_study(name, config, evaluator, reference, settings, seeds, args, grids)
    # Written after every study: a run cut short keeps what it finished.
    write_rows(rows, args.out)
    np.savez_compressed(os.path.join(args.out, "samples.npz"), **grids)


if __name__ == "__main__":
  cli.run(main, define_flags, bad_input=(StudyError,))
