"""Reference architectures: the contract of every family, the registry, the matmul convolutions."""

import dataclasses
import functools
import math
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
  return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


def _key(seed: int) -> jax.Array:
  """A PRNG key of XLA's RngBitGenerator, for speed.

  It compiles several times faster on CPU than threefry, whose compilation in
  the nets' initialisers dominated these tests' time; the tests need no
  particular random numbers.
  """
  return jax.random.key(seed, impl="rbg")


def _init(model_config, image_shape=(28, 28, 1), z_dim=64):
  generator, discriminator = models.build_models(model_config, image_shape)
  init = lambda module, key, x: jax.jit(functools.partial(module.init, train=False))(key, x)
  g_vars = init(generator, _key(0), jnp.zeros((2, z_dim)))
  d_vars = init(discriminator, _key(1), jnp.zeros((2, *image_shape)))
  return generator, discriminator, g_vars, d_vars


# --- The contract of every family --------------------------------------------
#
# Every family registered in models.FAMILIES is held to the contract that the
# step (ebgan_jax/train.py) relies on, with a small configuration of its own
# from CONTRACT_CONFIGS: its fields (small widths, a non-zero rate for every
# dropout field) and the image shape it needs. A family without an entry fails
# every contract test, so that registering one cannot skip them.

CONTRACT_CONFIGS = {
    "conv28": ({"embedding_dim": 8}, (28, 28, 1)),
    "mlp": ({"n_layer_g": 3, "size_g": 32, "n_layer_d": 3, "size_d": 16, "dropout_d": 0.5},
            (28, 28, 1)),
    "conv64": ({"g_width": 16, "d_width": 4}, (64, 64, 3)),
    "conv128": ({"g_width": 16, "d_width": 4}, (128, 128, 3)),
    "ladder": ({"n_layer_g": 3, "size_g": 32, "widths_d": (16, 8), "noise_std": 0.3},
               (28, 28, 1)),
}
# Ds whose reconstruction is not bounded to the images' [-1, 1]: the ladder network's
# linear combinator (Rasmus et al.) has no tanh.
UNBOUNDED_RECONSTRUCTION = ("ladder",)
CONTRACT_BATCH = 3  # > 1, so that BatchNorm has batch statistics
CONTRACT_Z_DIM = 8
FAMILY_NAMES = sorted(models.FAMILIES)
NETS = ("generator", "discriminator")


@dataclasses.dataclass(frozen=True)
class _Net:
  """One initialised net of a family, and an input batch for it."""

  module: nn.Module
  variables: dict
  inputs: jax.Array

  def apply(self, train: bool, dropout_seed: int = 0):
    """(outputs, batch_stats after the call) in train or eval mode."""
    outputs, updates = self._jitted_apply(self.variables, self.inputs, _key(dropout_seed),
                                          train)
    return outputs, updates.get("batch_stats", {})

  @functools.cached_property
  def _jitted_apply(self):
    # Compiled once per mode: op-by-op dispatch of the big families' layers is far slower.
    def apply(variables, inputs, dropout_key, train):
      return self.module.apply(variables, inputs, train=train, mutable=["batch_stats"],
                               rngs={"dropout": dropout_key})
    return jax.jit(apply, static_argnums=3)

  @property
  def batch_stats(self) -> dict:
    return self.variables.get("batch_stats", {})

  def dropout_rates(self) -> dict[str, float]:
    """The module's training-only randomness: dropout rates and noise levels (the ladder's)."""
    return {field.name: getattr(self.module, field.name)
            for field in dataclasses.fields(self.module)
            if "dropout" in field.name or "noise" in field.name}


def _contract_config(family: str):
  if family not in CONTRACT_CONFIGS:
    pytest.fail(f"add a small config for family {family} to the contract tests "
                f"(CONTRACT_CONFIGS in tests/test_models.py)")
  fields, image_shape = CONTRACT_CONFIGS[family]
  return {"family": family, **fields}, image_shape


@functools.cache
def _contract_nets(family: str) -> dict[str, _Net]:
  """The family's generator and discriminator, initialised as state.create_state does."""
  model_config, image_shape = _contract_config(family)
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.uniform(-1.0, 1.0, (CONTRACT_BATCH, CONTRACT_Z_DIM)), jnp.float32)
  images = jnp.asarray(rng.uniform(-1.0, 1.0, (CONTRACT_BATCH, *image_shape)), jnp.float32)
  generator, discriminator, g_vars, d_vars = _init(model_config, image_shape, CONTRACT_Z_DIM)
  return {"generator": _Net(generator, g_vars, z),
          "discriminator": _Net(discriminator, d_vars, images)}


def _assert_images(x, shape, what):
  assert x.shape == shape, f"{what}: shape {x.shape}, expected {shape}"
  assert x.dtype == jnp.float32, f"{what}: dtype {x.dtype}, expected float32"
  assert bool(jnp.all(jnp.abs(x) <= 1.0)), f"{what}: values outside [-1, 1]"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_has_a_contract_config(family):
  model_config, image_shape = _contract_config(family)
  assert len(image_shape) == 3, f"the contract image_shape of {family} must be (H, W, C)"
  models.build_models(model_config, image_shape)  # the config is one the family accepts


def test_contract_configs_name_registered_families():
  stale = sorted(set(CONTRACT_CONFIGS) - set(models.FAMILIES))
  assert not stale, f"CONTRACT_CONFIGS has entries for unregistered families {stale}"


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_generator_makes_images_in_range(family, train):
  _, image_shape = _contract_config(family)
  images, _ = _contract_nets(family)["generator"].apply(train)
  _assert_images(images, (CONTRACT_BATCH, *image_shape), f"{family} generator")


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_discriminator_returns_reconstruction_and_embedding(family, train):
  net = _contract_nets(family)["discriminator"]
  outputs, _ = net.apply(train)
  assert isinstance(outputs, tuple) and len(outputs) == 2, \
      f"{family} discriminator must return (reconstruction, embedding)"
  reconstruction, embedding = outputs
  if family in UNBOUNDED_RECONSTRUCTION:
    assert reconstruction.shape == net.inputs.shape and reconstruction.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(reconstruction)))
  else:
    _assert_images(reconstruction, net.inputs.shape, f"{family} reconstruction")
  assert embedding.ndim == 2 and embedding.shape[0] == CONTRACT_BATCH, \
      f"{family} embedding: shape {embedding.shape}, expected ({CONTRACT_BATCH}, d)"
  assert embedding.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(embedding)))


@pytest.mark.parametrize("net_name", NETS)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_batch_stats_advance_in_training_only(family, net_name):
  net = _contract_nets(family)[net_name]
  _, eval_stats = net.apply(train=False)
  _, train_stats = net.apply(train=True)
  if not net.batch_stats:  # no BatchNorm in this net: nothing may appear either
    assert not train_stats and not eval_stats
    return
  unchanged = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), net.batch_stats, eval_stats)
  assert all(jax.tree.leaves(unchanged)), f"{family} {net_name}: train=False changed batch_stats"
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), net.batch_stats, train_stats)
  assert all(jax.tree.leaves(changed)), \
      f"{family} {net_name}: train=True left some batch_stats as they were: {changed}"
  # Batch statistics in training, running averages (mean 0, variance 1 at init) in eval.
  train_out, _ = net.apply(train=True)
  eval_out, _ = net.apply(train=False)
  assert any(not jnp.allclose(a, b)
             for a, b in zip(jax.tree.leaves(train_out), jax.tree.leaves(eval_out)))


@pytest.mark.parametrize("net_name", NETS)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_eval_mode_is_deterministic(family, net_name):
  net = _contract_nets(family)[net_name]
  first, _ = net.apply(train=False, dropout_seed=0)
  second, _ = net.apply(train=False, dropout_seed=1)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("net_name", NETS)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_dropout_is_keyed_and_training_only(family, net_name):
  """With dropout, train=True depends on the dropout key (and only on it); without, on neither."""
  net = _contract_nets(family)[net_name]
  rates = net.dropout_rates()
  if rates:
    assert any(rate > 0 for rate in rates.values()), \
        f"give the contract config of {family} a non-zero {net_name} dropout rate: {rates}"
  first, _ = net.apply(train=True, dropout_seed=0)
  again, _ = net.apply(train=True, dropout_seed=0)
  other, _ = net.apply(train=True, dropout_seed=1)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  same_for_other_key = all(bool(jnp.array_equal(a, b))
                           for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other)))
  if rates:
    assert not same_for_other_key, f"{family} {net_name}: dropout ignores its key"
  else:
    assert same_for_other_key, f"{family} {net_name} has no dropout field but uses the key"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_outputs_stay_float32_when_computing_in_bfloat16(family):
  model_config, image_shape = _contract_config(family)
  generator, discriminator = models.build_models(model_config, image_shape, "bfloat16")
  nets = _contract_nets(family)

  def forward(g_vars, d_vars, z):
    images = generator.apply(g_vars, z, train=False)
    return (images, *discriminator.apply(d_vars, images, train=False))

  # Shapes and dtypes only: traced, not compiled.
  images, reconstruction, embedding = jax.eval_shape(
      forward, nets["generator"].variables, nets["discriminator"].variables,
      nets["generator"].inputs)
  assert images.dtype == reconstruction.dtype == embedding.dtype == jnp.float32
  assert images.shape == reconstruction.shape == (CONTRACT_BATCH, *image_shape)


# --- Family-specific variants ------------------------------------------------


@pytest.mark.parametrize("model_config, image_shape", [
    ({"family": "conv28", "embedding_dim": 8}, (28, 28, 3)),
    ({"family": "mlp", "n_layer_g": 3, "size_g": 32, "n_layer_d": 3, "size_d": 16}, (28, 28, 1)),
    ({"family": "mlp", "n_layer_g": 1, "size_g": 32, "n_layer_d": 2, "size_d": 16}, (8, 6, 2)),
])
def test_variant_shapes_and_embedding_sizes(model_config, image_shape):
  """Beyond the contract configs: other channel counts and image shapes, the embedding's size."""
  generator, discriminator, g_vars, d_vars = _init(model_config, image_shape, z_dim=10)
  z = jax.random.uniform(_key(2), (5, 10), minval=-1, maxval=1)
  images = jax.jit(functools.partial(generator.apply, train=False))(g_vars, z)
  assert images.shape == (5, *image_shape)
  assert jnp.all(jnp.abs(images) <= 1.0)

  reconstruction, embedding = jax.jit(functools.partial(discriminator.apply, train=False))(
      d_vars, images)
  assert reconstruction.shape == images.shape
  assert jnp.all(jnp.abs(reconstruction) <= 1.0)
  expected_dim = model_config.get("embedding_dim", 32) if model_config["family"] == "conv28" \
      else model_config["size_d"]
  assert embedding.shape == (5, expected_dim)


# The configurations whose parameter counts models.py's docstring gives:
# (fields, image_shape, z_dim).
DOCUMENTED_COUNTS = {
    "conv28": ({"family": "conv28"}, (28, 28, 1), 64),
    "mlp": (MLP_PAPER_BEST, (28, 28, 1), 64),
    "conv64": ({"family": "conv64"}, (64, 64, 3), 100),
    "conv128": ({"family": "conv128"}, (128, 128, 3), 100),
    "ladder": ({"family": "ladder"}, (28, 28, 1), 64),
}


@pytest.mark.parametrize("family", sorted(DOCUMENTED_COUNTS))
def test_documented_parameter_counts(family):
  """The counts in models.py's docstring are the real ones."""
  if family not in models.FAMILIES:
    pytest.skip(f"family {family} is not registered")
  model_config, image_shape, z_dim = DOCUMENTED_COUNTS[family]
  generator, discriminator = models.build_models(model_config, image_shape)
  # Shapes only: jax.eval_shape traces the initialisers without running them.
  g_vars = jax.eval_shape(functools.partial(generator.init, train=False), _key(0),
                          jnp.zeros((2, z_dim)))
  d_vars = jax.eval_shape(functools.partial(discriminator.init, train=False), _key(1),
                          jnp.zeros((2, *image_shape)))
  line = re.search(rf'"{family}"\s+G ([\d,]+)\s+D ([\d,]+)', models.__doc__)
  assert line, f"no parameter count line for {family}"
  assert _param_count(g_vars) == int(line.group(1).replace(",", ""))
  assert _param_count(d_vars) == int(line.group(2).replace(",", ""))


def test_build_models_accepts_config_dict():
  generator, discriminator = models.build_models(
      ml_collections.ConfigDict({"family": "conv28", "embedding_dim": 16}), (28, 28, 1))
  assert isinstance(generator, models.Conv28Generator)
  assert discriminator.embedding_dim == 16


@pytest.mark.parametrize("model_config, image_shape, message", [
    ({"family": "resnet"}, (28, 28, 1),
     f"unknown model family 'resnet'; known families: {', '.join(models.FAMILIES)}"),
    ({}, (28, 28, 1), "unknown model family None"),
    ({"family": "conv28", "width": 3}, (28, 28, 1), "bad fields for model family 'conv28'"),
    ({"family": "conv28"}, (32, 32, 3), "needs 28x28 images"),
    ({"family": "mlp", "n_layer_d": 1}, (28, 28, 1), "n_layer_d >= 2"),
    ({"family": "mlp", "dropout_d": 1.0}, (28, 28, 1), "dropout_d is a rate"),
    ({"family": "conv64"}, (28, 28, 1), "'conv64' needs 64x64 images, got image_shape (28, 28, 1)"),
    ({"family": "conv128"}, (64, 64, 3), "'conv128' needs 128x128 images"),
    ({"family": "conv64", "g_width": 100}, (64, 64, 3), "g_width a positive multiple of 8"),
    ({"family": "conv128", "g_width": 8}, (128, 128, 3), "g_width a positive multiple of 16"),
    ({"family": "conv64", "d_width": 0}, (64, 64, 3), "d_width >= 1"),
    ({"family": "conv64", "embedding_dim": 8}, (64, 64, 3), "bad fields for model family 'conv64'"),
])
def test_bad_model_config_is_a_clear_error(model_config, image_shape, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    models.build_models(model_config, image_shape)


def test_mlp_logit_head_is_the_decoder_swapped_for_one_logit():
  """The GAN baseline's D: the same encoder (same parameters), Dense 1 in place of the decoder."""
  model_config = {"family": "mlp", "n_layer_g": 2, "size_g": 32, "n_layer_d": 3, "size_d": 16,
                  "dropout_d": 0.0}
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 28, 28, 1)), jnp.float32)
  heads = {}
  for head in ("reconstruction", "logit"):
    _, discriminator = models.build_models(model_config, (28, 28, 1), d_head=head)
    variables = discriminator.init(_key(1), images, train=False)
    heads[head] = (variables["params"], discriminator.apply(variables, images, train=False))
  (rec_params, (rec, rec_embedding)), (logit_params, (logit, logit_embedding)) = (
      heads["reconstruction"], heads["logit"])
  assert rec.shape == images.shape and logit.shape == (4,)
  assert logit.dtype == jnp.float32 and not np.allclose(logit, logit[0])
  # Encoder layers alike (same keys, same init), the last layer 16 -> 1 instead of 16 -> 784.
  for name in ("Dense_0", "Dense_1"):
    np.testing.assert_array_equal(rec_params[name]["kernel"], logit_params[name]["kernel"])
  assert rec_params["Dense_2"]["kernel"].shape == (16, 784)
  assert logit_params["Dense_2"]["kernel"].shape == (16, 1)
  np.testing.assert_array_equal(rec_embedding, logit_embedding)


def test_a_family_without_a_logit_head_says_so():
  # The conv families' logit heads: tests/test_objective_family.py.
  model_config, image_shape = _contract_config("ladder")
  with pytest.raises(ValueError, match="model family 'ladder' has no D with a 'logit' output"):
    models.build_models(model_config, image_shape, d_head="logit")


def test_the_head_follows_the_objective_not_a_model_field():
  with pytest.raises(ValueError, match="drop model.head"):
    models.build_models({"family": "mlp", "head": "logit"}, (28, 28, 1))


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
