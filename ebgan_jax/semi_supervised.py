"""Semi-supervised EBGAN-LN (the paper's Sec. 4.2) and its ladder-network baseline.

D is a ladder network (ladder.py, the model family "ladder"), its energy the
weighted error of its input reconstruction (the LN's bottom-layer cost),
measured on the [0, 1] pixel scale of Rasmus et al.:

  E(x) = w * mean_pixels (x^ - x)^2        (w = reconstruction_weight; theirs: 1000)

One step trains D on a labelled batch (x_l, y) and an unlabelled batch x_u
(each through D on its own, so each is normalised by its own statistics), with

  L_D = CE(y, D's corrupted logits on x_l) + mean_{x_u} E(x_u) + mean_z [m - E(G(z))]^+

and then, for EBGAN-LN, G on L_G = mean_z E(G(z)). The first two terms are
the ladder network's own loss: the baseline (`ebgan=False`) trains D on them
alone and leaves G as it was, and EBGAN-LN with m = 0 falls back to it (the
hinge is then 0: E >= 0), as the paper says. The margin follows the config's
margin schedule (objectives.MarginSchedule), which EBGAN-LN decays to 0.
D's running averages, its test-time statistics, come from the unlabelled
images only: the passes over the labelled batch and G's samples use batch
statistics and keep none.
"""

import dataclasses
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ebgan_jax import classifier, data, losses, objectives, train
from ebgan_jax.state import GANState

Batch = dict[str, jax.Array]  # "labelled" (n_l, H, W, C), "label" (n_l,), "unlabelled" (n, H, W, C)


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


def create_dataset(config, start_step: int = 0) -> tuple[Iterator[dict], str]:
  """Endless batches {"labelled", "label", "unlabelled"} for this process, and a description.

  The labelled set is `labelled_subset(train labels, config.num_labels,
  config.seed)`, read config.labelled_batch_size at a time; the unlabelled
  batches (config.batch_size) come from the whole training split, the
  labelled images included, as in Rasmus et al. Both streams are shuffled
  every epoch from config.seed and resume exactly at `start_step`.
  """
  images, labels = data.load_split(config, "train")
  subset = labelled_subset(labels, config.num_labels, config.seed, config.model.num_classes)
  labelled = data.array_batches(images[subset], labels[subset].astype(np.int32),
                                batch_size=config.labelled_batch_size, seed=config.seed,
                                start_step=start_step)
  # Another seed: the unlabelled order must not repeat the labelled one's.
  unlabelled = data.array_batches(images, batch_size=config.batch_size, seed=config.seed + 1,
                                  start_step=start_step)

  def batches():
    for (x_l, y), x_u in zip(labelled, unlabelled):
      yield {"labelled": x_l, "label": y, "unlabelled": x_u}

  return batches(), (f"{data.source_name(config)}: {config.num_labels} labelled of "
                     f"{len(images)} training images")


def energy(images: jax.Array, reconstruction: jax.Array, weight: jax.Array) -> jax.Array:
  """(N,) weight * the mean squared reconstruction error per image, on [0, 1] pixels."""
  return weight * losses.energy(images / 2.0, reconstruction / 2.0, "mean")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def discriminator_objective(d_params, state: GANState, batch: Batch, fake: jax.Array | None,
                            keys, hparams):
  """L_D (module docstring) as a function of D's params; without `fake`, the LN's loss."""
  d = state.discriminator
  labelled_key, unlabelled_key, fake_key = keys
  # Each batch through D on its own, normalised by its own statistics, and the running
  # averages (test time's) from the unlabelled batch only, as in Rasmus et al.'s code:
  # the labelled images, few and soon fitted, would skew them.
  (_, logits), _ = train.apply_train(d, d_params, batch["labelled"], labelled_key)
  (reconstruction, _), d_stats = train.apply_train(d, d_params, batch["unlabelled"],
                                                   unlabelled_key)
  ce = cross_entropy(logits, batch["label"])
  e_real = energy(batch["unlabelled"], reconstruction, hparams["reconstruction_weight"])
  metrics = {"cross_entropy": ce, "energy_real": jnp.mean(e_real),
             "train_error": jnp.mean(jnp.argmax(logits, -1) != batch["label"])}
  if fake is None:
    return ce + jnp.mean(e_real), (d_stats, metrics)
  (reconstruction_fake, _), _ = train.apply_train(d, d_params, fake, fake_key)
  e_fake = energy(fake, reconstruction_fake, hparams["reconstruction_weight"])
  margin = hparams["margin"]
  metrics.update(energy_fake=jnp.mean(e_fake), margin=margin,
                 hinge_active=jnp.mean((e_fake < margin).astype(jnp.float32)))
  return ce + losses.discriminator_loss(e_real, e_fake, margin), (d_stats, metrics)


@dataclasses.dataclass(frozen=True)
class LadderEnergy:
  """G's side of EBGAN-LN, in the form train.update_generator takes: lower E(G(z))."""

  def generator_loss(self, hparams, fake: jax.Array, d_fake):
    return jnp.mean(energy(fake, d_fake[0], hparams["reconstruction_weight"])), {}


def train_step(state: GANState, batch: Batch, hparams, *, objective: objectives.EBGAN,
               ebgan: bool) -> tuple[GANState, train.Metrics]:
  """One D update (and with `ebgan`, one G update on fresh z); returns the state and metrics.

  `hparams`: reconstruction_weight and the EBGAN objective's margin (and
  margin_end under a schedule), whose `scheduled` gives this step's margin.
  Metrics: d_loss, cross_entropy, energy_real, train_error (of the labelled
  batch, corrupted path); with `ebgan` also energy_fake, margin, hinge_active
  and g_loss.
  """
  step_key = jax.random.fold_in(state.key, state.step)
  z_d_key, z_g_key, g_fake_key, g_key, *d_keys = jax.random.split(step_key, 7)
  hparams = objective.scheduled(hparams, state.step)
  n = batch["unlabelled"].shape[0]
  fake = None
  if ebgan:
    z = train.sample_z(z_d_key, n, state.z_dim)
    fake, _ = train.apply_train(state.generator, state.generator.params, z, g_fake_key)
    fake = jax.lax.stop_gradient(fake)
  grad_fn = jax.value_and_grad(discriminator_objective, has_aux=True)
  (d_loss, (d_stats, metrics)), grads = grad_fn(
      state.discriminator.params, state, batch, fake, d_keys, hparams)
  state = state.replace(
      discriminator=state.discriminator.apply_gradients(grads=grads, batch_stats=d_stats))
  metrics = {"d_loss": d_loss, **metrics}
  if ebgan:
    state, g_metrics = train.update_generator(
        state, train.sample_z(z_g_key, n, state.z_dim), g_key, hparams, objective=LadderEnergy())
    metrics.update(g_metrics)
  return state.replace(step=state.step + 1), metrics


def multi_step(state: GANState, batches: Batch, hparams, *, objective, ebgan: bool):
  """K `train_step`s, one per batch of `batches` (each entry stacked (K, ...)), as a lax.scan."""
  step = functools.partial(train_step, hparams=hparams, objective=objective, ebgan=ebgan)
  return jax.lax.scan(step, state, batches)


def settings(config) -> dict:
  """The step's static settings and hyperparameters from `config`.

  Raises:
    ValueError: an objective other than EBGAN, lambda_pt != 0, a weight <= 0,
      num_labels not a positive multiple of the classes.
  """
  check_num_labels(config.num_labels, config.model.num_classes)
  objective = objectives.from_config(config)
  if not isinstance(objective, objectives.EBGAN):
    raise ValueError(f"the semi-supervised step trains EBGAN-LN: objective must be 'ebgan', "
                     f"got {config.objective!r}")
  if config.lambda_pt:
    raise ValueError(f"EBGAN-LN has no pulling-away term (its D's second output is logits, "
                     f"not an embedding): set lambda_pt=0, got {config.lambda_pt}")
  if not config.reconstruction_weight > 0:
    raise ValueError(f"reconstruction_weight must be > 0, got {config.reconstruction_weight}")
  hparams = {**objectives.hyperparameters(objective, config),
             "reconstruction_weight": float(config.reconstruction_weight)}
  return {"hparams": hparams, "objective": objective, "ebgan": bool(config.ebgan)}


def make_train_step(config, mesh: Mesh):
  """`train_step` with config's settings, jitted over `mesh` like train.make_train_step."""
  return train.jit_step(functools.partial(train_step, **settings(config)), mesh,
                        train.batch_sharded(mesh))


def make_multi_step(config, mesh: Mesh):
  return train.jit_step(functools.partial(multi_step, **settings(config)), mesh,
                        train.batches_sharded(mesh))


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
