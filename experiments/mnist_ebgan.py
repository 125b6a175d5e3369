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

import jax
from absl import flags

from experiments import cli, trainer

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "mnist_conv.py")

# Set to 1 (or --config.distributed=True) to run one process per host.
DISTRIBUTED_ENV = "EBGAN_DISTRIBUTED"


def define_flags() -> None:
  cli.define_config_and_workdir(_DEFAULT_CONFIG,
                                "Directory for checkpoints, TensorBoard logs and samples.")
  flags.DEFINE_enum(
      "mode", "train", ["train", "sample"],
      "train: train (resuming from the workdir's checkpoints); sample: write samples.npz.")


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if not value:
    return None
  if not value.isdigit():
    raise trainer.ConfigError(f"{name} must be a non-negative integer, got {value!r}")
  return int(value)


def main(argv):
  del argv  # cli.run rejects positional arguments
  args = flags.FLAGS
  if args.config.distributed or os.environ.get(DISTRIBUTED_ENV) == "1":
    # Before any other JAX call. On TPU pods and SLURM / Open MPI clusters JAX
    # finds the coordinator, process count and index by itself; elsewhere they
    # come from JAX_COORDINATOR_ADDRESS and the two variables below.
    jax.distributed.initialize(num_processes=_env_int("EBGAN_NUM_PROCESSES"),
                               process_id=_env_int("EBGAN_PROCESS_ID"))
  job = trainer.train_and_evaluate if args.mode == "train" else trainer.sample
  job(args.config, args.workdir)


if __name__ == "__main__":
  cli.run(main, define_flags, bad_input=(trainer.ConfigError,),
          diverged=(trainer.TrainingDiverged,))
