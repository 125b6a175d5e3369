"""Populations: P runs of one objective trained as one program, and the one loop that trains them.

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
"""

import functools
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ebgan_jax import data, objectives, state as state_lib, train
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
  optimizers: tuple[str, str] = flax.struct.field(pytree_node=False)  # kinds of G's and D's

  @property
  def size(self) -> int:
    return self.diverged.shape[0]

  def member(self, i: int) -> GANState:
    """Member i as the GANState of a single run with its settings.

    Its optimisers are the plain optax ones at the member's learning rates,
    with the member's moments: the state state.create_state makes, so it
    samples, evaluates, checkpoints and resumes (experiments.mnist_ebgan) like
    any run.
    """
    state = jax.tree.map(lambda x: x[i], self.states)
    kind_g, kind_d = self.optimizers
    return state.replace(generator=_plain_optimizer(state.generator, kind_g),
                         discriminator=_plain_optimizer(state.discriminator, kind_d))


def settings_of(objective) -> tuple[str, ...]:
  """The per-member settings create_population takes for `objective`."""
  return ("seed", "lr_g", "lr_d", *objective.hyperparameters)


def _with_learning_rate(net: TrainState, optim_config, learning_rate) -> TrainState:
  """`net` with its optimiser at `learning_rate`, kept in the optimiser state by
  optax.inject_hyperparams so that it can differ between members of one vmapped state."""
  kind, settings = state_lib.optimizer_settings(optim_config)
  tx = optax.inject_hyperparams(state_lib.OPTIMIZERS[kind][0])(**settings)
  opt_state = tx.init(net.params)
  hyperparams = {**opt_state.hyperparams,
                 "learning_rate": jnp.asarray(learning_rate, jnp.float32)}
  return net.replace(tx=tx, opt_state=opt_state._replace(hyperparams=hyperparams))


def _plain_optimizer(net: TrainState, kind: str) -> TrainState:
  """The inverse of _with_learning_rate, for one member: the optax optimiser at its settings."""
  hyperparams = {k: float(v) for k, v in net.opt_state.hyperparams.items()}
  return net.replace(tx=state_lib.OPTIMIZERS[kind][0](**hyperparams),
                     opt_state=net.opt_state.inner_state)


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
  for name in ("optim_g", "optim_d"):
    if state_lib.learning_rate_decay(config[name])[0]:
      raise ValueError(f"a population's learning rates are constant; drop {name}.decay_steps")

  def member(key, lr_g, lr_d):
    state = state_lib.create_state(config, key)
    return state.replace(
        generator=_with_learning_rate(state.generator, config.optim_g, lr_g),
        discriminator=_with_learning_rate(state.discriminator, config.optim_d, lr_d))

  keys = jnp.stack([jax.random.PRNGKey(seed) for seed in settings["seed"]])
  as_array = lambda name: jnp.asarray(np.asarray(settings[name], np.float32))
  states = jax.vmap(member)(keys, as_array("lr_g"), as_array("lr_d"))
  return Population(
      states=states, hparams={name: as_array(name) for name in objective.hyperparameters},
      diverged=jnp.zeros(sizes["seed"], bool), objective=objective,
      optimizers=(state_lib.optimizer_settings(config.optim_g)[0],
                  state_lib.optimizer_settings(config.optim_d)[0]))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def member_steps(state: GANState, batches: jax.Array, hparams, diverged: jax.Array, *,
                 objective) -> tuple[GANState, train.Metrics, jax.Array]:
  """len(batches) train.train_steps of one member, as a lax.scan; metrics (K,).

  A member that has diverged, or whose losses or parameters turn non-finite
  in these K steps, keeps its state from before them: frozen at its last
  finite state of a call boundary, and flagged. Checking once per call, not
  per step, keeps the step's in-place (donated) updates: a per-step select
  between old and new state would hold two copies of every tensor.
  """
  step = functools.partial(train.train_step, hparams=hparams, objective=objective)
  new_state, metrics = jax.lax.scan(step, state, batches)
  finite = (_all_finite((metrics["d_loss"], metrics["g_loss"]))
            & _all_finite((new_state.generator.params, new_state.discriminator.params)))
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
    batches: (K, S, B, H, W, C): K steps of S data streams (one per distinct
      data seed, so members that share a seed share their batches' memory).
    streams: (P,) int, the stream each member reads.
    member_map: one of MEMBER_MAPS; the result is the same up to float rounding.

  Returns:
    The population after the K steps, and every step's metrics, each (P, K).
  """
  def one(state, hparams, diverged, stream):
    return member_steps(state, batches[:, stream], hparams, diverged,
                        objective=population.objective)
  states, metrics, diverged = _map_members(
      member_map, one, population.states, population.hparams, population.diverged, streams)
  return population.replace(states=states, diverged=diverged), metrics


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh of MEMBER_AXIS over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (MEMBER_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


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


def _global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
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


def train_members(config, members: Sequence[dict], mesh: Mesh | None = None,
                  member_map: str | None = None, on_chunk: Callable[[int], None] | None = None
                  ) -> tuple[Population, dict[str, np.ndarray]]:
  """The population training loop: config.num_steps steps of every member.

  Args:
    config: the group's config (objective, model, optimisers, data, batch_size,
      num_steps, steps_per_call). Each member's data stream is
      data.create_dataset(config) with config.seed set to the member's seed:
      the batches its single run (experiments.mnist_ebgan) would read.
    members: dicts of the settings_of(objective) for each member.
    mesh: a member mesh (`make_mesh`; default all devices). The members are
      padded to a multiple of its size with copies, dropped from the result.
    member_map: see make_multi_step.
    on_chunk: called with the steps done after each jitted call (progress).

  Returns:
    The population (padding dropped) and the training metrics, each a
    (P, num_steps // steps_per_call) array of per-call means.
  """
  mesh = make_mesh() if mesh is None else mesh
  objective = objectives.from_config(config)
  padded = pad_members(list(members), mesh.size)
  _check_splits(len(padded), mesh)
  settings = {name: [m[name] for m in padded] for name in settings_of(objective)}
  # Initialised inside one program that lays the members out: every process
  # makes its own devices' members (several hosts under jax.distributed).
  population = jax.jit(lambda: create_population(config, **settings),
                       out_shardings=member_sharded(mesh))()
  seeds = sorted({m["seed"] for m in padded})
  streams = _global(np.asarray([seeds.index(m["seed"]) for m in padded], np.int32),
                    member_sharded(mesh))
  # One stream per distinct seed, read whole by every process: members live on any device.
  datasets = [data.create_dataset(_with_seed(config, seed), "train", process_index=0,
                                  process_count=1)[0] for seed in seeds]
  step = make_multi_step(mesh, member_map)
  replicated = NamedSharding(mesh, PartitionSpec())
  history, done = [], 0
  while done < config.num_steps:
    k = min(config.steps_per_call, config.num_steps - done)
    batches = np.stack([np.stack([next(d) for d in datasets]) for _ in range(k)])
    population, metrics = step(population, _global(batches, replicated), streams)
    history.append(metrics)
    done += k
    if on_chunk is not None:
      on_chunk(done)
  # Every process gets every member back, on its default device, for sampling and scoring.
  population, history = jax.device_put(
      multihost_utils.process_allgather((population, history), tiled=True))
  history = {name: np.stack([h[name] for h in history], axis=1)[:len(members)]
             for name in history[0]} if history else {}
  return jax.tree.map(lambda x: x[:len(members)], population), history


def _with_seed(config, seed: int):
  config = config.copy_and_resolve_references()
  config.seed = int(seed)
  return config
