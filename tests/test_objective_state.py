"""Objectives that carry state (objectives.py: init, values, update): a toy one
(tests/stateful_objective.py) updated inside the step and resumed exactly; populations of it
are in test_population.py, 8 devices against 1 in test_sharding.py."""

import jax
import numpy as np
import pytest

from ebgan_jax import data, state as state_lib, train
from experiments import trainer
from experiments.configs import tiny
from tests import data_fixtures, multidevice, stateful_objective


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  return data_fixtures.write_random_idx_dir(tmp_path_factory.mktemp("idx"), 64, 16)


def _config(idx_dir, objective=stateful_objective.CountingEBGAN.name, **overrides):
  config = tiny.get_config()
  config.idx_dir = str(idx_dir)
  config.objective = objective
  config.batch_size = 8
  config.num_steps = 8
  config.steps_per_call = 2
  config.log_every = config.sample_every = config.checkpoint_every = 4
  config.update(overrides)
  return multidevice.tolerant_adam(config)


def _train(config, calls=2, steps=4):
  mesh = train.make_mesh()
  # On the mesh, as the step expects: a state off it would compile the step a second time.
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(config.seed)), mesh)
  batches, _ = data.create_dataset(config, "train")
  step = train.make_multi_step(config, mesh)
  energies = []
  for _ in range(calls):
    state, metrics = step(state, np.stack([next(batches) for _ in range(steps)]))
    energies += [float(e) for e in metrics["energy_real"]]
  return state, energies


def test_the_state_starts_from_init_and_is_updated_by_every_step(idx_dir):
  config = _config(idx_dir)
  fresh = state_lib.create_state(config, jax.random.PRNGKey(0))
  assert int(fresh.objective_state["steps"]) == 0
  assert float(fresh.objective_state["energy_sum"]) == 0.0
  state, energies = _train(config)
  assert int(state.objective_state["steps"]) == 8
  np.testing.assert_allclose(float(state.objective_state["energy_sum"]), sum(energies), rtol=1e-5)
  # The losses read the state: plain EBGAN from the same start ends elsewhere.
  plain, _ = _train(_config(idx_dir, "ebgan"))
  assert plain.objective_state == {}
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(state.discriminator.params), jax.tree.leaves(plain.discriminator.params)))


def test_a_resumed_run_carries_the_state_on_bit_identically(idx_dir, tmp_path):
  straight = trainer.train_and_evaluate(_config(idx_dir), str(tmp_path / "straight"))
  trainer.train_and_evaluate(_config(idx_dir, num_steps=4), str(tmp_path / "resumed"))
  resumed = trainer.train_and_evaluate(_config(idx_dir), str(tmp_path / "resumed"))
  assert int(resumed.objective_state["steps"]) == 8
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(a, b)
