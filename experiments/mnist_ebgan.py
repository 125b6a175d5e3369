r"""Train EBGAN, or sample from a trained one.

  python -m experiments.mnist_ebgan --workdir=/tmp/ebgan
  python -m experiments.mnist_ebgan --workdir=/tmp/ebgan \
      --config=experiments/configs/fashion_conv.py \
      --config.idx_dir=/usr/share/datasets/fashion-mnist --config.num_steps=2000
  python -m experiments.mnist_ebgan --workdir=/tmp/ebgan --mode=sample

Every hyperparameter is a config field (`--config.FIELD=VALUE`); see
experiments/configs/. Bad input prints one line and exits with status 2; a
diverged run exits with status 3.
"""

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from experiments import trainer

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "mnist_conv.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file; override fields with --config.FIELD=VALUE.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, TensorBoard logs and samples.", required=True)
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "sample"],
    "train: train (resuming from the workdir's checkpoints); sample: write samples.npz.")

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


class _JobLogsOnly(logging.Filter):
  """Keeps INFO lines from this job and its metric writer; libraries may only warn.

  Orbax alone logs some twenty INFO lines per checkpoint.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING
            or any(part in record.pathname for part in ("/experiments/", "/clu/")))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  absl_logging.get_absl_handler().addFilter(_JobLogsOnly())
  job = trainer.train_and_evaluate if _MODE.value == "train" else trainer.sample
  try:
    job(_CONFIG.value, _WORKDIR.value)
  except (trainer.ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  except trainer.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_DIVERGED)


if __name__ == "__main__":
  app.run(main)
