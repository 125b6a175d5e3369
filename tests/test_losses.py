"""Property tests for the EBGAN objective in `ebgan_jax.losses`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebgan_jax import losses

# Every new shape costs a compilation, so example counts stay modest: the whole
# file runs in about 35 s on two CPU cores.
FAST = settings(max_examples=25, deadline=None)
THOROUGH = settings(max_examples=60, deadline=None)

seeds = st.integers(0, 2**32 - 1)

# Eager JAX compiles every primitive for each new shape; one jitted program per
# shape is about ten times cheaper, which matters with hypothesis-drawn shapes.
pulling_away = jax.jit(losses.pulling_away)
pulling_away_grad = jax.jit(jax.grad(losses.pulling_away))
generator_loss_and_grad_s = jax.jit(jax.value_and_grad(losses.generator_loss, argnums=1))


def reference_pt(s):
  """Naive float64 PT: zero rows have cosine 0 with every row."""
  s = np.asarray(s, dtype=np.float64)
  n = s.shape[0]
  total = 0.0
  for i in range(n):
    for j in range(n):
      if j == i:
        continue
      norms = np.linalg.norm(s[i]) * np.linalg.norm(s[j])
      if norms > 0:
        total += (np.dot(s[i], s[j]) / norms) ** 2
  return total / (n * (n - 1))


def random_rows(seed, n, d):
  """Gaussian (n, d) float32 rows with per-row scales spanning 1e-3..1e3."""
  rng = np.random.default_rng(seed)
  scales = 10.0 ** rng.uniform(-3, 3, size=(n, 1))
  return (rng.standard_normal((n, d)) * scales).astype(np.float32)


def signed_scales(rng, n):
  """Row multipliers with |c| in [1e-3, 1e3], the first positive, the second negative."""
  signs = rng.choice([-1.0, 1.0], size=n)
  signs[:2] = [1.0, -1.0]
  return (signs * 10.0 ** rng.uniform(-3, 3, size=n)).astype(np.float32)


# ------------------------------------------------------------- pulling_away


@THOROUGH
@given(st.integers(2, 64), st.integers(1, 64), seeds)
def test_pulling_away_matches_naive_double_loop(n, d, seed):
  """PT equals the literal double sum over j != i of squared cosines / N(N-1)."""
  s = random_rows(seed, n, d)
  assert float(pulling_away(s)) == pytest.approx(reference_pt(s), abs=1e-5)


@FAST
@given(st.integers(2, 32), st.integers(1, 32), seeds)
def test_pulling_away_lies_in_unit_interval(n, d, seed):
  """PT is a mean of squared cosines, so 0 <= PT <= 1."""
  pt = float(pulling_away(random_rows(seed, n, d)))
  assert -1e-6 <= pt <= 1 + 1e-6


@FAST
@given(st.integers(2, 32), st.integers(0, 8), seeds)
def test_pulling_away_is_zero_for_orthogonal_rows(n, extra_dims, seed):
  """Mutually orthogonal rows (QR rows, scaled by any sign, permuted) give 0."""
  rng = np.random.default_rng(seed)
  d = n + extra_dims
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  s = q[rng.permutation(d)[:n]] * signed_scales(rng, n)[:, None]
  assert float(pulling_away(s.astype(np.float32))) == pytest.approx(0.0, abs=1e-5)


def test_pulling_away_is_exactly_zero_for_scaled_permuted_identity():
  """Rows of a scaled, permuted identity are exactly orthogonal: PT is 0."""
  s = np.diag([3.0, -0.5, 7.0, -2.0]).astype(np.float32)[[2, 0, 3, 1]]
  assert float(pulling_away(s)) == 0.0


@FAST
@given(st.integers(2, 32), st.integers(1, 32), seeds)
def test_pulling_away_is_one_for_collinear_rows(n, d, seed):
  """Rows that are multiples of one vector, negative ones included, give 1."""
  rng = np.random.default_rng(seed)
  v = rng.standard_normal(d).astype(np.float32)
  s = signed_scales(rng, n)[:, None] * v[None, :]
  assert float(pulling_away(s)) == pytest.approx(1.0, abs=1e-5)


@FAST
@given(st.integers(2, 32), st.integers(1, 32), seeds)
def test_pulling_away_is_invariant_to_row_scaling_and_permutation(n, d, seed):
  """Scaling each row by a positive or negative factor and permuting rows keeps PT."""
  rng = np.random.default_rng(seed)
  s = random_rows(seed, n, d)
  pt = float(pulling_away(s))
  scaled = s * signed_scales(rng, n)[:, None]
  permuted = s[rng.permutation(n)]
  assert float(pulling_away(scaled)) == pytest.approx(pt, abs=1e-5)
  assert float(pulling_away(permuted)) == pytest.approx(pt, abs=1e-5)


def test_pulling_away_hand_computed():
  """[[1,0],[0,1],[1,1]]: ordered pairs give 0,0,.5,.5,.5,.5, so PT = 2/6."""
  s = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  assert float(pulling_away(s)) == pytest.approx(1 / 3, abs=1e-6)


@FAST
@given(st.integers(2, 16), st.integers(1, 16), seeds, st.data())
def test_pulling_away_finite_with_zero_rows(n, d, seed, data):
  """Zero rows (some or all) count as orthogonal; value and gradient stay finite."""
  s = random_rows(seed, n, d)
  zero = data.draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
  s[np.array(zero)] = 0.0
  pt = pulling_away(s)
  grad = pulling_away_grad(s)
  assert float(pt) == pytest.approx(reference_pt(s), abs=1e-5)
  assert np.all(np.isfinite(grad))


@FAST
@given(st.integers(2, 16), st.integers(1, 16), seeds, st.data())
def test_pulling_away_finite_at_extreme_magnitudes(n, d, seed, data):
  """Rows scaled by 1e20 or 1e-20 (mixed freely) keep PT correct, gradient finite."""
  rng = np.random.default_rng(seed)
  row_scale = data.draw(
      st.lists(st.sampled_from([1e-20, 1.0, 1e20]), min_size=n, max_size=n))
  s = (rng.standard_normal((n, d)) * np.array(row_scale)[:, None]).astype(np.float32)
  pt = pulling_away(s)
  grad = pulling_away_grad(s)
  assert float(pt) == pytest.approx(reference_pt(s), abs=1e-5)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("shape", [(0, 3), (1, 3), (1, 1), (4,), (), (2, 3, 4)])
@pytest.mark.parametrize("jit", [False, True])
def test_pulling_away_rejects_bad_shapes(shape, jit):
  """Fewer than 2 rows, or S not 2-D, raise ValueError (eagerly and under jit)."""
  fn = jax.jit(losses.pulling_away) if jit else losses.pulling_away
  with pytest.raises(ValueError):
    fn(jnp.ones(shape))


# ------------------------------------------------------------- margin_hinge

floats32 = st.floats(-10, 10, width=32, allow_subnormal=False)
# XLA on CPU flushes subnormal results to zero, so m - e may lose that much.
SUBNORMAL = np.finfo(np.float32).tiny


@FAST
@given(st.lists(floats32, min_size=1, max_size=16), floats32)
def test_margin_hinge_value_and_subgradient(e, m):
  """hinge(e, m) = m - e with slope -1 below the margin, 0 with slope 0 above."""
  e = np.array(e, dtype=np.float32)
  m = np.float32(m)
  value = np.asarray(losses.margin_hinge(jnp.asarray(e), m))
  grad = np.asarray(jax.grad(lambda x: jnp.sum(losses.margin_hinge(x, m)))(jnp.asarray(e)))
  below, above = e < m, e >= m
  np.testing.assert_array_equal(value[above], 0.0)
  np.testing.assert_allclose(value[below], (m - e)[below], rtol=1e-6, atol=SUBNORMAL)
  np.testing.assert_array_equal(grad[e < m - 1e-3], -1.0)
  np.testing.assert_array_equal(grad[e > m + 1e-3], 0.0)


# ------------------------------------------------------------------- energy

batch_shapes = st.one_of(
    st.tuples(st.integers(1, 6), st.integers(1, 8)),
    st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5), st.integers(1, 3)))


def random_images(seed, shape):
  """Two float32 arrays of images in [-1, 1]."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, size=(2,) + shape).astype(np.float32)


@FAST
@given(batch_shapes, seeds)
def test_energy_matches_per_sample_reference(shape, seed):
  """Each reduction is computed per sample over all non-batch axes, shape (N,)."""
  x, x_rec = random_images(seed, shape)
  r = (x_rec.astype(np.float64) - x).reshape(shape[0], -1)
  expected = {"sum": np.sum(r**2, axis=1), "mean": np.mean(r**2, axis=1),
              "norm": np.linalg.norm(r, axis=1)}
  for reduction, want in expected.items():
    got = np.asarray(losses.energy(x, x_rec, reduction))
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@FAST
@given(batch_shapes, seeds)
def test_energy_reductions_relate(shape, seed):
  """sum = mean * pixels-per-sample, norm^2 = sum, and all energies are >= 0."""
  x, x_rec = random_images(seed, shape)
  e = {k: np.asarray(losses.energy(x, x_rec, k)) for k in losses.REDUCTIONS}
  pixels = int(np.prod(shape[1:]))
  assert all(np.all(v >= 0) for v in e.values())
  np.testing.assert_allclose(e["sum"], e["mean"] * pixels, rtol=1e-5)
  np.testing.assert_allclose(e["norm"] ** 2, e["sum"], rtol=1e-5)


@FAST
@given(batch_shapes, seeds, st.data())
def test_energy_is_zero_iff_reconstruction_is_exact(shape, seed, data):
  """E = 0 where x_rec == x, E > 0 for the sample where one pixel differs."""
  x, _ = random_images(seed, shape)
  flat = data.draw(st.integers(0, x.size - 1))
  delta = data.draw(st.floats(1e-3, 1.0) | st.floats(-1.0, -1e-3))
  x_rec = x.copy()
  x_rec.reshape(-1)[flat] += np.float32(delta)
  changed = np.zeros(shape[0], dtype=bool)
  changed[flat // (x.size // shape[0])] = True
  for reduction in losses.REDUCTIONS:
    assert np.all(np.asarray(losses.energy(x, x, reduction)) == 0.0)
    e = np.asarray(losses.energy(x, x_rec, reduction))
    assert np.all(e[changed] > 0) and np.all(e[~changed] == 0.0)


def test_energy_hand_computed():
  """r = [[3,4],[1,0]]: sum [25,1], mean [12.5,0.5], norm [5,1]."""
  x = jnp.zeros((2, 2))
  x_rec = jnp.array([[3.0, 4.0], [1.0, 0.0]])
  np.testing.assert_allclose(losses.energy(x, x_rec, "sum"), [25.0, 1.0])
  np.testing.assert_allclose(losses.energy(x, x_rec, "mean"), [12.5, 0.5])
  np.testing.assert_allclose(losses.energy(x, x_rec, "norm"), [5.0, 1.0])


def test_energy_norm_gradient_is_safe_at_exact_reconstruction():
  """d||r||/dx_rec is 0 (not NaN) where r = 0 and r/||r|| elsewhere."""
  x = jnp.zeros((2, 2, 2, 1))
  x_rec = x.at[1, 0, 0, 0].set(3.0).at[1, 1, 1, 0].set(-4.0)
  grad = jax.grad(lambda xr: jnp.sum(losses.energy(x, xr, "norm")))(x_rec)
  np.testing.assert_array_equal(grad[0], 0.0)
  np.testing.assert_allclose(grad[1], x_rec[1] / 5.0, rtol=1e-6)
  grad_x = jax.grad(lambda xx: jnp.sum(losses.energy(xx, xx, "norm")))(x)
  np.testing.assert_array_equal(grad_x, 0.0)


@pytest.mark.parametrize("x_shape, rec_shape, reduction", [
    ((2, 3), (2, 3), "l2"),
    ((2, 3), (2, 3), "Mean"),
    ((2, 3), (3, 2), "mean"),
])
def test_energy_rejects_bad_arguments(x_shape, rec_shape, reduction):
  """An unknown reduction or mismatched shapes raise ValueError."""
  with pytest.raises(ValueError):
    losses.energy(jnp.zeros(x_shape), jnp.zeros(rec_shape), reduction)


# ------------------------------------------------------------------- losses


def test_discriminator_loss_hand_computed():
  """mean([.1,.3]) + mean(max(0, .3 - [.05,.5])) = .2 + mean([.25, 0]) = .325."""
  loss = losses.discriminator_loss(jnp.array([0.1, 0.3]), jnp.array([0.05, 0.5]), 0.3)
  assert float(loss) == pytest.approx(0.325, abs=1e-6)


@FAST
@given(st.lists(st.floats(0, 2), min_size=1, max_size=8),
       st.lists(st.floats(0, 0.29), min_size=1, max_size=8),
       st.lists(st.floats(0.31, 2), min_size=1, max_size=8))
def test_discriminator_hinge_is_per_sample(e_real, below, above):
  """With fakes on both sides of m, L_D uses mean(hinge), not hinge(mean)."""
  m = 0.3
  e_real = np.array(e_real, dtype=np.float32)
  e_fake = np.array(below + above, dtype=np.float32)
  per_sample = e_real.mean() + np.maximum(0, m - e_fake).mean()
  batch_mean = e_real.mean() + max(0.0, m - e_fake.mean())
  loss = float(losses.discriminator_loss(e_real, e_fake, m))
  assert loss == pytest.approx(per_sample, abs=1e-5)
  assert abs(loss - batch_mean) > 1e-4
  grad = jax.grad(losses.discriminator_loss, argnums=1)(e_real, jnp.asarray(e_fake), m)
  n = len(e_fake)
  np.testing.assert_allclose(grad, np.where(e_fake < m, -1.0 / n, 0.0), rtol=1e-6)


def test_generator_loss_hand_computed():
  """mean([.2,.4]) + 0.1 * PT([[1,0],[1,1]]) = .3 + .1 * .5 = .35."""
  s = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  loss = losses.generator_loss(jnp.array([0.2, 0.4]), s, 0.1)
  assert float(loss) == pytest.approx(0.35, abs=1e-6)


@FAST
@given(st.integers(2, 16), st.integers(1, 16), seeds)
def test_generator_loss_without_pt(n, d, seed):
  """lambda_pt = 0 gives exactly mean(e_fake) and an exactly zero dL/dS."""
  s = random_rows(seed, n, d)
  e_fake = np.random.default_rng(seed).uniform(0, 2, n).astype(np.float32)
  loss, grad = generator_loss_and_grad_s(e_fake, s, 0.0)
  assert float(loss) == float(jnp.mean(e_fake))
  np.testing.assert_array_equal(grad, 0.0)


# ------------------------------------------------------------- the GAN baseline

gan_d_loss_and_grads = jax.jit(jax.value_and_grad(losses.gan_discriminator_loss, argnums=(0, 1)))
gan_g_loss_and_grad = jax.jit(jax.value_and_grad(losses.gan_generator_loss))
logits = st.lists(st.floats(-30, 30, width=32), min_size=1, max_size=16)


def test_gan_losses_match_hand_values():
  # sigmoid(0) = 1/2: each term is log 2. l_real = log 3 -> sigmoid 3/4 -> -log(3/4);
  # l_fake = -log 3 -> sigmoid 1/4 -> -log(1 - 1/4) = -log(3/4).
  zero = jnp.zeros(4)
  np.testing.assert_allclose(losses.gan_discriminator_loss(zero, zero), 2 * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(losses.gan_generator_loss(zero), np.log(2), rtol=1e-6)
  log3 = jnp.full(3, np.log(3.0))
  np.testing.assert_allclose(losses.gan_discriminator_loss(log3, -log3), -2 * np.log(0.75),
                             rtol=1e-6)
  # The non-saturating G loss: -log sigmoid(l_fake) = -log(1/4) at l_fake = -log 3.
  np.testing.assert_allclose(losses.gan_generator_loss(-log3), np.log(4.0), rtol=1e-6)
  # Means over the batch: one confident right and one 50/50 logit per side.
  np.testing.assert_allclose(losses.gan_discriminator_loss(jnp.array([40.0, 0.0]),
                                                           jnp.array([-40.0, 0.0])),
                             np.log(2), rtol=1e-6)


@FAST
@given(logits, logits)
def test_gan_discriminator_loss_is_the_cross_entropy(real, fake):
  real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
  # -log sigmoid(l) = log(1 + e^-l) and -log(1 - sigmoid(l)) = log(1 + e^l), in float64.
  expected = (np.mean(np.logaddexp(0, -real.astype(np.float64)))
              + np.mean(np.logaddexp(0, fake.astype(np.float64))))
  loss, _ = gan_d_loss_and_grads(real, fake)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


@FAST
@given(logits)
def test_non_saturating_generator_gradient_raises_the_fake_logits(fake):
  """dL_G/dl = -(1 - sigmoid(l)) / N < 0: descending L_G pushes every logit up, steepest
  where D rejects the fake (l very negative), unlike the saturating log(1 - sigmoid(l))."""
  fake = np.asarray(fake, np.float32)
  _, grad = gan_g_loss_and_grad(fake)
  assert np.all(np.asarray(grad) < 0)
  np.testing.assert_allclose(grad, -(1 - 1 / (1 + np.exp(-fake.astype(np.float64)))) / len(fake),
                             rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("big", [1e4, 1e30, np.inf])
def test_gan_losses_finite_at_extreme_logits(big):
  """Log-sigmoid forms: no log(0) where D is confidently right or wrong at finite logits,
  0 where it is right at +-inf, and finite gradients everywhere (no NaN)."""
  right_real, right_fake = jnp.array([big, 0.0]), jnp.array([-big, 0.0])
  loss, grads = gan_d_loss_and_grads(right_real, right_fake)
  np.testing.assert_allclose(loss, np.log(2), rtol=1e-6)  # the confident halves add 0
  wrong_loss, wrong_grads = gan_d_loss_and_grads(-right_real, -right_fake)
  if np.isfinite(big):
    # softplus(1e30) = 1e30: large, but a number; 1 - sigmoid(1e30) = 0 would give log(0).
    assert np.isfinite(float(wrong_loss))
  for g in (*grads, *wrong_grads):
    assert np.all(np.isfinite(np.asarray(g)))
  g_loss, g_grad = gan_g_loss_and_grad(right_real)
  np.testing.assert_allclose(g_loss, np.log(2) / 2, rtol=1e-6)
  assert np.all(np.isfinite(np.asarray(g_grad)))
