r"""Sample quality against the test split: IS, FD, KID, PRDC, class counts, stacked-MNIST modes.

  python -m experiments.evaluate --config=experiments/configs/fashion_conv.py \
      --config.idx_dir=/usr/share/datasets/fashion-mnist --samples=/tmp/ebgan/samples.npz
  python -m experiments.evaluate --config=... --workdir=/tmp/ebgan   # samples the latest checkpoint
  python -m experiments.evaluate --config=... --reference            # floor, blur and noise
  python -m experiments.evaluate --config=... --samples=... --features=inception \
      --config.inception_weights=/data/pt_inception-2015-12-05-6726825d.pth

Each evaluation prints one JSON line on stdout and, with --workdir, appends it
to WORKDIR/eval.jsonl. ebgan_jax/evaluation.py computes the scores (with the
classifier that experiments.train_classifier cached for config.dataset) and
documents them; --features=inception scores with the FID Inception-v3 instead
(pytorch-fid's weights file; docs/inception.md has the protocol). --reference
scores the training images (the real-vs-real floor), test images blurred by a
Gaussian of sigma = 1 pixel and uniform noise, each as many as
config.num_samples. Bad input prints one `error:` line and exits with status 2.
"""

import json
import os
import sys

from absl import flags
import ml_collections
import numpy as np

from ebgan_jax import checkpoint, evaluation
from experiments import cli, trainer

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "mnist_conv.py")


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> tuple[np.ndarray, int]:
  """config.num_samples images of the workdir's latest checkpoint, and its step.

  trainer.sample draws them, and also writes them to workdir/samples.npz.
  """
  images = trainer.sample(config, workdir)
  manager = checkpoint.create_manager(os.path.join(workdir, "checkpoints"), config.keep)
  return images, manager.latest_step()


def run(config: ml_collections.ConfigDict, *, samples: str | None = None,
        workdir: str | None = None, reference: bool = False,
        features: str | None = None) -> list[dict]:
  """The CLI's work: the result lines of the samples, the checkpoint or the references.

  features, if given, replaces config.eval.features ("classifier" or "inception").
  """
  if features is not None:
    with config.unlocked():
      config.eval.features = features
  if evaluation.eval_settings(config).features == "inception":
    evaluation.inception_weights(config)  # a missing file fails before any sampling
  if samples is not None and reference:
    raise evaluation.EvaluationError("give --samples or --reference, not both")
  if samples is None and not reference and workdir is None:
    raise evaluation.EvaluationError(
        "give --samples=PATH.npz, --workdir=DIR (to sample its latest checkpoint) or --reference")
  if reference:
    subjects = {f"reference:{name}": (images, None)
                for name, images in evaluation.reference_images(config).items()}
  elif samples is not None:
    subjects = {f"samples:{os.path.abspath(samples)}": (evaluation.load_samples(samples), None)}
  else:
    images, step = sample_checkpoint(config, workdir)
    subjects = {f"checkpoint:{os.path.abspath(workdir)}": (images, step)}
  evaluator = evaluation.Evaluator(config)
  lines = []
  for subject, (images, step) in subjects.items():
    line = {"evaluated": subject, "step": step, "num_samples": len(images),
            **evaluator.description, **evaluator(images)}
    lines.append(line)
  return lines


def write_lines(lines: list[dict], workdir: str | None) -> None:
  """Prints each line as JSON and appends it to workdir/eval.jsonl."""
  text = "".join(json.dumps(line) + "\n" for line in lines)
  sys.stdout.write(text)
  if workdir is not None:
    try:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "eval.jsonl"), "a") as f:
        f.write(text)
    except OSError as e:
      raise evaluation.EvaluationError(
          f"cannot write {workdir}/eval.jsonl ({e.strerror})") from None


def define_flags() -> None:
  cli.define_config("config", _DEFAULT_CONFIG, "Experiment config file, as for training.")
  flags.DEFINE_string(
      "samples", None, ".npz file whose 'images' (N, H, W, C), uint8 or in [-1, 1], are scored.")
  flags.DEFINE_string(
      "workdir", None,
      "Training workdir: eval.jsonl goes here; without --samples or --reference, "
      "config.num_samples images are first sampled from its latest checkpoint.")
  flags.DEFINE_bool(
      "reference", False,
      "Score training images, blurred test images and uniform noise instead of samples.")
  flags.DEFINE_enum(
      "features", None, list(evaluation.FEATURES),
      "The feature network (default: config.eval.features): the built-in classifier, or the "
      "FID Inception-v3 from pytorch-fid's weights file (--config.inception_weights=PATH).")


def main(argv):
  del argv  # cli.run rejects positional arguments
  args = flags.FLAGS
  lines = run(args.config, samples=args.samples, workdir=args.workdir, reference=args.reference,
              features=args.features)
  write_lines(lines, args.workdir)


if __name__ == "__main__":
  cli.run(main, define_flags, bad_input=(evaluation.EvaluationError, trainer.ConfigError))
