"""GANState: everything training needs, as one pytree."""

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from ebgan_jax import models, objectives


class TrainState(train_state.TrainState):
  """One net's params, optimiser state and BatchNorm running statistics."""

  batch_stats: Any = None


@flax.struct.dataclass
class GANState:
  """The generator's and discriminator's TrainStates, the step, the PRNG key and the
  objective's state.

  This is what is jitted over, sharded, checkpointed and restored. `key` is
  the run's base key and never changes: step t draws its randomness from
  `fold_in(key, t)`, so a step is a pure function of (state, batch).
  """

  generator: TrainState
  discriminator: TrainState
  step: jax.Array
  key: jax.Array
  # What the objective updates each step (objectives.py: `init`, `update`); {} for one
  # that carries none, as in checkpoints saved before the field existed.
  objective_state: Any = flax.struct.field(default_factory=dict)
  z_dim: int = flax.struct.field(pytree_node=False, default=64)


# Per-net optimisers (config.optim_g / optim_d `kind`) and the config fields each reads.
OPTIMIZERS = {"adam": (optax.adam, ("learning_rate", "b1", "b2", "eps")),
              "sgd": (optax.sgd, ("learning_rate",))}  # plain SGD, no momentum


def optimizer_settings(optim_config) -> tuple[str, dict[str, float]]:
  """(kind, the settings its optax constructor takes) of one net's optimiser config.

  `kind` is "adam" (the default when absent) or "sgd"; SGD reads only learning_rate.
  """
  kind = optim_config.get("kind", "adam")
  if kind not in OPTIMIZERS:
    raise ValueError(f"optimizer kind must be one of {tuple(OPTIMIZERS)}, got {kind!r}")
  return kind, {name: float(optim_config[name]) for name in OPTIMIZERS[kind][1]}


def learning_rate_decay(optim_config) -> tuple[int, int]:
  """(decay_steps, decay_begin): the learning rate falls linearly to 0 over decay_steps
  steps from step decay_begin (Rasmus et al.'s ladder-network schedule); (0, 0), the
  default when absent, keeps it constant."""
  steps, begin = int(optim_config.get("decay_steps", 0)), int(optim_config.get("decay_begin", 0))
  if steps < 0 or begin < 0:
    raise ValueError(f"decay_steps and decay_begin must be >= 0, got {steps} and {begin}")
  return steps, begin


def optimizer_factory(optim_config):
  """(factory, settings): `factory(**settings)` is the net's optax optimiser; its
  learning_rate is the start of the config's decay, so that a population can give each
  member its own (optax.inject_hyperparams)."""
  kind, settings = optimizer_settings(optim_config)
  steps, begin = learning_rate_decay(optim_config)

  @functools.wraps(OPTIMIZERS[kind][0])  # its signature: inject_hyperparams binds by it
  def factory(learning_rate, **others):
    if steps:
      learning_rate = optax.linear_schedule(learning_rate, 0.0, steps, begin)
    return OPTIMIZERS[kind][0](learning_rate=learning_rate, **others)
  return factory, settings


def optimizer(optim_config) -> optax.GradientTransformation:
  factory, settings = optimizer_factory(optim_config)
  return factory(**settings)


def _train_state(module, variables, tx) -> TrainState:
  state = TrainState.create(
      apply_fn=module.apply, params=variables["params"], tx=tx,
      batch_stats=variables.get("batch_stats", {}))
  # A Python int step would be weakly typed and retrace the step once.
  return state.replace(step=jnp.zeros((), jnp.int32))


def create_state(config, key: jax.Array) -> GANState:
  """Initialises both nets and their optimisers from `config`.

  Reads config.model, config.image_shape, config.z_dim, config.optim_g,
  config.optim_d, config.objective (absent: "ebgan"; it says what D outputs and
  starts the objective's state from its hyperparameters) and
  config.compute_dtype and config.matmul_operands (absent: "float32"). `key` is
  a raw uint32 PRNG key (jax.random.PRNGKey(seed)).
  """
  objective = objectives.from_config(config)
  generator, discriminator = models.build_models(
      config.model, config.image_shape, config.get("compute_dtype", "float32"),
      d_head=objective.d_head, matmul_operands=config.get("matmul_operands", "float32"))
  g_key, d_key, train_key = jax.random.split(key, 3)
  # Two samples: BatchNorm needs more than one to have a batch statistic.
  g_vars = generator.init(g_key, jnp.zeros((2, config.z_dim)), train=False)
  d_vars = discriminator.init(d_key, jnp.zeros((2, *config.image_shape)), train=False)
  return GANState(
      generator=_train_state(generator, g_vars, optimizer(config.optim_g)),
      discriminator=_train_state(discriminator, d_vars, optimizer(config.optim_d)),
      step=jnp.zeros((), jnp.int32),
      key=train_key,
      objective_state=objective.init(objectives.hyperparameters(objective, config)),
      z_dim=config.z_dim)
