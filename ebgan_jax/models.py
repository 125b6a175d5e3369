"""Reference generator / auto-encoder discriminator pairs (DESIGN.md).

Every generator maps z (N, z_dim) to images (N, H, W, C) in [-1, 1]; every
discriminator maps images to `(reconstruction, embedding)`, the embedding
being the encoder output S that the pulling-away term repels. Both take
`train`: BatchNorm then uses batch statistics (and updates `batch_stats`),
dropout is active; with `train=False` BatchNorm uses its running averages.

Families (trainable parameters for 28x28x1 images, z_dim 64):
  "conv28"  G 6,634,881   D 830,049    (embedding_dim 32)
  "mlp"     G 9,050,384   D 1,607,440  (the paper's best: 5 x 1600 / 2 x 1024)
"""

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's BatchNorm default (running average momentum 0.1) in flax terms.
_BN_MOMENTUM = 0.9


def _batch_norm(train: bool) -> nn.BatchNorm:
  # Layers feeding a BatchNorm have no bias: BN removes it, so its true
  # gradient is 0 and Adam would only random-walk it on rounding noise.
  return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=1e-5,
                      use_fast_variance=False)


class ConvTranspose2x(nn.Module):
  """nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME"), as 4 plain convolutions.

  Same parameters, same outputs. Output pixel (2i + a, 2j + b) only meets the
  kernel taps of parity (a, b), so each of the four output phases is a 2x2
  stride-1 convolution of the (padded) input. On XLA:CPU the kernel gradient
  of the input-dilated convolution that ConvTranspose lowers to is about 10x
  slower than that of these plain convolutions when both sides have many
  channels (conv28's G: 1.7 -> 7.0 steps/s); for one output channel
  nn.ConvTranspose is the faster of the two.
  """

  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c_in = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, c_in, self.features))
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    phases = [[jax.lax.conv_general_dilated(
        padded[:, a:a + h + 1, b:b + w + 1], kernel[a::2, b::2], (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) for b in range(2)] for a in range(2)]
    # phases[a][b][n, i, j] is output pixel (2i + a, 2j + b): interleave them.
    y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2).reshape(
        n, 2 * h, 2 * w, self.features)
    if self.use_bias:
      y += self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return y


class Conv28Generator(nn.Module):
  """z -> Dense 1024 -> Dense 7*7*128 -> ConvT 64 (14x14) -> ConvT C (28x28), tanh."""

  image_shape: tuple[int, int, int] = (28, 28, 1)

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    x = nn.relu(_batch_norm(train)(nn.Dense(1024, use_bias=False)(z)))
    x = nn.relu(_batch_norm(train)(nn.Dense(7 * 7 * 128, use_bias=False)(x)))
    x = x.reshape(-1, 7, 7, 128)
    x = nn.relu(_batch_norm(train)(ConvTranspose2x(64, use_bias=False)(x)))
    x = nn.ConvTranspose(self.image_shape[-1], (4, 4), strides=(2, 2), padding="SAME")(x)
    return jnp.tanh(x)


class Conv28Discriminator(nn.Module):
  """Conv 64 (14x14) -> Dense embedding_dim (= S) -> Dense 14*14*64 -> ConvT C, tanh."""

  image_shape: tuple[int, int, int] = (28, 28, 1)
  embedding_dim: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    h = nn.relu(nn.Conv(64, (4, 4), strides=(2, 2), padding="SAME")(x))
    embedding = nn.Dense(self.embedding_dim)(h.reshape(h.shape[0], -1))
    h = nn.relu(_batch_norm(train)(nn.Dense(14 * 14 * 64, use_bias=False)(embedding)))
    h = h.reshape(-1, 14, 14, 64)
    h = nn.ConvTranspose(self.image_shape[-1], (4, 4), strides=(2, 2), padding="SAME")(h)
    return jnp.tanh(h), embedding


class MLPGenerator(nn.Module):
  """(n_layer_g - 1) x [Dense size_g, BatchNorm, ReLU] -> Dense H*W*C, tanh."""

  image_shape: tuple[int, int, int] = (28, 28, 1)
  n_layer_g: int = 5
  size_g: int = 1600

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    x = z
    for _ in range(self.n_layer_g - 1):
      x = nn.relu(_batch_norm(train)(nn.Dense(self.size_g, use_bias=False)(x)))
    x = nn.Dense(math.prod(self.image_shape))(x)
    return jnp.tanh(x).reshape(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
  """Encoder (n_layer_d - 1) x [Dense size_d, ReLU] (its output is S), decoder Dense H*W*C, tanh.

  The paper's nLayerD counts the encoder layers plus the one decoder layer.
  `dropout_d` is the dropout rate on the input of each encoder layer while
  training (0 disables it).
  """

  image_shape: tuple[int, int, int] = (28, 28, 1)
  n_layer_d: int = 2
  size_d: int = 1024
  dropout_d: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    h = x.reshape(x.shape[0], -1)
    for _ in range(self.n_layer_d - 1):
      h = nn.Dropout(self.dropout_d, deterministic=not train)(h)
      h = nn.relu(nn.Dense(self.size_d)(h))
    reconstruction = jnp.tanh(nn.Dense(math.prod(self.image_shape))(h))
    return reconstruction.reshape(x.shape), h


def _conv28(image_shape, **fields) -> tuple[nn.Module, nn.Module]:
  if tuple(image_shape[:2]) != (28, 28):
    raise ValueError(f"model family 'conv28' needs 28x28 images, got image_shape {image_shape}")
  return Conv28Generator(image_shape), Conv28Discriminator(image_shape, **fields)


def _mlp(image_shape, n_layer_g=5, size_g=1600, n_layer_d=2, size_d=1024, dropout_d=0.0):
  if n_layer_g < 1 or n_layer_d < 2:
    raise ValueError(
        f"model family 'mlp' needs n_layer_g >= 1 and n_layer_d >= 2 (encoder + decoder), "
        f"got {n_layer_g} and {n_layer_d}")
  if not 0.0 <= dropout_d < 1.0:
    raise ValueError(f"dropout_d is a rate in [0, 1), got {dropout_d}")
  return (MLPGenerator(image_shape, n_layer_g, size_g),
          MLPDiscriminator(image_shape, n_layer_d, size_d, dropout_d))


FAMILIES: dict[str, Callable[..., tuple[nn.Module, nn.Module]]] = {
    "conv28": _conv28,
    "mlp": _mlp,
}


def build_models(model_config, image_shape) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) for `model_config.family`.

  Args:
    model_config: a mapping with `family` (a key of FAMILIES) and that
      family's own fields, e.g. {"family": "mlp", "n_layer_g": 5, ...}.
    image_shape: (H, W, C) of the images the nets generate and reconstruct.
  """
  fields = dict(model_config)
  family = fields.pop("family", None)
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
  try:
    return FAMILIES[family](tuple(image_shape), **fields)
  except TypeError as e:
    raise ValueError(f"bad fields for model family {family!r}: {e}") from None
