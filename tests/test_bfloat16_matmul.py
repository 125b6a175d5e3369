"""matmul_operands "bfloat16": the conv layers' matmuls on bfloat16 operands with float32 sums.

Only the operands are rounded: forward and both gradient matmuls equal float32
matmuls of the bfloat16-rounded operands; parameters, activations, the losses
and Adam stay float32.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import models, state as state_lib, train
from experiments import trainer
from experiments.configs import mnist_conv, mnist_mlp


def _rounded(x):
  return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def test_forward_and_gradients_are_float32_matmuls_of_rounded_operands():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], (4, 5, 6, 48))
  w = jax.random.normal(keys[1], (48, 32))
  cotangent = jax.random.normal(keys[2], (4, 5, 6, 32))
  y, vjp = jax.vjp(models.bfloat16_matmul, x, w)
  dx, dw = vjp(cotangent)
  assert y.dtype == dx.dtype == dw.dtype == jnp.float32
  x16, w16, g16 = _rounded(x), _rounded(w), _rounded(cotangent)
  np.testing.assert_allclose(y, x16 @ w16, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dx, g16 @ w16.T, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dw, x16.reshape(-1, 48).T @ g16.reshape(-1, 32), rtol=1e-5,
                             atol=1e-3)
  # ... and within bfloat16's rounding of the float32 products.
  np.testing.assert_allclose(y, np.asarray(x, np.float64) @ np.asarray(w, np.float64),
                             rtol=0.05, atol=0.2)


def test_every_matmul_of_the_gradient_takes_bfloat16_operands():
  x, w = jnp.ones((64, 48)), jnp.ones((48, 32))
  loss = lambda x, w: jnp.sum(models.bfloat16_matmul(x, w) ** 2)
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).as_text()
  dots = [line for line in hlo.splitlines() if "dot_general" in line]
  assert len(dots) == 3, dots  # forward, input gradient, weight gradient
  for dot in dots:
    assert re.search(r"\(tensor<[\dx]+xbf16>, tensor<[\dx]+xbf16>\) -> tensor<[\dx]+xf32>",
                     dot), dot


def test_conv_nets_with_bfloat16_operands_keep_their_parameters_and_outputs():
  # conv64's nets hold both matmul forms (Conv2x in D's encoder, ConvTranspose2x elsewhere).
  model_config, image_shape = {"family": "conv64", "g_width": 32, "d_width": 8}, (64, 64, 3)
  nets = models.build_models(model_config, image_shape, conv_impl="matmul",
                             matmul_operands="bfloat16")
  reference = models.build_models(model_config, image_shape, conv_impl="matmul")
  assert nets[0].conv_impl == nets[1].conv_impl == "matmul_bf16"
  apply = lambda net: jax.jit(functools.partial(net.apply, train=False))
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 100))
  variables = jax.jit(functools.partial(reference[0].init, train=False))(jax.random.PRNGKey(1), z)
  assert jax.tree.structure(jax.eval_shape(
      functools.partial(nets[0].init, train=False), jax.random.PRNGKey(1), z)) == \
      jax.tree.structure(variables)
  images, rounded = apply(reference[0])(variables, z), apply(nets[0])(variables, z)
  assert rounded.dtype == jnp.float32
  np.testing.assert_allclose(rounded, images, atol=0.05)
  assert not np.array_equal(rounded, images)  # the operands were rounded
  d_variables = jax.jit(functools.partial(reference[1].init, train=False))(
      jax.random.PRNGKey(2), images)
  (reconstruction, _), (expected, _) = (apply(net)(d_variables, images)
                                        for net in (nets[1], reference[1]))
  np.testing.assert_allclose(reconstruction, expected, atol=0.05)
  assert not np.array_equal(reconstruction, expected)


def test_a_conv28_run_with_bfloat16_operands_trains_near_float32():
  losses = {}
  for operands in ("float32", "bfloat16"):
    config = mnist_conv.get_config()
    config.matmul_operands = operands
    trainer.validate_config(config)
    mesh = train.make_mesh()
    state = train.replicate(state_lib.create_state(config, jax.random.PRNGKey(0)), mesh)
    step = train.make_train_step(config, mesh)
    batch = np.random.default_rng(0).uniform(-1, 1, (16, 28, 28, 1)).astype(np.float32)
    for _ in range(3):
      state, metrics = step(state, train.global_batch(batch, mesh))
    losses[operands] = {k: float(v) for k, v in metrics.items() if k in ("d_loss", "g_loss")}
  for name, value in losses["float32"].items():
    assert np.isfinite(losses["bfloat16"][name])
    assert losses["bfloat16"][name] == pytest.approx(value, rel=0.05), losses


@pytest.mark.parametrize("config, change, message", [
    (mnist_conv.get_config, {"matmul_operands": "float16"}, "matmul_operands must be one of"),
    (mnist_mlp.get_config, {"matmul_operands": "bfloat16"}, "model family 'mlp' has none"),
    (mnist_conv.get_config, {"matmul_operands": "bfloat16", "compute_dtype": "bfloat16"},
     "needs compute_dtype 'float32'"),
])
def test_bad_matmul_operands_are_config_errors(config, change, message):
  config = config()
  config.update(change)
  with pytest.raises(trainer.ConfigError, match=message):
    trainer.validate_config(config)


def test_bfloat16_operands_are_not_for_the_native_layers_nor_bfloat16_layers():
  with pytest.raises(ValueError, match="use compute_dtype 'bfloat16'"):
    models.build_models({"family": "conv28"}, (28, 28, 1), conv_impl="native",
                        matmul_operands="bfloat16")
  with pytest.raises(ValueError, match="needs compute_dtype 'float32'"):
    models.build_models({"family": "conv28"}, (28, 28, 1), "bfloat16", conv_impl="matmul_bf16")
