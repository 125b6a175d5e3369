"""Populations: member i is the single run with member i's settings, for either objective."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import (checkpoint, data, objectives, population as population_lib,
                       state as state_lib, train)
from experiments import trainer
from experiments.configs import mnist_conv, tiny
# stateful_objective registers its objective.
from tests import data_fixtures, multidevice, stateful_objective, xla_levels  # noqa: F401

BATCH = 8
STEPS = 4
STEPS_PER_CALL = 2
EBGAN_MEMBERS = [  # three members that differ in every setting; two share a seed
    {"seed": 0, "margin": 0.3, "lambda_pt": 0.1, "lr_g": 2e-4, "lr_d": 2e-4},
    {"seed": 1, "margin": 0.1, "lambda_pt": 0.0, "lr_g": 1e-3, "lr_d": 2e-4},
    {"seed": 0, "margin": 1.0, "lambda_pt": 1.0, "lr_g": 4e-4, "lr_d": 1e-4},
]
GAN_MEMBERS = [{"seed": 0, "lr_g": 1e-3, "lr_d": 1e-3}, {"seed": 2, "lr_g": 1e-2, "lr_d": 1e-4}]
# lambda_k large enough that k_t leaves 0 within the few steps.
BEGAN_MEMBERS = [{"seed": 0, "gamma": 0.5, "lambda_k": 0.5, "lr_g": 2e-4, "lr_d": 2e-4},
                 {"seed": 1, "gamma": 2.0, "lambda_k": 1.0, "lr_g": 1e-3, "lr_d": 1e-4}]
MAGAN_MEMBERS = [{"seed": 0, "lambda_pt": 0.0, "lr_g": 2e-4, "lr_d": 2e-4},
                 {"seed": 1, "lambda_pt": 0.1, "lr_g": 1e-3, "lr_d": 1e-4}]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  """Random 28x28 images, 40 train / 16 test, label i % 10."""
  return data_fixtures.write_random_idx_dir(tmp_path_factory.mktemp("idx"), 40, 16)


def _config(idx_dir, objective="ebgan", family="mlp", optimizers=("adam", "adam")):
  config = mnist_conv.get_config() if family == "conv28" else tiny.get_config()
  config.idx_dir = str(idx_dir)
  config.batch_size = BATCH
  config.num_steps = STEPS
  config.steps_per_call = STEPS_PER_CALL
  config.objective = objective
  config.optim_d.kind, config.optim_g.kind = optimizers
  if objective == "gan":
    config.model.dropout_d = 0.5  # dropout keys under the population's map, too
  # One-step epochs: D pre-trains at step 0, the margin may adapt from step 2 on.
  config.steps_per_epoch, config.magan_pretrain_epochs = 1, 1
  # Rounding differs between the population's and the single step; Adam's eps 1e-8
  # would amplify it to +-lr (see multidevice.tolerant_adam).
  return multidevice.tolerant_adam(config)


def _member_config(config, member):
  """A member's settings as a single run's config."""
  config = config.copy_and_resolve_references()
  config.seed = member["seed"]
  for name in objectives.from_config(config).hyperparameters:
    config[name] = member[name]
  config.optim_g.learning_rate, config.optim_d.learning_rate = member["lr_g"], member["lr_d"]
  return config


def _single_run(config, with_metrics=False):
  """The single run of `config`: train.make_multi_step over data.create_dataset's batches;
  with_metrics, also each metric's mean per call, (calls,). Each config's run is made
  once per test process (the vmap and sequential member maps compare with the same)."""
  key = config.to_json_best_effort(sort_keys=True)
  if key not in _SINGLE_RUNS:
    _SINGLE_RUNS[key] = _train_single_run(config)
  state, metrics = _SINGLE_RUNS[key]
  return (state, metrics) if with_metrics else state


_SINGLE_RUNS = {}  # config as JSON -> (state, metrics)


def _train_single_run(config):
  mesh = train.make_mesh()
  # On the mesh, as the step expects: a state off it would compile the step a second time.
  state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(config.seed)), mesh)
  batches, _ = data.create_dataset(config, "train")
  step = train.make_multi_step(config, mesh)
  means = []
  for _ in range(config.num_steps // config.steps_per_call):
    state, metrics = step(state, np.stack([next(batches) for _ in range(config.steps_per_call)]))
    means.append({name: float(np.mean(value)) for name, value in metrics.items()})
  return state, {name: np.array([m[name] for m in means]) for name in means[0]}


def _learned(state):
  """Params, BatchNorm statistics, optimiser state and the objective's: what training changes."""
  return [(net.params, net.batch_stats, net.opt_state)
          for net in (state.generator, state.discriminator)] + [state.objective_state]


@pytest.mark.parametrize("objective, family, optimizers, members, member_map", [
    ("ebgan", "mlp", ("adam", "adam"), EBGAN_MEMBERS, "vmap"),
    ("ebgan", "mlp", ("adam", "adam"), EBGAN_MEMBERS, "sequential"),
    ("gan", "mlp", ("sgd", "adam"), GAN_MEMBERS, "vmap"),
    ("gan", "mlp", ("sgd", "adam"), GAN_MEMBERS, "sequential"),
    # BatchNorm in both nets and convolutions; kept small (conv28 compiles slowly), under
    # the CPU's member map.
    ("ebgan", "conv28", ("adam", "adam"), EBGAN_MEMBERS[:2], "sequential"),
    # Objectives that carry state: a toy one (tests/stateful_objective.py), BEGAN's k_t,
    # MAGAN's margin and its pre-training (G's update under a lax.cond).
    ("counting_ebgan", "mlp", ("adam", "adam"), EBGAN_MEMBERS, "vmap"),
    ("began", "mlp", ("adam", "adam"), BEGAN_MEMBERS, "vmap"),
    ("magan", "mlp", ("adam", "adam"), MAGAN_MEMBERS, "vmap"),
    ("magan", "mlp", ("adam", "adam"), MAGAN_MEMBERS, "sequential"),
])
def test_each_member_is_the_single_run_with_its_settings(idx_dir, objective, family, optimizers,
                                                         members, member_map):
  config = _config(idx_dir, objective, family, optimizers)
  if family == "conv28":
    # One call: through two BatchNorms per net, float rounding grows to 10% of an
    # Adam step by step 4, whatever the program.
    config.num_steps = STEPS_PER_CALL
  # conv28 compiles at the users' -O3: at the suite's -O0 on an Intel Xeon, member 0's
  # single run and population differed by 3.5e-4 in one unit's weights (more than an Adam
  # step), by 1.2e-7 at -O3.
  with xla_levels.optimized_steps() if family == "conv28" else contextlib.nullcontext():
    population, history = trainer.train_population(config, members, member_map=member_map)
    singles = [_single_run(_member_config(config, member), with_metrics=True)
               for member in members]
  assert population.size == len(members)
  assert history["d_loss"].shape == (len(members), config.num_steps // STEPS_PER_CALL)
  assert not np.any(population.diverged)
  for i, (single, metrics) in enumerate(singles):
    state = population.member(i)
    assert int(state.step) == config.num_steps
    multidevice.assert_trees_close(_learned(state), _learned(single), f"member {i}",
                                   atol=multidevice.PARAMS_ATOL)
    # The logged metrics are the member's own: each call's means, as its single run's.
    assert set(history) == set(metrics)
    for name, values in metrics.items():
      np.testing.assert_allclose(history[name][i], values, rtol=multidevice.METRICS_RTOL,
                                 atol=1e-6, err_msg=f"member {i}: {name}")


def test_groups_train_apart_each_as_its_single_runs(idx_dir):
  # Two groups that cannot share a program (architectures of other shapes).
  config = _config(idx_dir, "gan", optimizers=("adam", "sgd"))
  wide = config.copy_and_resolve_references()
  wide.model.size_g, wide.model.n_layer_g = 96, 3
  for group in (config, wide):
    population, _ = trainer.train_population(group, GAN_MEMBERS)
    for i, member in enumerate(GAN_MEMBERS):
      multidevice.assert_trees_close(
          _learned(population.member(i)), _learned(_single_run(_member_config(group, member))),
          f"member {i} of {group.model}", atol=multidevice.PARAMS_ATOL)


@pytest.mark.parametrize("member_map", population_lib.MEMBER_MAPS)
def test_a_diverging_member_is_frozen_and_the_others_are_untouched(idx_dir, member_map):
  config = _config(idx_dir, "gan")
  exploding = [GAN_MEMBERS[0], {"seed": 1, "lr_g": 1e38, "lr_d": 1e38}, GAN_MEMBERS[1]]
  sane = [GAN_MEMBERS[0], {"seed": 1, "lr_g": 1e-3, "lr_d": 1e-3}, GAN_MEMBERS[1]]
  frozen, history = trainer.train_population(config, exploding, member_map=member_map)
  reference, _ = trainer.train_population(config, sane, member_map=member_map)
  assert frozen.diverged.tolist() == [False, True, False]
  assert not np.isfinite(history["d_loss"][1]).all()
  # Frozen at its state before the call that diverged: here the initial one.
  initial = state_lib.create_state(_member_config(config, exploding[1]), jax.random.PRNGKey(1))
  assert int(frozen.member(1).step) == 0
  for a, b in zip(jax.tree.leaves(frozen.member(1).generator.params),
                  jax.tree.leaves(initial.generator.params), strict=True):
    np.testing.assert_array_equal(a, b)
  for i in (0, 2):
    for a, b in zip(jax.tree.leaves(frozen.member(i)), jax.tree.leaves(reference.member(i)),
                    strict=True):
      np.testing.assert_array_equal(a, b)


def test_member_maps_agree(idx_dir):
  config = _config(idx_dir)
  by_map = [trainer.train_population(config, EBGAN_MEMBERS, member_map=m)[0]
            for m in population_lib.MEMBER_MAPS]
  multidevice.assert_trees_close(by_map[0].states, by_map[1].states, "vmap vs sequential",
                                 atol=multidevice.PARAMS_ATOL)


def test_a_member_continues_as_a_single_run(idx_dir, tmp_path):
  """member(i) is a single run's GANState: same pytree, checkpointed and stepped as one."""
  config = _config(idx_dir, "gan", optimizers=("sgd", "adam"))
  population, _ = trainer.train_population(config, GAN_MEMBERS)
  member = population.member(1)
  member_config = _member_config(config, GAN_MEMBERS[1])
  fresh = state_lib.create_state(member_config, jax.random.PRNGKey(0))
  # The same leaves at the same paths (tx and apply_fn, static fields, are other objects).
  layout = lambda state: [(jax.tree_util.keystr(path), leaf.shape, leaf.dtype)
                          for path, leaf in jax.tree_util.tree_leaves_with_path(state)]
  assert layout(member) == layout(fresh)
  manager = checkpoint.create_manager(str(tmp_path), keep=1)
  checkpoint.save(manager, member, member_config)
  manager.wait_until_finished()
  restored = checkpoint.restore(manager, fresh)
  batch = np.random.default_rng(0).uniform(-1, 1, (1, BATCH, 28, 28, 1)).astype(np.float32)
  step = train.make_multi_step(member_config)
  after_restore, _ = step(restored, batch)
  after_member, _ = step(member, batch)
  multidevice.assert_trees_close(after_restore, after_member, "restored vs member")


def test_members_with_other_settings_end_elsewhere(idx_dir):
  # The settings reach the step: same seed and data, another margin -> other parameters;
  # the same settings -> the same ones.
  members = [{**EBGAN_MEMBERS[0], "margin": m} for m in (0.3, 0.3, 1.0)]
  population, _ = trainer.train_population(_config(idx_dir), members)
  params = [jax.tree.leaves(population.member(i).discriminator.params) for i in range(3)]
  assert all(np.array_equal(a, b) for a, b in zip(params[0], params[1]))
  assert any(not np.allclose(a, c) for a, c in zip(params[0], params[2]))


def test_members_follow_their_own_margin_schedule(idx_dir):
  # One schedule's shape for the group, each member's own start and end values.
  config = _config(idx_dir)
  config.margin_schedule, config.margin_decay_steps, config.margin_decay_begin = "linear", 2, 1
  members = [{**EBGAN_MEMBERS[0], "margin": 1.0, "margin_end": 0.0},
             {**EBGAN_MEMBERS[1], "margin": 0.1, "margin_end": 0.5}]
  population, _ = trainer.train_population(config, members)
  for i, member in enumerate(members):
    multidevice.assert_trees_close(
        _learned(population.member(i)), _learned(_single_run(_member_config(config, member))),
        f"member {i}", atol=multidevice.PARAMS_ATOL)
  # The schedule reaches the step: held at its start value, member 0 ends elsewhere.
  constant = _member_config(_config(idx_dir), members[0])
  held = jax.tree.leaves(_single_run(constant).discriminator.params)
  scheduled = jax.tree.leaves(population.member(0).discriminator.params)
  assert any(not np.allclose(a, b, atol=1e-4) for a, b in zip(held, scheduled))


def test_members_pad_to_the_device_count():
  members = [{"seed": i} for i in range(5)]
  assert population_lib.pad_members(members, 4) == members + [members[-1]] * 3
  assert population_lib.pad_members(members, 5) == members


@pytest.mark.parametrize("objective, change, message", [
    ("ebgan", {"margin": [0.3]}, "one entry per member"),
    ("ebgan", {"lr_d": [2e-4, 0.0, 1e-4]}, "lr_d must be > 0"),
    ("ebgan", {"lambda_pt": [0.1, -1.0, 0.0]}, "lambda_pt must be >= 0"),
    ("ebgan", {"beta": [1, 2, 3]}, "unknown \\['beta'\\]"),
    ("gan", {"margin": [0.3] * 3}, "a gan population takes exactly"),
])
def test_bad_settings_are_rejected(idx_dir, objective, change, message):
  settings = {name: [m[name] for m in EBGAN_MEMBERS]
              for name in ("seed", "lr_g", "lr_d", "margin", "lambda_pt")}
  if objective == "gan":
    settings = {name: settings[name] for name in ("seed", "lr_g", "lr_d")}
  with pytest.raises(ValueError, match=message):
    population_lib.create_population(_config(idx_dir, objective), **{**settings, **change})


def test_members_decay_their_own_learning_rates_as_their_single_runs(idx_dir):
  # The ladder network's last-third decay: each member's rate falls from its own start.
  config = _config(idx_dir)
  for optim in (config.optim_g, config.optim_d):
    optim.decay_steps, optim.decay_begin = 2, 1
  population, _ = trainer.train_population(config, EBGAN_MEMBERS[:2])
  for i, member in enumerate(EBGAN_MEMBERS[:2]):
    multidevice.assert_trees_close(
        _learned(population.member(i)), _learned(_single_run(_member_config(config, member))),
        f"member {i}", atol=multidevice.PARAMS_ATOL)
  # The decay reaches the optimiser: without it, the member ends elsewhere.
  constant = _learned(_single_run(_member_config(_config(idx_dir), EBGAN_MEMBERS[0])))
  assert any(not np.allclose(a, b, atol=1e-5) for a, b in zip(
      jax.tree.leaves(constant), jax.tree.leaves(_learned(population.member(0)))))


def test_a_frozen_member_stays_frozen_and_a_later_divergence_freezes_at_the_call_before(idx_dir):
  config = _config(idx_dir)
  mesh = population_lib.make_mesh(jax.devices()[:1])
  population, streams = population_lib.initialise(config, EBGAN_MEMBERS[:2], mesh)
  step = population_lib.make_multi_step(mesh)
  rng = np.random.default_rng(0)
  batches = lambda: rng.uniform(-1, 1, (STEPS_PER_CALL, 2, BATCH, 28, 28, 1)).astype(np.float32)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  # Member 0 diverged in an earlier call: healthy data leave it as it is, and flagged.
  population = population.replace(diverged=jnp.array([True, False]))
  before = copy(population.states)
  population, _ = step(population, batches(), streams)
  assert population.diverged.tolist() == [True, False]
  assert_member = lambda states, i, expected: multidevice.assert_trees_close(
      jax.tree.map(lambda x: x[i], states), jax.tree.map(lambda x: x[i], expected),
      f"member {i}", atol=0.0)
  assert_member(population.states, 0, before)
  moved = jax.tree.leaves(population.states.discriminator.params)[0][1]
  assert not np.array_equal(moved, jax.tree.leaves(before.discriminator.params)[0][1])
  # In a later call member 1's batches turn NaN (stream 1: seed 1): it keeps the state it
  # had after the call before, and is flagged; member 0 is still untouched.
  after_first = copy(population.states)
  poisoned = batches()
  poisoned[:, 1] = np.nan
  population, _ = step(population, poisoned, streams)
  assert population.diverged.tolist() == [True, True]
  assert_member(population.states, 1, after_first)
  assert_member(population.states, 0, before)


def test_a_population_stopped_mid_run_resumes_to_the_same_end(idx_dir, tmp_path):
  config = _config(idx_dir, "counting_ebgan")
  straight, straight_history = trainer.train_population(config, EBGAN_MEMBERS)
  stopped = config.copy_and_resolve_references()
  stopped.num_steps = STEPS_PER_CALL  # as if stopped after its first checkpoint
  trainer.train_population(stopped, EBGAN_MEMBERS, str(tmp_path))
  resumed, history = trainer.train_population(config, EBGAN_MEMBERS, str(tmp_path))
  # From the checkpoint, not from step 0: only the calls after it ran here.
  assert history["d_loss"].shape == (3, 1)
  np.testing.assert_array_equal(history["d_loss"][:, -1], straight_history["d_loss"][:, -1])
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(a, b)
  assert [int(resumed.states.objective_state["steps"][i]) for i in range(3)] == [STEPS] * 3
  # Other members do not resume this population's checkpoints.
  with pytest.raises(trainer.ConfigError, match="population_members"):
    trainer.train_population(config, EBGAN_MEMBERS[:2], str(tmp_path))
