"""The objectives a step can train D and G with: a registry like models.FAMILIES.

An objective is a frozen dataclass: its fields are the static settings that
shape the computation (hashable, so it is a static argument of jax.jit), and
its class attributes say what it needs:

  d_head            what D's first output is: "reconstruction" (an
                    auto-encoder, every family) or "logit" (one per image)
  hyperparameters   the config fields it reads as floats; a step gets them
                    as a dict of scalars, a population as a dict of (P,)
                    arrays, so members can differ in them under vmap
  metric_names      the metrics its losses return, beside d_loss and g_loss

and its losses take D's outputs `(head, embedding)` on real and generated
images. Adding an objective is one class here, one entry in OBJECTIVES, a
config and a test.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ebgan_jax import losses

Outputs = tuple[jax.Array, jax.Array]  # D's (head, embedding) on one batch
HyperParameters = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class EBGAN:
  """The paper's Eqs. 1-2: D an auto-encoder, energy its reconstruction error."""

  reduction: str = "mean"

  name: ClassVar[str] = "ebgan"
  d_head: ClassVar[str] = "reconstruction"
  hyperparameters: ClassVar[tuple[str, ...]] = ("margin", "lambda_pt")
  metric_names: ClassVar[tuple[str, ...]] = ("energy_real", "energy_fake", "hinge_active", "pt")

  def __post_init__(self):
    losses.check_reduction(self.reduction)

  @classmethod
  def from_config(cls, config) -> "EBGAN":
    return cls(reduction=config.energy_reduction)

  def discriminator_loss(self, hparams: HyperParameters, real: jax.Array, d_real: Outputs,
                         fake: jax.Array, d_fake: Outputs):
    e_real = losses.energy(real, d_real[0], self.reduction)
    e_fake = losses.energy(fake, d_fake[0], self.reduction)
    margin = hparams["margin"]
    metrics = {"energy_real": jnp.mean(e_real), "energy_fake": jnp.mean(e_fake),
               "hinge_active": jnp.mean((e_fake < margin).astype(jnp.float32))}
    return losses.discriminator_loss(e_real, e_fake, margin), metrics

  def generator_loss(self, hparams: HyperParameters, fake: jax.Array, d_fake: Outputs):
    # G(z) is both D's input and the reconstruction target; the gradient flows
    # through both (detaching the target would drop half of it).
    e_fake = losses.energy(fake, d_fake[0], self.reduction)
    pt = losses.pulling_away(d_fake[1])
    return jnp.mean(e_fake) + hparams["lambda_pt"] * pt, {"pt": pt}


@dataclasses.dataclass(frozen=True)
class GAN:
  """The paper's baseline (Sec. 4.1): D's logit, the non-saturating G loss."""

  name: ClassVar[str] = "gan"
  d_head: ClassVar[str] = "logit"
  hyperparameters: ClassVar[tuple[str, ...]] = ()
  metric_names: ClassVar[tuple[str, ...]] = ("d_real", "d_fake")

  @classmethod
  def from_config(cls, config) -> "GAN":
    del config  # no static setting
    return cls()

  def discriminator_loss(self, hparams: HyperParameters, real: jax.Array, d_real: Outputs,
                         fake: jax.Array, d_fake: Outputs):
    del hparams, real, fake
    metrics = {"d_real": jnp.mean(jax.nn.sigmoid(d_real[0])),
               "d_fake": jnp.mean(jax.nn.sigmoid(d_fake[0]))}
    return losses.gan_discriminator_loss(d_real[0], d_fake[0]), metrics

  def generator_loss(self, hparams: HyperParameters, fake: jax.Array, d_fake: Outputs):
    del hparams, fake
    return losses.gan_generator_loss(d_fake[0]), {}


OBJECTIVES = {objective.name: objective for objective in (EBGAN, GAN)}


def from_config(config):
  """The objective `config.objective` names (absent: "ebgan"), with its static settings.

  Raises:
    ValueError: an unknown name, or a static setting it rejects.
  """
  name = config.get("objective", "ebgan")
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[name].from_config(config)


def check_hyperparameters(objective, values) -> None:
  """Raises ValueError unless each of the objective's hyperparameters in `values` (a float,
  or one per member of a population) is >= 0."""
  for name in objective.hyperparameters:
    if not all(v >= 0 for v in np.atleast_1d(values[name])):
      raise ValueError(f"{name} must be >= 0, got {values[name]}")


def hyperparameters(objective, config) -> dict[str, float]:
  """The objective's hyperparameters read from `config`, as floats (each must be >= 0)."""
  values = {name: float(config[name]) for name in objective.hyperparameters}
  check_hyperparameters(objective, values)
  return values
