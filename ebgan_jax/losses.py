"""The EBGAN objective as pure jnp functions (Zhao, Mathieu & LeCun, 2017).

D is an auto-encoder; the energy of an image is its reconstruction error.
  L_D = mean_x E(x) + mean_z max(0, m - E(G(z)))              (paper Eq. 1)
  L_G = mean_z E(G(z)) + lambda_pt * PT(S)                    (Eq. 2, Sec. 2.4)
where S holds D's encoder embeddings of the generated batch.

The paper's baseline GAN (Sec. 4.1), D ending in one logit l:
  L_D = mean_x softplus(-l(x)) + mean_z softplus(l(G(z)))
  L_G = mean_z softplus(-l(G(z)))                  (the non-saturating loss)
softplus(-l) = -log sigmoid(l): the log-sigmoid form, finite at any finite
logit and with gradients that never vanish into NaN.
"""

import jax
import jax.numpy as jnp
import optax

REDUCTIONS = ("mean", "sum", "norm")

# Added to each row's squared norm inside the pulling-away term, so that a zero
# embedding gets cosine 0 with everything and a finite gradient. Rows are first
# rescaled to max-abs 1, so for any non-zero row this is far below float32
# resolution of |S_i|^2 >= 1 and the cosine is unaffected.
PT_EPSILON = 1e-12


def check_reduction(reduction: str) -> None:
  """Raises ValueError unless `reduction` is one of REDUCTIONS."""
  if reduction not in REDUCTIONS:
    raise ValueError(f"energy_reduction must be one of {REDUCTIONS}, got {reduction!r}")


def energy(x: jax.Array, x_rec: jax.Array, reduction: str = "mean") -> jax.Array:
  """Per-sample reconstruction energy, reduced over all non-batch axes.

  Args:
    x: the images fed to D, shape (N, ...).
    x_rec: D's reconstruction, same shape.
    reduction: "mean" (mean squared error per pixel, the conv nets' default),
      "sum" (sum of squared errors) or "norm" (the L2 norm ||x_rec - x||, the
      paper's Eq. 13, used with margin 10 in its MNIST grid search).

  Returns:
    Energies of shape (N,), all >= 0.
  """
  check_reduction(reduction)
  if x.shape != x_rec.shape:
    raise ValueError(f"x and x_rec must have the same shape, got {x.shape} and {x_rec.shape}")
  r = (x_rec - x).reshape(x.shape[0], -1)
  squared = jnp.sum(jnp.square(r), axis=1)
  if reduction == "sum":
    return squared
  if reduction == "mean":
    return squared / r.shape[1]
  # sqrt has an infinite derivative at 0: take it only where the error is
  # non-zero, so a perfect reconstruction gets energy 0 and gradient 0.
  nonzero = squared > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1.0)), 0.0)


def l1_energy(x: jax.Array, x_rec: jax.Array) -> jax.Array:
  """(N,) BEGAN's L(v) = |v - D(v)|^eta with eta = 1: the mean absolute error per pixel."""
  if x.shape != x_rec.shape:
    raise ValueError(f"x and x_rec must have the same shape, got {x.shape} and {x_rec.shape}")
  return jnp.mean(jnp.abs(x_rec - x).reshape(x.shape[0], -1), axis=1)


def margin_hinge(e: jax.Array, margin: float) -> jax.Array:
  """[m - e]^+ elementwise: apply it per sample, never to a batch mean."""
  return jnp.maximum(0.0, margin - e)


def pulling_away(s: jax.Array) -> jax.Array:
  """The pulling-away term PT of the paper's Sec. 2.4 on embeddings S (N, d).

    PT(S) = 1 / (N (N - 1)) * sum_i sum_{j != i} cos(S_i, S_j)^2

  A squared cosine similarity: 0 for mutually orthogonal rows, 1 when all rows
  are collinear (whatever their signs); invariant to scaling any row and to
  permuting rows. Zero rows count as orthogonal to everything (see
  PT_EPSILON), so value and gradient are finite for every finite input.

  Raises:
    ValueError: (at trace time) unless S is 2-D with N >= 2 rows; one sample
      has no pairs to repel.
  """
  if s.ndim != 2:
    raise ValueError(f"pulling_away expects embeddings of shape (N, d), got shape {s.shape}")
  n = s.shape[0]
  if n < 2:
    raise ValueError(f"pulling_away needs a batch of at least 2 embeddings, got {n}")
  # Rescaling each row by its largest |entry| keeps huge rows from overflowing
  # and tiny ones from underflowing in the squares; the cosine is invariant to
  # the rescaling, so its gradient through the scale is zero and can be stopped.
  scale = jnp.max(jnp.abs(s), axis=1, keepdims=True)
  scale = jax.lax.stop_gradient(jnp.where(scale > 0, scale, 1.0))
  u = s / scale
  unit = u / jnp.sqrt(jnp.sum(jnp.square(u), axis=1, keepdims=True) + PT_EPSILON)
  cosine = unit @ unit.T
  off_diagonal = 1.0 - jnp.eye(n, dtype=cosine.dtype)
  return jnp.sum(jnp.square(cosine) * off_diagonal) / (n * (n - 1))


def discriminator_loss(e_real: jax.Array, e_fake: jax.Array, margin: float) -> jax.Array:
  """L_D = mean E(x) + mean [m - E(G(z))]^+, the hinge taken per sample."""
  return jnp.mean(e_real) + jnp.mean(margin_hinge(e_fake, margin))


def hinge_active(e_fake: jax.Array, margin: float) -> jax.Array:
  """The fraction of generated samples inside the margin (E < m), whose hinge pushes D."""
  return jnp.mean((e_fake < margin).astype(jnp.float32))


def generator_loss(e_fake: jax.Array, s_fake: jax.Array, lambda_pt: float) -> jax.Array:
  """L_G = mean E(G(z)) + lambda_pt * PT(S) on the generated batch."""
  return jnp.mean(e_fake) + lambda_pt * pulling_away(s_fake)


def gan_discriminator_loss(logit_real: jax.Array, logit_fake: jax.Array) -> jax.Array:
  """L_D = mean -log sigmoid(l_real) + mean -log(1 - sigmoid(l_fake)), in softplus form."""
  return jnp.mean(jax.nn.softplus(-logit_real)) + jnp.mean(jax.nn.softplus(logit_fake))


def gan_generator_loss(logit_fake: jax.Array) -> jax.Array:
  """The non-saturating L_G = mean -log sigmoid(l_fake): steep where D rejects the fakes."""
  return jnp.mean(jax.nn.softplus(-logit_fake))


def ladder_energy(images: jax.Array, reconstruction: jax.Array, weight: jax.Array) -> jax.Array:
  """(N,) EBGAN-LN's energy (the paper's Sec. 4.2): `weight` times the ladder network's
  bottom-layer cost, the mean squared reconstruction error per image on [0, 1] pixels
  (Rasmus et al.'s scale: images here are in [-1, 1])."""
  return weight * energy(images / 2.0, reconstruction / 2.0, "mean")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The mean softmax cross-entropy of integer `labels` under `logits`."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


# BEGAN (Berthelot, Schumm & Metz 2017, Sec. 3.3-3.4), L the per-sample l1_energy:
#   L_D = L(x) - k_t L(G(z_D)),  L_G = L(G(z_G)),
#   k_{t+1} = k_t + lambda_k (gamma L(x) - L(G(z_G))),  kept in [0, 1],
#   M_global = L(x) + |gamma L(x) - L(G(z_G))|.


def began_discriminator_loss(l_real: jax.Array, l_fake: jax.Array, k: jax.Array) -> jax.Array:
  """L_D = mean L(x) - k_t mean L(G(z_D))."""
  return jnp.mean(l_real) - k * jnp.mean(l_fake)


def began_k(k: jax.Array, l_real: jax.Array, l_generated: jax.Array, gamma: jax.Array,
            lambda_k: jax.Array) -> jax.Array:
  """k_{t+1} from the step's mean L(x) and mean L(G(z_G)), clipped to [0, 1]: the paper
  defines k_t in [0, 1] (its Sec. 3.4), as its public TensorFlow port clips it."""
  return jnp.clip(k + lambda_k * (gamma * l_real - l_generated), 0.0, 1.0)


def began_convergence(l_real: jax.Array, l_generated: jax.Array, gamma: jax.Array) -> jax.Array:
  """M_global = L(x) + |gamma L(x) - L(G(z_G))|, from the step's mean energies."""
  return l_real + jnp.abs(gamma * l_real - l_generated)


def magan_margin(margin: jax.Array, real_mean: jax.Array, fake_mean: jax.Array,
                 previous_fake_mean: jax.Array) -> jax.Array:
  """MAGAN's margin after an epoch (Wang et al. 2017, Alg. 1 as its authors' code runs it),
  from the epoch's mean real and fake energies and the previous epoch's mean fake energy:
  it drops to the mean real energy when all three hold, else stays:
    real < fake              D still tells the data from G's samples on average,
    real < margin            the drop is a drop (the margin never rises),
    fake > previous fake     G's energy did not fall: the margin holds G back.
  Means over an epoch's equally many batches order like the paper's sums S_real, S_fake.
  Pass previous_fake_mean = +inf when there is no previous epoch: no drop then.
  """
  drop = (real_mean < fake_mean) & (real_mean < margin) & (fake_mean > previous_fake_mean)
  return jnp.where(drop, real_mean, margin)
