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
import optax

from ebgan_jax import losses

Outputs = tuple[jax.Array, jax.Array]  # D's (head, embedding) on one batch
HyperParameters = dict[str, jax.Array]


# The shapes a margin schedule can take: optax schedules of the step falling from 1 to 0
# over `steps` steps after `begin`; the margin is end + (start - end) * shape(step).
MARGIN_SCHEDULES = {
    "constant": None,
    "linear": lambda steps, begin: optax.linear_schedule(1.0, 0.0, steps, begin),
    "cosine": lambda steps, begin: optax.join_schedules(
        [optax.constant_schedule(1.0), optax.cosine_decay_schedule(1.0, steps)], [begin]),
}


@dataclasses.dataclass(frozen=True)
class MarginSchedule:
  """How the margin moves with the step: constant (the default), or a linear or
  cosine decay from `margin` to `margin_end` over `decay_steps` steps, starting
  at step `decay_begin`, and `margin_end` after that.

  The shape is static (one per population); the start and end values are
  hyperparameters, so the members of a population can differ in them.
  """

  kind: str = "constant"
  decay_steps: int = 0
  decay_begin: int = 0

  def __post_init__(self):
    if self.kind not in MARGIN_SCHEDULES:
      raise ValueError(f"margin_schedule must be one of {tuple(MARGIN_SCHEDULES)}, "
                       f"got {self.kind!r}")
    if self.kind != "constant" and (self.decay_steps < 1 or self.decay_begin < 0):
      raise ValueError(f"a {self.kind} margin schedule needs margin_decay_steps >= 1 and "
                       f"margin_decay_begin >= 0, got {self.decay_steps} and {self.decay_begin}")

  @classmethod
  def from_config(cls, config) -> "MarginSchedule":
    """From config.margin_schedule, margin_decay_steps, margin_decay_begin (absent: constant)."""
    return cls(config.get("margin_schedule", "constant"),
               int(config.get("margin_decay_steps", 0)), int(config.get("margin_decay_begin", 0)))

  def margin(self, hparams: HyperParameters, step: jax.Array) -> jax.Array:
    """The margin at `step`, from hparams' margin (the start) and margin_end."""
    if self.kind == "constant":
      return hparams["margin"]
    shape = MARGIN_SCHEDULES[self.kind](self.decay_steps, self.decay_begin)(step)
    # Exactly margin_end once decayed: under jit, XLA divides by multiplying with the
    # reciprocal, which leaves the shape at ~1e-8 instead of 0.
    shape = jnp.where(step >= self.decay_begin + self.decay_steps, 0.0, shape)
    return hparams["margin_end"] + (hparams["margin"] - hparams["margin_end"]) * shape


@dataclasses.dataclass(frozen=True)
class EBGAN:
  """The paper's Eqs. 1-2: D an auto-encoder, energy its reconstruction error."""

  reduction: str = "mean"
  margin_schedule: MarginSchedule = MarginSchedule()

  name: ClassVar[str] = "ebgan"
  d_head: ClassVar[str] = "reconstruction"
  metric_names: ClassVar[tuple[str, ...]] = ("energy_real", "energy_fake", "hinge_active", "pt")

  def __post_init__(self):
    losses.check_reduction(self.reduction)

  @property
  def hyperparameters(self) -> tuple[str, ...]:
    scheduled = self.margin_schedule.kind != "constant"
    return ("margin", "lambda_pt", *(("margin_end",) if scheduled else ()))

  @classmethod
  def from_config(cls, config) -> "EBGAN":
    return cls(reduction=config.energy_reduction,
               margin_schedule=MarginSchedule.from_config(config))

  def scheduled(self, hparams: HyperParameters, step: jax.Array) -> HyperParameters:
    """hparams with the margin of `step` in place of the schedule's start."""
    return {**hparams, "margin": self.margin_schedule.margin(hparams, step)}

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

  def scheduled(self, hparams: HyperParameters, step: jax.Array) -> HyperParameters:
    del step  # nothing moves
    return hparams

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
