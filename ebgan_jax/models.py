"""Reference generator / auto-encoder discriminator pairs (DESIGN.md).

Every generator maps z (N, z_dim) to images (N, H, W, C) in [-1, 1]; every
discriminator maps images to `(reconstruction, embedding)`, the embedding
being the encoder output S that the pulling-away term repels. Both take
`train`: BatchNorm then uses batch statistics (and updates `batch_stats`),
dropout is active; with `train=False` BatchNorm uses its running averages.

Every module has a compute `dtype` for its layers (bfloat16 on accelerators
halves memory traffic and at least doubles the matmul rate); parameters,
BatchNorm statistics and the outputs stay float32, so the losses and Adam
work in float32.

Families (trainable parameters for 28x28x1 images, z_dim 64):
  "conv28"  G 6,634,881   D 830,049    (embedding_dim 32)
  "mlp"     G 9,050,384   D 1,607,440  (the paper's best: 5 x 1600 / 2 x 1024)
"""

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's BatchNorm default (running average momentum 0.1) in flax terms.
_BN_MOMENTUM = 0.9

COMPUTE_DTYPES = ("float32", "bfloat16")


def _batch_norm(train: bool, dtype: Any) -> nn.BatchNorm:
  # Layers feeding a BatchNorm have no bias: BN removes it, so its true
  # gradient is 0 and Adam would only random-walk it on rounding noise.
  # Its statistics are reduced in float32 whatever `dtype` is.
  return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=1e-5,
                      use_fast_variance=False, dtype=dtype)


class ConvTranspose2x(nn.Module):
  """nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME"), as one matmul.

  Same parameters, same outputs. One matmul gives every input pixel's
  contribution through each of the 16 kernel taps; output pixel (2i + a,
  2j + b) sums the four of them that land on it: taps (a + 2di, b + 2dj)
  of input pixel (i + a + di - 1, j + b + dj - 1), for di, dj in {0, 1}.
  Why: XLA:CPU computes the kernel gradient of the input-dilated convolution
  that ConvTranspose lowers to without its fast convolution kernels, about
  10x slower than a matmul, and far slower again inside a `lax.scan`
  (`multi_step`); this form is matmuls and slices only, and does exactly
  the convolution's multiply-adds (on accelerators it also builds a tap
  tensor 4x the output, which a native transposed convolution avoids).
  """

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c_in = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, c_in, self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    # taps[4 ki + kj][n, i, j] = x[n, i - 1, j - 1] @ kernel[ki, kj] (zero off the image).
    # A split, not 16 slices: its gradient is one concatenation, not 16 zero-padded copies.
    taps = jnp.dot(x, kernel.transpose(2, 0, 1, 3).reshape(c_in, 16 * self.features))
    taps = [jnp.pad(tap[:, :, :, 0], ((0, 0), (1, 1), (1, 1), (0, 0)))
            for tap in jnp.split(taps.reshape(n, h, w, 16, self.features), 16, axis=3)]
    phases = [[sum(taps[4 * (a + 2 * di) + b + 2 * dj][:, a + di:a + di + h, b + dj:b + dj + w]
                   for di in range(2) for dj in range(2)) for b in range(2)] for a in range(2)]
    # phases[a][b][n, i, j] is output pixel (2i + a, 2j + b): interleave them.
    y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2).reshape(
        n, 2 * h, 2 * w, self.features)
    if self.use_bias:
      y += self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(self.dtype)
    return y


class Conv2x(nn.Module):
  """nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME"), as one matmul over 4x4 patches.

  Same parameters, same outputs; why, as for ConvTranspose2x: on XLA:CPU the
  kernel gradient of a strided convolution with one input channel is slow,
  most of all inside a `lax.scan`, while a matmul is fast everywhere.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c_in = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, c_in, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pads = jax.lax.padtype_to_pads((h, w), (4, 4), (2, 2), "SAME")
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h, out_w = -(-h // 2), -(-w // 2)
    # patches[n, i, j, ki, kj] = padded[n, 2i + ki, 2j + kj]: output pixel (i, j)'s window.
    patches = jnp.stack([padded[:, ki:ki + 2 * out_h - 1:2, kj:kj + 2 * out_w - 1:2]
                         for ki in range(4) for kj in range(4)], axis=3)
    y = jnp.dot(patches.reshape(n, out_h, out_w, 16 * c_in),
                kernel.reshape(16 * c_in, self.features))
    return y + bias


class Conv28Generator(nn.Module):
  """z -> Dense 1024 -> Dense 7*7*128 -> ConvT 64 (14x14) -> ConvT C (28x28), tanh."""

  image_shape: tuple[int, int, int] = (28, 28, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype)
    x = nn.relu(_batch_norm(train, self.dtype)(dense(1024)(z)))
    x = nn.relu(_batch_norm(train, self.dtype)(dense(7 * 7 * 128)(x)))
    x = x.reshape(-1, 7, 7, 128)
    x = ConvTranspose2x(64, use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    # Named as the nn.ConvTranspose it computes, so the parameters keep their names.
    x = ConvTranspose2x(self.image_shape[-1], dtype=self.dtype, name="ConvTranspose_0")(x)
    return jnp.tanh(x).astype(jnp.float32)


class Conv28Discriminator(nn.Module):
  """Conv 64 (14x14) -> Dense embedding_dim (= S) -> Dense 14*14*64 -> ConvT C, tanh."""

  image_shape: tuple[int, int, int] = (28, 28, 1)
  embedding_dim: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    # The conv layers are named as the flax layers they compute (Conv_0, ConvTranspose_0).
    h = nn.relu(Conv2x(64, dtype=self.dtype, name="Conv_0")(x))
    embedding = nn.Dense(self.embedding_dim, dtype=self.dtype)(h.reshape(h.shape[0], -1))
    h = nn.Dense(14 * 14 * 64, use_bias=False, dtype=self.dtype)(embedding)
    h = nn.relu(_batch_norm(train, self.dtype)(h)).reshape(-1, 14, 14, 64)
    h = ConvTranspose2x(self.image_shape[-1], dtype=self.dtype, name="ConvTranspose_0")(h)
    return jnp.tanh(h).astype(jnp.float32), embedding.astype(jnp.float32)


class MLPGenerator(nn.Module):
  """(n_layer_g - 1) x [Dense size_g, BatchNorm, ReLU] -> Dense H*W*C, tanh."""

  image_shape: tuple[int, int, int] = (28, 28, 1)
  n_layer_g: int = 5
  size_g: int = 1600
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    x = z
    for _ in range(self.n_layer_g - 1):
      x = nn.Dense(self.size_g, use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = nn.Dense(math.prod(self.image_shape), dtype=self.dtype)(x)
    return jnp.tanh(x).astype(jnp.float32).reshape(-1, *self.image_shape)


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
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    h = x.reshape(x.shape[0], -1)
    for _ in range(self.n_layer_d - 1):
      h = nn.Dropout(self.dropout_d, deterministic=not train)(h)
      h = nn.relu(nn.Dense(self.size_d, dtype=self.dtype)(h))
    reconstruction = jnp.tanh(nn.Dense(math.prod(self.image_shape), dtype=self.dtype)(h))
    return reconstruction.astype(jnp.float32).reshape(x.shape), h.astype(jnp.float32)


def _conv28(image_shape, dtype, **fields) -> tuple[nn.Module, nn.Module]:
  if tuple(image_shape[:2]) != (28, 28):
    raise ValueError(f"model family 'conv28' needs 28x28 images, got image_shape {image_shape}")
  return (Conv28Generator(image_shape, dtype=dtype),
          Conv28Discriminator(image_shape, **fields, dtype=dtype))


def _mlp(image_shape, dtype, n_layer_g=5, size_g=1600, n_layer_d=2, size_d=1024, dropout_d=0.0):
  if n_layer_g < 1 or n_layer_d < 2:
    raise ValueError(
        f"model family 'mlp' needs n_layer_g >= 1 and n_layer_d >= 2 (encoder + decoder), "
        f"got {n_layer_g} and {n_layer_d}")
  if not 0.0 <= dropout_d < 1.0:
    raise ValueError(f"dropout_d is a rate in [0, 1), got {dropout_d}")
  return (MLPGenerator(image_shape, n_layer_g, size_g, dtype=dtype),
          MLPDiscriminator(image_shape, n_layer_d, size_d, dropout_d, dtype=dtype))


FAMILIES: dict[str, Callable[..., tuple[nn.Module, nn.Module]]] = {
    "conv28": _conv28,
    "mlp": _mlp,
}


def build_models(model_config, image_shape, compute_dtype: str = "float32"
                 ) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) for `model_config.family`.

  Args:
    model_config: a mapping with `family` (a key of FAMILIES) and that
      family's own fields, e.g. {"family": "mlp", "n_layer_g": 5, ...}.
    image_shape: (H, W, C) of the images the nets generate and reconstruct.
    compute_dtype: one of COMPUTE_DTYPES, the dtype the layers compute in.
  """
  fields = dict(model_config)
  family = fields.pop("family", None)
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
  try:
    return FAMILIES[family](tuple(image_shape), jnp.dtype(compute_dtype), **fields)
  except TypeError as e:
    raise ValueError(f"bad fields for model family {family!r}: {e}") from None
