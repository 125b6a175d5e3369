"""The ladder network of the paper's semi-supervised EBGAN-LN (its Sec. 4.2), as a D.

A fully connected ladder network (Rasmus et al. 2015, "Semi-Supervised
Learning with Ladder Networks") whose only reconstruction cost is at the input
layer: the "bottom-layer cost" model of Pezeshki et al. 2016, which EBGAN-LN
uses. Its input-reconstruction error is the energy (semi_supervised.py).

Encoder, for each layer l = 1..L of `widths` (the paper: 1000-500-250-250-250,
then num_classes), with h_0 the image as a 784-vector (permutation invariant):

  clean:     z_l = BN(W_l h_{l-1})                    (running averages at test)
  corrupted: z~_l = BN(W_l h~_{l-1}) + N(0, noise^2),  h~_0 = x + N(0, noise^2)
  h_l = ReLU(z_l + beta_l); the top layer's logits gamma * (z_L + beta_L)

where BN normalises without a scale or shift of its own (beta, gamma do that).
Decoder, top-down: u_L = BN(softmax(corrupted logits)), u_l = BN(V_{l+1}
z^_{l+1}) below, and z^_l = g(z~_l, u_l), Rasmus et al.'s per-unit "vanilla"
combinator; z^_0 is the reconstruction of the clean input. Pixels are mapped
from [-1, 1] to Rasmus et al.'s [0, 1] inside, so their noise level (0.3) and
cost weight (1000 per pixel-mean) apply as they wrote them; the reconstruction
comes back on the images' [-1, 1] scale, unbounded (no tanh: the combinator is
linear in z~).

`__call__(x, train)` returns `(reconstruction, logits)` like every D's
`(head, embedding)`: with train=True, both of the corrupted path (noise from
the "dropout" PRNG stream, the one every D's training call gets), and the
clean path runs too, to update the BatchNorm running averages that test
time uses; with train=False, the clean path alone (no noise, running
averages), its logits classifying the test set.

Two options of a training call serve EBGAN-LN's variants for G's samples
(objectives.LadderEBGAN): `path="clean"` returns the clean path's outputs
(no noise, the batch's statistics) and `statistics_of=n` normalises every
row with the statistics of the first n rows only, so that rows after them
are normalised as those n (the unlabelled images) are.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LADDER_WIDTHS = (1000, 500, 250, 250, 250)  # the paper's 784-1000-500-250-250-250-10
# Rasmus et al.'s running-average decay of the test-time statistics.
_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-5
PATHS = ("corrupted", "clean")  # the path whose outputs a training call returns


def _normalize(z: jax.Array, statistics_of: int | None = None) -> jax.Array:
  """BatchNorm with the batch's own statistics (of its first `statistics_of` rows, if set)
  and no learnt scale or shift."""
  reference = z if statistics_of is None else z[:statistics_of]
  mean = jnp.mean(reference, axis=0)
  variance = jnp.mean(jnp.square(reference - mean), axis=0)
  return (z - mean) * jax.lax.rsqrt(variance + _BN_EPSILON)


class Combinator(nn.Module):
  """Rasmus et al.'s vanilla combinator: z^ = (z~ - mu(u)) * v(u) + mu(u), per unit,

  mu(u) = a1 sigmoid(a2 u + a3) + a4 u + a5, v(u) = a6 sigmoid(a7 u + a8) + a9 u + a10,
  initialised as theirs: a2 = a7 = 1, every other a = 0.
  """

  @nn.compact
  def __call__(self, z_noisy: jax.Array, u: jax.Array) -> jax.Array:
    width = z_noisy.shape[-1]

    def a(index: int, init: float) -> jax.Array:
      return self.param(f"a{index}", nn.initializers.constant(init), (width,))

    mu = a(1, 0.0) * jax.nn.sigmoid(a(2, 1.0) * u + a(3, 0.0)) + a(4, 0.0) * u + a(5, 0.0)
    v = a(6, 0.0) * jax.nn.sigmoid(a(7, 1.0) * u + a(8, 0.0)) + a(9, 0.0) * u + a(10, 0.0)
    return (z_noisy - mu) * v + mu


class LadderNetwork(nn.Module):
  """The bottom-layer-cost ladder network (module docstring); D of EBGAN-LN."""

  image_shape: tuple[int, int, int] = (28, 28, 1)
  widths: Sequence[int] = LADDER_WIDTHS
  num_classes: int = 10
  noise_std: float = 0.3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, *, path: str = "corrupted",
               statistics_of: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(reconstruction, logits) of the corrupted path in training, the clean one at test
    time; in training, path "clean" returns the clean path's, and statistics_of=n
    normalises with the first n rows' statistics (the running averages are then not
    updated). See the module docstring."""
    if path not in PATHS:
      raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if statistics_of is not None and not 1 <= statistics_of <= x.shape[0]:
      raise ValueError(f"statistics_of must be in [1, {x.shape[0]}], got {statistics_of}")
    widths = (*self.widths, self.num_classes)
    top = len(widths)
    encoders = [nn.Dense(w, use_bias=False, dtype=self.dtype, name=f"encoder_{layer}")
                for layer, w in enumerate(widths, 1)]
    clean_norms = [nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                                epsilon=_BN_EPSILON, use_bias=False, use_scale=False,
                                use_fast_variance=False, name=f"batch_norm_{layer}")
                   for layer in range(1, top + 1)]
    betas = [self.param(f"beta_{layer}", nn.initializers.zeros, (w,))
             for layer, w in enumerate(widths, 1)]
    gamma = self.param("gamma", nn.initializers.ones, (self.num_classes,))

    def activation(layer: int, z: jax.Array) -> jax.Array:
      shifted = z + betas[layer - 1]
      return gamma * shifted if layer == top else nn.relu(shifted)

    def noise(shape) -> jax.Array:
      return self.noise_std * jax.random.normal(self.make_rng("dropout"), shape)

    def encode(h: jax.Array, corrupted: bool) -> tuple[list[jax.Array], jax.Array]:
      """The normalised pre-activations z_0 (the input) .. z_L, and the logits."""
      h = h + noise(h.shape) if corrupted else h
      zs = [h]
      for layer in range(1, top + 1):
        z = encoders[layer - 1](h).astype(jnp.float32)
        if corrupted:
          z = _normalize(z, statistics_of) + noise(z.shape)
        elif train and statistics_of is not None:
          z = _normalize(z, statistics_of)  # these statistics are not the running averages'
        else:
          z = clean_norms[layer - 1](z)
        zs.append(z)
        h = activation(layer, z)
      return zs, h

    pixels = (x.reshape(x.shape[0], -1) + 1.0) / 2.0  # Rasmus et al.'s [0, 1] scale
    # The clean path is the classifier at test time; while training, it only
    # keeps the running averages (no cost reads it), and the decoder denoises
    # the corrupted path. At test time the decoder reconstructs the clean path.
    zs, logits = encode(pixels, corrupted=False)
    if train and path == "corrupted":
      zs, logits = encode(pixels, corrupted=True)

    u = _normalize(jax.nn.softmax(logits), statistics_of)
    estimate = None
    for layer in range(top, -1, -1):
      if layer < top:
        decoder = nn.Dense((pixels.shape[-1], *widths)[layer], use_bias=False,
                           dtype=self.dtype, name=f"decoder_{layer}")
        u = _normalize(decoder(estimate).astype(jnp.float32), statistics_of)
      estimate = Combinator(name=f"combinator_{layer}")(zs[layer], u)
    reconstruction = estimate * 2.0 - 1.0
    return reconstruction.reshape(x.shape), logits
