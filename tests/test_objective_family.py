"""EBGAN's relatives (objectives.py): BEGAN's k_t and M_global, MAGAN's margin and its
pre-training, and the GAN baseline's D on every conv family, each against hand-computed
values. Populations of them are in test_population.py, learning on real data in
test_learning.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import losses, models, objectives, state as state_lib, train
from experiments import trainer
from experiments.configs import (celeba64, fashion_conv, fashion_rgb64, imagenet128,
                                 lsun_bedroom64, mnist_conv, stacked_mnist_conv, tiny)

BATCH = 8


def _config(objective, **overrides):
  config = tiny.get_config()
  config.objective = objective
  config.batch_size = BATCH
  config.update(overrides)
  return config


def _batches(num, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.uniform(-1, 1, (BATCH, 28, 28, 1)).astype(np.float32) for _ in range(num)]


def _stepper(config):
  objective = objectives.from_config(config)
  hparams = objectives.hyperparameters(objective, config)
  return jax.jit(lambda state, batch: train.train_step(state, batch, hparams,
                                                       objective=objective))


# BEGAN

def test_l1_energy_is_the_mean_absolute_error_of_each_image():
  x = np.zeros((2, 2, 2, 1), np.float32)
  reconstruction = np.array([[1.0, -1.0, 0.5, 0.5], [0.0, 0.0, 0.0, -2.0]],
                            np.float32).reshape(2, 2, 2, 1)
  np.testing.assert_allclose(losses.l1_energy(x, reconstruction), [0.75, 0.5])


def test_k_moves_by_lambda_k_times_the_balance_and_is_kept_in_0_1():
  # k + lambda_k (gamma L(x) - L(G(z))): 0.5 + 0.1 (0.5 * 0.4 - 0.1) = 0.51.
  np.testing.assert_allclose(losses.began_k(0.5, 0.4, 0.1, 0.5, 0.1), 0.51, rtol=1e-6)
  np.testing.assert_allclose(losses.began_k(0.5, 0.4, 0.3, 0.5, 0.1), 0.49, rtol=1e-6)
  assert float(losses.began_k(0.999, 1.0, 0.0, 0.5, 0.01)) == 1.0  # 1.004, clipped
  assert float(losses.began_k(0.001, 0.0, 1.0, 0.5, 0.01)) == 0.0  # -0.009, clipped


def test_m_global_is_l_real_plus_the_absolute_balance():
  np.testing.assert_allclose(losses.began_convergence(0.4, 0.1, 0.5), 0.4 + 0.1, rtol=1e-6)
  np.testing.assert_allclose(losses.began_convergence(0.4, 0.3, 0.5), 0.4 + 0.1, rtol=1e-6)
  np.testing.assert_allclose(losses.began_convergence(0.4, 0.2, 0.5), 0.4, rtol=1e-6)


def test_a_began_step_reads_k_and_updates_it_from_its_own_energies():
  config = _config("began", gamma=0.7, lambda_k=0.5)
  step = _stepper(config)
  state = state_lib.create_state(config, jax.random.PRNGKey(0))
  assert float(state.objective_state["k"]) == 0.0  # k_0
  state = state.replace(objective_state={"k": jnp.float32(0.3)})
  for batch in _batches(3):
    k = float(state.objective_state["k"])
    state, m = step(state, batch)
    m = {name: float(value) for name, value in m.items()}
    assert m["k"] == k
    np.testing.assert_allclose(m["d_loss"], m["energy_real"] - k * m["energy_fake"], rtol=1e-5)
    balance = 0.7 * m["energy_real"] - m["g_loss"]  # L_G is L(G(z_G))
    np.testing.assert_allclose(float(state.objective_state["k"]),
                               np.clip(k + 0.5 * balance, 0, 1), rtol=1e-5)
    np.testing.assert_allclose(m["m_global"], m["energy_real"] + abs(balance), rtol=1e-5)


# MAGAN

@pytest.mark.parametrize("real, fake, previous, margin, expected", [
    (0.5, 0.8, 0.7, 1.0, 0.5),  # all three hold: the margin drops to the real mean
    (0.9, 0.8, 0.7, 1.0, 1.0),  # real >= fake
    (0.5, 0.8, 0.7, 0.4, 0.4),  # real >= margin
    (0.5, 0.8, 0.8, 1.0, 1.0),  # the fake energy did not rise
    (0.5, 0.8, float(np.finfo(np.float32).max), 1.0, 1.0),  # no previous epoch
])
def test_magans_margin_drops_to_the_real_mean_when_all_hold(real, fake, previous, margin,
                                                            expected):
  assert float(losses.magan_margin(margin, real, fake, previous)) == np.float32(expected)


def test_magan_pretrains_d_alone_then_starts_and_adapts_its_margin():
  epoch = 2
  config = _config("magan", steps_per_epoch=epoch, magan_pretrain_epochs=2, lambda_pt=0.1)
  step = _stepper(config)
  state = state_lib.create_state(config, jax.random.PRNGKey(0))
  history = []
  for batch in _batches(10):
    before = state
    state, m = step(state, batch)
    history.append(({name: float(value) for name, value in m.items()}, before, state))

  for metrics, before, after in history[:2 * epoch]:  # pre-training: D alone, margin 0
    assert metrics["margin"] == 0.0 and metrics["g_loss"] == 0.0
    np.testing.assert_allclose(metrics["d_loss"], metrics["energy_real"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(after.generator), jax.tree.leaves(before.generator),
                    strict=True):
      np.testing.assert_array_equal(a, b)
  # The margin starts at the last pre-training epoch's mean real energy.
  margin = np.mean([h[0]["energy_real"] for h in history[epoch:2 * epoch]])
  np.testing.assert_allclose(float(history[2 * epoch - 1][2].objective_state["margin"]),
                             margin, rtol=1e-5)
  previous = float(np.finfo(np.float32).max)
  for start in range(2 * epoch, len(history), epoch):  # adversarial epochs
    rows = [h[0] for h in history[start:start + epoch]]
    assert all(row["margin"] == np.float32(margin) for row in rows)
    assert all(row["g_loss"] > 0 for row in rows)
    real = np.mean([row["energy_real"] for row in rows])
    fake = np.mean([row["energy_generated"] for row in rows])
    margin = float(losses.magan_margin(margin, real, fake, previous))
    previous = fake
    after = history[start + epoch - 1][2].objective_state
    np.testing.assert_allclose(float(after["margin"]), margin, rtol=1e-5)
    np.testing.assert_allclose(float(after["previous_fake"]), fake, rtol=1e-5)


def test_magan_rejects_settings_that_leave_it_no_margin():
  for bad in ({"magan_pretrain_epochs": 0}, {"steps_per_epoch": 0},
              {"margin_schedule": "linear", "margin_decay_steps": 5}):
    with pytest.raises(ValueError, match="MAGAN"):
      objectives.from_config(_config("magan", **bad))


# The GAN baseline on the conv families

@pytest.mark.parametrize("family, image_shape", [
    ("conv28", (28, 28, 1)), ("conv64", (64, 64, 3)), ("conv128", (128, 128, 3))])
def test_every_conv_familys_encoder_ends_in_one_logit_for_the_gan(family, image_shape):
  _, d = models.build_models({"family": family}, image_shape, d_head="logit")
  _, auto_encoder = models.build_models({"family": family}, image_shape)
  images = jnp.zeros((3, *image_shape))
  variables = jax.eval_shape(lambda x: d.init(jax.random.PRNGKey(0), x, train=False), images)
  logit, embedding = jax.eval_shape(lambda v, x: d.apply(v, x, train=False), variables, images)
  assert logit.shape == (3,)
  # The encoder is the auto-encoder's, the same parameters; no decoder.
  encoder_variables = jax.eval_shape(
      lambda x: auto_encoder.init(jax.random.PRNGKey(0), x, train=False), images)
  _, auto_embedding = jax.eval_shape(
      lambda v, x: auto_encoder.apply(v, x, train=False), encoder_variables, images)
  assert embedding.shape == auto_embedding.shape
  params = set(variables["params"])
  assert not any(name.startswith("ConvTranspose") for name in params), params
  assert params - set(encoder_variables["params"]) == {"Logit"}


def test_the_gan_losses_push_real_logits_up_and_fake_ones_down():
  logits = jnp.array([0.3, -1.2, 2.0])
  d_real, d_fake = jax.grad(losses.gan_discriminator_loss, argnums=(0, 1))(logits, logits)
  assert np.all(d_real < 0) and np.all(d_fake > 0)
  assert np.all(jax.grad(losses.gan_generator_loss)(logits) < 0)


def test_a_gan_step_on_conv28_raises_ds_logit_on_real_images_against_fakes():
  config = _config("gan")
  config.model = {"family": "conv28", "embedding_dim": 32}
  config.optim_d.learning_rate = 1e-3
  state = state_lib.create_state(config, jax.random.PRNGKey(0))
  real = _batches(1)[0]
  fake = np.asarray(train.sample_z(jax.random.PRNGKey(3), BATCH, config.z_dim))
  fake = state.generator.apply_fn({"params": state.generator.params,
                                   "batch_stats": state.generator.batch_stats},
                                  fake, train=False)

  def gap(state):
    def logits(x):
      return state.discriminator.apply_fn(
          {"params": state.discriminator.params, "batch_stats": state.discriminator.batch_stats},
          x, train=False)[0]
    return float(jnp.mean(logits(real)) - jnp.mean(logits(fake)))

  before = gap(state)
  for _ in range(3):
    state, _ = _stepper(config)(state, real)
  assert gap(state) > before + 0.1, (before, gap(state))


# The configs

@pytest.mark.parametrize("module", [mnist_conv, fashion_conv, stacked_mnist_conv, celeba64,
                                    fashion_rgb64, lsun_bedroom64, imagenet128])
@pytest.mark.parametrize("objective", mnist_conv.OBJECTIVE_VARIANTS)
def test_every_conv_config_offers_every_objective(module, objective):
  config = module.get_config(objective)
  assert config.objective == objective
  trainer.validate_config(config)  # the objective, its hyperparameters, D's head


def test_an_unknown_objective_variant_is_refused():
  with pytest.raises(ValueError, match="unknown objective variant 'wgan'"):
    fashion_conv.get_config("wgan")
