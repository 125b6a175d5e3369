"""Populations: P runs of one objective trained as one program.

Each member is an independent run, a GANState of its own seed, with its own
learning rates for G and D and its own values of the objective's
hyperparameters (EBGAN: margin, lambda_pt). Members of one population share
everything static: the config's architecture, dropout, objective (with its
energy reduction), optimiser kinds and batch size. Runs that differ in any of
those are separate populations, a grid's "groups" (experiments/grid_search.py).

The members are laid along a mesh axis of their own, MEMBER_AXIS: one
`jax.jit` over `shard_map` gives every device its slice of the members, so a
population uses every chip of a host or of a TPU slice (and several hosts
under `jax.distributed`). On a device, its members are mapped by
`member_map_for(platform)`: one vmapped program on accelerators, one member
after another on XLA:CPU (measured faster there; benchmarks/population.py).

A member whose losses or parameters turn non-finite is frozen at its last
finite state (of a call boundary: `member_steps`) and flagged in `diverged`;
the others go on as they would without it. Members never interact: member i
follows the maths of a single run with its settings, fed the batches its
single run reads (`data.create_dataset` with its seed), up to float rounding.
The host loop that feeds, checkpoints and resumes a population is the single
run's (experiments/trainer.py, `train_population`).
"""

import functools
import json
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ebgan_jax import objectives, state as state_lib, train
from ebgan_jax.state import GANState, TrainState

MEMBER_AXIS = "member"
MEMBER_MAPS = ("vmap", "sequential")


@flax.struct.dataclass
class Population:
  """P GANStates stacked along a leading axis, each member's hyperparameters and flag."""

  states: GANState
  hparams: dict[str, jax.Array]  # the objective's hyperparameters, each (P,)
  diverged: jax.Array  # (P,) bool: frozen since its losses or parameters turned non-finite
  objective: Any = flax.struct.field(pytree_node=False)
  # G's and D's optimiser configs (kind, decay), as JSON: hashable, so a static field.
  optimizers: tuple[str, str] = flax.struct.field(pytree_node=False)

  @property
  def size(self) -> int:
    return self.diverged.shape[0]

  @property
  def step(self) -> jax.Array:
    """The members' step: they train in lockstep."""
    return self.states.step[0]

  def member(self, i: int) -> GANState:
    """Member i as the GANState of a single run with its settings.

    Its optimisers are the plain optax ones at the member's learning rates,
    with the member's moments: the state state.create_state makes, so it
    samples, evaluates, checkpoints and resumes (experiments.mnist_ebgan) like
    any run.
    """
    state = jax.tree.map(lambda x: x[i], self.states)
    optim_g, optim_d = (ml_collections.ConfigDict(json.loads(o)) for o in self.optimizers)
    return state.replace(generator=_plain_optimizer(state.generator, optim_g),
                         discriminator=_plain_optimizer(state.discriminator, optim_d))


def settings_of(objective) -> tuple[str, ...]:
  """The per-member settings create_population takes for `objective`."""
  return ("seed", "lr_g", "lr_d", *objective.hyperparameters)


def _with_learning_rate(net: TrainState, optim_config, learning_rate) -> TrainState:
  """`net` with its optimiser at `learning_rate` (the start of the config's decay, if
  any), kept in the optimiser state by optax.inject_hyperparams so that it can differ
  between members of one vmapped state."""
  factory, settings = state_lib.optimizer_factory(optim_config)
  tx = optax.inject_hyperparams(factory)(**settings)
  opt_state = tx.init(net.params)
  hyperparams = {**opt_state.hyperparams,
                 "learning_rate": jnp.asarray(learning_rate, jnp.float32)}
  return net.replace(tx=tx, opt_state=opt_state._replace(hyperparams=hyperparams))


def _plain_optimizer(net: TrainState, optim_config) -> TrainState:
  """The inverse of _with_learning_rate, for one member: the optax optimiser at its settings."""
  factory, _ = state_lib.optimizer_factory(optim_config)
  hyperparams = {k: float(v) for k, v in net.opt_state.hyperparams.items()}
  return net.replace(tx=factory(**hyperparams), opt_state=net.opt_state.inner_state)


def create_population(config, **settings) -> Population:
  """One member per entry of the settings_of(objective) sequences, all of one length.

  Everything else (objective, model, image_shape, z_dim, optimiser kinds and
  Adam's betas and eps, compute_dtype) comes from `config`, as for
  state.create_state. Member i's parameters and randomness come from
  PRNGKey(seed[i]), as in a single run with that seed.
  """
  objective = objectives.from_config(config)
  names = settings_of(objective)
  missing = sorted(set(names) - set(settings))
  unknown = sorted(set(settings) - set(names))
  if missing or unknown:
    raise ValueError(f"a {objective.name} population takes exactly the settings {names}; "
                     f"missing {missing}, unknown {unknown}")
  sizes = {name: len(values) for name, values in settings.items()}
  if len(set(sizes.values())) != 1 or not sizes["seed"]:
    raise ValueError(f"every setting needs one entry per member (at least one), got {sizes}")
  objectives.check_hyperparameters(objective, {name: list(settings[name])
                                               for name in objective.hyperparameters})
  for name in ("lr_g", "lr_d"):
    if min(settings[name]) <= 0:
      raise ValueError(f"{name} must be > 0 for every member, got {list(settings[name])}")

  def member(key, lr_g, lr_d, hparams):
    state = state_lib.create_state(config, key)
    return state.replace(
        generator=_with_learning_rate(state.generator, config.optim_g, lr_g),
        discriminator=_with_learning_rate(state.discriminator, config.optim_d, lr_d),
        objective_state=objective.init(hparams))

  keys = jnp.stack([jax.random.PRNGKey(seed) for seed in settings["seed"]])
  as_array = lambda name: jnp.asarray(np.asarray(settings[name], np.float32))
  hparams = {name: as_array(name) for name in objective.hyperparameters}
  # Jitted: the initialisers compile as one program, not op by op.
  states = jax.jit(jax.vmap(member))(keys, as_array("lr_g"), as_array("lr_d"), hparams)
  return Population(
      states=states, hparams=hparams, diverged=jnp.zeros(sizes["seed"], bool),
      objective=objective,
      optimizers=tuple(config[name].to_json(sort_keys=True) for name in ("optim_g", "optim_d")))


def member_steps(state: GANState, batches: jax.Array, hparams, diverged: jax.Array, *,
                 objective) -> tuple[GANState, train.Metrics, jax.Array]:
  """len(batches) train.train_steps of one member, as a lax.scan; metrics (K,).

  A member that has diverged, or whose losses or parameters turn non-finite
  in these K steps, keeps its state from before them: frozen at its last
  finite state of a call boundary, and flagged. Checking once per call, not
  per step, keeps the step's in-place (donated) updates: a per-step select
  between old and new state would hold two copies of every tensor.
  """
  new_state, metrics = train.multi_step(state, batches, hparams, objective=objective)
  finite = train.all_finite((metrics, new_state.generator.params,
                             new_state.discriminator.params))
  keep = finite & ~diverged
  state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state, state)
  return state, metrics, diverged | ~finite


def member_map_for(platform: str) -> str:
  """How a device maps its members: "vmap" (one batched program) or "sequential".

  The one place that chooses. On XLA:CPU a vmapped step ran at 0.35-1.10x
  the speed of separate runs, the members stepped one after another in one
  program at 0.90-1.09x (benchmarks/population.py; README, "Performance").
  Accelerators want the vmapped program's big kernels.
  """
  return "sequential" if platform == "cpu" else "vmap"


def _map_members(member_map: str, fn: Callable, *args):
  if member_map == "vmap":
    return jax.vmap(fn)(*args)
  if member_map == "sequential":
    return jax.lax.map(lambda xs: fn(*xs), args)
  raise ValueError(f"member_map must be one of {MEMBER_MAPS}, got {member_map!r}")


def multi_step(population: Population, batches: jax.Array, streams: jax.Array,
               member_map: str = "vmap") -> tuple[Population, train.Metrics]:
  """K steps of every member, member i on the batches of stream streams[i].

  Args:
    population: the members (on one device here; see make_multi_step).
    batches: (K, S, B, H, W, C), or a pytree of such leaves (EBGAN-LN's
      labelled and unlabelled images): K steps of S data streams (one per
      distinct data seed, so members that share a seed share their batches'
      memory).
    streams: (P,) int, the stream each member reads.
    member_map: one of MEMBER_MAPS; the result is the same up to float rounding.

  Returns:
    The population after the K steps, and every step's metrics, each (P, K).
  """
  def one(state, hparams, diverged, stream):
    return member_steps(state, jax.tree.map(lambda b: b[:, stream], batches), hparams,
                        diverged, objective=population.objective)
  states, metrics, diverged = _map_members(
      member_map, one, population.states, population.hparams, population.diverged, streams)
  return population.replace(states=states, diverged=diverged), metrics


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh of MEMBER_AXIS over `devices` (default: every device of every process)."""
  return train.make_mesh(devices, MEMBER_AXIS)


def member_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(MEMBER_AXIS))


def _check_splits(size: int, mesh: Mesh) -> None:
  if size % mesh.size:
    raise ValueError(f"a population of {size} members does not split over "
                     f"{mesh.size} devices; give a multiple of {mesh.size} (pad_members)")


def shard(population: Population, mesh: Mesh) -> Population:
  """Lays the members along MEMBER_AXIS; the size must be a multiple of the device count."""
  _check_splits(population.size, mesh)
  return jax.device_put(population, member_sharded(mesh))


def global_array(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from one every process holds whole (any number of processes)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def make_multi_step(mesh: Mesh, member_map: str | None = None):
  """`multi_step` jitted over `mesh`, each device stepping its slice of the members.

  Call it as step(population, batches, streams): population and streams
  sharded along MEMBER_AXIS (see `shard`), batches (K, S, B, ...) replicated.
  Returns the population, donated and updated, and each metric's mean over
  the K steps, (P,) per metric. member_map defaults to member_map_for the
  mesh's platform.
  """
  if member_map is None:
    member_map = member_map_for(mesh.devices.flat[0].platform)
  members, replicated = PartitionSpec(MEMBER_AXIS), PartitionSpec()

  def step(population, batches, streams):
    local = functools.partial(multi_step, member_map=member_map)
    population, metrics = jax.shard_map(
        local, mesh=mesh, in_specs=(members, replicated, members),
        out_specs=(members, members))(population, batches, streams)
    return population, jax.tree.map(lambda m: jnp.mean(m, axis=1), metrics)
  return jax.jit(step, donate_argnums=0, compiler_options=train.compiler_options(mesh))


def pad_members(members: list[dict], multiple: int) -> list[dict]:
  """`members` and copies of its last one, up to a multiple of `multiple` (the devices)."""
  return members + [members[-1]] * (-len(members) % multiple)


def initialise(config, members: Sequence[dict], mesh: Mesh) -> tuple[Population, jax.Array]:
  """The population of `members` (a multiple of the mesh's size) laid along `mesh`, and
  the data stream each member reads: the index of its seed among the sorted distinct
  seeds, (P,) int, laid the same way.

  Initialised inside one program that lays the members out: every process makes
  its own devices' members (several hosts under jax.distributed).
  """
  _check_splits(len(members), mesh)
  objective = objectives.from_config(config)
  settings = {name: [m[name] for m in members] for name in settings_of(objective)}
  population = jax.jit(lambda: create_population(config, **settings),
                       out_shardings=member_sharded(mesh))()
  seeds = sorted({m["seed"] for m in members})
  streams = global_array(np.asarray([seeds.index(m["seed"]) for m in members], np.int32),
                         member_sharded(mesh))
  return population, streams
