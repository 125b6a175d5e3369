"""Semi-supervised EBGAN-LN: the labelled subset, the ladder's energy and losses, the runner."""

import csv
import functools
import os
import pathlib
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import (checkpoint, losses, models, objectives, semi_supervised,
                       state as state_lib, train)
from experiments import semi_supervised as experiment, trainer
from experiments.configs import ladder_fashion, ladder_mnist
from tests import data_fixtures, multidevice, test_cli, xla_levels

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  """Random 28x28 images, 200 train / 50 test, label i % 10."""
  return data_fixtures.write_random_idx_dir(tmp_path_factory.mktemp("idx"), 200, 50)


def _small(idx_dir, **overrides):
  """ladder_mnist with small nets and batches, a few steps."""
  config = ladder_mnist.get_config()
  config.idx_dir = str(idx_dir)
  config.model.update(n_layer_g=2, size_g=32, widths_d=(32, 16))
  config.num_labels = 20
  config.labelled_batch_size = 10
  config.batch_size = 16
  config.num_steps = 12
  config.steps_per_call = 4
  config.margin_decay_steps = 12
  for optim in (config.optim_d, config.optim_g):
    optim.decay_steps, optim.decay_begin = 4, 8
  config.log_every = config.eval_every = config.sample_every = config.checkpoint_every = 4
  config.update(overrides)
  experiment.resolve_objective(config)
  return config


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  uniform = lambda n: jnp.asarray(rng.uniform(-1, 1, (n, 28, 28, 1)), jnp.float32)
  return {"labelled": uniform(config.labelled_batch_size),
          "label": jnp.asarray(rng.integers(0, 10, config.labelled_batch_size), jnp.int32),
          "unlabelled": uniform(config.batch_size)}


def test_the_labelled_subset_is_balanced_and_fixed_by_the_seed():
  labels = np.random.default_rng(0).integers(0, 10, 5000)
  subset = semi_supervised.labelled_subset(labels, 100, seed=3)
  assert len(subset) == len(set(subset)) == 100
  np.testing.assert_array_equal(np.bincount(labels[subset], minlength=10), [10] * 10)
  np.testing.assert_array_equal(subset, semi_supervised.labelled_subset(labels, 100, seed=3))
  other = semi_supervised.labelled_subset(labels, 100, seed=4)
  assert len(set(subset) & set(other)) < 50


@pytest.mark.parametrize("num_labels, message", [
    (15, "positive multiple of the 10 classes"), (0, "positive multiple"),
    (1000, "class 0 has 5 training examples, fewer than the 100")])
def test_a_subset_that_cannot_be_balanced_is_rejected(num_labels, message):
  with pytest.raises(ValueError, match=message):
    semi_supervised.labelled_subset(np.arange(50) % 10, num_labels, seed=0)


@hypothesis.given(images=st.integers(0, 2**31).map(
    lambda seed: np.random.default_rng(seed).uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)),
    noise=st.floats(1e-3, 1.0), weight=st.floats(1e-2, 1e4))
def test_the_energy_is_zero_only_for_a_perfect_reconstruction(images, noise, weight):
  perfect = losses.ladder_energy(images, images, weight)
  np.testing.assert_array_equal(perfect, np.zeros(3))
  off = images + noise
  energy = losses.ladder_energy(images, off, weight)
  # The mean squared error on [0, 1] pixels, times the weight: (noise / 2)^2 per pixel.
  np.testing.assert_allclose(energy, weight * (noise / 2) ** 2, rtol=1e-4)


def _objective_and_hparams(config):
  objective = objectives.from_config(config)
  return objective, objectives.hyperparameters(objective, config)


def test_without_a_margin_ebgan_ln_falls_back_to_the_ladder_network(idx_dir):
  # With m = 0 the hinge is 0 (E >= 0): D's loss, its gradient and a whole step of D equal
  # the LN's, whatever G draws.
  config = _small(idx_dir, margin=0.0, margin_schedule="constant")
  state = state_lib.create_state(config, jax.random.PRNGKey(0))
  batch = _batch(config)
  z = train.sample_z(jax.random.PRNGKey(5), 16, state.z_dim)
  key = jax.random.PRNGKey(1)
  values = {"margin": 0.0, "reconstruction_weight": 1000.0}
  grad = jax.jit(jax.value_and_grad(train.discriminator_objective, has_aux=True),
                 static_argnames="objective")
  ebgan_ln, ln = objectives.LadderEBGAN(), objectives.Ladder()
  d, g = state.discriminator.params, state.generator.params
  (ebgan_loss, _), ebgan_grads = grad(d, g, state, batch, z, key, values, objective=ebgan_ln)
  (ln_loss, _), ln_grads = grad(d, g, state, batch, None, key, values, objective=ln)
  assert float(ebgan_loss) == float(ln_loss)
  assert jax.tree.all(jax.tree.map(np.array_equal, ebgan_grads, ln_grads))
  # With a margin above the fakes' energies the hinge counts.
  (margin_loss, _), _ = grad(d, g, state, batch, z, key, {**values, "margin": 1e4},
                             objective=ebgan_ln)
  assert float(margin_loss) > float(ln_loss) + 1e3

  steps = {}
  for name in ("ln", "ebgan_ln"):
    objective, hparams = _objective_and_hparams(_small(idx_dir, objective=name, margin=0.0,
                                                       margin_schedule="constant"))
    steps[name] = jax.jit(lambda s, b, o=objective, h=hparams: train.train_step(
        s, b, h, objective=o))
  ln, ln_metrics = steps["ln"](state, batch)
  ebgan_ln, metrics = steps["ebgan_ln"](state, batch)
  assert jax.tree.all(jax.tree.map(np.array_equal, ln.discriminator, ebgan_ln.discriminator))
  assert float(ln_metrics["d_loss"]) == float(metrics["d_loss"])
  # The LN leaves G alone; EBGAN-LN trains it.
  assert jax.tree.all(jax.tree.map(np.array_equal, ln.generator.params, state.generator.params))
  assert not jax.tree.all(jax.tree.map(np.array_equal, ebgan_ln.generator.params,
                                       state.generator.params))


def test_a_margin_in_real_energy_units_acts_as_that_multiple_of_the_unlabelled_energy(idx_dir):
  config = _small(idx_dir, margin_schedule="constant")
  state = state_lib.create_state(config, jax.random.PRNGKey(0))
  batch, key = _batch(config), jax.random.PRNGKey(1)
  z = train.sample_z(jax.random.PRNGKey(5), 16, state.z_dim)
  d, g = state.discriminator.params, state.generator.params
  loss = jax.jit(lambda values, objective: train.discriminator_objective(
      d, g, state, batch, z, key, values, objective=objective), static_argnames="objective")
  relative = objectives.LadderEBGAN(objectives.MarginSchedule(unit="real_energy"))
  values = {"margin": 1.5, "reconstruction_weight": 1000.0}
  relative_loss, (_, metrics) = loss(values, relative)
  margin = 1.5 * float(metrics["energy_real"])
  assert float(metrics["margin"]) == pytest.approx(margin, rel=1e-6)
  absolute_loss, (_, absolute_metrics) = loss({**values, "margin": margin},
                                              objectives.LadderEBGAN())
  assert float(relative_loss) == pytest.approx(float(absolute_loss), rel=1e-6)
  assert float(metrics["hinge_active"]) == float(absolute_metrics["hinge_active"]) > 0


def test_test_time_statistics_come_from_the_unlabelled_images(idx_dir):
  config = _small(idx_dir)
  state = state_lib.create_state(config, jax.random.PRNGKey(0))
  objective, hparams = _objective_and_hparams(config)
  batch = _batch(config)
  after, _ = jax.jit(train.train_step, static_argnames="objective")(state, batch, hparams,
                                                                    objective=objective)
  d = state.discriminator
  _, expected = d.apply_fn({"params": d.params, "batch_stats": d.batch_stats},
                           batch["unlabelled"], train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.PRNGKey(0)})  # the clean path: no noise
  multidevice.assert_trees_close(after.discriminator.batch_stats, expected["batch_stats"],
                                 "running averages", atol=1e-6)


def test_the_ladder_reconstructs_and_classifies():
  _, d = models.build_models({"family": "ladder", "widths_d": (32, 16)}, (28, 28, 1))
  x = jax.random.uniform(jax.random.PRNGKey(0), (6, 28, 28, 1), minval=-1, maxval=1)
  variables = d.init({"params": jax.random.PRNGKey(1)}, x, train=False)
  (reconstruction, logits), _ = d.apply(variables, x, train=True, mutable=["batch_stats"],
                                        rngs={"dropout": jax.random.PRNGKey(2)})
  assert reconstruction.shape == x.shape and logits.shape == (6, 10)
  clean, clean_logits = d.apply(variables, x, train=False)
  assert not np.allclose(logits, clean_logits)  # the training call is the corrupted path
  np.testing.assert_array_equal(clean_logits, d.apply(variables, x, train=False)[1])
  with pytest.raises(ValueError, match="model family 'ladder' needs"):
    models.build_models({"family": "ladder", "noise_std": -1.0}, (28, 28, 1))


def _perturbed(params):
  """Random combinators: at their initialisation the ladder reconstructs -1 whatever the
  input, on every path."""
  return jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.PRNGKey(p.size), p.shape),
                      params)


def test_the_ladders_clean_path_and_borrowed_statistics_for_gs_samples():
  _, d = models.build_models({"family": "ladder", "widths_d": (32, 16)}, (28, 28, 1))
  _, quiet = models.build_models({"family": "ladder", "widths_d": (32, 16), "noise_std": 0.0},
                                 (28, 28, 1))
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1), minval=-1, maxval=1)
  variables = d.init({"params": jax.random.PRNGKey(1)}, x, train=False)
  variables["params"] = _perturbed(variables["params"])

  def outputs(net, images, key=2, **options):
    return net.apply(variables, images, train=True, mutable=["batch_stats"],
                     rngs={"dropout": jax.random.PRNGKey(key)}, **options)[0]

  # The clean path draws no noise; without noise the corrupted path is the clean one.
  clean = outputs(d, x, path="clean")
  multidevice.assert_trees_close(outputs(d, x, key=3, path="clean"), clean, "clean path")
  assert not np.allclose(outputs(d, x)[0], clean[0], atol=1e-3)
  multidevice.assert_trees_close(outputs(quiet, x), clean, "noiseless path", atol=1e-5)

  # statistics_of=4: rows 4.. normalised by rows 0-3's statistics, so each of them is
  # independent of the others (the same noise: the same shape and key).
  others_changed = x.at[5:].set(-x[5:])
  for path in ("corrupted", "clean"):
    borrowed = [outputs(d, images, path=path, statistics_of=4) for images in (x, others_changed)]
    multidevice.assert_trees_close([o[4] for o in borrowed[0]], [o[4] for o in borrowed[1]],
                                   f"row 4, {path} path", atol=1e-5)
    own = [outputs(d, images, path=path) for images in (x, others_changed)]
    assert not np.allclose(own[0][0][4], own[1][0][4], atol=1e-3)
  # Rows 0-3 come out as they do alone.
  multidevice.assert_trees_close([o[:4] for o in outputs(quiet, x, statistics_of=4)],
                                 outputs(quiet, x[:4]), "the reference rows", atol=1e-5)
  for options, message in [({"path": "denoised"}, "path must be one of"),
                           ({"statistics_of": 0}, r"statistics_of must be in \[1, 8\]")]:
    with pytest.raises(ValueError, match=message):
      outputs(d, x, **options)


@pytest.mark.parametrize("fake_statistics", ["own", "unlabelled"])
def test_gs_update_sees_its_samples_as_ds_hinge_does(idx_dir, fake_statistics):
  """With the clean path (no noise) G's loss is the mean energy D's hinge read of the same
  samples: both updates evaluate G's samples by the objective's options."""
  config = _small(idx_dir, fake_path="clean", fake_statistics=fake_statistics)
  objective, hparams = _objective_and_hparams(config)
  assert (objective.fake_path, objective.fake_statistics) == ("clean", fake_statistics)
  state = state_lib.create_state(config, jax.random.PRNGKey(0))
  batch, key = _batch(config), jax.random.PRNGKey(1)
  z = train.sample_z(jax.random.PRNGKey(5), 16, state.z_dim)
  d, g = _perturbed(state.discriminator.params), state.generator.params
  values = {**hparams, "margin": 1e9}  # every sample under the margin
  _, (_, metrics) = jax.jit(train.discriminator_objective, static_argnames="objective")(
      d, g, state, batch, z, key, values, objective=objective)
  g_loss, _ = jax.jit(train.generator_objective, static_argnames="objective")(
      g, d, state, batch, z, key, values, objective=objective)
  assert float(g_loss) == pytest.approx(float(metrics["energy_fake"]), rel=1e-5)
  assert float(metrics["hinge_active"]) == 1.0
  default = objectives.LadderEBGAN()  # the corrupted path, the samples' own statistics
  _, (_, default_metrics) = jax.jit(train.discriminator_objective, static_argnames="objective")(
      d, g, state, batch, z, key, values, objective=default)
  assert abs(float(default_metrics["energy_fake"]) - float(metrics["energy_fake"])) > 1e-3


def test_resume_is_exact(idx_dir, tmp_path):
  straight = trainer.train_and_evaluate(_small(idx_dir), str(tmp_path / "straight"),
                                        experiment.TASK)
  trainer.train_and_evaluate(_small(idx_dir, num_steps=4), str(tmp_path / "resumed"),
                             experiment.TASK)
  resumed = trainer.train_and_evaluate(_small(idx_dir), str(tmp_path / "resumed"),
                                       experiment.TASK)
  assert int(resumed.step) == 12
  # params, batch_stats, Adam moments, step, key
  straight_leaves, resumed_leaves = jax.tree.leaves(straight), jax.tree.leaves(resumed)
  assert len(straight_leaves) == len(resumed_leaves)
  assert all(np.array_equal(a, b) for a, b in zip(straight_leaves, resumed_leaves))
  # The LN baseline does not resume an EBGAN-LN workdir, nor another labelled subset.
  for change in ({"ebgan": False}, {"num_labels": 30}):
    with pytest.raises(trainer.ConfigError, match=f"were trained with ({next(iter(change))}"
                                                  f"|objective)="):
      trainer.train_and_evaluate(_small(idx_dir, num_steps=16, **change),
                                 str(tmp_path / "resumed"), experiment.TASK)


def test_a_workdir_saved_before_the_ladder_objectives_had_names_resumes(idx_dir, tmp_path):
  # Such a config said objective "ebgan" and told EBGAN-LN and the LN apart by `ebgan`.
  old = _small(idx_dir, num_steps=4)
  old.objective = "ebgan"
  manager = checkpoint.create_manager(str(tmp_path / "checkpoints"), 1)
  checkpoint.save(manager, state_lib.create_state(old, jax.random.PRNGKey(0)), old)
  manager.wait_until_finished()
  resumed = trainer.train_and_evaluate(_small(idx_dir, num_steps=4), str(tmp_path),
                                       experiment.TASK)
  assert int(resumed.step) == 4
  with pytest.raises(trainer.ConfigError, match="were trained with objective=ebgan_ln"):
    trainer.train_and_evaluate(_small(idx_dir, ebgan=False), str(tmp_path), experiment.TASK)


def test_ebgan_ln_seeds_as_a_population_equal_their_single_runs(idx_dir, tmp_path):
  config = multidevice.tolerant_adam(_small(idx_dir, seeds=(0, 1), margins=(2.0, 20.0)))
  members = experiment.members(config)
  assert [(m["margin"], m["seed"]) for m in members] == [(2.0, 0), (2.0, 1), (20.0, 0),
                                                         (20.0, 1)]
  population, _ = trainer.train_population(config, members, str(tmp_path / "population"),
                                           experiment.TASK)
  for i in (1, 2):  # another seed; another margin
    single_config = _small(idx_dir, seed=members[i]["seed"], margin=members[i]["margin"])
    single = trainer.train_and_evaluate(multidevice.tolerant_adam(single_config),
                                        str(tmp_path / f"single{i}"), experiment.TASK)
    member = population.member(i)
    multidevice.assert_trees_close(
        [member.generator.params, member.discriminator.params, member.discriminator.batch_stats],
        [single.generator.params, single.discriminator.params, single.discriminator.batch_stats],
        # Rounding differs between the programs; through 12 steps of the ladder's noise and
        # m = 20's active hinge it reached 1.5e-5 in G's last layer on an AMD EPYC, 7.8e-5
        # on an Intel Xeon (at -O0): 4% of an Adam step at lr 2e-3; 2e-4 is 10%.
        f"member {i}", atol=5 * multidevice.PARAMS_ATOL)


def test_the_cli_trains_seeds_as_one_population_with_a_test_error_each(idx_dir, tmp_path):
  workdir = tmp_path / "seeds"
  result = _run_cli(f"--workdir={workdir}", f"--config.idx_dir={idx_dir}", "--config.seeds=0,1",
                    "--config.ebgan=False", "--config.num_labels=20",
                    "--config.labelled_batch_size=10", "--config.batch_size=16",
                    "--config.model.widths_d=(32,16)", "--config.num_steps=4",
                    "--config.steps_per_call=2", "--config.checkpoint_every=2",
                    "--config.log_every=2", "--config.optim_d.decay_steps=2",
                    "--config.optim_d.decay_begin=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Population step 2 of 4: " in result.stderr  # progress every log_every steps
  assert "Population step 4 of 4: " in result.stderr
  with open(workdir / experiment.RESULTS, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(row["seed"], row["objective"], row["steps"]) for row in rows] == [
      ("0", "ln", "4"), ("1", "ln", "4")]
  assert all(0.0 <= float(row["test_error"]) <= 1.0 for row in rows)
  assert "hinge_active" not in rows[0]  # the LN has no hinge
  assert (workdir / "checkpoints" / "4").exists()
  with np.load(workdir / experiment.HISTORY) as history:
    assert history["d_loss"].shape == (2, 2)  # members x calls of 2 steps


def test_hinge_activity_is_each_members_mean_over_the_run_and_its_quarters():
  calls = np.array([[1.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],  # a hinge that stops acting
                    [0.0] * 8])
  activity = experiment.hinge_activity({"hinge_active": calls, "d_loss": calls}, 2)
  assert activity[0] == {"hinge_active": 0.25, "hinge_active_q1": 0.75, "hinge_active_q2": 0.25,
                         "hinge_active_q3": 0.0, "hinge_active_q4": 0.0}
  assert activity[1]["hinge_active"] == 0.0
  assert experiment.hinge_activity({"hinge_active": calls[:, :2]}, 2)[0] == {
      "hinge_active": 0.75, "hinge_active_q1": 1.0, "hinge_active_q2": 0.5}
  assert experiment.hinge_activity({"d_loss": calls}, 2) == [{}, {}]  # the LN
  assert experiment.hinge_activity({}, 2) == [{}, {}]  # no call ran


def _run_cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "experiments.semi_supervised", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, **(env or {})})


# One case runs as a real subprocess (exit status 2 and the whole stderr); the others in this
# process (tests/test_cli.py's run_in_process), without a Python start and the imports.
@pytest.mark.parametrize("run, args, message", [
    (_run_cli, ["--config.num_labels=15"],
     "num_labels must be a positive multiple of the 10 classes"),
    (None, ["--config.lambda_pt=0.1"], "EBGAN-LN has no pulling-away term"),
    (None, ["--config.model.family=mlp"], "the semi-supervised experiment trains model family"),
    (None, ["--config.margin_schedule=step"], "margin_schedule must be one of"),
    (None, ["--config.fake_path=denoised"], "fake_path must be one of"),
    (None, ["--config.fake_statistics=labelled"], "fake_statistics must be one of"),
    (None, ["--config.eval_every=0"], "eval_every must be >= 1"),
    (None, ["--config.optim_d.decay_steps=-1"], "decay_steps and decay_begin must be >= 0"),
    (None, ["--config.seeds=0,1", "--config.ebgan=False", "--config.margins=2,5"],
     "margins are EBGAN-LN's; objective 'ln' has none"),
], ids=["subprocess-num_labels", "lambda_pt", "family", "margin_schedule", "fake_path",
        "fake_statistics", "eval_every", "decay_steps", "margins"])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, run, args, message):
  run = run or functools.partial(test_cli.run_in_process, "experiments.semi_supervised")
  result = run(f"--workdir={tmp_path / 'run'}", *args)
  test_cli.assert_one_error_line(result, message)
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_ladder_network_learns_on_real_fashion_mnist(tmp_path):
  """300 steps of the LN with 1,000 labels: far below the 90% test error of chance."""
  fashion_mnist = data_fixtures.real_fashion_mnist()
  workdir = tmp_path / "ln"
  result = _run_cli(f"--config={REPO / 'experiments/configs/ladder_fashion.py'}",
                    f"--workdir={workdir}", f"--config.idx_dir={fashion_mnist}",
                    "--config.ebgan=False", "--config.num_labels=1000", "--config.num_steps=300",
                    "--config.eval_every=300", "--config.checkpoint_every=300",
                    "--config.log_every=100", env=xla_levels.optimized_env())  # 300 steps
  assert result.returncode == 0, result.stderr[-4000:]
  errors = [float(line.split("test_error=")[1]) for line in result.stderr.splitlines()
            if "test_error=" in line]
  assert len(errors) == 1 and errors[0] < 0.4, errors
  assert list(workdir.glob("events.out.tfevents.*"))
  assert not list(workdir.glob("samples_*.png"))  # G is not trained: no grids of noise
  config = ladder_fashion.get_config()
  template = state_lib.create_state(config, jax.random.PRNGKey(0))
  restored = checkpoint.restore(checkpoint.create_manager(str(workdir / "checkpoints"), 1),
                                template)
  assert int(restored.step) == 300
