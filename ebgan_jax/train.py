"""The training step and sampling, as pure functions of a GANState.

One step (docs/design.md): one D update on (real batch, fresh z), then one G update
on another fresh z, with the losses of an objective of objectives.py (EBGAN or
the GAN baseline). Each update advances only its own net's BatchNorm
statistics: the other net runs in training mode (batch statistics) but its
running averages are left as they were.

Data parallelism is one `jax.jit` over a 1-D device mesh (axis "data"): the
state is replicated, each batch is split along its first axis, and XLA
inserts the cross-device reductions. 1 device or 1,000, it is the same code.

`multi_step` runs K steps in one call (a `lax.scan` over K stacked batches):
one dispatch and one host round trip per K steps instead of per step.
"""

import collections
import functools
import itertools
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ebgan_jax import objectives
from ebgan_jax.state import GANState, TrainState

Metrics = dict[str, jax.Array]
Step = Callable[[GANState, jax.Array], tuple[GANState, Metrics]]
T = TypeVar("T")

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None, axis: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh named `axis` over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: the step is written for global arrays and XLA chooses the
  # collectives, so the model code carries no sharding annotations.
  return jax.make_mesh((len(devices),), (axis,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def batches_sharded(mesh: Mesh) -> NamedSharding:
  """K stacked batches (K, B, ...): every batch split along its own first axis."""
  return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def replicate(state: GANState, mesh: Mesh) -> GANState:
  """Puts a copy of `state` on every device of `mesh`."""
  return jax.device_put(state, replicated(mesh))


def global_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's part of a batch -> the global batch, split over `mesh`.

  With several processes (hosts), each passes the examples it read, and the
  global batch is their concatenation in process order.
  """
  return jax.make_array_from_process_local_data(batch_sharded(mesh), local_batch)


def global_batches(local_batches: np.ndarray, mesh: Mesh) -> jax.Array:
  """K stacked local batches (K, b, ...) -> K global batches (K, B, ...), for `multi_step`."""
  return jax.make_array_from_process_local_data(batches_sharded(mesh), local_batches)


def prefetch(transfers: Iterable[T], size: int = 2) -> Iterator[T]:
  """Yields the items of `transfers`, always holding the next `size` - 1 already made.

  Make each item a device transfer (`global_batch` of the next host batch,
  say): JAX copies asynchronously, so the next batches reach the devices
  while the current step runs, and the step never waits for its input.
  """
  if size < 1:
    raise ValueError(f"prefetch size must be >= 1, got {size}")
  transfers = iter(transfers)
  queue = collections.deque(itertools.islice(transfers, size))
  while queue:
    yield queue.popleft()
    queue.extend(itertools.islice(transfers, 1))


def all_finite(tree) -> jax.Array:
  """Whether every float in `tree` is finite (a bool scalar; on device when traced)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def sample_z(key: jax.Array, n: int, z_dim: int) -> jax.Array:
  """z ~ Uniform(-1, 1)^z_dim, as in the paper."""
  return jax.random.uniform(key, (n, z_dim), minval=-1.0, maxval=1.0)


def apply_train(net: TrainState, params, x: jax.Array, dropout_key: jax.Array, **options):
  """Runs a net in training mode (with its call's keyword `options`); returns (outputs, its
  updated batch_stats)."""
  outputs, updates = net.apply_fn(
      {"params": params, "batch_stats": net.batch_stats}, x, train=True,
      mutable=["batch_stats"], rngs={"dropout": dropout_key}, **options)
  return outputs, updates["batch_stats"]


def _apply_d(d: TrainState, d_params) -> objectives.ApplyD:
  """D in training mode with `d_params`, as objectives call it."""
  def apply_d(x, batch_stats, key, **options):
    return apply_train(d.replace(batch_stats=batch_stats), d_params, x, key, **options)
  return apply_d


def discriminator_objective(d_params, g_params, state: GANState, batch, z: jax.Array | None,
                            dropout_key: jax.Array, values, *, objective):
  """L_D as a function of D's params; G's output is a constant here (z None: no G)."""
  fake = None
  if z is not None:
    fake, _ = apply_train(state.generator, g_params, z, dropout_key)
    fake = jax.lax.stop_gradient(fake)
  # The objective runs D on each part of the batch it needs, and threads the
  # running statistics it keeps.
  return objective.discriminator_loss(values, batch, fake, _apply_d(state.discriminator, d_params),
                                      state.discriminator.batch_stats, dropout_key)


def generator_objective(g_params, d_params, state: GANState, batch, z: jax.Array,
                        dropout_key: jax.Array, values, *, objective):
  """L_G as a function of G's params; D sees G's samples as the objective's d_on_fakes
  says (by default, a pass of their own)."""
  g_key, d_key = jax.random.split(dropout_key)
  fake, g_stats = apply_train(state.generator, g_params, z, g_key)
  d_fake = objective.d_on_fakes(_apply_d(state.discriminator, d_params), fake, batch,
                                state.discriminator.batch_stats, d_key)
  loss, metrics = objective.generator_loss(values, fake, d_fake)
  return loss, (g_stats, metrics)


def update_discriminator(state: GANState, batch, z: jax.Array | None, dropout_key: jax.Array,
                         values, *, objective) -> tuple[GANState, Metrics]:
  """One optimiser step on L_D; G's params and statistics are left untouched."""
  grad_fn = jax.value_and_grad(discriminator_objective, has_aux=True)
  (loss, (d_stats, metrics)), grads = grad_fn(
      state.discriminator.params, state.generator.params, state, batch, z, dropout_key, values,
      objective=objective)
  discriminator = state.discriminator.apply_gradients(grads=grads, batch_stats=d_stats)
  return state.replace(discriminator=discriminator), {"d_loss": loss, **metrics}


def update_generator(state: GANState, batch, z: jax.Array, dropout_key: jax.Array, values,
                     *, objective) -> tuple[GANState, Metrics]:
  """One optimiser step on L_G; D's params and statistics are left untouched."""
  grad_fn = jax.value_and_grad(generator_objective, has_aux=True)
  (loss, (g_stats, metrics)), grads = grad_fn(
      state.generator.params, state.discriminator.params, state, batch, z, dropout_key, values,
      objective=objective)
  generator = state.generator.apply_gradients(grads=grads, batch_stats=g_stats)
  return state.replace(generator=generator), {"g_loss": loss, **metrics}


def train_step(state: GANState, batch, hparams: objectives.HyperParameters, *,
               objective=objectives.EBGAN()) -> tuple[GANState, Metrics]:
  """One D update then one G update, each on fresh z, then the objective's state update.

  The one step body of the library, for every objective of objectives.OBJECTIVES
  (`objective`, static). `batch` is what the objective trains on: an image batch
  (N, H, W, C), or a pytree of them (EBGAN-LN's labelled and unlabelled images).
  `hparams` holds the objective's hyperparameters as scalars; its `values` give
  what this step's losses read (EBGAN: the margin of its schedule), from them,
  the objective's state and the step. An objective with `trains_generator`
  False (the ladder network alone) makes this one D update on the batch; one whose
  `trains_generator_now` is a traced bool (MAGAN while D pre-trains) skips G's update
  where it is False.
  Metrics: d_loss and g_loss (with a G update), and the objective's
  metric_names (EBGAN: energy_real, energy_fake, hinge_active, the fraction
  of fakes with E < m, from the D update; pt from the G update; BEGAN's
  m_global from its state update).
  """
  step_key = jax.random.fold_in(state.key, state.step)
  z_d_key, z_g_key, dropout_d_key, dropout_g_key = jax.random.split(step_key, 4)
  values = objective.values(hparams, state.objective_state, state.step)
  n = objective.num_generated(batch)
  trains_generator = objective.trains_generator
  state, metrics = update_discriminator(
      state, batch, sample_z(z_d_key, n, state.z_dim) if trains_generator else None,
      dropout_d_key, values, objective=objective)
  if trains_generator:
    z_g = sample_z(z_g_key, n, state.z_dim)
    state, g_metrics = _maybe(objective.trains_generator_now(values), functools.partial(
        update_generator, batch=batch, z=z_g, dropout_key=dropout_g_key, values=values,
        objective=objective), state)
    metrics = {**metrics, **g_metrics}
  objective_state, objective_metrics = objective.update(
      state.objective_state, hparams, metrics, state.step)
  return (state.replace(step=state.step + 1, objective_state=objective_state),
          {**metrics, **objective_metrics})


def _maybe(active, update: Callable[[GANState], tuple[GANState, Metrics]],
           state: GANState) -> tuple[GANState, Metrics]:
  """update(state) if `active` (True, or a traced bool), else the state as it is with
  the update's metrics all 0; a traced `active` becomes a lax.cond, which skips the
  update's computation (under vmap, XLA computes both branches and selects)."""
  if active is True:
    return update(state)

  def zeros(like: jax.ShapeDtypeStruct) -> jax.Array:
    # Inside shard_map (populations) the update's metrics vary over the member axis, and
    # cond's branches must agree on that too.
    varying = tuple(like.manual_axis_type.varying) if like.manual_axis_type else ()
    zero = jnp.zeros(like.shape, like.dtype)
    return jax.lax.pcast(zero, varying, to="varying") if varying else zero

  def skip(state):
    return state, jax.tree.map(zeros, jax.eval_shape(update, state)[1])
  return jax.lax.cond(active, update, skip, state)


def multi_step(state: GANState, batches, hparams: objectives.HyperParameters, *,
               objective=objectives.EBGAN()) -> tuple[GANState, Metrics]:
  """K `train_step`s, one per batch of `batches` (each leaf stacked (K, ...)), as one
  `lax.scan`: the library's one scan of the step, for single runs and population members.

  Returns the state after the K steps and the metrics of every step, each
  stacked along a leading axis of size K. The results equal K calls of
  `train_step` up to float rounding: XLA compiles the scan's body on its own
  (other fusions and layouts, so other orders of float sums).
  """
  step = functools.partial(train_step, hparams=hparams, objective=objective)
  return jax.lax.scan(step, state, batches)


def _objective(config, mesh: Mesh) -> dict:
  """The step's hparams and objective from `config`, once config and mesh are checked."""
  objective = objectives.from_config(config)
  hparams = objectives.hyperparameters(objective, config)
  if config.batch_size % mesh.size:
    raise ValueError(
        f"global batch_size {config.batch_size} is not divisible by the {mesh.size} devices; "
        f"use a multiple of {mesh.size} (per-device batch x device count)")
  return {"hparams": hparams, "objective": objective}


def compiler_options(mesh: Mesh) -> dict | None:
  """XLA options for a jitted step over `mesh` that donates its state."""
  if mesh.devices.flat[0].platform != "cpu":
    return None
  # XLA:CPU's default copy insertion copies donated buffers that are still
  # read while their update could start (Adam's biggest tensors) and
  # serialises the step around them; region analysis proves those copies
  # unneeded (2 cores: conv28 12.0 -> 14.1 steps/s, mlp 26.1 -> 38.5; README
  # "Performance").
  return {"xla_cpu_copy_insertion_use_region_analysis": True}


def jit_step(step, mesh: Mesh, batch_sharding: NamedSharding) -> Step:
  """Jits `step` over `mesh`, the state replicated and donated, so it is updated in place."""
  return jax.jit(step, in_shardings=(replicated(mesh), batch_sharding),
                 out_shardings=replicated(mesh), donate_argnums=0,
                 compiler_options=compiler_options(mesh))


def make_train_step(config, mesh: Mesh | None = None) -> Step:
  """`train_step` with config's objective, jitted over `mesh`, the input state donated.

  The state must be replicated on `mesh` (see `replicate`) and the batch
  split over it (see `global_batch`); metrics come back replicated. As one
  program over global arrays, the step computes exactly what one device
  would on the whole batch, up to the order of float sums: BatchNorm's
  batch statistics, the losses' means and the pulling-away term are those
  of the global batch, not of each device's slice.

  Args:
    config: reads objective (objectives.from_config), that objective's
      hyperparameters (EBGAN: margin, lambda_pt, energy_reduction) and
      batch_size (global).
    mesh: default `make_mesh()`, all devices.
  """
  mesh = make_mesh() if mesh is None else mesh
  return jit_step(functools.partial(train_step, **_objective(config, mesh)), mesh,
                  batch_sharded(mesh))


def make_multi_step(config, mesh: Mesh | None = None) -> Step:
  """`multi_step` with config's objective, jitted over `mesh`, the input state donated.

  Takes K stacked global batches (see `global_batches`) and compiles once per
  K. Metrics come back stacked, one entry per step, so a caller can still
  log and check every step. Reads the same config fields as `make_train_step`.
  """
  mesh = make_mesh() if mesh is None else mesh
  return jit_step(functools.partial(multi_step, **_objective(config, mesh)), mesh,
                  batches_sharded(mesh))


@functools.partial(jax.jit, static_argnums=2)
def generate(state: GANState, key: jax.Array, n: int) -> jax.Array:
  """n images from G in eval mode (BatchNorm running averages), in [-1, 1]."""
  g = state.generator
  return g.apply_fn({"params": g.params, "batch_stats": g.batch_stats},
                    sample_z(key, n, state.z_dim), train=False)
