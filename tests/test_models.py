"""Reference architectures: shapes, ranges, train/eval behaviour, the registry."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ebgan_jax import models

MLP_PAPER_BEST = {"family": "mlp", "n_layer_g": 5, "size_g": 1600,
                  "n_layer_d": 2, "size_d": 1024, "dropout_d": 0.0}


def _param_count(variables) -> int:
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def _init(model_config, image_shape=(28, 28, 1), z_dim=64):
  generator, discriminator = models.build_models(model_config, image_shape)
  g_vars = generator.init(jax.random.PRNGKey(0), jnp.zeros((2, z_dim)), train=False)
  d_vars = discriminator.init(jax.random.PRNGKey(1), jnp.zeros((2, *image_shape)), train=False)
  return generator, discriminator, g_vars, d_vars


@pytest.mark.parametrize("model_config, image_shape", [
    ({"family": "conv28"}, (28, 28, 1)),
    ({"family": "conv28", "embedding_dim": 8}, (28, 28, 3)),
    ({"family": "mlp", "n_layer_g": 3, "size_g": 32, "n_layer_d": 3, "size_d": 16}, (28, 28, 1)),
    ({"family": "mlp", "n_layer_g": 1, "size_g": 32, "n_layer_d": 2, "size_d": 16}, (8, 6, 2)),
])
def test_shapes_and_ranges(model_config, image_shape):
  generator, discriminator, g_vars, d_vars = _init(model_config, image_shape, z_dim=10)
  z = jax.random.uniform(jax.random.PRNGKey(2), (5, 10), minval=-1, maxval=1)
  images = generator.apply(g_vars, z, train=False)
  assert images.shape == (5, *image_shape)
  assert jnp.all(jnp.abs(images) <= 1.0)

  reconstruction, embedding = discriminator.apply(d_vars, images, train=False)
  assert reconstruction.shape == images.shape
  assert jnp.all(jnp.abs(reconstruction) <= 1.0)
  expected_dim = model_config.get("embedding_dim", 32) if model_config["family"] == "conv28" \
      else model_config["size_d"]
  assert embedding.shape == (5, expected_dim)


def test_documented_parameter_counts():
  """The counts in models.py's docstring are the real ones."""
  for family, model_config in [("conv28", {"family": "conv28"}), ("mlp", MLP_PAPER_BEST)]:
    _, _, g_vars, d_vars = _init(model_config)
    line = re.search(rf'"{family}"\s+G ([\d,]+)\s+D ([\d,]+)', models.__doc__)
    assert line, f"no parameter count line for {family}"
    assert _param_count(g_vars) == int(line.group(1).replace(",", ""))
    assert _param_count(d_vars) == int(line.group(2).replace(",", ""))


def test_batchnorm_uses_batch_statistics_only_in_training():
  generator, _, g_vars, _ = _init({"family": "conv28"})
  z = jax.random.uniform(jax.random.PRNGKey(3), (8, 64), minval=-1, maxval=1)
  train_out, updates = generator.apply(g_vars, z, train=True, mutable=["batch_stats"])
  eval_out = generator.apply(g_vars, z, train=False)
  assert not jnp.allclose(train_out, eval_out)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), g_vars["batch_stats"],
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))


def test_mlp_dropout_only_in_training():
  model_config = {"family": "mlp", "n_layer_g": 2, "size_g": 16, "n_layer_d": 3, "size_d": 16,
                  "dropout_d": 0.5}
  _, discriminator, _, d_vars = _init(model_config)
  x = jax.random.uniform(jax.random.PRNGKey(4), (4, 28, 28, 1), minval=-1, maxval=1)
  eval_a = discriminator.apply(d_vars, x, train=False)
  eval_b = discriminator.apply(d_vars, x, train=False)
  train_a = discriminator.apply(d_vars, x, train=True, rngs={"dropout": jax.random.PRNGKey(5)})
  train_b = discriminator.apply(d_vars, x, train=True, rngs={"dropout": jax.random.PRNGKey(6)})
  assert jnp.array_equal(eval_a[0], eval_b[0])
  assert not jnp.allclose(train_a[0], train_b[0])


def test_build_models_accepts_config_dict():
  generator, discriminator = models.build_models(
      ml_collections.ConfigDict({"family": "conv28", "embedding_dim": 16}), (28, 28, 1))
  assert isinstance(generator, models.Conv28Generator)
  assert discriminator.embedding_dim == 16


@pytest.mark.parametrize("model_config, image_shape, message", [
    ({"family": "resnet"}, (28, 28, 1),
     "unknown model family 'resnet'; known families: conv28, mlp"),
    ({}, (28, 28, 1), "unknown model family None"),
    ({"family": "conv28", "width": 3}, (28, 28, 1), "bad fields for model family 'conv28'"),
    ({"family": "conv28"}, (32, 32, 3), "needs 28x28 images"),
    ({"family": "mlp", "n_layer_d": 1}, (28, 28, 1), "n_layer_d >= 2"),
    ({"family": "mlp", "dropout_d": 1.0}, (28, 28, 1), "dropout_d is a rate"),
])
def test_bad_model_config_is_a_clear_error(model_config, image_shape, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    models.build_models(model_config, image_shape)


@pytest.mark.parametrize("shape, features", [((3, 7, 7, 5), 4), ((2, 5, 6, 3), 1)])
def test_conv_transpose_2x_equals_flax_conv_transpose(shape, features):
  reference = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  variables = reference.init(jax.random.PRNGKey(1), x)
  # A non-zero bias, so that it is checked too.
  variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.PRNGKey(2), v.shape),
                           variables)
  ours = models.ConvTranspose2x(features)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == \
      jax.tree.map(jnp.shape, variables)

  def loss(module, variables, x):
    return jnp.sum(jnp.sin(module.apply(variables, x)))

  expected = reference.apply(variables, x)
  assert ours.apply(variables, x).shape == (shape[0], 2 * shape[1], 2 * shape[2], features)
  np.testing.assert_allclose(ours.apply(variables, x), expected, atol=1e-5)
  grads_ref = jax.grad(loss, argnums=(1, 2))(reference, variables, x)
  grads_ours = jax.grad(loss, argnums=(1, 2))(ours, variables, x)
  for a, b in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(a, b, atol=1e-4)
