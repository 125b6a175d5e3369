"""A population of EBGAN runs trained as one program: P members, one vmapped step.

Each member is an independent run, a GANState of its own seed, with its own
margin, lambda_pt and Adam learning rates for G and D; the members share the
architecture, the energy reduction and the batch size. `jax.vmap` turns the
single-run `train.train_step` into the population's step, so a study of P
settings compiles once and keeps an accelerator busy with P small models.

Members never interact: member i of a population follows the maths of a
single run with its settings, fed the batches given for it, up to float
rounding (vmapped reductions may sum in another order).
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ebgan_jax import state as state_lib, train
from ebgan_jax.state import GANState, TrainState

# Per-member settings create_population takes, each a sequence of length P.
SETTINGS = ("seed", "margin", "lambda_pt", "lr_g", "lr_d")


@flax.struct.dataclass
class Population:
  """P GANStates stacked along a leading axis, and each member's objective."""

  states: GANState
  margin: jax.Array     # (P,)
  lambda_pt: jax.Array  # (P,)

  @property
  def size(self) -> int:
    return self.margin.shape[0]

  def member(self, i: int) -> GANState:
    """Member i as the GANState of a single run with its settings.

    Its optimisers are plain Adam at the member's learning rates, with the
    member's Adam moments: the state state.create_state makes, so it samples,
    evaluates, checkpoints and resumes (experiments.mnist_ebgan) like any run.
    """
    state = jax.tree.map(lambda x: x[i], self.states)
    return state.replace(generator=_plain_adam(state.generator),
                         discriminator=_plain_adam(state.discriminator))


def _with_learning_rate(net: TrainState, optim_config, learning_rate) -> TrainState:
  """`net` with Adam (betas, eps of optim_config) at `learning_rate`, kept in the optimiser
  state by optax.inject_hyperparams so that it can differ between members of one vmapped
  state."""
  tx = optax.inject_hyperparams(optax.adam)(
      learning_rate=optim_config.learning_rate, b1=optim_config.b1, b2=optim_config.b2,
      eps=optim_config.eps)
  opt_state = tx.init(net.params)
  hyperparams = {**opt_state.hyperparams,
                 "learning_rate": jnp.asarray(learning_rate, jnp.float32)}
  return net.replace(tx=tx, opt_state=opt_state._replace(hyperparams=hyperparams))


def _plain_adam(net: TrainState) -> TrainState:
  """The inverse of _with_learning_rate, for one member: optax.adam at its hyperparameters."""
  hyperparams = {k: float(v) for k, v in net.opt_state.hyperparams.items()}
  tx = optax.adam(hyperparams.pop("learning_rate"), **hyperparams)
  return net.replace(tx=tx, opt_state=net.opt_state.inner_state)


def create_population(config, **settings) -> Population:
  """One member per entry of the SETTINGS sequences, which must all have the same length.

  Everything else (model, image_shape, z_dim, energy_reduction, Adam's betas
  and eps, compute_dtype) comes from `config`, as for state.create_state.
  Member i's parameters and randomness come from PRNGKey(seed[i]), as in a
  single run with that seed.
  """
  missing = sorted(set(SETTINGS) - set(settings))
  unknown = sorted(set(settings) - set(SETTINGS))
  if missing or unknown:
    raise ValueError(f"create_population takes exactly the settings {SETTINGS}; "
                     f"missing {missing}, unknown {unknown}")
  sizes = {name: len(values) for name, values in settings.items()}
  if len(set(sizes.values())) != 1 or not sizes["seed"]:
    raise ValueError(f"every setting needs one entry per member (at least one), got {sizes}")
  for name in ("margin", "lambda_pt"):
    if min(settings[name]) < 0:
      raise ValueError(f"{name} must be >= 0 for every member, got {list(settings[name])}")
  for name in ("lr_g", "lr_d"):
    if min(settings[name]) <= 0:
      raise ValueError(f"{name} must be > 0 for every member, got {list(settings[name])}")

  def member(key, lr_g, lr_d):
    state = state_lib.create_state(config, key)
    return state.replace(
        generator=_with_learning_rate(state.generator, config.optim_g, lr_g),
        discriminator=_with_learning_rate(state.discriminator, config.optim_d, lr_d))

  keys = jnp.stack([jax.random.PRNGKey(seed) for seed in settings["seed"]])
  as_array = lambda name: jnp.asarray(np.asarray(settings[name], np.float32))
  states = jax.vmap(member)(keys, as_array("lr_g"), as_array("lr_d"))
  return Population(states=states, margin=as_array("margin"),
                    lambda_pt=as_array("lambda_pt"))


def population_step(population: Population, batches: jax.Array, *, reduction: str = "mean"
                    ) -> tuple[Population, train.Metrics]:
  """One `train.train_step` for every member, member i on batches[i]; batches (P, B, H, W, C).

  Returns the new population and each step metric as a (P,) array.
  """
  step = functools.partial(train.train_step, reduction=reduction)
  states, metrics = jax.vmap(step)(population.states, batches, margin=population.margin,
                                   lambda_pt=population.lambda_pt)
  return population.replace(states=states), metrics


def multi_step(population: Population, batches: jax.Array, *, reduction: str = "mean"
               ) -> tuple[Population, train.Metrics]:
  """K population steps as one `lax.scan`; batches (K, P, B, H, W, C), metrics (K, P)."""
  return jax.lax.scan(functools.partial(population_step, reduction=reduction), population,
                      batches)
