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
  trains_generator  False for an objective that trains D alone (the ladder
                    network baseline): the step then leaves G as it is
  batch             what a step's batch is: "images", or "semi_supervised"
                    (a dict of labelled and unlabelled images)

Its methods have optax's shape, so that state an objective updates (BEGAN's
k_t, an adaptive margin, epoch sums) is a pytree that jit, vmap, sharding and
checkpoints treat like the parameters:

  init(hparams) -> state                     the state before step 0 ({}: none)
  values(hparams, state, step) -> values     what the losses of `step` read
                                             (EBGAN: the margin of its schedule)
  discriminator_loss(values, batch, fake, apply_d, batch_stats, key)
                                             L_D over a batch pytree, D run by
                                             apply_d on each part it needs
  generator_loss(values, fake, d_fake)       L_G over D's outputs on G(z)
  update(state, hparams, metrics, step) -> (state, metrics)
                                             after both nets' updates, from the
                                             step's metrics: the state of the
                                             next step and the metrics it adds
                                             (BEGAN's M_global); per-epoch logic
                                             is a jnp.where on the (static)
                                             epoch length, inside the jitted step
  trains_generator_now(values)               whether this step updates G: True,
                                             or a traced bool (MAGAN's D trains
                                             alone first); False skips G's update
                                             with a lax.cond
  num_generated(batch)                       how many z a step draws

Adding an objective is one class here, one entry in OBJECTIVES, a config and
a test: the step (train.py), populations and the trainer need no edit.
"""

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ebgan_jax import ladder, losses

Outputs = tuple[jax.Array, jax.Array]  # D's (head, embedding) on one batch
HyperParameters = dict[str, jax.Array]
ObjectiveState = Any  # a pytree: {} for an objective that carries none
Metrics = dict[str, jax.Array]
# D in training mode on one batch: (images, batch_stats, dropout key, **D's call options)
# -> (D's outputs, the batch_stats after it); an objective threads the statistics it wants
# kept.
ApplyD = Callable[..., tuple[Outputs, Any]]


# The shapes a margin schedule can take: optax schedules of the step falling from 1 to 0
# over `steps` steps after `begin`; the margin is end + (start - end) * shape(step).
MARGIN_SCHEDULES = {
    "constant": None,
    "linear": lambda steps, begin: optax.linear_schedule(1.0, 0.0, steps, begin),
    "cosine": lambda steps, begin: optax.join_schedules(
        [optax.constant_schedule(1.0), optax.cosine_decay_schedule(1.0, steps)], [begin]),
}


# What a margin's value is measured in: energy itself, or the mean energy of the batch's
# real images (a margin that stays above the data's energy as D learns).
MARGIN_UNITS = ("absolute", "real_energy")


@dataclasses.dataclass(frozen=True)
class MarginSchedule:
  """How the margin moves with the step: constant (the default), or a linear or
  cosine decay from `margin` to `margin_end` over `decay_steps` steps, starting
  at step `decay_begin`, and `margin_end` after that.

  With unit "real_energy" the scheduled value is a multiple of the batch's mean
  real energy (`acting`): margin 1.5 puts the hinge at 1.5 E(x) whatever the
  energies' scale, the regime of the paper's Theorem 1 (m above the data's
  energy). The shape and the unit are static (one per population); the start
  and end values are hyperparameters, so the members of a population can differ
  in them.
  """

  kind: str = "constant"
  decay_steps: int = 0
  decay_begin: int = 0
  unit: str = "absolute"

  def __post_init__(self):
    if self.kind not in MARGIN_SCHEDULES:
      raise ValueError(f"margin_schedule must be one of {tuple(MARGIN_SCHEDULES)}, "
                       f"got {self.kind!r}")
    if self.unit not in MARGIN_UNITS:
      raise ValueError(f"margin_unit must be one of {MARGIN_UNITS}, got {self.unit!r}")
    if self.kind != "constant" and (self.decay_steps < 1 or self.decay_begin < 0):
      raise ValueError(f"a {self.kind} margin schedule needs margin_decay_steps >= 1 and "
                       f"margin_decay_begin >= 0, got {self.decay_steps} and {self.decay_begin}")

  @classmethod
  def from_config(cls, config) -> "MarginSchedule":
    """From config.margin_schedule, margin_decay_steps, margin_decay_begin and margin_unit
    (absent: a constant, absolute margin)."""
    return cls(config.get("margin_schedule", "constant"),
               int(config.get("margin_decay_steps", 0)), int(config.get("margin_decay_begin", 0)),
               config.get("margin_unit", "absolute"))

  @property
  def hyperparameters(self) -> tuple[str, ...]:
    """The hyperparameter a decay adds to the margin's start: its end value."""
    return () if self.kind == "constant" else ("margin_end",)

  def margin(self, hparams: HyperParameters, step: jax.Array) -> jax.Array:
    """The margin at `step`, from hparams' margin (the start) and margin_end."""
    if self.kind == "constant":
      return hparams["margin"]
    shape = MARGIN_SCHEDULES[self.kind](self.decay_steps, self.decay_begin)(step)
    # Exactly margin_end once decayed: under jit, XLA divides by multiplying with the
    # reciprocal, which leaves the shape at ~1e-8 instead of 0.
    shape = jnp.where(step >= self.decay_begin + self.decay_steps, 0.0, shape)
    return hparams["margin_end"] + (hparams["margin"] - hparams["margin_end"]) * shape

  def acting(self, margin: jax.Array, e_real: jax.Array) -> jax.Array:
    """The margin the hinge uses: `margin` (the scheduled value), in unit "real_energy"
    times the mean of the real images' energies `e_real`, a constant to the gradient
    (D lowers E(x) through its own term, not by moving the margin)."""
    if self.unit == "absolute":
      return margin
    return margin * jax.lax.stop_gradient(jnp.mean(e_real))


class Stateless:
  """The defaults of an objective: no static setting, no state, hyperparameters used as
  they are, a batch of images."""

  batch: ClassVar[str] = "images"

  @classmethod
  def from_config(cls, config):
    del config  # no static setting
    return cls()

  def values(self, hparams: HyperParameters, state: ObjectiveState,
             step: jax.Array) -> HyperParameters:
    del state, step  # nothing moves
    return hparams

  def init(self, hparams: HyperParameters) -> ObjectiveState:
    del hparams
    return {}

  def update(self, state: ObjectiveState, hparams: HyperParameters, metrics: Metrics,
             step: jax.Array) -> tuple[ObjectiveState, Metrics]:
    del hparams, metrics, step
    return state, {}

  def trains_generator_now(self, values: HyperParameters) -> bool | jax.Array:
    del values
    return True  # a Python bool: the step has no lax.cond

  def num_generated(self, batch: jax.Array) -> int:
    """As many z as real images."""
    return batch.shape[0]

  def d_on_fakes(self, apply_d: ApplyD, fake: jax.Array, batch, batch_stats,
                 key: jax.Array) -> Outputs:
    """D's outputs on G's samples in G's update: a pass of their own."""
    del batch  # the samples' own statistics
    return apply_d(fake, batch_stats, key)[0]


def real_and_fake(batch: jax.Array, fake: jax.Array, apply_d: ApplyD, batch_stats,
                  key: jax.Array) -> tuple[Outputs, Outputs, Any]:
  """D's outputs on the real batch, then on the fakes, each normalised by its own batch
  statistics; D's running statistics see both."""
  real_key, fake_key = jax.random.split(key)
  d_real, batch_stats = apply_d(batch, batch_stats, real_key)
  d_fake, batch_stats = apply_d(fake, batch_stats, fake_key)
  return d_real, d_fake, batch_stats


@dataclasses.dataclass(frozen=True)
class EBGAN(Stateless):
  """The paper's Eqs. 1-2: D an auto-encoder, energy its reconstruction error."""

  reduction: str = "mean"
  margin_schedule: MarginSchedule = MarginSchedule()

  name: ClassVar[str] = "ebgan"
  d_head: ClassVar[str] = "reconstruction"
  trains_generator: ClassVar[bool] = True
  metric_names: ClassVar[tuple[str, ...]] = ("energy_real", "energy_fake", "hinge_active", "pt")

  def __post_init__(self):
    losses.check_reduction(self.reduction)

  @property
  def hyperparameters(self) -> tuple[str, ...]:
    return ("margin", "lambda_pt", *self.margin_schedule.hyperparameters)

  @classmethod
  def from_config(cls, config) -> "EBGAN":
    return cls(reduction=config.energy_reduction,
               margin_schedule=MarginSchedule.from_config(config))

  def values(self, hparams: HyperParameters, state: ObjectiveState,
             step: jax.Array) -> HyperParameters:
    """hparams with the margin of `step` in place of the schedule's start."""
    del state  # none: the schedule is a function of the step
    return {**hparams, "margin": self.margin_schedule.margin(hparams, step)}

  def discriminator_loss(self, values: HyperParameters, batch: jax.Array, fake: jax.Array,
                         apply_d: ApplyD, batch_stats, key: jax.Array):
    d_real, d_fake, batch_stats = real_and_fake(batch, fake, apply_d, batch_stats, key)
    e_real = losses.energy(batch, d_real[0], self.reduction)
    e_fake = losses.energy(fake, d_fake[0], self.reduction)
    margin = self.margin_schedule.acting(values["margin"], e_real)
    metrics = {"energy_real": jnp.mean(e_real), "energy_fake": jnp.mean(e_fake),
               "hinge_active": losses.hinge_active(e_fake, margin)}
    return losses.discriminator_loss(e_real, e_fake, margin), (batch_stats, metrics)

  def generator_loss(self, values: HyperParameters, fake: jax.Array, d_fake: Outputs):
    # G(z) is both D's input and the reconstruction target; the gradient flows
    # through both (detaching the target would drop half of it).
    e_fake = losses.energy(fake, d_fake[0], self.reduction)
    loss = losses.generator_loss(e_fake, d_fake[1], values["lambda_pt"])
    return loss, {"pt": losses.pulling_away(d_fake[1])}  # the same term: XLA computes it once


@dataclasses.dataclass(frozen=True)
class GAN(Stateless):
  """The paper's baseline (Sec. 4.1): D's logit, the non-saturating G loss."""

  name: ClassVar[str] = "gan"
  d_head: ClassVar[str] = "logit"
  trains_generator: ClassVar[bool] = True
  hyperparameters: ClassVar[tuple[str, ...]] = ()
  metric_names: ClassVar[tuple[str, ...]] = ("d_real", "d_fake")

  def discriminator_loss(self, values: HyperParameters, batch: jax.Array, fake: jax.Array,
                         apply_d: ApplyD, batch_stats, key: jax.Array):
    del values
    d_real, d_fake, batch_stats = real_and_fake(batch, fake, apply_d, batch_stats, key)
    metrics = {"d_real": jnp.mean(jax.nn.sigmoid(d_real[0])),
               "d_fake": jnp.mean(jax.nn.sigmoid(d_fake[0]))}
    return losses.gan_discriminator_loss(d_real[0], d_fake[0]), (batch_stats, metrics)

  def generator_loss(self, values: HyperParameters, fake: jax.Array, d_fake: Outputs):
    del values, fake
    return losses.gan_generator_loss(d_fake[0]), {}


@dataclasses.dataclass(frozen=True)
class BEGAN(Stateless):
  """BEGAN (Berthelot, Schumm & Metz 2017): D an auto-encoder with the L1 energy
  L(v) = mean_pixels |v - D(v)|, L_D = L(x) - k_t L(G(z_D)), L_G = L(G(z_G)), and k_t
  steered to the equilibrium gamma L(x) = L(G(z)) by a proportional controller
  (losses.began_k). State: k_t, 0 at the start.

  k_{t+1} reads the step's L(x) from the D update and L(G(z_G)) (L_G) from the G update,
  the latter under the D just updated: the paper's pair of updates is simultaneous, the
  step here alternates them. Metrics: k (the k_t of the step), m_global (M_global, the
  paper's convergence measure).
  """

  name: ClassVar[str] = "began"
  d_head: ClassVar[str] = "reconstruction"
  trains_generator: ClassVar[bool] = True
  hyperparameters: ClassVar[tuple[str, ...]] = ("gamma", "lambda_k")
  metric_names: ClassVar[tuple[str, ...]] = ("energy_real", "energy_fake", "k", "m_global")

  def init(self, hparams: HyperParameters) -> ObjectiveState:
    del hparams
    return {"k": jnp.zeros((), jnp.float32)}

  def values(self, hparams: HyperParameters, state: ObjectiveState,
             step: jax.Array) -> HyperParameters:
    del step
    return {**hparams, "k": state["k"]}

  def discriminator_loss(self, values: HyperParameters, batch: jax.Array, fake: jax.Array,
                         apply_d: ApplyD, batch_stats, key: jax.Array):
    d_real, d_fake, batch_stats = real_and_fake(batch, fake, apply_d, batch_stats, key)
    l_real = losses.l1_energy(batch, d_real[0])
    l_fake = losses.l1_energy(fake, d_fake[0])
    metrics = {"energy_real": jnp.mean(l_real), "energy_fake": jnp.mean(l_fake),
               "k": values["k"]}
    return losses.began_discriminator_loss(l_real, l_fake, values["k"]), (batch_stats, metrics)

  def generator_loss(self, values: HyperParameters, fake: jax.Array, d_fake: Outputs):
    del values
    return jnp.mean(losses.l1_energy(fake, d_fake[0])), {}

  def update(self, state: ObjectiveState, hparams: HyperParameters, metrics: Metrics,
             step: jax.Array) -> tuple[ObjectiveState, Metrics]:
    del step
    l_real, l_generated = metrics["energy_real"], metrics["g_loss"]
    k = losses.began_k(state["k"], l_real, l_generated, hparams["gamma"], hparams["lambda_k"])
    return {"k": k}, {"m_global": losses.began_convergence(l_real, l_generated, hparams["gamma"])}


# Before MAGAN's first epoch end there is no previous fake energy: a finite stand-in
# that no mean energy exceeds (the trainer stops on non-finite state).
_NO_PREVIOUS = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class MAGAN(EBGAN):
  """MAGAN (Wang, Cully, Chang & Demiris 2017): EBGAN's hinge with a margin that adapts.

  For its first `pretrain_epochs` epochs of `steps_per_epoch` steps D trains alone as
  an auto-encoder of the data (the margin is 0, so L_D = mean E(x); G's update is
  skipped, its losses read 0); the margin then starts at the mean real energy of the
  last of those epochs, and after each later epoch losses.magan_margin may lower it to
  that epoch's mean real energy. G's loss is EBGAN's (lambda_pt 0 is the paper's).
  State: the margin, the epoch's energy sums and the previous epoch's mean fake energy.
  Metrics: margin, the one this step's hinge used; energy_generated, E(G(z_G)) under
  the D just updated (what the fake sums add up).

  Where this follows the authors' code (gan_release.py) rather than the paper: the
  energies summed are batch means, the fake one E(G(z_G)) of G's update; no update
  follows the first adversarial epoch. It differs from that code in two places: the
  margin starts from the last pre-training epoch's energies, measured while D trains on
  them (the code spends one more epoch measuring without training), and the second
  epoch end compares the fake sums (a Python 2 list-to-float comparison makes the
  code's first comparison always true).
  """

  pretrain_epochs: int = 2
  steps_per_epoch: int = 937

  name: ClassVar[str] = "magan"
  metric_names: ClassVar[tuple[str, ...]] = (*EBGAN.metric_names, "energy_generated", "margin")

  def __post_init__(self):
    super().__post_init__()
    if self.pretrain_epochs < 1 or self.steps_per_epoch < 1:
      raise ValueError(f"MAGAN needs magan_pretrain_epochs >= 1 (its margin starts at the "
                       f"pre-trained D's real energy) and steps_per_epoch >= 1, got "
                       f"{self.pretrain_epochs} and {self.steps_per_epoch}")
    if self.margin_schedule.kind != "constant" or self.margin_schedule.unit != "absolute":
      raise ValueError(f"MAGAN adapts its margin itself: set margin_schedule='constant' and "
                       f"margin_unit='absolute', got {self.margin_schedule.kind!r} and "
                       f"{self.margin_schedule.unit!r}")

  @property
  def hyperparameters(self) -> tuple[str, ...]:
    return ("lambda_pt",)

  @property
  def pretrain_steps(self) -> int:
    return self.pretrain_epochs * self.steps_per_epoch

  @classmethod
  def from_config(cls, config) -> "MAGAN":
    return cls(reduction=config.energy_reduction,
               margin_schedule=MarginSchedule.from_config(config),
               pretrain_epochs=int(config.magan_pretrain_epochs),
               steps_per_epoch=int(config.steps_per_epoch))

  def init(self, hparams: HyperParameters) -> ObjectiveState:
    del hparams
    # One array per leaf: the step donates its state, and a buffer can be donated once.
    return {"margin": jnp.zeros(()), "real_sum": jnp.zeros(()), "fake_sum": jnp.zeros(()),
            "previous_fake": jnp.full((), _NO_PREVIOUS, jnp.float32)}

  def values(self, hparams: HyperParameters, state: ObjectiveState,
             step: jax.Array) -> HyperParameters:
    adversarial = step >= self.pretrain_steps
    return {**hparams, "margin": jnp.where(adversarial, state["margin"], 0.0),
            "adversarial": adversarial}

  def trains_generator_now(self, values: HyperParameters) -> jax.Array:
    return values["adversarial"]

  def generator_loss(self, values: HyperParameters, fake: jax.Array, d_fake: Outputs):
    loss, metrics = super().generator_loss(values, fake, d_fake)
    # The energy part of L_G again: XLA computes it once.
    e_fake = losses.energy(fake, d_fake[0], self.reduction)
    return loss, {**metrics, "energy_generated": jnp.mean(e_fake)}

  def update(self, state: ObjectiveState, hparams: HyperParameters, metrics: Metrics,
             step: jax.Array) -> tuple[ObjectiveState, Metrics]:
    adversarial = step >= self.pretrain_steps
    real_sum = state["real_sum"] + metrics["energy_real"]
    fake_sum = state["fake_sum"] + metrics["energy_generated"]
    real_mean, fake_mean = real_sum / self.steps_per_epoch, fake_sum / self.steps_per_epoch
    epoch_end = (step + 1) % self.steps_per_epoch == 0
    adapted = losses.magan_margin(state["margin"], real_mean, fake_mean, state["previous_fake"])
    margin = jnp.where(step == self.pretrain_steps - 1, real_mean,
                       jnp.where(epoch_end & adversarial, adapted, state["margin"]))
    new_state = {
        "margin": margin,
        "real_sum": jnp.where(epoch_end, 0.0, real_sum),
        "fake_sum": jnp.where(epoch_end, 0.0, fake_sum),
        "previous_fake": jnp.where(epoch_end & adversarial, fake_mean, state["previous_fake"]),
    }
    return new_state, {"margin": self.values(hparams, state, step)["margin"]}


# The semi-supervised batch (the paper's Sec. 4.2): "labelled" (n_l, H, W, C) with
# "label" (n_l,), and "unlabelled" (n, H, W, C).
SemiSupervisedBatch = dict[str, jax.Array]
# Whose statistics normalise G's samples in EBGAN-LN's D: their own, or the unlabelled batch's.
FAKE_STATISTICS = ("own", "unlabelled")


@dataclasses.dataclass(frozen=True)
class Ladder(Stateless):
  """The ladder network alone (Rasmus et al. 2015), the baseline of EBGAN-LN: D is the
  ladder family's D, whose outputs are (reconstruction, logits); G is not trained.

  L_D = CE(y, D's corrupted logits on x_l) + mean_{x_u} E(x_u), with the ladder's
  energy E(x) = w * mean_pixels (x^ - x)^2 on [0, 1] pixels (losses.ladder_energy).
  Each sub-batch goes through D on its own, normalised by its own statistics, and
  D's running averages (test time's) come from the unlabelled batch only, as in
  Rasmus et al.'s code: the labelled images, few and soon fitted, would skew them.
  """

  name: ClassVar[str] = "ln"
  d_head: ClassVar[str] = "reconstruction"
  batch: ClassVar[str] = "semi_supervised"
  trains_generator: ClassVar[bool] = False
  hyperparameters: ClassVar[tuple[str, ...]] = ("reconstruction_weight",)
  metric_names: ClassVar[tuple[str, ...]] = ("cross_entropy", "energy_real", "train_error")

  def num_generated(self, batch: SemiSupervisedBatch) -> int:
    return batch["unlabelled"].shape[0]

  def ladder_loss(self, values: HyperParameters, batch: SemiSupervisedBatch, apply_d: ApplyD,
                  batch_stats, key: jax.Array):
    """CE + mean E(x_u), D's statistics of the unlabelled pass, the metrics."""
    labelled_key, unlabelled_key = jax.random.split(key)
    (_, logits), _ = apply_d(batch["labelled"], batch_stats, labelled_key)
    (reconstruction, _), batch_stats = apply_d(batch["unlabelled"], batch_stats, unlabelled_key)
    ce = losses.cross_entropy(logits, batch["label"])
    e_real = losses.ladder_energy(batch["unlabelled"], reconstruction,
                                  values["reconstruction_weight"])
    metrics = {"cross_entropy": ce, "energy_real": jnp.mean(e_real),
               "train_error": jnp.mean(jnp.argmax(logits, -1) != batch["label"])}
    return ce, e_real, batch_stats, metrics

  def discriminator_loss(self, values: HyperParameters, batch: SemiSupervisedBatch, fake: None,
                         apply_d: ApplyD, batch_stats, key: jax.Array):
    del fake  # G is not trained
    ce, e_real, batch_stats, metrics = self.ladder_loss(values, batch, apply_d, batch_stats, key)
    return ce + jnp.mean(e_real), (batch_stats, metrics)


@dataclasses.dataclass(frozen=True)
class LadderEBGAN(Ladder):
  """EBGAN-LN (the paper's Sec. 4.2): the ladder network's loss with EBGAN's hinge on G's
  samples, L_D = CE + mean E(x_u) + mean_z [m - E(G(z))]^+, and L_G = mean_z E(G(z)).

  With m = 0 the hinge is 0 (E >= 0) and D's loss is the ladder network's, as the
  paper says. The margin follows the config's margin schedule, as EBGAN's does; the
  pass over G's samples keeps no statistics. No pulling-away term: D's second output is
  logits, not an embedding.

  Two choices the paper leaves open, for G's samples in both D's hinge and G's loss
  (d_on_fakes): `fake_path` "corrupted" (the default: the energy the LN's cost uses) or
  "clean" (the reconstruction of the noiseless path), and `fake_statistics` "own" (the
  default: normalised by the samples' batch) or "unlabelled" (by the unlabelled batch's
  statistics, as the real images are; one pass over both, the samples' rows kept).
  """

  margin_schedule: MarginSchedule = MarginSchedule()
  fake_path: str = "corrupted"
  fake_statistics: str = "own"

  name: ClassVar[str] = "ebgan_ln"
  trains_generator: ClassVar[bool] = True
  metric_names: ClassVar[tuple[str, ...]] = (
      "cross_entropy", "energy_real", "train_error", "energy_fake", "margin", "hinge_active")

  @property
  def hyperparameters(self) -> tuple[str, ...]:
    return ("margin", "reconstruction_weight", *self.margin_schedule.hyperparameters)

  def __post_init__(self):
    if self.fake_path not in ladder.PATHS:
      raise ValueError(f"fake_path must be one of {ladder.PATHS}, got {self.fake_path!r}")
    if self.fake_statistics not in FAKE_STATISTICS:
      raise ValueError(f"fake_statistics must be one of {FAKE_STATISTICS}, "
                       f"got {self.fake_statistics!r}")

  @classmethod
  def from_config(cls, config) -> "LadderEBGAN":
    """From the margin schedule's fields and config.fake_path and fake_statistics (absent:
    the defaults)."""
    if config.get("lambda_pt", 0.0):
      raise ValueError(f"EBGAN-LN has no pulling-away term (its D's second output is logits, "
                       f"not an embedding): set lambda_pt=0, got {config.lambda_pt}")
    return cls(margin_schedule=MarginSchedule.from_config(config),
               fake_path=config.get("fake_path", "corrupted"),
               fake_statistics=config.get("fake_statistics", "own"))

  values = EBGAN.values  # the margin of its schedule

  def d_on_fakes(self, apply_d: ApplyD, fake: jax.Array, batch: SemiSupervisedBatch,
                 batch_stats, key: jax.Array) -> Outputs:
    """D's outputs on G's samples by fake_path and fake_statistics (the class docstring)."""
    if self.fake_statistics == "own":
      return apply_d(fake, batch_stats, key, path=self.fake_path)[0]
    n = batch["unlabelled"].shape[0]
    outputs, _ = apply_d(jnp.concatenate([batch["unlabelled"], fake]), batch_stats, key,
                         path=self.fake_path, statistics_of=n)
    return jax.tree.map(lambda o: o[n:], outputs)

  def discriminator_loss(self, values: HyperParameters, batch: SemiSupervisedBatch,
                         fake: jax.Array, apply_d: ApplyD, batch_stats, key: jax.Array):
    # The ladder's passes draw the LN's noise (the same key), so that m = 0 is the LN.
    ce, e_real, batch_stats, metrics = self.ladder_loss(values, batch, apply_d, batch_stats, key)
    reconstruction_fake, _ = self.d_on_fakes(apply_d, fake, batch, batch_stats,
                                             jax.random.fold_in(key, 1))
    e_fake = losses.ladder_energy(fake, reconstruction_fake, values["reconstruction_weight"])
    margin = self.margin_schedule.acting(values["margin"], e_real)
    metrics.update(energy_fake=jnp.mean(e_fake), margin=margin,
                   hinge_active=losses.hinge_active(e_fake, margin))
    return ce + losses.discriminator_loss(e_real, e_fake, margin), (batch_stats, metrics)

  def generator_loss(self, values: HyperParameters, fake: jax.Array, d_fake: Outputs):
    return jnp.mean(losses.ladder_energy(fake, d_fake[0], values["reconstruction_weight"])), {}


OBJECTIVES = {objective.name: objective
              for objective in (EBGAN, GAN, BEGAN, MAGAN, Ladder, LadderEBGAN)}


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
