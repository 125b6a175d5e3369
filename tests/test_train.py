"""The train step: which gradients flow where, determinism, compile-once, in place, sampling."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import losses, objectives, state as state_lib, train
from experiments.configs import mnist_conv, tiny

BATCH = 8
EBGAN = objectives.EBGAN("mean")
HPARAMS = {"margin": 0.3, "lambda_pt": 0.1}


def _config(family):
  config = mnist_conv.get_config() if family == "conv28" else tiny.get_config()
  config.batch_size = BATCH
  return config


def _state(family, seed=0):
  return state_lib.create_state(_config(family), jax.random.PRNGKey(seed))


def _batch(seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), (BATCH, 28, 28, 1), minval=-1, maxval=1)


def _z(state, seed=2):
  return train.sample_z(jax.random.PRNGKey(seed), BATCH, state.z_dim)


def _copy(tree):
  """A copy that survives the donation of `tree` to the jitted step."""
  return jax.tree.map(jnp.copy, tree)


def _fake(state, seed=2):
  """G(z) as discriminator_objective makes it: training mode, dropout key PRNGKey(3)."""
  g = state.generator
  fake, _ = g.apply_fn({"params": g.params, "batch_stats": g.batch_stats}, _z(state, seed),
                       train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(3)})
  return fake


def _energies(state):
  """Per-sample energies under D in training mode, each batch normalised by itself."""
  d = state.discriminator

  def energies(x):
    (rec, _), _ = d.apply_fn({"params": d.params, "batch_stats": d.batch_stats}, x, train=True,
                             mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
    return losses.energy(x, rec)
  return energies


def _max_abs_diff(a, b) -> float:
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _generator_energy(state, detach_target, lambda_pt):
  """L_G written out by hand, optionally with the reconstruction target detached."""
  def loss_fn(g_params, z, key):
    g_key, d_key = jax.random.split(key)
    g, d = state.generator, state.discriminator
    fake, _ = g.apply_fn({"params": g_params, "batch_stats": g.batch_stats}, z, train=True,
                         mutable=["batch_stats"], rngs={"dropout": g_key})
    (rec, embedding), _ = d.apply_fn({"params": d.params, "batch_stats": d.batch_stats}, fake,
                                     train=True, mutable=["batch_stats"], rngs={"dropout": d_key})
    target = jax.lax.stop_gradient(fake) if detach_target else fake
    return jnp.mean(losses.energy(target, rec)) + lambda_pt * losses.pulling_away(embedding)
  return loss_fn


@pytest.mark.parametrize("family", ["conv28", "mlp"])
def test_generator_gradient_flows_through_input_and_target(family):
  state = _state(family)
  z, key = _z(state), jax.random.PRNGKey(3)

  def library_loss(g_params):
    return train.generator_objective(g_params, state.discriminator.params, state, _batch(), z,
                                     key, {"lambda_pt": 0.1}, objective=EBGAN)[0]

  library = jax.grad(library_loss)(state.generator.params)
  both = jax.grad(_generator_energy(state, False, 0.1))(state.generator.params, z, key)
  detached = jax.grad(_generator_energy(state, True, 0.1))(state.generator.params, z, key)
  assert _max_abs_diff(library, both) < 1e-6
  assert _max_abs_diff(library, detached) > 1e-4


def test_lambda_pt_zero_removes_the_pulling_away_gradient():
  state = _state("conv28")
  z, key = _z(state), jax.random.PRNGKey(3)

  def library_grad(lambda_pt):
    return jax.grad(lambda p: train.generator_objective(
        p, state.discriminator.params, state, _batch(), z, key, {"lambda_pt": lambda_pt},
        objective=EBGAN)[0])(state.generator.params)

  energy_only = jax.grad(_generator_energy(state, False, 0.0))(state.generator.params, z, key)
  assert _max_abs_diff(library_grad(0.0), energy_only) < 1e-6
  assert _max_abs_diff(library_grad(1.0), energy_only) > 1e-4


@pytest.mark.parametrize("family", ["conv28", "mlp"])
def test_discriminator_loss_has_zero_gradient_wrt_generator(family):
  state = _state(family)
  g_grads = jax.grad(lambda g: train.discriminator_objective(
      state.discriminator.params, g, state, _batch(), _z(state), jax.random.PRNGKey(3),
      {"margin": 0.3}, objective=EBGAN)[0])(state.generator.params)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(g_grads))


def test_discriminator_hinge_is_per_sample():
  """With fake energies on both sides of m, L_D uses the per-sample hinge, not the mean's."""
  state = _state("conv28")

  def objective(margin):
    return train.discriminator_objective(
        state.discriminator.params, state.generator.params, state, _batch(), _z(state),
        jax.random.PRNGKey(3), {"margin": margin}, objective=EBGAN)

  energies = _energies(state)
  e_real, e_fake = energies(_batch()), energies(_fake(state))
  margin = float(jnp.median(e_fake))
  loss, _ = objective(margin)
  assert bool(jnp.any(e_fake < margin)) and bool(jnp.any(e_fake > margin))
  per_sample = jnp.mean(e_real) + jnp.mean(jnp.maximum(0.0, margin - e_fake))
  of_the_mean = jnp.mean(e_real) + jnp.maximum(0.0, margin - jnp.mean(e_fake))
  assert jnp.allclose(loss, per_sample, rtol=1e-6)
  assert not jnp.allclose(loss, of_the_mean, rtol=1e-3)


def test_each_update_leaves_the_other_net_untouched():
  state = _state("conv28")
  after_d, _ = train.update_discriminator(
      state, _batch(), _z(state), jax.random.PRNGKey(3), {"margin": 0.3}, objective=EBGAN)
  assert _max_abs_diff(after_d.generator, state.generator) == 0.0
  assert _max_abs_diff(after_d.discriminator.params, state.discriminator.params) > 0.0

  after_g, _ = train.update_generator(
      after_d, _batch(), _z(state, seed=4), jax.random.PRNGKey(5), {"lambda_pt": 0.1},
      objective=EBGAN)
  assert _max_abs_diff(after_g.discriminator, after_d.discriminator) == 0.0
  assert _max_abs_diff(after_g.generator.params, after_d.generator.params) > 0.0


@pytest.mark.parametrize("family", ["conv28", "mlp"])
def test_step_metrics_finite_and_both_nets_change(family):
  config = _config(family)
  state = _state(family)
  before = _copy(state)
  step = train.make_train_step(config)
  state, metrics = step(state, _batch())
  assert set(metrics) == {"d_loss", "g_loss", "energy_real", "energy_fake", "pt", "hinge_active"}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert 0.0 <= float(metrics["hinge_active"]) <= 1.0
  assert 0.0 <= float(metrics["pt"]) <= 1.0
  assert int(state.step) == 1
  assert _max_abs_diff(state.generator.params, before.generator.params) > 0.0
  assert _max_abs_diff(state.discriminator.params, before.discriminator.params) > 0.0


def test_steps_are_deterministic_and_compile_once():
  config = _config("conv28")

  def run(num_steps):
    mesh = train.make_mesh()
    state = train.replicate(_state("conv28", seed=7), mesh)
    step = train.make_train_step(config, mesh)
    for i in range(num_steps):
      state, metrics = step(state, _batch(seed=i))
    return state, metrics, step

  state_a, metrics_a, step_a = run(5)
  state_b, metrics_b, _ = run(5)
  assert step_a._cache_size() == 1
  assert _max_abs_diff(state_a, state_b) == 0.0
  assert all(bool(metrics_a[k] == metrics_b[k]) for k in metrics_a)
  state_c = _state("conv28", seed=8)
  assert _max_abs_diff(state_a.generator.params, state_c.generator.params) > 0.0


@pytest.mark.parametrize("make_step, batch", [
    (train.make_train_step, _batch()),
    (train.make_multi_step, jnp.stack([_batch(seed=1), _batch(seed=2)])),
])
def test_state_is_donated_and_updated_in_place(make_step, batch):
  mesh = train.make_mesh()
  state = train.replicate(_state("conv28"), mesh)
  step = make_step(_config("conv28"), mesh)
  # XLA copies a donated buffer that it cannot prove dead before its update;
  # such copies of the state (Adam's biggest tensors) cost conv28 a quarter
  # of its speed on CPU. The state is updated in place: no copy reads it.
  assert not re.search(r"copy\(%state", step.lower(state, batch).compile().as_text())
  leaves = jax.tree.leaves(state)
  step(state, batch)
  assert all(leaf.is_deleted() for leaf in leaves)


def _equal_pairs(arrays) -> list[tuple[int, int]]:
  return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(arrays), 2)
          if np.array_equal(a, b)]


def test_every_update_draws_its_own_z(monkeypatch):
  """A fresh z per step, and another one for G's update than for D's in the same step."""
  z_d, z_g = [], []
  real_update_d, real_update_g = train.update_discriminator, train.update_generator

  def update_discriminator(state, real, z, dropout_key, *args, **kwargs):
    z_d.append(np.asarray(z))
    return real_update_d(state, real, z, dropout_key, *args, **kwargs)

  def update_generator(state, batch, z, dropout_key, *args, **kwargs):
    z_g.append(np.asarray(z))
    return real_update_g(state, batch, z, dropout_key, *args, **kwargs)

  monkeypatch.setattr(train, "update_discriminator", update_discriminator)
  monkeypatch.setattr(train, "update_generator", update_generator)
  state = _state("mlp")
  for i in range(3):
    # Not jitted, so that the z reach the wrappers as values.
    state, _ = train.train_step(state, _batch(seed=i), HPARAMS)
  assert len(z_d) == len(z_g) == 3
  assert all(z.shape == (BATCH, state.z_dim) for z in z_d + z_g)
  assert _equal_pairs(z_d + z_g) == []  # D's z of steps 0-2, then G's


def test_dropout_masks_differ_between_passes_and_steps(monkeypatch):
  """D's dropout draws a new mask for each of its passes (real, fake, G's update) and step.

  The keys that reach D are replayed on one input: equal keys, or keys that
  gave equal masks, would give equal outputs.
  """
  config = _config("mlp")
  config.model.dropout_d = 0.5
  state = state_lib.create_state(config, jax.random.PRNGKey(0))
  d_keys = []
  real_apply_train = train.apply_train

  def apply_train(net, params, x, dropout_key, **options):
    if x.ndim == 4:  # D's input is images, G's is z
      d_keys.append(np.asarray(dropout_key))
    return real_apply_train(net, params, x, dropout_key, **options)

  monkeypatch.setattr(train, "apply_train", apply_train)
  for i in range(2):
    state, _ = train.train_step(state, _batch(seed=i), HPARAMS)
  assert len(d_keys) == 6  # per step: D's update on real, then fake; G's update

  d = state.discriminator
  x = jnp.ones((1, 28, 28, 1))
  outputs = [np.asarray(d.apply_fn({"params": d.params, "batch_stats": d.batch_stats}, x,
                                   train=True, mutable=["batch_stats"],
                                   rngs={"dropout": key})[0][0]) for key in d_keys]
  assert _equal_pairs(outputs) == []


def test_generate_in_eval_mode():
  state = _state("conv28")
  images = train.generate(state, jax.random.PRNGKey(9), 6)
  assert images.shape == (6, 28, 28, 1)
  assert float(jnp.min(images)) >= -1.0 and float(jnp.max(images)) <= 1.0
  # Eval mode: each sample is independent of the others in its batch.
  again = train.generate(state, jax.random.PRNGKey(9), 6)
  assert jnp.array_equal(images, again)
  z = train.sample_z(jax.random.PRNGKey(9), 6, state.z_dim)
  g = state.generator
  single = g.apply_fn({"params": g.params, "batch_stats": g.batch_stats}, z[:1], train=False)
  assert jnp.allclose(single[0], images[0], atol=1e-6)


def test_bad_energy_reduction_is_rejected():
  config = _config("mlp")
  config.energy_reduction = "l1"
  with pytest.raises(ValueError, match="energy_reduction must be one of"):
    train.make_train_step(config)


def test_gan_updates_move_the_logits_the_right_way():
  """The GAN objective through the real updates: D's step raises its logits on real images
  and lowers them on fakes; G's step (non-saturating loss) raises D's logit of its fakes."""
  config = _config("mlp")
  config.objective = "gan"
  config.optim_d.learning_rate = config.optim_g.learning_rate = 1e-3
  state = state_lib.create_state(config, jax.random.PRNGKey(0))
  gan, key, real, z = objectives.GAN(), jax.random.PRNGKey(3), _batch(), _z(state)

  def logits(state, images):
    d = state.discriminator
    return d.apply_fn({"params": d.params, "batch_stats": d.batch_stats}, images,
                      train=False)[0]

  def fakes(state):
    return train.generate(state, jax.random.PRNGKey(2), BATCH)

  after_d, metrics = train.update_discriminator(state, real, z, key, {}, objective=gan)
  assert set(metrics) == {"d_loss", "d_real", "d_fake"}
  assert jnp.mean(logits(after_d, real)) > jnp.mean(logits(state, real))
  assert jnp.mean(logits(after_d, fakes(state))) < jnp.mean(logits(state, fakes(state)))
  after_g, metrics = train.update_generator(after_d, real, z, key, {}, objective=gan)
  assert set(metrics) == {"g_loss"}
  assert jnp.mean(logits(after_d, fakes(after_g))) > jnp.mean(logits(after_d, fakes(after_d)))
