"""The speed features: matmul-form conv layers, K steps per call, the trainer's call plan,
prefetch, bfloat16 compute.

Only behaviour is tested here; how fast they are is benchmarks/step_throughput.py's job.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import checkpoint, models, state as state_lib, train
from experiments import trainer
from experiments.configs import mnist_conv, tiny
from tests import data_fixtures, multidevice

BATCH = 8
K = 4


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  return data_fixtures.write_idx_dir(tmp_path_factory.mktemp("idx"), num_train=256, num_test=64,
                                     height=28, width=28)


def _config(family):
  config = mnist_conv.get_config() if family == "conv28" else tiny.get_config()
  config.batch_size = BATCH
  # Adam with eps 1e-8 turns rounding-level gradient differences into +-lr
  # steps (see multidevice.tolerant_adam); the comparison is about the scan.
  return multidevice.tolerant_adam(config)


def _batches(num, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (num, BATCH, 28, 28, 1)).astype(np.float32)


def _tiny(idx_dir, **overrides):
  config = tiny.get_config()
  config.idx_dir = str(idx_dir)
  config.update(overrides)
  return config


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _perturbed(variables, scale=0.1):
  """Every parameter moved off its init (biases off zero), so that all of them are checked."""
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


def _assert_same_function(ours, reference, variables, *args, atol, **kwargs):
  """Same outputs and same gradients (parameters and inputs) from the same variables."""
  def loss(module, variables, *args):
    outputs = module.apply(variables, *args, **kwargs)
    outputs = outputs[0] if isinstance(outputs, tuple) and kwargs.get("mutable") else outputs
    return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(outputs))

  for a, b in zip(jax.tree.leaves(ours.apply(variables, *args, **kwargs)),
                  jax.tree.leaves(reference.apply(variables, *args, **kwargs)), strict=True):
    np.testing.assert_allclose(a, b, atol=atol)
  grads_ours = jax.grad(loss, argnums=(1, 2))(ours, variables, *args)
  grads_ref = jax.grad(loss, argnums=(1, 2))(reference, variables, *args)
  for a, b in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads_ref), strict=True):
    np.testing.assert_allclose(a, b, atol=atol * max(1.0, float(jnp.max(jnp.abs(b)))))


@pytest.mark.parametrize("shape, features", [((3, 28, 28, 1), 64), ((2, 9, 6, 3), 5)])
def test_conv_2x_equals_flax_conv(shape, features):
  reference = nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME")
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  variables = _perturbed(reference.init(jax.random.PRNGKey(1), x))
  ours = models.Conv2x(features)
  # Same parameters, same initial values.
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == \
      jax.tree.map(jnp.shape, variables)
  assert ours.apply(variables, x).shape == reference.apply(variables, x).shape
  _assert_same_function(ours, reference, variables, x, atol=1e-5)


def _flax_batch_norm(train):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      use_fast_variance=False)


class _FlaxConv28Generator(nn.Module):
  """docs/design.md's conv28 G with flax's own ConvTranspose, layers named as in models.py."""

  @nn.compact
  def __call__(self, z, train):
    x = nn.relu(_flax_batch_norm(train)(nn.Dense(1024, use_bias=False)(z)))
    x = nn.relu(_flax_batch_norm(train)(nn.Dense(7 * 7 * 128, use_bias=False)(x)))
    x = nn.ConvTranspose(64, (4, 4), strides=(2, 2), padding="SAME", use_bias=False,
                         name="ConvTranspose2x_0")(x.reshape(-1, 7, 7, 128))
    x = nn.relu(_flax_batch_norm(train)(x))
    return jnp.tanh(nn.ConvTranspose(1, (4, 4), strides=(2, 2), padding="SAME")(x))


class _FlaxConv28Discriminator(nn.Module):
  """docs/design.md's conv28 D with flax's own Conv and ConvTranspose."""

  @nn.compact
  def __call__(self, x, train):
    h = nn.relu(nn.Conv(64, (4, 4), strides=(2, 2), padding="SAME")(x))
    embedding = nn.Dense(32)(h.reshape(h.shape[0], -1))
    h = nn.relu(_flax_batch_norm(train)(nn.Dense(14 * 14 * 64, use_bias=False)(embedding)))
    h = nn.ConvTranspose(1, (4, 4), strides=(2, 2), padding="SAME")(h.reshape(-1, 14, 14, 64))
    return jnp.tanh(h), embedding


def test_conv28_nets_equal_the_flax_layer_nets():
  """The matmul-form layers change neither the parameters nor the function of conv28's nets."""
  generator, discriminator = models.build_models({"family": "conv28"}, (28, 28, 1))
  z = jax.random.uniform(jax.random.PRNGKey(0), (BATCH, 64), minval=-1, maxval=1)
  g_vars = generator.init(jax.random.PRNGKey(1), z, train=False)
  assert jax.tree.map(jnp.shape, g_vars) == jax.tree.map(
      jnp.shape, _FlaxConv28Generator().init(jax.random.PRNGKey(1), z, train=False))
  g_vars = _perturbed(g_vars)
  _assert_same_function(generator, _FlaxConv28Generator(), g_vars, z, atol=1e-5, train=True,
                        mutable=["batch_stats"])

  x = jax.random.uniform(jax.random.PRNGKey(2), (BATCH, 28, 28, 1), minval=-1, maxval=1)
  d_vars = discriminator.init(jax.random.PRNGKey(3), x, train=False)
  assert jax.tree.map(jnp.shape, d_vars) == jax.tree.map(
      jnp.shape, _FlaxConv28Discriminator().init(jax.random.PRNGKey(3), x, train=False))
  _assert_same_function(discriminator, _FlaxConv28Discriminator(), _perturbed(d_vars), x,
                        atol=1e-5, train=True, mutable=["batch_stats"])


@pytest.mark.parametrize("family", ["conv28", "mlp"])
def test_multi_step_equals_single_steps(family):
  config = _config(family)
  mesh = train.make_mesh()
  batches = _batches(2 * K)
  fresh = lambda: train.replicate(state_lib.create_state(config, jax.random.PRNGKey(0)), mesh)

  single_step = train.make_train_step(config, mesh)
  state, single_metrics = fresh(), []
  for batch in batches:
    state, metrics = single_step(state, train.global_batch(batch, mesh))
    single_metrics.append(metrics)
  single = _leaves(state)

  multi_step = train.make_multi_step(config, mesh)
  state, multi_metrics = fresh(), []
  for block in batches.reshape(2, K, *batches.shape[1:]):
    state, metrics = multi_step(state, train.global_batches(block, mesh))
    multi_metrics.append(metrics)
  assert multi_step._cache_size() == 1
  assert int(state.step) == 2 * K
  for a, b in zip(_leaves(state), single, strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  for name in single_metrics[0]:
    stacked = np.concatenate([np.asarray(m[name]) for m in multi_metrics])
    assert stacked.shape == (2 * K,)
    np.testing.assert_allclose(stacked, [float(m[name]) for m in single_metrics], rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("start, overrides, expected", [
    # Every boundary a multiple of K: only calls of K.
    (0, {"num_steps": 16, "log_every": 4, "sample_every": 8, "checkpoint_every": 8}, [4] * 4),
    # Boundaries at 5, 10, 15 and the end at 13: single steps up to each.
    (0, {"num_steps": 13, "log_every": 5, "sample_every": 10, "checkpoint_every": 10},
     [4, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
    # Resumed off the grid of K: single steps back onto it.
    (6, {"num_steps": 16, "log_every": 8, "sample_every": 8, "checkpoint_every": 8},
     [1, 1, 4, 4]),
    (0, {"num_steps": 3, "log_every": 100, "sample_every": 100, "checkpoint_every": 100},
     [1, 1, 1]),
    # An evaluation every 6 steps is a boundary too.
    (0, {"num_steps": 12, "log_every": 100, "sample_every": 100, "checkpoint_every": 100,
         "eval_every": 6}, [4, 1, 1, 1, 1, 4]),
])
def test_call_sizes_reach_every_boundary(start, overrides, expected):
  config = tiny.get_config()
  config.update(steps_per_call=K, **overrides)
  sizes = list(trainer._call_sizes(start, config))
  assert sizes == expected
  ends = np.cumsum([start] + sizes)[1:]
  for interval in ("log_every", "sample_every", "checkpoint_every", "eval_every"):
    every = config[interval]
    if every:
      assert set(range(every, config.num_steps + 1, every)) <= set(ends)


def test_trainer_with_steps_per_call_matches_single_steps(idx_dir, tmp_path):
  # log_every 5 and checkpoint_every 10 are not multiples of K: the trainer
  # mixes calls of K and single steps and still lands on each boundary.
  overrides = {"num_steps": 14, "log_every": 5, "sample_every": 10, "checkpoint_every": 10}
  single = trainer.train_and_evaluate(
      multidevice.tolerant_adam(_tiny(idx_dir, **overrides)), str(tmp_path / "single"))
  multi = trainer.train_and_evaluate(
      multidevice.tolerant_adam(_tiny(idx_dir, steps_per_call=K, **overrides)),
      str(tmp_path / "multi"))
  assert int(multi.step) == 14
  for a, b in zip(_leaves(multi), _leaves(single), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  assert sorted(int(p.name) for p in (tmp_path / "multi" / "checkpoints").iterdir()) == [10, 14]
  assert {p.name for p in (tmp_path / "multi").glob("samples_*.png")} == {
      "samples_0000010.png", "samples_0000014.png"}


def test_resume_with_steps_per_call_is_exact(idx_dir, tmp_path, monkeypatch):
  overrides = {"steps_per_call": K, "log_every": 4, "sample_every": 8, "checkpoint_every": 8}
  straight = trainer.train_and_evaluate(_tiny(idx_dir, num_steps=16, **overrides),
                                        str(tmp_path / "straight"))
  straight = _leaves(straight)
  trainer.train_and_evaluate(_tiny(idx_dir, num_steps=8, **overrides), str(tmp_path / "resumed"))
  counter = multidevice.StepCounter().install(monkeypatch.setattr)
  resumed = trainer.train_and_evaluate(_tiny(idx_dir, num_steps=16, **overrides),
                                       str(tmp_path / "resumed"))
  # Steps 8 to 16 only: retraining from step 0 would end in the same state.
  assert counter.steps == 8 and int(resumed.step) == 16
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(resumed), straight, strict=True))


def test_nan_guard_names_the_step_inside_a_multi_step(idx_dir, tmp_path, monkeypatch):
  real_make_multi_step = train.make_multi_step

  def poisoned_make_multi_step(config, mesh):
    multi_step = real_make_multi_step(config, mesh)

    def poisoned(state, batches):
      state, metrics = multi_step(state, batches)
      # g_loss turns NaN at step 7, the third step of the call for steps 5 to 8.
      steps = state.step - K + 1 + jnp.arange(K)
      metrics["g_loss"] = jnp.where(steps >= 7, jnp.nan, metrics["g_loss"])
      return state, metrics
    return poisoned

  monkeypatch.setattr(train, "make_multi_step", poisoned_make_multi_step)
  config = _tiny(idx_dir, num_steps=16, steps_per_call=K, log_every=8, sample_every=8,
                 checkpoint_every=4)
  with pytest.raises(trainer.TrainingDiverged, match=r"g_loss = nan at step 7; stopped "
                     r"without saving, the last good checkpoint is step 4"):
    trainer.train_and_evaluate(config, str(tmp_path))
  manager = checkpoint.create_manager(str(tmp_path / "checkpoints"), keep=2)
  assert manager.latest_step() == 4


def test_bad_steps_per_call_and_compute_dtype_are_rejected(idx_dir, tmp_path):
  with pytest.raises(trainer.ConfigError, match="steps_per_call must be >= 1, got 0"):
    trainer.train_and_evaluate(_tiny(idx_dir, steps_per_call=0), str(tmp_path))
  with pytest.raises(trainer.ConfigError, match="compute_dtype must be one of .*'float16'"):
    trainer.train_and_evaluate(_tiny(idx_dir, compute_dtype="float16"), str(tmp_path))


def test_the_trainer_runs_at_most_one_call_ahead_of_the_device(idx_dir, tmp_path, monkeypatch):
  # Dispatch is asynchronous: without a bound the host would queue steps up to
  # the next metrics fetch, and train_seconds would stop the host, not the work.
  real_make_train_step = train.make_train_step
  outputs, behind = [], []

  def recording_make_train_step(config, mesh):
    step = real_make_train_step(config, mesh)

    def recording(state, batch):
      # Every call but the last one dispatched has finished.
      behind.append(sum(not m["d_loss"].is_ready() for m in outputs[:-1]))
      state, metrics = step(state, batch)
      outputs.append(metrics)
      return state, metrics
    return recording

  monkeypatch.setattr(train, "make_train_step", recording_make_train_step)
  # conv28: a step far slower than its dispatch; no log or checkpoint in between.
  config = _tiny(idx_dir, steps_per_call=1, num_steps=30, log_every=30, sample_every=30,
                 checkpoint_every=30)
  config.model = mnist_conv.get_config().model
  trainer.train_and_evaluate(config, str(tmp_path))
  assert len(behind) == 30 and max(behind) == 0


def test_prefetch_runs_ahead_and_keeps_order():
  pulled = []

  def transfers():
    for i in range(5):
      pulled.append(i)
      yield i

  items = train.prefetch(transfers(), size=2)
  assert next(items) == 0 and pulled == [0, 1]  # the next one is already made
  assert next(items) == 1 and pulled == [0, 1, 2]
  assert list(items) == [2, 3, 4]


@pytest.mark.parametrize("family", ["conv28", "mlp"])
def test_bfloat16_compute_keeps_float32_params_and_finite_metrics(family):
  config = _config(family)
  config.compute_dtype = "bfloat16"
  mesh = train.make_mesh()
  # On the mesh, as the step expects: a state off it would compile the step a second time.
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(0)), mesh)
  step = train.make_train_step(config, mesh)
  for batch in _batches(3):
    state, metrics = step(state, batch)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  params = jax.tree.leaves((state.generator.params, state.discriminator.params))
  opt_states = jax.tree.leaves((state.generator.opt_state, state.discriminator.opt_state))
  assert all(x.dtype == jnp.float32 for x in params)
  assert all(x.dtype in (jnp.float32, jnp.int32) for x in opt_states)

  # The layers really compute in bfloat16 and hand float32 to the losses.
  g = state.generator
  z = train.sample_z(jax.random.PRNGKey(1), BATCH, state.z_dim)
  variables = {"params": g.params, "batch_stats": g.batch_stats}
  jaxpr = str(jax.make_jaxpr(lambda z: g.apply_fn(variables, z, train=False))(z))
  assert "bf16" in jaxpr
  images = g.apply_fn(variables, z, train=False)
  float32_g, _ = models.build_models(config.model, config.image_shape, "float32")
  reference = float32_g.apply(variables, z, train=False)
  assert images.dtype == jnp.float32
  assert 0 < float(jnp.max(jnp.abs(images - reference))) < 0.1


def test_unknown_compute_dtype_is_a_clear_error():
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    models.build_models({"family": "conv28"}, (28, 28, 1), "float16")
