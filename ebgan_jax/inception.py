"""The FID Inception-v3 in Flax: 2048-d pool features and logits, from pytorch-fid's weights file.

FID, KID and IS are comparable with published numbers only under one
network: the Inception-v3 graph of TensorFlow's 2015-12-05 release that
TTUR's FID code (Heusel et al. 2017) and the IS code (Salimans et al. 2016)
load. pytorch-fid (Seitzer 2020) ported it to PyTorch as torchvision's
Inception3 with patched blocks (its FIDInceptionA / C / E_1 / E_2) and
published the weights as FID_WEIGHTS_FILE. This module is that network,
layer for layer and with the same parameter names:

- FIDInceptionA, C and the first E block average-pool their pool branch
  without counting the padded zeros (TensorFlow's average pool), the second E
  block max-pools it (a quirk of the TF graph, kept because the weights were
  trained with it); BatchNorm epsilon 1e-3; the 1008-way fc layer of the TF
  graph (1,000 ImageNet classes and 8 unused).
- `InceptionV3` maps (N, 299, 299, 3) images in [-1, 1] to the 2048-d
  average-pool features ("pool3", FID's), the logits and the logits without
  the fc bias; the Inception Score uses the latter, as the original IS code
  (its `pool3 @ W`, no bias) and torch-fidelity's `logits_unbiased` do.
- `to_inception_input` resizes as pytorch-fid does: bilinear,
  `F.interpolate(align_corners=False)` without antialiasing, to 299x299, as
  an explicit interpolation matrix per axis (exact torch semantics, also
  when shrinking); docs/inception.md has the study of the alternatives.

`read_torch_file` reads a `torch.save` file (the zip format of torch >= 1.6
and the legacy one before it) with `pickle` alone: no torch import, and only
the few classes a state dict needs can be unpickled. `load_variables` checks
the file's SHA-256 against FID_WEIGHTS_SHA256 and maps the state dict onto
this module's variables; `WeightsError` says where to get the file when it is
missing. Nothing is ever downloaded.

`save_reference` / `load_reference` keep the features of a real image set
(with their mean and covariance, pytorch-fid's `mu` / `sigma`) in an .npz, so
that scoring needs only the samples. The weights file and those .npz files
are this module's only file I/O.
"""

from __future__ import annotations

from collections.abc import Callable
import collections
import functools
import hashlib
import os
import pickle
import struct
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ebgan_jax import data

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_FILE)
# Its hash, of which the file name carries the first 8 digits (torch.hub's convention).
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
# The weights file when config.inception_weights is not set.
WEIGHTS_ENV = "EBGAN_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
# What `to_inception_input` does, as every result names it.
RESIZE = "bilinear, torch F.interpolate(align_corners=False), no antialiasing, to 299x299"


class WeightsError(ValueError):
  """The weights file is missing, unreadable, of another hash, or not the FID Inception's."""


# --- The network --------------------------------------------------------------------


class BasicConv2d(nn.Module):
  """Convolution without bias, BatchNorm (running statistics, epsilon 1e-3), ReLU."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, self.strides,
                padding=[(p, p) for p in self.padding], use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """TensorFlow's 3x3 stride-1 "SAME" average pool: padded zeros are not counted."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 2, padding: int = 0) -> jax.Array:
  return nn.max_pool(x, (3, 3), (stride, stride), padding=((padding, padding),) * 2)


class FIDInceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
    branch5x5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
    branch3x3dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (torchvision's InceptionB, unpatched)."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv2d(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    branch3x3dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x)], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
    branch7x7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    branch7x7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    dbl = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
    dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
    dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
    branch_pool = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (torchvision's InceptionD, unpatched)."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    branch3x3 = BasicConv2d(320, (3, 3), strides=(2, 2), name="branch3x3_2")(branch3x3)
    branch7x7x3 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (pool "avg", without padded zeros) or FIDInceptionE_2 (pool "max")."""

  pool: str

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
    branch3x3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3)], axis=-1)
    dbl = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    dbl = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl)], axis=-1)
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, stride=1, padding=1)
    branch_pool = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's `fid_inception_v3()`, NHWC: images in [-1, 1] to pool features and logits."""

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """(N, 299, 299, 3) in [-1, 1] -> {"pool" (N, 2048), "logits", "logits_unbiased" (N, 1008)}."""
    x = BasicConv2d(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x)
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x)
    x = FIDInceptionA(32, name="Mixed_5b")(x)
    x = FIDInceptionA(64, name="Mixed_5c")(x)
    x = FIDInceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                               ("Mixed_6e", 192)):
      x = FIDInceptionC(channels_7x7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = FIDInceptionE("avg", name="Mixed_7b")(x)
    x = FIDInceptionE("max", name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_LOGITS, name="fc")
    logits = fc(pool)
    return {"pool": pool, "logits": logits,
            "logits_unbiased": logits - fc.variables["params"]["bias"]}


# --- Resizing -----------------------------------------------------------------------


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) weights of torch's bilinear resize with align_corners=False.

  aten's upsample_bilinear2d: source coordinate (i + 0.5) * in / out - 0.5,
  clamped below at 0, between the two nearest pixels (the last one repeated
  at the far edge); no antialiasing, so shrinking skips pixels as torch does.
  """
  # In float32, as aten computes the coordinates for float images.
  scale = np.float32(in_size) / np.float32(out_size)
  source = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5))
                      - np.float32(0.5), np.float32(0))
  lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  weight_upper = source - lower.astype(np.float32)
  matrix = np.zeros((out_size, in_size), np.float32)
  np.add.at(matrix, (np.arange(out_size), lower), 1.0 - weight_upper)
  np.add.at(matrix, (np.arange(out_size), upper), weight_upper)
  return matrix


def resize(images: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
  """(N, H, W, C) -> (N, H', W', C) by row and column interpolation matrices (H', H), (W', W)."""
  images = jnp.einsum("oh,nhwc->nowc", jnp.asarray(rows, jnp.float32), images,
                      precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,nowc->nopc", jnp.asarray(cols, jnp.float32), images,
                    precision=jax.lax.Precision.HIGHEST)


def to_inception_input(images, size: int = INPUT_SIZE) -> jax.Array:
  """uint8 images, or floats in [-1, 1], (N, H, W, 1 or 3) -> (N, size, size, 3) in [-1, 1].

  As pytorch-fid: pixels / 255, bilinear resize (`bilinear_matrix`), 2x - 1;
  the resize is linear with rows summing to 1, so it commutes with that
  affine map. One channel is repeated to RGB (PIL's convert("RGB")).
  """
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    images = data.pixels_to_signed(images.astype(jnp.float32))
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  _, height, width, _ = images.shape
  if (height, width) == (size, size):
    return images
  return resize(images, bilinear_matrix(height, size), bilinear_matrix(width, size))


# --- Weights ------------------------------------------------------------------------


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(functools.partial(f.read, 1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


# torch storage classes -> numpy dtypes (bfloat16: ml_dtypes, which jax ships).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Storage:
  """A torch storage: its dtype and (once read) its elements."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)
    self.array = None


class _Tensor:
  """A tensor as `_rebuild_tensor_v2` describes it, made an array once its storage is read."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self) -> np.ndarray:
    itemsize = self.storage.dtype.itemsize
    last = self.offset + sum((n - 1) * abs(s) for n, s in zip(self.size, self.stride))
    if (len(self.size) != len(self.stride) or min(self.stride, default=0) < 0 or self.offset < 0
            or (0 not in self.size and last >= len(self.storage.array))):
      raise WeightsError(f"a tensor of size {self.size} and strides {self.stride} at offset "
                         f"{self.offset} does not fit its storage of {len(self.storage.array)}")
    return np.lib.stride_tricks.as_strided(
        self.storage.array[self.offset:], self.size,
        [s * itemsize for s in self.stride]).copy()


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


class _Unpickler(pickle.Unpickler):
  """Unpickles a state dict: dicts, tensors and storages; any other class is refused."""

  def __init__(self, file, load_storage: Callable[[tuple], _Storage]):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict of tensors")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or pid[0] != "storage":
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    return self._load_storage(pid)


def _materialise(obj):
  if isinstance(obj, _Tensor):
    return obj.to_numpy()
  if isinstance(obj, dict):
    return {key: _materialise(value) for key, value in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(value) for value in obj)
  return obj


def _read_zip(path: str):
  with zipfile.ZipFile(path) as archive:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")
               or name == "data.pkl"]
    if len(pickles) != 1:
      raise WeightsError(f"{path} is a zip file but not one torch.save wrote (no data.pkl)")
    prefix = pickles[0][:-len("data.pkl")]
    names = set(archive.namelist())
    byteorder = (archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names
                 else "little")
    storages = {}

    def load_storage(pid):
      _, dtype, key, _, _ = pid[:5]
      if key not in storages:
        storage = _Storage(dtype)
        raw = archive.read(f"{prefix}data/{key}")
        storage.array = np.frombuffer(raw, storage.dtype.newbyteorder(
            "<" if byteorder == "little" else ">")).astype(storage.dtype)
        storages[key] = storage
      return storages[key]

    with archive.open(pickles[0]) as f:
      return _materialise(_Unpickler(f, load_storage).load())


def _read_legacy(path: str):
  """torch < 1.6's format: magic, version, system info, the object, its storage keys, data."""
  with open(path, "rb") as f:
    if pickle.load(f) != _LEGACY_MAGIC:
      raise WeightsError(f"{path} is not a file torch.save wrote")
    pickle.load(f)  # protocol version
    system = pickle.load(f)
    if not system.get("little_endian", True):
      raise WeightsError(f"{path} was written on a big-endian machine")
    storages = {}

    def load_storage(pid):
      _, dtype, key, _, _, view = pid
      if view is not None:
        raise WeightsError(f"{path} holds storage views, which torch has not written since 0.4")
      return storages.setdefault(key, _Storage(dtype))

    obj = _Unpickler(f, load_storage).load()
    for key in pickle.load(f):
      (count,) = struct.unpack("<q", f.read(8))
      storage = storages[key]
      storage.array = np.frombuffer(f.read(count * storage.dtype.itemsize), storage.dtype)
    return _materialise(obj)


def read_torch_file(path: str) -> dict:
  """The object `torch.save` wrote to path (a state dict), its tensors as NumPy arrays."""
  try:
    if zipfile.is_zipfile(path):
      return _read_zip(path)
    return _read_legacy(path)
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError, struct.error) as e:
    if isinstance(e, WeightsError):
      raise
    raise WeightsError(f"cannot read {path} as a torch state dict: {e}") from None


def _torch_name(path: tuple[str, ...]) -> tuple[str, bool]:
  """Flax variable path -> (torch state-dict key, whether the array is transposed)."""
  *modules, leaf = path
  prefix = ".".join(modules)
  if modules[-1] == "fc":
    return f"{prefix}.{'weight' if leaf == 'kernel' else 'bias'}", leaf == "kernel"
  name = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
          "var": "running_var"}[leaf]
  return f"{prefix}.{name}", leaf == "kernel"


def _to_flax(array: np.ndarray, transposed: bool) -> np.ndarray:
  if not transposed:
    return array
  return array.T if array.ndim == 2 else array.transpose(2, 3, 1, 0)  # OIHW -> HWIO


@functools.cache
def variable_shapes() -> dict:
  """InceptionV3's variables ({"params", "batch_stats"}) as ShapeDtypeStructs (no compute)."""
  return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))


def torch_shapes() -> dict[str, tuple[int, ...]]:
  """The state dict pytorch-fid's network has: key -> torch shape (num_batches_tracked aside)."""
  shapes = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(variable_shapes()):
    name, transposed = _torch_name(tuple(k.key for k in path[1:]))
    shape = tuple(leaf.shape)
    if transposed:  # flax (in, out) and HWIO -> torch (out, in) and OIHW
      shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
    shapes[name] = shape
  return shapes


def variables_from_state_dict(state_dict: dict) -> dict:
  """pytorch-fid's state dict (key -> array) as InceptionV3's variables, else WeightsError."""
  expected = torch_shapes()
  keys = {key for key in state_dict if not key.endswith(".num_batches_tracked")}
  missing, unexpected = sorted(set(expected) - keys), sorted(keys - set(expected))
  wrong = sorted(key for key in set(expected) & keys
                 if tuple(np.shape(state_dict[key])) != expected[key])
  if missing or unexpected or wrong:
    raise WeightsError(
        "not the FID Inception's state dict: " + "; ".join(
            f"{what} {keys_[:3]}{' ...' if len(keys_) > 3 else ''} ({len(keys_)})"
            for what, keys_ in (("missing", missing), ("unexpected", unexpected),
                                ("wrong shape", wrong)) if keys_))

  def leaf(path, _):
    name, transposed = _torch_name(tuple(k.key for k in path[1:]))
    return jnp.asarray(_to_flax(np.asarray(state_dict[name], np.float32), transposed))

  return jax.tree_util.tree_map_with_path(leaf, variable_shapes())


def missing_weights_message(path: str | None) -> str:
  where = (f"{path} does not exist" if path else
           f"no Inception weights given (config.inception_weights, or ${WEIGHTS_ENV})")
  return (f"{where}; download pytorch-fid's {FID_WEIGHTS_FILE} ({FID_WEIGHTS_URL}, SHA-256 "
          f"{FID_WEIGHTS_SHA256[:16]}...), put it anywhere and pass "
          f"--config.inception_weights=PATH (or set ${WEIGHTS_ENV}=PATH)")


def check_weights_file(path: str | None, sha256: str | None = FID_WEIGHTS_SHA256) -> str:
  """The weights file's SHA-256, after checking that it exists and (unless sha256=None) its hash.

  Raises:
    WeightsError: no path, no such file, or another hash; the message says
      where to get pytorch-fid's file and where to put it.
  """
  if not path or not os.path.isfile(os.path.expanduser(path)):
    raise WeightsError(missing_weights_message(path))
  path = os.path.expanduser(path)
  try:
    actual = file_sha256(path)
  except OSError as e:
    raise WeightsError(f"cannot read {path}: {e.strerror}") from None
  if sha256 is not None and actual != sha256:
    raise WeightsError(
        f"{path} has SHA-256 {actual[:16]}..., not {sha256[:16]}... of pytorch-fid's "
        f"{FID_WEIGHTS_FILE}; download it again from {FID_WEIGHTS_URL}")
  return actual


def load_variables(path: str | None, sha256: str | None = FID_WEIGHTS_SHA256) -> dict:
  """InceptionV3's variables from pytorch-fid's weights file at path, its SHA-256 checked.

  sha256=None skips the hash check (a file of other weights in the same
  layout, such as the tests' random ones).

  Raises:
    WeightsError: no path, a missing or unreadable file, another hash, another layout.
  """
  check_weights_file(path, sha256)
  path = os.path.expanduser(path)
  try:
    return variables_from_state_dict(read_torch_file(path))
  except OSError as e:
    raise WeightsError(f"cannot read {path}: {e.strerror}") from None


# --- Features -----------------------------------------------------------------------


# Jitted once per process: every FeatureExtractor shares their compilations.
_network = jax.jit(lambda variables, images: InceptionV3().apply(variables, images))
_to_inception_input = jax.jit(to_inception_input)


class FeatureExtractor:
  """Inception outputs of image sets: pool features (N, 2048) and logits (N, 1008).

  One compiled network for any image size: images are resized (a small
  jitted function per input shape) and fed in batches of `batch_size`, the
  last one padded.
  """

  def __init__(self, variables: dict, batch_size: int = 50):
    self.variables = variables
    self.batch_size = batch_size

  def __call__(self, images) -> dict[str, np.ndarray]:
    """uint8 images or floats in [-1, 1], (N, H, W, 1 or 3) -> InceptionV3's outputs (NumPy)."""
    images = np.asarray(images)
    outputs = collections.defaultdict(list)
    for start in range(0, len(images), self.batch_size):
      batch = images[start:start + self.batch_size]
      padded = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - len(batch), 0)])
      for name, value in _network(self.variables, _to_inception_input(padded)).items():
        outputs[name].append(np.asarray(value)[:len(batch)])
    return {name: np.concatenate(values) for name, values in outputs.items()}


# --- Reference statistics -----------------------------------------------------------


def save_reference(path: str, features: np.ndarray, **metadata: str) -> None:
  """Real features with their mean and covariance (pytorch-fid's `mu`, `sigma`) in an .npz."""
  features = np.asarray(features, np.float32)
  features64 = features.astype(np.float64)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temporary = path + ".tmp.npz"
  np.savez(temporary, features=features, mu=features64.mean(axis=0),
           sigma=np.cov(features64, rowvar=False),
           **{f"meta_{key}": np.asarray(value) for key, value in metadata.items()})
  os.replace(temporary, path)


def load_reference(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str]]:
  """(features, mu, sigma, metadata) that save_reference wrote."""
  with np.load(path) as saved:
    metadata = {key[len("meta_"):]: str(saved[key]) for key in saved if key.startswith("meta_")}
    return saved["features"], saved["mu"], saved["sigma"], metadata
