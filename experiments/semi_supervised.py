r"""Semi-supervised EBGAN-LN, or its ladder-network baseline (the paper's Sec. 4.2).

  python -m experiments.semi_supervised --workdir=/tmp/ebgan_ln --config.num_labels=100
  python -m experiments.semi_supervised --workdir=/tmp/ln --config.ebgan=False
  python -m experiments.semi_supervised --workdir=/tmp/ebgan_ln \
      --config=experiments/configs/ladder_fashion.py \
      --config.idx_dir=/usr/share/datasets/fashion-mnist

It trains with the loop of experiments.mnist_ebgan (checkpoints in
workdir/checkpoints, exact resume, TensorBoard logs in workdir) and logs the
test error of D's classifier on the whole test split as the scalar
`test_error` every config.eval_every steps and at the end. Bad input prints
one line and exits with status 2; a diverged run exits with status 3.
"""

import csv
import itertools
import os

from absl import flags, logging
import numpy as np

from ebgan_jax import data, objectives, semi_supervised, train
from experiments import cli, trainer

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "ladder_mnist.py")
# A workdir's checkpoints fix these besides the nets: the labelled subset (drawn by
# the seed) and whether G is trained.
FIXED_FIELDS = (*trainer.ARCHITECTURE_FIELDS, "ebgan", "num_labels", "seed")
RESULTS = "results.csv"
HISTORY = "history.npz"


def resolve_objective(config) -> None:
  """`ebgan=False` asks for the ladder network alone: objective "ln" for "ebgan_ln"."""
  if not config.ebgan and config.objective == "ebgan_ln":
    config.objective = "ln"


def validate_config(config) -> None:
  """trainer.validate_config's checks, and those of the semi-supervised fields."""
  if config.model.family != "ladder":
    raise trainer.ConfigError(f"the semi-supervised experiment trains model family 'ladder', "
                              f"got {config.model.family!r}")
  trainer.validate_config(config)
  if not isinstance(config.ebgan, bool):
    raise trainer.ConfigError(f"ebgan must be True or False, got {config.ebgan!r}")
  if config.labelled_batch_size < 1:
    raise trainer.ConfigError(
        f"labelled_batch_size must be >= 1, got {config.labelled_batch_size}")
  if config.eval_every < 1:
    raise trainer.ConfigError(f"eval_every must be >= 1: the test error is this experiment's "
                              f"result, got {config.eval_every}")
  try:
    semi_supervised.check_config(config)
  except ValueError as e:
    raise trainer.ConfigError(str(e)) from None
  if config.ebgan != objectives.from_config(config).trains_generator:
    raise trainer.ConfigError(f"objective {config.objective!r} and ebgan={config.ebgan} "
                              f"disagree; set only ebgan (False: the ladder network alone)")


def _steps(config, mesh):
  return train.make_train_step(config, mesh), train.make_multi_step(config, mesh)


def _evaluation(config):
  images, labels = data.load_split(config, "test")
  return lambda state: {"test_error": semi_supervised.test_error(state, images, labels)}


def _upgrade_saved(saved: dict) -> dict:
  """Configs saved before EBGAN-LN and the LN were objectives of their own name the
  objective "ebgan" and tell them apart by `ebgan`."""
  if saved.get("objective") == "ebgan":
    return {**saved, "objective": "ebgan_ln" if saved.get("ebgan", True) else "ln"}
  return saved


TASK = trainer.Task(validate=validate_config, create_dataset=semi_supervised.create_dataset,
                    make_steps=_steps, make_evaluation=_evaluation,
                    draws_samples=lambda config: config.ebgan, fixed_fields=FIXED_FIELDS,
                    upgrade_saved=_upgrade_saved)


def members(config) -> list[dict]:
  """The population of config.seeds x config.margins (empty: config.margin), each member
  with the config's learning rates and other hyperparameters."""
  objective = objectives.from_config(config)
  hparams = objectives.hyperparameters(objective, config)
  margins = tuple(config.margins)
  if margins and "margin" not in objective.hyperparameters:
    raise trainer.ConfigError(f"margins are EBGAN-LN's; objective {objective.name!r} has none")
  try:
    objectives.check_hyperparameters(objective, {**hparams, "margin": list(margins)}
                                     if margins else hparams)
  except ValueError as e:
    raise trainer.ConfigError(str(e)) from None
  return [{**hparams, **({"margin": float(margin)} if margins else {}), "seed": int(seed),
           "lr_g": config.optim_g.learning_rate, "lr_d": config.optim_d.learning_rate}
          for margin, seed in itertools.product(margins or (None,), config.seeds)]


def hinge_activity(history: dict[str, np.ndarray], num_members: int) -> list[dict]:
  """Each member's `hinge_active` (the fraction of G's samples under the margin) through
  the run: its mean over the calls in `history` ((members, calls) per-call means) and over
  each quarter of them, hinge_active_q1 .. _q4 (fewer parts with fewer calls). A resumed
  population's history holds only the calls since it resumed. Empty dicts for an objective
  without a hinge (the LN) or when no call ran."""
  active = history.get("hinge_active")
  if active is None or active.shape[1] == 0:
    return [{} for _ in range(num_members)]
  quarters = np.array_split(active, min(4, active.shape[1]), axis=1)
  return [{"hinge_active": float(np.mean(active[i])),
           **{f"hinge_active_q{q}": float(np.mean(part[i])) for q, part in enumerate(quarters, 1)}}
          for i in range(num_members)]


def train_seeds(config, workdir: str) -> list[dict]:
  """Trains every member of `members(config)` as one population in `workdir` (resumed from
  its checkpoints), then writes each member's test error and the hinge's activity through
  the run (hinge_activity) to workdir/results.csv, and every logged metric per call
  ((members, calls) arrays of this invocation's calls) to workdir/history.npz."""
  validate_config(config)
  runs = members(config)
  trained, history = trainer.train_population(config, runs, workdir, TASK)
  images, labels = data.load_split(config, "test")
  rows = []
  for i, (member, activity) in enumerate(zip(runs, hinge_activity(history, len(runs)))):
    rows.append({**member, "objective": config.objective, "num_labels": config.num_labels,
                 "steps": int(trained.states.step[i]), "diverged": bool(trained.diverged[i]),
                 "test_error": semi_supervised.test_error(trained.member(i), images, labels),
                 **activity})
    logging.info("member %d %s: test_error %.4f", i, member, rows[-1]["test_error"])
  with open(os.path.join(workdir, RESULTS), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  np.savez(os.path.join(workdir, HISTORY), **history)
  return rows


def define_flags() -> None:
  cli.define_config_and_workdir(_DEFAULT_CONFIG,
                                "Directory for checkpoints, TensorBoard logs and samples.")


def main(argv):
  del argv  # cli.run rejects positional arguments
  config = flags.FLAGS.config
  resolve_objective(config)
  if config.seeds:
    train_seeds(config, flags.FLAGS.workdir)
  else:
    trainer.train_and_evaluate(config, flags.FLAGS.workdir, TASK)


if __name__ == "__main__":
  cli.run(main, define_flags, bad_input=(trainer.ConfigError,),
          diverged=(trainer.TrainingDiverged,))
