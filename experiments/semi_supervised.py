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

import os

from absl import flags

from ebgan_jax import data, semi_supervised
from experiments import cli, trainer

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "ladder_mnist.py")
# A workdir's checkpoints fix these besides the nets: the labelled subset (drawn by
# the seed) and whether G is trained.
FIXED_FIELDS = (*trainer.ARCHITECTURE_FIELDS, "ebgan", "num_labels", "seed")


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
    semi_supervised.settings(config)
  except ValueError as e:
    raise trainer.ConfigError(str(e)) from None


def _steps(config, mesh):
  return (semi_supervised.make_train_step(config, mesh),
          semi_supervised.make_multi_step(config, mesh))


def _evaluation(config):
  images, labels = data.load_split(config, "test")
  return lambda state: {"test_error": semi_supervised.test_error(state, images, labels)}


TASK = trainer.Task(validate=validate_config, create_dataset=semi_supervised.create_dataset,
                    make_steps=_steps, make_evaluation=_evaluation,
                    draws_samples=lambda config: config.ebgan, fixed_fields=FIXED_FIELDS)


def define_flags() -> None:
  cli.define_config_and_workdir(_DEFAULT_CONFIG,
                                "Directory for checkpoints, TensorBoard logs and samples.")


def main(argv):
  del argv  # cli.run rejects positional arguments
  trainer.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir, TASK)


if __name__ == "__main__":
  cli.run(main, define_flags, bad_input=(trainer.ConfigError,),
          diverged=(trainer.TrainingDiverged,))
