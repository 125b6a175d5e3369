"""Semi-supervised EBGAN-LN (the paper's Sec. 4.2) and its ladder-network baseline.

D is a ladder network (ladder.py, the model family "ladder"). Its losses are
the objectives "ln" (the ladder network alone) and "ebgan_ln" (EBGAN-LN) of
objectives.py, trained by the one step of train.py over batches
{"labelled", "label", "unlabelled"}; this module holds what is the
experiment's own: the balanced labelled subset, its data stream and the test
error of D's classifier.
"""

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ebgan_jax import classifier, data, objectives
from ebgan_jax.state import GANState


def check_num_labels(num_labels: int, num_classes: int) -> None:
  if num_labels < num_classes or num_labels % num_classes:
    raise ValueError(f"num_labels must be a positive multiple of the {num_classes} classes "
                     f"(a balanced subset), got {num_labels}")


def labelled_subset(labels: np.ndarray, num_labels: int, seed: int,
                    num_classes: int = 10) -> np.ndarray:
  """Indices of `num_labels` examples, num_labels / num_classes of each class, drawn by `seed`.

  The same (labels, num_labels, seed) always give the same indices (sorted).

  Raises:
    ValueError: num_labels not a positive multiple of num_classes, or a class
      with fewer examples than its share.
  """
  check_num_labels(num_labels, num_classes)
  per_class = num_labels // num_classes
  rng = np.random.default_rng(seed)
  chosen = []
  for label in range(num_classes):
    members = np.flatnonzero(labels == label)
    if len(members) < per_class:
      raise ValueError(f"class {label} has {len(members)} training examples, fewer than the "
                       f"{per_class} that num_labels={num_labels} takes of each class")
    chosen.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(chosen))


def create_dataset(config, start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None) -> tuple[Iterator[dict], str]:
  """Endless batches {"labelled", "label", "unlabelled"} for this process, and a description.

  The labelled set is `labelled_subset(train labels, config.num_labels,
  config.seed)`, read config.labelled_batch_size at a time; the unlabelled
  batches (config.batch_size) come from the whole training split, the
  labelled images included, as in Rasmus et al. Both streams are shuffled
  every epoch from config.seed and resume exactly at `start_step`. Each
  process reads its share (data.array_batches), or all with process_count 1.
  """
  processes = {"process_index": process_index, "process_count": process_count}
  images, labels = data.load_split(config, "train")
  subset = labelled_subset(labels, config.num_labels, config.seed, config.model.num_classes)
  labelled = data.array_batches(images[subset], labels[subset].astype(np.int32),
                                batch_size=config.labelled_batch_size, seed=config.seed,
                                start_step=start_step, **processes)
  # Another seed: the unlabelled order must not repeat the labelled one's.
  unlabelled = data.array_batches(images, batch_size=config.batch_size, seed=config.seed + 1,
                                  start_step=start_step, **processes)

  def batches():
    for (x_l, y), x_u in zip(labelled, unlabelled):
      yield {"labelled": x_l, "label": y, "unlabelled": x_u}

  return batches(), (f"{data.source_name(config)}: {config.num_labels} labelled of "
                     f"{len(images)} training images")


def check_config(config) -> None:
  """Raises ValueError unless `config` trains the ladder network or EBGAN-LN.

  The objective's own checks (objectives.from_config) and those of the labelled
  subset and the energy's weight.
  """
  check_num_labels(config.num_labels, config.model.num_classes)
  objective = objectives.from_config(config)
  if objective.batch != "semi_supervised":
    raise ValueError(f"the semi-supervised experiment trains objective 'ebgan_ln' or 'ln', "
                     f"got {config.objective!r}")
  if not config.reconstruction_weight > 0:
    raise ValueError(f"reconstruction_weight must be > 0, got {config.reconstruction_weight}")


@jax.jit
def _predictions(state: GANState, images: jax.Array) -> jax.Array:
  d = state.discriminator
  _, logits = d.apply_fn({"params": d.params, "batch_stats": d.batch_stats}, images, train=False)
  return jnp.argmax(logits, -1)


def test_error(state: GANState, images: np.ndarray, labels: np.ndarray,
               batch_size: int = 1000) -> float:
  """The fraction of `images` (uint8) D's clean path (running averages) misclassifies."""
  wrong = 0
  for start in range(0, len(images), batch_size):
    x = classifier.to_input(images[start:start + batch_size])
    wrong += int(np.sum(np.asarray(_predictions(state, x)) != labels[start:start + batch_size]))
  return wrong / len(images)
