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

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments import logs, trainer

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "mnist_conv.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file; override fields with --config.FIELD=VALUE.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, TensorBoard logs and samples.", required=True)
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "sample"],
    "train: train (resuming from the workdir's checkpoints); sample: write samples.npz.")

# Set to 1 (or --config.distributed=True) to run one process per host.
DISTRIBUTED_ENV = "EBGAN_DISTRIBUTED"
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if not value:
    return None
  if not value.isdigit():
    raise app.UsageError(f"{name} must be a non-negative integer, got {value!r}")
  return int(value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.keep_job_logs_only()
  if _CONFIG.value.get("distributed") or os.environ.get(DISTRIBUTED_ENV) == "1":
    # Before any other JAX call. On TPU pods and SLURM / Open MPI clusters JAX
    # finds the coordinator, process count and index by itself; elsewhere they
    # come from JAX_COORDINATOR_ADDRESS and the two variables below.
    jax.distributed.initialize(num_processes=_env_int("EBGAN_NUM_PROCESSES"),
                               process_id=_env_int("EBGAN_PROCESS_ID"))
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
