"""A toy objective that carries state, for the tests: registering it is all it takes.

CountingEBGAN is EBGAN whose margin grows with the mean real energy seen so far,
m_t = margin + 0.5 * mean_{s < t} E_s(real); its state counts the steps and sums
those energies. So the state changes what a step computes, and a step that
dropped, repeated or mis-restored it would end elsewhere.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from ebgan_jax import objectives


@dataclasses.dataclass(frozen=True)
class CountingEBGAN(objectives.EBGAN):

  name: ClassVar[str] = "counting_ebgan"

  def init(self, hparams):
    del hparams
    return {"steps": jnp.zeros((), jnp.int32), "energy_sum": jnp.zeros((), jnp.float32)}

  def values(self, hparams, state, step):
    values = super().values(hparams, state, step)
    seen = state["energy_sum"] / jnp.maximum(state["steps"], 1)
    return {**values, "margin": values["margin"] + 0.5 * seen}

  def update(self, state, hparams, metrics, step):
    del hparams, step
    return {"steps": state["steps"] + 1,
            "energy_sum": state["energy_sum"] + metrics["energy_real"]}, {}


objectives.OBJECTIVES[CountingEBGAN.name] = CountingEBGAN
