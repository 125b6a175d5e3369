"""Reference generator / auto-encoder discriminator pairs (docs/design.md).

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
The paper's high-resolution families (its Appendix C; RGB images, z_dim 100):
  "conv64"   G 3,576,707   D 1,318,083   (64x64x3, LSUN / CelebA; S is 8x8x256)
  "conv128"  G 12,850,883  D 5,513,923   (128x128x3, ImageNet; S is 8x8x512)
The semi-supervised EBGAN-LN's (ladder.py; its D's second output is the logits):
  "ladder"   G 9,050,384   D 3,105,710   (the mlp G; D 784-1000-500-250-250-250-10, its decoder)

Every 4x4 stride-2 convolution is either flax's own layer ("native") or its
matmul form (Conv2x, ConvTranspose2x): `conv_impl_for` picks one per
platform when `build_models` runs. Both have the same parameters (names and
shapes) and compute the same function, so checkpoints move between CPU and
accelerators.
"""

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebgan_jax import ladder

# PyTorch's BatchNorm default (running average momentum 0.1) in flax terms.
_BN_MOMENTUM = 0.9

COMPUTE_DTYPES = ("float32", "bfloat16")


def _batch_norm(train: bool, dtype: Any) -> nn.BatchNorm:
  # Layers feeding a BatchNorm have no bias: BN removes it, so its true
  # gradient is 0 and Adam would only random-walk it on rounding noise.
  # Its statistics are reduced in float32 whatever `dtype` is.
  return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=1e-5,
                      use_fast_variance=False, dtype=dtype)


MATMUL_OPERANDS = ("float32", "bfloat16")


def _dot_in(bfloat16_operands: bool, x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w (x's last axis with w's first): jnp.dot, or bfloat16_matmul."""
  return bfloat16_matmul(x, w) if bfloat16_operands else jnp.dot(x, w)


def _bfloat16_dot(a: jax.Array, b: jax.Array, contracting: tuple[int, int]) -> jax.Array:
  return jax.lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                             (((contracting[0],), (contracting[1],)), ((), ())),
                             preferred_element_type=jnp.float32)


@jax.custom_vjp
def bfloat16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w for float32 x (..., K) and w (K, N): bfloat16 operands, float32 sums and result.

  Why: on CPUs with AVX512_BF16, XLA:CPU's YNNPACK kernels multiply bfloat16
  operands into float32 sums at 1.6-1.8x the float32 rate (README,
  "Performance"). The custom VJP keeps the two gradient matmuls in the same
  form; JAX's own transpose would multiply the float32 cotangent by a
  bfloat16 operand, a float32 matmul.
  """
  return _bfloat16_dot(x, w, (x.ndim - 1, 0))


def _bfloat16_matmul_forward(x, w):
  return bfloat16_matmul(x, w), (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))


def _bfloat16_matmul_backward(residuals, g):
  x16, w16 = residuals
  g16 = g.astype(jnp.bfloat16)
  dx = _bfloat16_dot(g16, w16, (g.ndim - 1, 1))
  dw = _bfloat16_dot(x16.reshape(-1, x16.shape[-1]), g16.reshape(-1, g.shape[-1]), (0, 0))
  return dx, dw


bfloat16_matmul.defvjp(_bfloat16_matmul_forward, _bfloat16_matmul_backward)


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
  # True: the matmul is bfloat16_matmul (conv_impl "matmul_bf16"); False: in `dtype`.
  bfloat16_operands: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c_in = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, c_in, self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    # taps[4 ki + kj][n, i, j] = x[n, i - 1, j - 1] @ kernel[ki, kj] (zero off the image).
    # A split, not 16 slices: its gradient is one concatenation, not 16 zero-padded copies.
    taps = _dot_in(self.bfloat16_operands, x,
                   kernel.transpose(2, 0, 1, 3).reshape(c_in, 16 * self.features))
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
  use_bias: bool = True
  dtype: Any = jnp.float32
  bfloat16_operands: bool = False  # as ConvTranspose2x's

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c_in = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, c_in, self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    pads = jax.lax.padtype_to_pads((h, w), (4, 4), (2, 2), "SAME")
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h, out_w = -(-h // 2), -(-w // 2)
    # patches[n, i, j, ki, kj] = padded[n, 2i + ki, 2j + kj]: output pixel (i, j)'s window.
    patches = jnp.stack([padded[:, ki:ki + 2 * out_h - 1:2, kj:kj + 2 * out_w - 1:2]
                         for ki in range(4) for kj in range(4)], axis=3)
    y = _dot_in(self.bfloat16_operands, patches.reshape(n, out_h, out_w, 16 * c_in),
                kernel.reshape(16 * c_in, self.features))
    if self.use_bias:
      y += self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(self.dtype)
    return y


# "matmul_bf16": the matmul forms with bfloat16 operands (bfloat16_matmul), what
# build_models picks for matmul_operands "bfloat16" on CPU.
CONV_IMPLS = ("native", "matmul", "matmul_bf16")


def conv_impl_for(platform: str) -> str:
  """The form of the 4x4 stride-2 convolutions on a JAX platform ("cpu", "gpu", "tpu").

  The one place that chooses: "matmul" (Conv2x, ConvTranspose2x) on XLA:CPU,
  where it was measured faster, flax's native layers everywhere else.
  """
  # Measured on the project's 2-core CPU (XLA:CPU, float32, batch 64; other
  # engineers' jobs may have run): value_and_grad of each conv64 layer, median ms,
  #   ConvT 512->256 from 4x4    matmul  75  native   852
  #   ConvT 256->128 from 8x8    matmul 107  native 1,484
  #   ConvT 128->64 from 16x16   matmul 198  native 3,858
  #   ConvT 64->3 from 32x32     matmul  23  native    79
  #   Conv 3->64 at 64x64        matmul  97  native    81
  #   Conv 64->128 at 32x32      matmul 122  native   148
  #   Conv 128->256 at 16x16     matmul  74  native    83
  # and conv64's whole train step, back to back in one process: 1.49-1.55 s
  # all matmul, 1.59-1.60 s with native Conv and matmul ConvT. conv28's step:
  # 17.3 -> 18.3 steps/s with Conv2x (README, "Performance"). So on CPU every
  # 4x4 stride-2 layer takes the matmul form.
  return "matmul" if platform == "cpu" else "native"


def _conv(conv_impl: str, features: int, *, name: str, use_bias: bool = True,
          dtype: Any = jnp.float32) -> nn.Module:
  """nn.Conv(features, (4, 4), (2, 2), "SAME") in the form `conv_impl` names."""
  if conv_impl.startswith("matmul"):
    return Conv2x(features, use_bias=use_bias, dtype=dtype, name=name,
                  bfloat16_operands=conv_impl == "matmul_bf16")
  return nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME", use_bias=use_bias,
                 dtype=dtype, name=name)


def _conv_transpose(conv_impl: str, features: int, *, name: str, use_bias: bool = True,
                    dtype: Any = jnp.float32) -> nn.Module:
  """nn.ConvTranspose(features, (4, 4), (2, 2), "SAME") in the form `conv_impl` names."""
  if conv_impl.startswith("matmul"):
    return ConvTranspose2x(features, use_bias=use_bias, dtype=dtype, name=name,
                           bfloat16_operands=conv_impl == "matmul_bf16")
  return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", use_bias=use_bias,
                          dtype=dtype, name=name)


class Conv28Generator(nn.Module):
  """z -> Dense 1024 -> Dense 7*7*128 -> ConvT 64 (14x14) -> ConvT C (28x28), tanh."""

  image_shape: tuple[int, int, int] = (28, 28, 1)
  dtype: Any = jnp.float32
  conv_impl: str = "native"  # one of CONV_IMPLS

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype)
    x = nn.relu(_batch_norm(train, self.dtype)(dense(1024)(z)))
    x = nn.relu(_batch_norm(train, self.dtype)(dense(7 * 7 * 128)(x)))
    x = x.reshape(-1, 7, 7, 128)
    # The names of the first checkpoints (the matmul layer's auto-name, then
    # the flax layer's), kept in both forms so that those checkpoints restore.
    x = _conv_transpose(self.conv_impl, 64, use_bias=False, dtype=self.dtype,
                        name="ConvTranspose2x_0")(x)
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = _conv_transpose(self.conv_impl, self.image_shape[-1], dtype=self.dtype,
                        name="ConvTranspose_0")(x)
    return jnp.tanh(x).astype(jnp.float32)


def _logit(embedding: jax.Array, dtype: Any, name: str | None = "Logit"
           ) -> tuple[jax.Array, jax.Array]:
  """The GAN baseline's head on an encoder: one logit per image from the embedding S,
  (N,), in place of the decoder; S is returned beside it, as the decoders do. (name
  None: flax's own "Dense_N", the mlp D's name in its first checkpoints.)"""
  logit = nn.Dense(1, dtype=dtype, name=name)(embedding)[:, 0]
  return logit.astype(jnp.float32), embedding.astype(jnp.float32)


class Conv28Discriminator(nn.Module):
  """Conv 64 (14x14) -> Dense embedding_dim (= S) -> Dense 14*14*64 -> ConvT C, tanh.

  With head "logit" (the GAN baseline's D): Conv 64 -> Dense embedding_dim ->
  leaky ReLU -> Dense 1, the encoder ending in one logit.
  """

  image_shape: tuple[int, int, int] = (28, 28, 1)
  embedding_dim: int = 32
  head: str = "reconstruction"
  dtype: Any = jnp.float32
  conv_impl: str = "native"  # one of CONV_IMPLS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    h = nn.relu(_conv(self.conv_impl, 64, dtype=self.dtype, name="Conv_0")(x))
    embedding = nn.Dense(self.embedding_dim, dtype=self.dtype)(h.reshape(h.shape[0], -1))
    if self.head == "logit":
      # A non-linearity between the two Dense layers, or they would be one linear map.
      return _logit(nn.leaky_relu(embedding, 0.2), self.dtype)
    h = nn.Dense(14 * 14 * 64, use_bias=False, dtype=self.dtype)(embedding)
    h = nn.relu(_batch_norm(train, self.dtype)(h)).reshape(-1, 14, 14, 64)
    h = _conv_transpose(self.conv_impl, self.image_shape[-1], dtype=self.dtype,
                        name="ConvTranspose_0")(h)
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
  training (0 disables it). With head "logit" (the GAN baseline's D) the last
  layer is Dense 1 instead of the decoder, and the first output is one logit
  per image, shape (N,).
  """

  image_shape: tuple[int, int, int] = (28, 28, 1)
  n_layer_d: int = 2
  size_d: int = 1024
  dropout_d: float = 0.0
  head: str = "reconstruction"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    h = x.reshape(x.shape[0], -1)
    for _ in range(self.n_layer_d - 1):
      h = nn.Dropout(self.dropout_d, deterministic=not train)(h)
      h = nn.relu(nn.Dense(self.size_d, dtype=self.dtype)(h))
    if self.head == "logit":
      return _logit(h, self.dtype, name=None)
    reconstruction = jnp.tanh(nn.Dense(math.prod(self.image_shape), dtype=self.dtype)(h))
    return reconstruction.astype(jnp.float32).reshape(x.shape), h.astype(jnp.float32)


class DCGANGenerator(nn.Module):
  """The paper's high-resolution G, after Radford et al.'s DCGAN.

  z -> Dense 4*4*widths[0] (a 4x4 ConvT of a 1x1 map) -> BN, ReLU -> one
  ConvT 4c2s per further width, each with BN, ReLU -> the output layer, tanh:
  a ConvT 4c2s to C channels ("conv64"), or with `output_conv3` a 3x3
  stride-1 Conv to C ("conv128", the paper's (3)3c). BatchNorm is per channel.

  Left out: noise planes fed into every layer of the ImageNet G, as the
  paper is reported to do. Its text could not be checked on that point, so
  "conv128" takes z at its input only, like "conv64".
  """

  image_shape: tuple[int, int, int] = (64, 64, 3)
  widths: tuple[int, ...] = (512, 256, 128, 64)
  output_conv3: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = "native"  # one of CONV_IMPLS

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(4 * 4 * self.widths[0], use_bias=False, dtype=self.dtype)(z)
    x = nn.relu(_batch_norm(train, self.dtype)(x.reshape(-1, 4, 4, self.widths[0])))
    for i, width in enumerate(self.widths[1:]):
      x = _conv_transpose(self.conv_impl, width, use_bias=False, dtype=self.dtype,
                          name=f"ConvTranspose_{i}")(x)
      x = nn.relu(_batch_norm(train, self.dtype)(x))
    channels = self.image_shape[-1]
    if self.output_conv3:
      # Stride 1 and no input dilation, neither of the XLA:CPU cases that the
      # matmul forms avoid, so flax's Conv in both forms (its value_and_grad
      # at batch 64 takes 0.7 s on the 2-core CPU, bound by memory, not FLOPs).
      x = nn.Conv(channels, (3, 3), padding="SAME", dtype=self.dtype, name="Conv_0")(x)
    else:
      x = _conv_transpose(self.conv_impl, channels, dtype=self.dtype,
                          name=f"ConvTranspose_{len(self.widths) - 1}")(x)
    return jnp.tanh(x).astype(jnp.float32)


class ConvAutoEncoder(nn.Module):
  """The paper's high-resolution D: a convolutional auto-encoder.

  Encoder: one Conv 4c2s per `encoder_widths` entry with leaky ReLU (0.2),
  BatchNorm on all but the first; its output, flattened, is the embedding S.
  Decoder: the mirror, one ConvT 4c2s per encoder width but the last, in
  reverse, each with BN and ReLU, then a ConvT 4c2s to C channels and tanh,
  so that reconstructions lie in [-1, 1] like the images.
  With head "logit", Dense 1 on S replaces the decoder: Radford et al.'s DCGAN
  discriminator (their last 4x4 convolution to one channel is a Dense on S),
  the paper's baseline beside EBGAN-PT.
  """

  image_shape: tuple[int, int, int] = (64, 64, 3)
  encoder_widths: tuple[int, ...] = (64, 128, 256)
  head: str = "reconstruction"
  dtype: Any = jnp.float32
  conv_impl: str = "native"  # one of CONV_IMPLS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    h = x
    for i, width in enumerate(self.encoder_widths):
      h = _conv(self.conv_impl, width, use_bias=i == 0, dtype=self.dtype, name=f"Conv_{i}")(h)
      if i > 0:
        h = _batch_norm(train, self.dtype)(h)
      h = nn.leaky_relu(h, 0.2)
    embedding = h.reshape(h.shape[0], -1)
    if self.head == "logit":
      return _logit(embedding, self.dtype)
    for i, width in enumerate(reversed(self.encoder_widths[:-1])):
      h = _conv_transpose(self.conv_impl, width, use_bias=False, dtype=self.dtype,
                          name=f"ConvTranspose_{i}")(h)
      h = nn.relu(_batch_norm(train, self.dtype)(h))
    h = _conv_transpose(self.conv_impl, self.image_shape[-1], dtype=self.dtype,
                        name=f"ConvTranspose_{len(self.encoder_widths) - 1}")(h)
    return jnp.tanh(h).astype(jnp.float32), embedding.astype(jnp.float32)


def _check_image_size(family: str, image_shape, size: int) -> None:
  if tuple(image_shape[:2]) != (size, size):
    raise ValueError(
        f"model family {family!r} needs {size}x{size} images, got image_shape {image_shape}")


def _conv28(image_shape, dtype, conv_impl, embedding_dim=32, head="reconstruction"
            ) -> tuple[nn.Module, nn.Module]:
  _check_image_size("conv28", image_shape, 28)
  return (Conv28Generator(image_shape, dtype=dtype, conv_impl=conv_impl),
          Conv28Discriminator(image_shape, embedding_dim, head, dtype=dtype, conv_impl=conv_impl))


def _check_widths(family: str, g_width: int, d_width: int, halvings: int) -> None:
  if g_width < 2**halvings or g_width % 2**halvings or d_width < 1:
    raise ValueError(
        f"model family {family!r} needs g_width a positive multiple of {2**halvings} (G halves "
        f"it {halvings} times) and d_width >= 1, got g_width {g_width} and d_width {d_width}")


def _conv64(image_shape, dtype, conv_impl, g_width=512, d_width=64, head="reconstruction"):
  """The paper's 64x64 nets; g_width: channels of G's 4x4 map, d_width: of D's first conv."""
  _check_image_size("conv64", image_shape, 64)
  _check_widths("conv64", g_width, d_width, 3)
  g_widths = tuple(g_width // 2**i for i in range(4))  # 4x4 ... 32x32, then ConvT to 64x64
  encoder_widths = tuple(d_width * 2**i for i in range(3))  # 32x32, 16x16, 8x8
  return (DCGANGenerator(image_shape, g_widths, dtype=dtype, conv_impl=conv_impl),
          ConvAutoEncoder(image_shape, encoder_widths, head, dtype=dtype, conv_impl=conv_impl))


def _conv128(image_shape, dtype, conv_impl, g_width=1024, d_width=64, head="reconstruction"):
  """The paper's 128x128 ImageNet nets; g_width and d_width as for conv64."""
  _check_image_size("conv128", image_shape, 128)
  _check_widths("conv128", g_width, d_width, 4)
  # (1024)4c-(512)4c2s-(256)4c2s-(128)4c2s-(64)4c2s-(64)4c2s, then (3)3c at 128x128.
  g_widths = (*(g_width // 2**i for i in range(5)), g_width // 16)
  encoder_widths = tuple(d_width * 2**i for i in range(4))  # 64x64 ... 8x8
  return (DCGANGenerator(image_shape, g_widths, output_conv3=True, dtype=dtype,
                         conv_impl=conv_impl),
          ConvAutoEncoder(image_shape, encoder_widths, head, dtype=dtype, conv_impl=conv_impl))


def _mlp(image_shape, dtype, conv_impl, n_layer_g=5, size_g=1600, n_layer_d=2, size_d=1024,
         dropout_d=0.0, head="reconstruction"):
  del conv_impl  # no convolutions
  if n_layer_g < 1 or n_layer_d < 2:
    raise ValueError(
        f"model family 'mlp' needs n_layer_g >= 1 and n_layer_d >= 2 (encoder + decoder), "
        f"got {n_layer_g} and {n_layer_d}")
  if not 0.0 <= dropout_d < 1.0:
    raise ValueError(f"dropout_d is a rate in [0, 1), got {dropout_d}")
  return (MLPGenerator(image_shape, n_layer_g, size_g, dtype=dtype),
          MLPDiscriminator(image_shape, n_layer_d, size_d, dropout_d, head, dtype=dtype))


def _ladder(image_shape, dtype, conv_impl, n_layer_g=5, size_g=1600,
            widths_d=ladder.LADDER_WIDTHS, num_classes=10, noise_std=0.3):
  """EBGAN-LN's nets (semi_supervised.py): the mlp G, a ladder network as D."""
  del conv_impl  # no convolutions
  if n_layer_g < 1 or not widths_d or min(widths_d) < 1 or num_classes < 2 or noise_std < 0:
    raise ValueError(
        f"model family 'ladder' needs n_layer_g >= 1, widths_d of positive widths, "
        f"num_classes >= 2 and noise_std >= 0, got {n_layer_g}, {widths_d}, {num_classes} "
        f"and {noise_std}")
  return (MLPGenerator(image_shape, n_layer_g, size_g, dtype=dtype),
          ladder.LadderNetwork(image_shape, tuple(widths_d), num_classes, noise_std,
                               dtype=dtype))


FAMILIES: dict[str, Callable[..., tuple[nn.Module, nn.Module]]] = {
    "conv28": _conv28,
    "mlp": _mlp,
    "conv64": _conv64,
    "conv128": _conv128,
    "ladder": _ladder,
}
# What each family's D can output first (objectives.py, `d_head`): every D is an
# auto-encoder, and every encoder but the ladder network's can end in one logit instead
# (the GAN baseline's D).
D_HEADS = {**{family: ("reconstruction", "logit") for family in FAMILIES},
           "ladder": ("reconstruction",)}


def _bfloat16_conv_impl(family: str, compute_dtype: str, conv_impl: str) -> str:
  """The conv_impl of matmul_operands "bfloat16", or why it does not apply."""
  if family not in ("conv28", "conv64", "conv128"):
    raise ValueError(f"matmul_operands 'bfloat16' is for the conv families' matmul layers; "
                     f"model family {family!r} has none")
  if compute_dtype != "float32":
    raise ValueError("matmul_operands 'bfloat16' needs compute_dtype 'float32' (with "
                     "'bfloat16' every layer already multiplies in bfloat16)")
  if conv_impl not in ("matmul", "matmul_bf16"):
    raise ValueError(f"matmul_operands 'bfloat16' is for the matmul conv forms of XLA:CPU, "
                     f"not conv_impl {conv_impl!r}; on GPU / TPU use compute_dtype 'bfloat16'")
  return "matmul_bf16"


def build_models(model_config, image_shape, compute_dtype: str = "float32",
                 conv_impl: str | None = None, d_head: str = "reconstruction",
                 matmul_operands: str = "float32") -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) for `model_config.family`.

  Args:
    model_config: a mapping with `family` (a key of FAMILIES) and that
      family's own fields, e.g. {"family": "mlp", "n_layer_g": 5, ...}.
    image_shape: (H, W, C) of the images the nets generate and reconstruct.
    compute_dtype: one of COMPUTE_DTYPES, the dtype the layers compute in.
    conv_impl: one of CONV_IMPLS; None (the default) takes
      `conv_impl_for(jax.default_backend())`. Either gives the same parameters.
    d_head: D's first output, one of `D_HEADS[family]`: "reconstruction" or,
      for every family but the ladder, "logit" (the GAN objective's D).
    matmul_operands: one of MATMUL_OPERANDS. "bfloat16" multiplies bfloat16
      operands into float32 sums in the 4x4 stride-2 layers' matmul forms
      (conv_impl "matmul_bf16"): faster on CPUs with AVX512_BF16, rounded
      differently from float32. Only for the conv families, compute_dtype
      float32 and the matmul forms (XLA:CPU's); parameters do not change.
  """
  fields = dict(model_config)
  family = fields.pop("family", None)
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
  conv_impl = conv_impl_for(jax.default_backend()) if conv_impl is None else conv_impl
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
  if matmul_operands not in MATMUL_OPERANDS:
    raise ValueError(f"matmul_operands must be one of {MATMUL_OPERANDS}, "
                     f"got {matmul_operands!r}")
  if matmul_operands == "bfloat16" or conv_impl == "matmul_bf16":
    conv_impl = _bfloat16_conv_impl(family, compute_dtype, conv_impl)
  if "head" in fields:
    raise ValueError("D's head follows config.objective (objectives.py); drop model.head")
  if d_head not in D_HEADS[family]:
    raise ValueError(f"model family {family!r} has no D with a {d_head!r} output; "
                     f"it offers {', '.join(D_HEADS[family])}")
  if d_head != "reconstruction":
    fields["head"] = d_head
  try:
    return FAMILIES[family](tuple(image_shape), jnp.dtype(compute_dtype), conv_impl, **fields)
  except TypeError as e:
    raise ValueError(f"bad fields for model family {family!r}: {e}") from None
