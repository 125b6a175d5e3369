"""The paper's high-resolution families (conv64, conv128) and the native / matmul convolutions."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import models, state as state_lib, train
from tests import multidevice

# Small widths: the layer structure of the paper's nets at a fraction of the work.
SMALL = {
    "conv64": ({"family": "conv64", "g_width": 16, "d_width": 4}, (64, 64, 3)),
    "conv128": ({"family": "conv128", "g_width": 32, "d_width": 2}, (128, 128, 3)),
}
Z_DIM = 8


def _shapes(generator, discriminator, image_shape, z_dim=Z_DIM):
  """Both nets' variables as shapes (names and shapes, no values)."""
  return (jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), jnp.zeros((2, z_dim)),
                                                train=False)),
          jax.eval_shape(lambda: discriminator.init(jax.random.PRNGKey(1),
                                                    jnp.zeros((2, *image_shape)), train=False)))


def _random_variables(shapes, seed=0):
  """Variables of `shapes` drawn by numpy: kernels at LeCun scale, the rest near BN's identity.

  Not `init`: XLA:CPU takes about a second to compile each truncated-normal
  initialiser, and these tests only need some variables of the right shapes
  (random BatchNorm scales, biases and statistics, so that every one matters).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name:
      return rng.normal(0, np.prod(leaf.shape[:-1]) ** -0.5, leaf.shape).astype(np.float32)
    base = 1.0 if "scale" in name or "var" in name else 0.0
    return (base + 0.1 * np.abs(rng.normal(size=leaf.shape))).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _apply(net, variables, inputs, train_mode: bool):
  """(net's outputs, its new batch_stats), jitted: one compilation, not one per operation."""
  return jax.jit(lambda v, x: net.apply(v, x, train=train_mode, mutable=["batch_stats"]))(
      variables, inputs)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_shapes_and_ranges(family):
  model_config, image_shape = SMALL[family]
  generator, discriminator = models.build_models(model_config, image_shape)
  g_vars, d_vars = _random_variables(_shapes(generator, discriminator, image_shape))
  z = jax.random.uniform(jax.random.PRNGKey(3), (3, Z_DIM), minval=-1, maxval=1)
  for train_mode in (True, False):
    images, _ = _apply(generator, g_vars, z, train_mode)
    assert images.shape == (3, *image_shape) and images.dtype == jnp.float32
    assert jnp.all(jnp.abs(images) <= 1.0)
    (reconstruction, embedding), _ = _apply(discriminator, d_vars, images, train_mode)
    assert reconstruction.shape == images.shape and jnp.all(jnp.abs(reconstruction) <= 1.0)
    # S is the encoder output, flattened: 8x8, d_width * 4 (conv64) or * 8 (conv128) channels.
    encoder_channels = model_config["d_width"] * (4 if family == "conv64" else 8)
    assert embedding.shape == (3, 8 * 8 * encoder_channels)


@pytest.mark.parametrize("family, image_shape", [("conv64", (64, 64, 3)),
                                                 ("conv128", (128, 128, 3))])
def test_documented_parameter_counts(family, image_shape):
  """models.py's docstring counts: the paper's widths, RGB, z_dim 100."""
  generator, discriminator = models.build_models({"family": family}, image_shape)
  g_vars, d_vars = _shapes(generator, discriminator, image_shape, z_dim=100)
  line = re.search(rf'"{family}"\s+G ([\d,]+)\s+D ([\d,]+)', models.__doc__)
  assert line, f"no parameter count line for {family}"
  for variables, documented in [(g_vars, line.group(1)), (d_vars, line.group(2))]:
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == \
        int(documented.replace(",", ""))


def test_paper_layer_widths():
  """conv128 is the paper's (1024)4c-(512)...(64)4c2s-(64)4c2s-(3)3c G, (64)...(512) encoder."""
  generator, discriminator = models.build_models({"family": "conv128"}, (128, 128, 3))
  g_vars, d_vars = _shapes(generator, discriminator, (128, 128, 3), z_dim=100)
  g_kernels = [g_vars["params"][f"ConvTranspose_{i}"]["kernel"].shape[-1] for i in range(5)]
  assert g_vars["params"]["Dense_0"]["kernel"].shape == (100, 4 * 4 * 1024)
  assert g_kernels == [512, 256, 128, 64, 64]
  assert g_vars["params"]["Conv_0"]["kernel"].shape == (3, 3, 64, 3)
  assert [d_vars["params"][f"Conv_{i}"]["kernel"].shape[-1] for i in range(4)] == \
      [64, 128, 256, 512]
  assert [d_vars["params"][f"ConvTranspose_{i}"]["kernel"].shape[-1] for i in range(4)] == \
      [256, 128, 64, 3]
  # No bias where BatchNorm follows: only the first encoder conv and the output layers have one.
  with_bias = sorted(name for tree in (g_vars, d_vars) for name, layer in tree["params"].items()
                     if "bias" in layer and not name.startswith("BatchNorm"))
  assert with_bias == ["ConvTranspose_3", "Conv_0", "Conv_0"]


@pytest.mark.parametrize("family", ["conv64", "conv28"])
def test_native_and_matmul_forms_are_the_same_nets(family):
  """Same parameter tree (names and shapes) and outputs, BatchNorm in training."""
  model_config, image_shape = SMALL.get(family, ({"family": "conv28"}, (28, 28, 1)))
  native = models.build_models(model_config, image_shape, conv_impl="native")
  matmul = models.build_models(model_config, image_shape, conv_impl="matmul")
  shapes = _shapes(*native, image_shape)
  assert shapes == _shapes(*matmul, image_shape)

  g_vars, d_vars = _random_variables(shapes)
  z = jax.random.uniform(jax.random.PRNGKey(4), (4, Z_DIM), minval=-1, maxval=1)
  x = jax.random.uniform(jax.random.PRNGKey(5), (4, *image_shape), minval=-1, maxval=1)
  for net_native, net_matmul, variables, inputs in [(*native[:1], *matmul[:1], g_vars, z),
                                                    (*native[1:], *matmul[1:], d_vars, x)]:
    expected = _apply(net_native, variables, inputs, train_mode=True)
    actual = _apply(net_matmul, variables, inputs, train_mode=True)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
      np.testing.assert_allclose(a, b, atol=1e-5)

  def loss(net, variables):  # of the discriminator, whose gradient reaches every conv form
    (reconstruction, embedding), _ = net.apply(variables, x, train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(reconstruction)) + jnp.sum(jnp.sin(embedding))

  grad_native, grad_matmul = (jax.jit(jax.grad(functools.partial(loss, net)))(d_vars)
                              for net in (native[1], matmul[1]))
  for a, b in zip(jax.tree.leaves(grad_matmul), jax.tree.leaves(grad_native), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(np.max(np.abs(b)))))


@pytest.mark.parametrize("conv_impl", ["native", "matmul"])
def test_bfloat16_compute(conv_impl):
  """The layers compute in bfloat16 in either form; outputs stay float32 and close."""
  model_config, image_shape = SMALL["conv64"]
  nets = models.build_models(model_config, image_shape, "bfloat16", conv_impl=conv_impl)
  reference = models.build_models(model_config, image_shape, "float32", conv_impl=conv_impl)
  _, d_vars = _random_variables(_shapes(*nets, image_shape))
  x = jax.random.uniform(jax.random.PRNGKey(6), (3, *image_shape), minval=-1, maxval=1)
  jaxpr = str(jax.make_jaxpr(lambda x: nets[1].apply(d_vars, x, train=False))(x))
  assert "bf16" in jaxpr
  reconstruction, embedding = _apply(nets[1], d_vars, x, train_mode=False)[0]
  expected, _ = _apply(reference[1], d_vars, x, train_mode=False)[0]
  assert reconstruction.dtype == embedding.dtype == jnp.float32
  assert 0 < float(jnp.max(jnp.abs(reconstruction - expected))) < 0.1


def test_conv_impl_is_chosen_per_platform():
  assert models.conv_impl_for("cpu") == "matmul"
  assert models.conv_impl_for("gpu") == models.conv_impl_for("tpu") == "native"
  generator, discriminator = models.build_models(*SMALL["conv64"])
  assert generator.conv_impl == discriminator.conv_impl == \
      models.conv_impl_for(jax.default_backend())


def test_unknown_conv_impl_is_a_clear_error():
  message = f"conv_impl must be one of {models.CONV_IMPLS}, got 'fft'"
  with pytest.raises(ValueError, match=re.escape(message)):
    models.build_models(*SMALL["conv64"], conv_impl="fft")


def test_conv64_trains():
  """A few real steps of train.train_step on a tiny batch: finite metrics, parameters move."""
  config = multidevice.small_conv64_config()
  mesh = train.make_mesh()
  # Jitted: one compilation of both inits, faster than running them op by op. Replicated as
  # the step expects: a state off the mesh would compile the step a second time.
  state = train.replicate(
      jax.jit(functools.partial(state_lib.create_state, config))(jax.random.PRNGKey(0)), mesh)
  initial = np.asarray(state.generator.params["Dense_0"]["kernel"])
  step = train.make_train_step(config, mesh)
  batches = np.random.default_rng(0).uniform(-1, 1, (3, 4, 64, 64, 3)).astype(np.float32)
  for batch in batches:
    state, metrics = step(state, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert int(state.step) == 3
  assert not np.allclose(state.generator.params["Dense_0"]["kernel"], initial)
