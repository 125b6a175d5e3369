"""A vmapped population: member i is the single run with member i's settings."""

import jax
import numpy as np
import pytest

from ebgan_jax import checkpoint, population as population_lib, state as state_lib, train
from experiments.configs import mnist_conv, tiny
from tests import multidevice

BATCH = 8
SETTINGS = {  # three members that differ in every setting
    "seed": [0, 1, 2],
    "margin": [0.3, 0.1, 1.0],
    "lambda_pt": [0.1, 0.0, 1.0],
    "lr_g": [2e-4, 1e-3, 4e-4],
    "lr_d": [2e-4, 2e-4, 1e-4],
}


def _config(family="mlp"):
  config = mnist_conv.get_config() if family == "conv28" else tiny.get_config()
  config.batch_size = BATCH
  # Rounding differs between the vmapped and the single step; Adam's eps 1e-8
  # would amplify it to +-lr (see multidevice.tolerant_adam).
  return multidevice.tolerant_adam(config)


def _batches(num_steps, num_members, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (num_steps, num_members, BATCH, 28, 28, 1)).astype(np.float32)


def _member_config(config, i):
  """Member i's settings as a single run's config."""
  config = config.copy_and_resolve_references()
  config.seed, config.margin, config.lambda_pt = (
      SETTINGS[k][i] for k in ("seed", "margin", "lambda_pt"))
  config.optim_g.learning_rate, config.optim_d.learning_rate = SETTINGS["lr_g"][i], \
      SETTINGS["lr_d"][i]
  return config


def _single_run(config, i, batches):
  """Member i's settings as a config, trained by the ordinary jitted step."""
  config = _member_config(config, i)
  state = state_lib.create_state(config, jax.random.PRNGKey(config.seed))
  step = train.make_train_step(config)
  metrics = []
  for batch in batches:
    state, m = step(state, batch)
    metrics.append(m)
  return state, metrics


def _learned(state):
  """Params, BatchNorm statistics and Adam's moments: what training changes."""
  return [(net.params, net.batch_stats, net.opt_state)
          for net in (state.generator, state.discriminator)]


@pytest.mark.parametrize("family, num_members, num_steps", [
    ("mlp", 3, 3),
    # BatchNorm in both nets and convolutions under vmap; kept small (conv28 compiles slowly).
    ("conv28", 2, 2),
])
def test_each_member_is_the_single_run_with_its_settings(family, num_members, num_steps):
  config = _config(family)
  batches = _batches(num_steps, num_members)
  settings = {name: values[:num_members] for name, values in SETTINGS.items()}
  population = population_lib.create_population(config, **settings)
  assert population.size == num_members
  step = jax.jit(population_lib.population_step)
  metrics = []
  for batch in batches:
    population, m = step(population, batch)
    metrics.append(m)
  for i in range(num_members):
    single, single_metrics = _single_run(config, i, batches[:, i])
    member = population.member(i)
    assert int(member.step) == num_steps
    for a, b in zip(jax.tree.leaves(_learned(member)), jax.tree.leaves(_learned(single)),
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    for t in range(num_steps):
      for name, value in single_metrics[t].items():
        np.testing.assert_allclose(metrics[t][name][i], value, rtol=1e-5, atol=1e-6)


def test_a_member_continues_as_a_single_run(tmp_path):
  """member(i) is a single run's GANState: same pytree, checkpointed and stepped as one."""
  config = _config()
  batches = _batches(3, 3, seed=2)
  population = population_lib.create_population(config, **SETTINGS)
  step = jax.jit(population_lib.population_step)
  population, _ = step(population, batches[0])
  member = population.member(1)
  fresh = state_lib.create_state(_member_config(config, 1), jax.random.PRNGKey(0))
  # The same leaves at the same paths (tx and apply_fn, static fields, are other objects).
  layout = lambda state: [(jax.tree_util.keystr(path), leaf.shape, leaf.dtype)
                          for path, leaf in jax.tree_util.tree_leaves_with_path(state)]
  assert layout(member) == layout(fresh)
  # Through an orbax checkpoint and the ordinary jitted step, for two more steps.
  manager = checkpoint.create_manager(str(tmp_path), keep=1)
  checkpoint.save(manager, member, _member_config(config, 1))
  manager.wait_until_finished()
  single = checkpoint.restore(manager, fresh)
  single_step = train.make_train_step(_member_config(config, 1))
  for batch in batches[1:]:
    population, _ = step(population, batch)
    single, _ = single_step(single, batch[1])
  for a, b in zip(jax.tree.leaves(population.member(1)), jax.tree.leaves(single), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_members_with_other_settings_diverge():
  # The settings really reach the step: two members with the same seed and data
  # but another margin end in other parameters; the same settings in the same ones.
  settings = {"seed": [0, 0, 0], "margin": [0.3, 0.3, 1.0], "lambda_pt": [0.1] * 3,
              "lr_g": [2e-4] * 3, "lr_d": [2e-4] * 3}
  population = population_lib.create_population(_config(), **settings)
  batch = _batches(1, 1)[0, 0]
  population, _ = jax.jit(population_lib.population_step)(
      population, np.stack([batch] * 3))
  params = [jax.tree.leaves(population.member(i).discriminator.params) for i in range(3)]
  assert all(np.array_equal(a, b) for a, b in zip(params[0], params[1]))
  assert any(not np.allclose(a, c) for a, c in zip(params[0], params[2]))


def test_multi_step_equals_population_steps():
  config = _config()
  batches = _batches(4, 3, seed=1)
  stepped = population_lib.create_population(config, **SETTINGS)
  for batch in batches:
    stepped, last = jax.jit(population_lib.population_step)(stepped, batch)
  scanned, metrics = jax.jit(population_lib.multi_step)(
      population_lib.create_population(config, **SETTINGS), batches)
  assert metrics["d_loss"].shape == (4, 3)
  for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(stepped), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  for name, value in last.items():
    np.testing.assert_allclose(metrics[name][-1], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"margin": [0.3]}, "one entry per member"),
    ({"lr_d": [2e-4, 0.0, 1e-4]}, "lr_d must be > 0"),
    ({"lambda_pt": [0.1, -1.0, 0.0]}, "lambda_pt must be >= 0"),
    ({"beta": [1, 2, 3]}, "unknown \\['beta'\\]"),
])
def test_bad_settings_are_rejected(change, message):
  with pytest.raises(ValueError, match=message):
    population_lib.create_population(_config(), **{**SETTINGS, **change})
