"""GANState: everything training needs, as one pytree."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from ebgan_jax import models


class TrainState(train_state.TrainState):
  """One net's params, optimiser state and BatchNorm running statistics."""

  batch_stats: Any = None


@flax.struct.dataclass
class GANState:
  """The generator's and discriminator's TrainStates, the step and the PRNG key.

  This is what is jitted over, sharded, checkpointed and restored. `key` is
  the run's base key and never changes: step t draws its randomness from
  `fold_in(key, t)`, so a step is a pure function of (state, batch).
  """

  generator: TrainState
  discriminator: TrainState
  step: jax.Array
  key: jax.Array
  z_dim: int = flax.struct.field(pytree_node=False, default=64)


def adam(optim_config) -> optax.GradientTransformation:
  return optax.adam(optim_config.learning_rate, b1=optim_config.b1, b2=optim_config.b2,
                    eps=optim_config.eps)


def _train_state(module, variables, tx) -> TrainState:
  state = TrainState.create(
      apply_fn=module.apply, params=variables["params"], tx=tx,
      batch_stats=variables.get("batch_stats", {}))
  # A Python int step would be weakly typed and retrace the step once.
  return state.replace(step=jnp.zeros((), jnp.int32))


def create_state(config, key: jax.Array) -> GANState:
  """Initialises both nets and their Adam optimisers from `config`.

  Reads config.model, config.image_shape, config.z_dim, config.optim_g,
  config.optim_d and config.compute_dtype (absent: "float32"). `key` is a
  raw uint32 PRNG key (jax.random.PRNGKey(seed)).
  """
  generator, discriminator = models.build_models(
      config.model, config.image_shape, config.compute_dtype)
  g_key, d_key, train_key = jax.random.split(key, 3)
  # Two samples: BatchNorm needs more than one to have a batch statistic.
  g_vars = generator.init(g_key, jnp.zeros((2, config.z_dim)), train=False)
  d_vars = discriminator.init(d_key, jnp.zeros((2, *config.image_shape)), train=False)
  return GANState(
      generator=_train_state(generator, g_vars, adam(config.optim_g)),
      discriminator=_train_state(discriminator, d_vars, adam(config.optim_d)),
      step=jnp.zeros((), jnp.int32),
      key=train_key,
      z_dim=config.z_dim)
