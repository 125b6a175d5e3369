"""Checkpoints written before GANState carried the objective's state still restore."""

import os
import shutil

import jax
import numpy as np

from ebgan_jax import checkpoint, state as state_lib, train
from tests.fixtures import make_checkpoint_v0

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_a_checkpoint_of_the_code_before_objective_state_restores_and_trains_on(tmp_path):
  directory = tmp_path / "checkpoints"
  shutil.copytree(os.path.join(FIXTURES, "checkpoint_v0"), directory)
  config = make_checkpoint_v0.config()
  manager = checkpoint.create_manager(str(directory), 1)
  target = state_lib.create_state(config, jax.random.PRNGKey(5))
  restored = checkpoint.restore(manager, target)
  expected = np.load(os.path.join(FIXTURES, "checkpoint_v0_expected.npz"))
  leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
  assert sorted(jax.tree_util.keystr(path) for path, _ in leaves) == sorted(expected)
  for path, leaf in leaves:
    np.testing.assert_array_equal(leaf, expected[jax.tree_util.keystr(path)])
  assert restored.objective_state == {}
  assert int(restored.step) == 2
  # It trains on from there, with the objective's state of today's step.
  batch = jax.random.uniform(jax.random.PRNGKey(1), (4, 4, 4, 1), minval=-1, maxval=1)
  after, _ = train.make_train_step(config)(restored, batch)
  assert int(after.step) == 3
