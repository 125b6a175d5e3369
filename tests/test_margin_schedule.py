"""The margin schedule (objectives.MarginSchedule): its values, and that the step uses them."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import objectives, state as state_lib, train
from experiments.configs import tiny

DECAYS = ("linear", "cosine")


def _margins(kind, steps, begin, start, end, at):
  schedule = objectives.MarginSchedule(kind, steps, begin)
  hparams = {"margin": jnp.float32(start), "margin_end": jnp.float32(end)}
  return np.array([float(schedule.margin(hparams, jnp.int32(t))) for t in at])


@pytest.mark.parametrize("kind", DECAYS)
def test_a_decayed_margin_is_exactly_its_end_under_jit(kind):
  schedule = objectives.MarginSchedule(kind, 3000, 0)
  margin = jax.jit(schedule.margin)({"margin": jnp.float32(2.0), "margin_end": jnp.float32(0.0)},
                                    jnp.int32(5000))
  assert float(margin) == 0.0


def test_the_schedules_take_their_values():
  at = [0, 10, 15, 20, 30, 1000]
  np.testing.assert_allclose(_margins("linear", 20, 10, 2.0, 0.0, at),
                             [2.0, 2.0, 1.5, 1.0, 0.0, 0.0], rtol=1e-6)
  # Cosine: (1 + cos(pi t / T)) / 2 of the way back from the end.
  np.testing.assert_allclose(_margins("cosine", 20, 10, 2.0, 0.0, at),
                             [2.0, 2.0, 2.0 * (1 + np.cos(np.pi / 4)) / 2, 1.0, 0.0, 0.0],
                             rtol=1e-6)
  np.testing.assert_allclose(_margins("linear", 4, 0, 1.0, 0.5, [0, 2, 4]), [1.0, 0.75, 0.5])
  constant = objectives.MarginSchedule()
  assert float(constant.margin({"margin": jnp.float32(0.3)}, jnp.int32(10**6))) == \
      pytest.approx(0.3)


@hypothesis.given(kind=st.sampled_from(DECAYS), steps=st.integers(1, 500),
                  begin=st.integers(0, 500), start=st.floats(0, 100), end=st.floats(0, 100))
def test_a_decay_moves_monotonically_from_start_to_end(kind, steps, begin, start, end):
  at = np.arange(0, begin + steps + 3, max(1, (begin + steps) // 50))
  margins = _margins(kind, steps, begin, start, end, [*at, begin, begin + steps])
  tolerance = 1e-5 * max(start, end, 1.0)
  assert margins[-2] == pytest.approx(start, abs=tolerance)
  assert margins[-1] == pytest.approx(end, abs=tolerance)
  steps_between = np.diff(margins[:-2]) * np.sign(end - start)
  assert np.all(steps_between >= -tolerance)
  assert np.all(margins >= min(start, end) - tolerance)
  assert np.all(margins <= max(start, end) + tolerance)


def test_a_scheduled_hyperparameter_only_when_scheduled():
  config = tiny.get_config()
  assert objectives.from_config(config).hyperparameters == ("margin", "lambda_pt")
  config.margin_schedule, config.margin_decay_steps = "cosine", 10
  objective = objectives.from_config(config)
  assert objective.hyperparameters == ("margin", "lambda_pt", "margin_end")
  assert objectives.hyperparameters(objective, config)["margin_end"] == 0.0


@pytest.mark.parametrize("kind, steps, begin, message", [
    ("exponential", 10, 0, "margin_schedule must be one of"),
    ("linear", 0, 0, "needs margin_decay_steps >= 1"),
    ("cosine", 10, -1, "margin_decay_begin >= 0"),
])
def test_bad_schedules_are_rejected(kind, steps, begin, message):
  with pytest.raises(ValueError, match=message):
    objectives.MarginSchedule(kind, steps, begin)


def test_the_step_uses_the_margin_of_its_step():
  # A state at step 6 of a linear decay over 8 steps after step 2, from m + 0.2 to m - 0.2,
  # trains exactly like the constant margin m; m is the fakes' mean energy, so the hinge is
  # partly active and the margins of steps 5 and 7 (m +- 0.05) train otherwise.
  config = tiny.get_config()
  config.margin_schedule, config.margin_decay_steps, config.margin_decay_begin = "linear", 8, 2
  scheduled = objectives.from_config(config)
  state = state_lib.create_state(config, jax.random.PRNGKey(0)).replace(step=jnp.int32(6))
  batch = jax.random.uniform(jax.random.PRNGKey(1), (16, 28, 28, 1), minval=-1, maxval=1)
  step = jax.jit(train.train_step, static_argnames="objective")
  constant = lambda m: step(state, batch, {"margin": m, "lambda_pt": 0.1},
                            objective=objectives.EBGAN())
  m = float(constant(0.3)[1]["energy_fake"])
  after, metrics = step(state, batch, {"margin": m + 0.2, "lambda_pt": 0.1, "margin_end": m - 0.2},
                        objective=scheduled)
  expected, expected_metrics = constant(m)
  assert 0.0 < float(metrics["hinge_active"]) < 1.0
  for name in metrics:
    np.testing.assert_allclose(metrics[name], expected_metrics[name], rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(jax.tree.leaves(after.discriminator.params)[0],
                             jax.tree.leaves(expected.discriminator.params)[0], atol=1e-6)
  for off_by_one in (m + 0.05, m - 0.05):
    assert abs(float(constant(off_by_one)[1]["d_loss"]) - float(metrics["d_loss"])) > 1e-3


# --- Margins in units of the real images' energy ---------------------------------------------


def _d_loss(objective, margin, scale, real, fake):
  """EBGAN's D loss and metrics with a toy D whose reconstruction is `scale` * x, so each
  image's energy (the "mean" reduction) is (1 - scale)^2 mean(x^2)."""
  apply_d = lambda x, stats, key: ((scale * x, x.reshape(len(x), -1)), stats)
  loss, (_, metrics) = objective.discriminator_loss(
      {"margin": margin, "lambda_pt": 0.0}, real, fake, apply_d, {}, jax.random.PRNGKey(0))
  return loss, metrics


def test_a_margin_in_real_energy_units_is_that_multiple_of_the_batchs_real_energy():
  rng = np.random.default_rng(0)
  real = rng.uniform(-1, 1, (8, 4, 4, 1)).astype(np.float32)
  # Fakes whose energies straddle 1.5 E(x): a part of the hinge acts.
  fake = real * np.linspace(0.5, 2.5, 8, dtype=np.float32)[:, None, None, None]
  relative = objectives.EBGAN(margin_schedule=objectives.MarginSchedule(unit="real_energy"))
  loss, metrics = _d_loss(relative, 1.5, 0.25, real, fake)

  energy = lambda x: 0.75 ** 2 * np.mean(np.square(x.astype(np.float64)), axis=(1, 2, 3))
  e_real, e_fake = energy(real), energy(fake)
  margin = 1.5 * e_real.mean()
  assert 0 < np.mean(e_fake < margin) < 1
  expected = e_real.mean() + np.mean(np.maximum(0.0, margin - e_fake))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["hinge_active"]) == pytest.approx(np.mean(e_fake < margin))

  # The margin is a constant to the gradient: D's gradient is that of the absolute margin
  # of the same value (not one that also moves E(x) through the margin).
  absolute = objectives.EBGAN()
  gradient = lambda loss: float(jax.grad(loss)(0.25))
  relative_gradient = gradient(lambda scale: _d_loss(relative, 1.5, scale, real, fake)[0])
  assert relative_gradient == pytest.approx(
      gradient(lambda scale: _d_loss(absolute, margin, scale, real, fake)[0]), rel=1e-5)
  real_energy = lambda scale: (1 - scale) ** 2 * jnp.mean(jnp.square(real))
  moving = gradient(lambda scale: _d_loss(absolute, 1.5 * real_energy(scale), scale, real,
                                          fake)[0])
  assert relative_gradient != pytest.approx(moving, rel=1e-3)


def test_the_margin_unit_comes_from_the_config_and_is_checked():
  config = tiny.get_config()
  assert objectives.from_config(config).margin_schedule.unit == "absolute"
  config.margin_unit = "real_energy"
  assert objectives.from_config(config).margin_schedule.unit == "real_energy"
  config.margin_unit = "pixels"
  with pytest.raises(ValueError, match="margin_unit must be one of"):
    objectives.from_config(config)
  config.margin_unit, config.objective = "real_energy", "magan"
  with pytest.raises(ValueError, match="MAGAN adapts its margin itself"):
    objectives.from_config(config)
