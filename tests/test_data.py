"""Tests of ebgan_jax.data: both sources, sharding, resume, error messages."""

import gzip
import os
import pathlib
import re
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import numpy as np
import pytest

from ebgan_jax import data
from experiments.configs import mnist_conv

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
IDX_FILE_NAMES = [
    ("train", "train-images-idx3-ubyte.gz"),
    ("train", "train-labels-idx1-ubyte.gz"),
    ("test", "t10k-images-idx3-ubyte.gz"),
    ("test", "t10k-labels-idx1-ubyte.gz"),
]


def fixtures():
  # Imported on use: the module imports tensorflow_datasets, and the
  # subprocess test must be free to run before anything imports TensorFlow.
  from tests import data_fixtures  # pylint: disable=g-import-not-at-top

  return data_fixtures


def make_config(**overrides):
  """The shipped MNIST config, set for 4x4 test images and small batches."""
  config = mnist_conv.get_config()
  config.update(
      {"image_shape": (4, 4, 1), "batch_size": 4, "shuffle_buffer": 1000, "download": False}
  )
  config.update(overrides)
  return config


def take(iterator, num_batches):
  return np.stack([next(iterator) for _ in range(num_batches)])


def example_ids(batches):
  """Recovers the index of each numbered image (see data_fixtures) in batches."""
  pixels = batches.reshape(-1, *batches.shape[-3:])[:, 0, 0, 0]
  return np.rint((pixels + 1.0) * 127.5).astype(np.int64)


def normalized(pixels):
  return data.pixels_to_signed(np.asarray(pixels, np.float32))


@pytest.fixture
def idx_dir(tmp_path):
  """24 train and 8 test numbered 4x4 images, as the four IDX gz files."""
  return fixtures().write_idx_dir(tmp_path / "idx")


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
  """A real, prepared tfds data set (24 train, 8 test numbered images)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  fixtures().EbganTinyImages(data_dir=str(data_dir)).download_and_prepare()
  return data_dir


@pytest.fixture
def mock_mnist(tmp_path, monkeypatch):
  """tfds "mnist" replaced by 32 random images; data_dir is empty, nothing downloads."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # The "download" is mocked: the machine may be offline, the probe must not say so.
  monkeypatch.setattr(data.tfds, "unreachable_download_host", lambda builder: None)
  with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_CODE):
    yield make_config(
        dataset="mnist", data_dir=str(tmp_path), image_shape=(28, 28, 1), batch_size=8,
        download=True,
    )


# --- Importing and TensorFlow's devices ---------------------------------------


def test_import_does_not_import_tensorflow():
  code = (
      "import sys, ebgan_jax.data;"
      " print([m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules])"
  )
  result = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
  )
  assert result.stdout.strip() == "[]", result.stdout


def test_tensorflow_is_denied_accelerators(idx_dir, monkeypatch):
  config = make_config(idx_dir=str(idx_dir))
  data.create_dataset(config)
  data.create_dataset(config)  # A second call must be harmless.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  hidden = []
  monkeypatch.setattr(
      tf.config, "set_visible_devices", lambda devices, kind: hidden.append((list(devices), kind))
  )
  data.create_dataset(config)
  assert ([], "GPU") in hidden and ([], "TPU") in hidden


def test_devices_already_initialised_elsewhere_are_tolerated(idx_dir, monkeypatch):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def refuse(devices, kind):
    raise RuntimeError("Visible devices cannot be modified after being initialized")

  monkeypatch.setattr(tf.config, "set_visible_devices", refuse)
  batches, _ = data.create_dataset(make_config(idx_dir=str(idx_dir)))
  assert next(batches).shape == (4, 4, 4, 1)


# --- IDX files ----------------------------------------------------------------


@settings(max_examples=30)
@given(
    array=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6)),
    compress=st.booleans(),
)
def test_read_idx_round_trips(tmp_path_factory, array, compress):
  path = tmp_path_factory.mktemp("idx") / ("file.gz" if compress else "file")
  fixtures().write_idx(path, array)
  result = data.read_idx(path, ndim=array.ndim)
  assert result.dtype == np.uint8
  np.testing.assert_array_equal(result, array)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_idx_batches_hold_each_example_once_per_epoch(tmp_path, compress):
  idx_dir = fixtures().write_idx_dir(tmp_path, num_train=24, compress=compress)
  batches, info = data.create_dataset(make_config(idx_dir=str(idx_dir)))

  epoch = take(batches, 6)  # 24 examples / batch of 4.
  assert epoch.shape == (6, 4, 4, 4, 1) and epoch.dtype == np.float32
  ids = example_ids(epoch)
  assert sorted(ids) == list(range(24))
  # Every pixel of image i is exactly i / 127.5 - 1.
  expected = np.broadcast_to(normalized(ids).reshape(6, 4, 1, 1, 1), epoch.shape)
  np.testing.assert_array_equal(epoch, expected)
  assert info == data.DatasetInfo((4, 4, 1), 24, "train", f"idx:{idx_dir}")


def test_idx_pixels_map_exactly_to_signed_unit_range(tmp_path):
  # 256 images, image i filled with pixel value i: one epoch shows every value.
  idx_dir = fixtures().write_idx_dir(tmp_path, num_train=256)
  config = make_config(idx_dir=str(idx_dir), batch_size=64)
  batches, _ = data.create_dataset(config)

  pixels = np.sort(take(batches, 4)[..., 0, 0, 0].ravel())
  np.testing.assert_array_equal(pixels, normalized(np.arange(256)))
  assert pixels[0] == -1.0 and pixels[-1] == 1.0


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_idx_load_split_returns_images_and_labels_in_file_order(tmp_path, compress):
  idx_dir = fixtures().write_idx_dir(tmp_path, num_test=8, compress=compress)
  images, labels = data.load_split(make_config(idx_dir=str(idx_dir)), "test")

  assert images.dtype == np.uint8 and labels.dtype == np.int64
  np.testing.assert_array_equal(images, fixtures().numbered_images(8)[..., np.newaxis])
  np.testing.assert_array_equal(labels, np.arange(8) % 10)


def test_idx_dir_wins_over_tfds_dataset(idx_dir):
  config = make_config(idx_dir=str(idx_dir), dataset="no_such_tfds_dataset")
  _, info = data.create_dataset(config)
  assert info.source == f"idx:{idx_dir}"


# --- The registry of sources and the pixel mapping ---------------------------


@pytest.mark.parametrize("overrides, kind", [
    ({}, "tfds"),
    ({"idx_dir": "/idx"}, "idx"),
    ({"idx_dir": "/idx", "dataset": "no_such_tfds_dataset"}, "idx"),
    ({"image_dir": "/images"}, "images"),
    ({"stacked_split_sizes": {"train": 5}}, "stacked"),
    ({"stacked_split_sizes": {"train": 5}, "idx_dir": "/idx"}, "stacked"),
])
def test_source_kind_picks_each_source(overrides, kind):
  config = make_config(**overrides)
  assert data.source_kind(config) == kind
  assert data.source_for(config) is data.SOURCES[kind]


@pytest.mark.parametrize("other, value", [("idx_dir", "/idx"),
                                          ("stacked_split_sizes", {"train": 5, "test": 5})])
def test_an_image_folder_with_another_source_is_one_error_everywhere(tmp_path, other, value):
  """create_dataset, load_split and source_name all ask source_kind, so all refuse alike."""
  config = make_config(image_dir=str(tmp_path), image_shape=(4, 4, 3), crop=0,
                       test_fraction=0.0, max_eval_images=0, **{other: value})
  message = (f"config sets both image_dir ({tmp_path}) and {other}; an image folder is a source"
             f" of its own, so set --config.{other}=None or --config.image_dir=None.")
  for entry_point in (data.create_dataset, data.load_split, data.source_name):
    with pytest.raises(ValueError) as error:
      entry_point(config)
    assert str(error.value) == message, entry_point.__name__


def test_every_entry_point_reads_the_source_the_registry_holds(monkeypatch):
  """A source replaced in SOURCES serves create_dataset, load_split, source_name and the
  digits of stacked MNIST: no other code picks a source."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  images = fixtures().numbered_images(8)[..., np.newaxis]
  labels = np.arange(8, dtype=np.int64) % 10

  def examples(config, split, process_index, process_count):
    info = data.DatasetInfo(images.shape[1:], len(images), split, "fake:")
    shard = tf.data.Dataset.from_tensor_slices(images).shard(process_count, process_index)
    return shard, info

  fake = data.Source(describe=lambda config: "fake:", examples=examples,
                     load_split=lambda config, split: (images, labels))
  monkeypatch.setitem(data.SOURCES, "idx", fake)
  config = make_config(idx_dir="/no/such/idx", batch_size=8)

  assert data.source_name(config) == "fake:"
  np.testing.assert_array_equal(data.load_split(config)[0], images)
  batches, info = data.create_dataset(config)
  assert info.source == "fake:" and sorted(example_ids(next(batches))) == list(range(8))

  stacked_config = make_config(idx_dir="/no/such/idx", image_shape=(4, 4, 3),
                               stacked_split_sizes={"train": 6, "test": 6})
  assert data.source_name(stacked_config) == "stacked:fake:"
  stacked_images, modes = data.load_split(stacked_config, "train")
  assert stacked_images.shape == (6, 4, 4, 3)
  digits = stacked_images[:, 0, 0, :]  # numbered images: pixel (0, 0) is the image's index
  np.testing.assert_array_equal(modes, (labels[digits] * [100, 10, 1]).sum(axis=1))


@pytest.mark.parametrize("framework", ["numpy", "jax", "tensorflow"])
def test_pixels_to_signed_maps_0_255_onto_minus_one_one(framework):
  pixels = np.arange(256, dtype=np.float32)
  if framework == "jax":
    pixels = jax.numpy.asarray(pixels)
  elif framework == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    pixels = tf.constant(pixels)
  signed = np.asarray(data.pixels_to_signed(pixels))
  # The mapping written out once, in float32 like every caller's.
  expected = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
  assert signed.dtype == np.float32
  if framework == "jax":  # XLA may divide by multiplying with the reciprocal: 1 ulp off
    np.testing.assert_allclose(signed, expected, rtol=0, atol=np.finfo(np.float32).eps)
  else:
    np.testing.assert_array_equal(signed, expected)
  assert signed[0] == -1.0 and signed[-1] == 1.0


# --- tensorflow-datasets ------------------------------------------------------


def test_tfds_mock_batches_cover_the_split(mock_mnist):
  batches, info = data.create_dataset(mock_mnist)
  epoch = take(batches, 4)  # 32 examples / batch of 8.
  images, labels = data.load_split(mock_mnist, "train")

  assert info == data.DatasetInfo((28, 28, 1), 32, "train", "tfds:mnist")
  assert epoch.shape == (4, 8, 28, 28, 1) and epoch.dtype == np.float32
  assert epoch.min() >= -1.0 and epoch.max() <= 1.0
  assert images.shape == (32, 28, 28, 1) and labels.shape == (32,)
  by_bytes = lambda arrays: sorted(array.tobytes() for array in arrays)
  assert by_bytes(epoch.reshape(32, 28, 28, 1)) == by_bytes(normalized(images))


def test_tfds_mock_is_deterministic_per_seed(mock_mnist):
  first, _ = data.create_dataset(mock_mnist)
  again, _ = data.create_dataset(mock_mnist)
  mock_mnist.seed = 1
  other, _ = data.create_dataset(mock_mnist)

  batches = take(first, 6)
  np.testing.assert_array_equal(batches, take(again, 6))
  assert not np.array_equal(batches, take(other, 6))


def test_tfds_prepared_dataset_batches_and_labels(tiny_tfds_dir):
  config = make_config(dataset="ebgan_tiny_images", data_dir=str(tiny_tfds_dir))
  batches, info = data.create_dataset(config)
  images, labels = data.load_split(config, "test")

  assert info == data.DatasetInfo((4, 4, 1), 24, "train", "tfds:ebgan_tiny_images")
  assert sorted(example_ids(take(batches, 6))) == list(range(24))
  assert images.shape == (8, 4, 4, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, images[:, 0, 0, 0] % 10)


# --- Processes, determinism and resume ----------------------------------------


@pytest.mark.parametrize("source", ["idx", "tfds"])
def test_two_processes_read_disjoint_halves_of_the_epoch(source, idx_dir, tiny_tfds_dir):
  if source == "idx":
    config = make_config(idx_dir=str(idx_dir), batch_size=8)
  else:
    config = make_config(dataset="ebgan_tiny_images", data_dir=str(tiny_tfds_dir), batch_size=8)
  seen = []
  for process_index in range(2):
    batches, _ = data.create_dataset(
        config, process_index=process_index, process_count=2
    )
    half = take(batches, 3)  # 12 examples per process / local batch of 4.
    assert half.shape == (3, 4, 4, 4, 1)
    seen.append(set(example_ids(half)))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(24))


def test_process_index_and_count_default_to_jax(idx_dir, monkeypatch):
  config = make_config(idx_dir=str(idx_dir), batch_size=8)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  batches, _ = data.create_dataset(config)
  assert next(batches).shape == (4, 4, 4, 1)

  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match="batch_size 8 is not divisible by the 3 processes"):
    data.create_dataset(config)


def test_different_seeds_give_different_orders(idx_dir):
  orders = []
  for seed in (0, 1):
    batches, _ = data.create_dataset(make_config(idx_dir=str(idx_dir), seed=seed))
    orders.append(list(example_ids(take(batches, 6))))
  assert orders[0] != orders[1]


def test_stream_is_the_same_in_a_new_process(idx_dir):
  # Resuming happens in a new process: the order must not depend on TF state.
  code = (
      "import sys, numpy as np; sys.path.insert(0, '.');"
      "from ebgan_jax import data; from tests.test_data import make_config, take;"
      f"batches, _ = data.create_dataset(make_config(idx_dir={str(idx_dir)!r}));"
      "print(take(batches, 12)[..., 0, 0, 0].ravel().tolist())"
  )
  root = pathlib.Path(__file__).parents[1]
  result = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
      timeout=120,
  )
  batches, _ = data.create_dataset(make_config(idx_dir=str(idx_dir)))
  here = str(take(batches, 12)[..., 0, 0, 0].ravel().tolist())
  assert result.stdout.strip().splitlines()[-1] == here


@pytest.mark.parametrize("start_step", [1, 5, 6, 7, 19, 60])
@pytest.mark.parametrize("source", ["idx", "tfds"])
def test_resumed_stream_equals_fresh_stream(source, start_step, idx_dir, tiny_tfds_dir):
  # 24 examples in batches of 5: batches straddle epochs (epoch 1 starts in step 4).
  if source == "idx":
    config = make_config(idx_dir=str(idx_dir), batch_size=5, shuffle_buffer=7)
  else:
    config = make_config(
        dataset="ebgan_tiny_images", data_dir=str(tiny_tfds_dir), batch_size=5, shuffle_buffer=7
    )
  fresh, _ = data.create_dataset(config)
  resumed, _ = data.create_dataset(config, start_step=start_step)
  np.testing.assert_array_equal(take(resumed, 8), take(fresh, start_step + 8)[start_step:])


def test_resume_skips_far_without_replaying(tmp_path):
  # A million batches of 64 from 600 examples: replaying them would take
  # minutes (benchmarks/input_pipeline.py times resuming).
  idx_dir = fixtures().write_idx_dir(tmp_path, num_train=600)
  config = make_config(idx_dir=str(idx_dir), batch_size=64)
  batches, _ = data.create_dataset(config, start_step=1_000_000)
  assert next(batches).shape == (64, 4, 4, 1)


# --- Errors -------------------------------------------------------------------


def test_missing_idx_directory(tmp_path):
  config = make_config(idx_dir=str(tmp_path / "absent"))
  with pytest.raises(FileNotFoundError, match="IDX directory .*absent does not exist"):
    data.create_dataset(config)


@pytest.mark.parametrize("split, name", IDX_FILE_NAMES)
def test_missing_idx_file_is_named(idx_dir, split, name):
  (idx_dir / name).unlink()
  config = make_config(idx_dir=str(idx_dir))
  with pytest.raises(FileNotFoundError, match=f"has no {re.escape(name)}"):
    data.load_split(config, split)


def test_truncated_gzip_file(idx_dir):
  path = idx_dir / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(ValueError, match="not a valid gzip file.*truncated or corrupt"):
    data.create_dataset(make_config(idx_dir=str(idx_dir)))


def test_corrupt_gzip_file(idx_dir):
  (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data")
  with pytest.raises(ValueError, match="not a valid gzip file"):
    data.create_dataset(make_config(idx_dir=str(idx_dir)))


@pytest.mark.parametrize("extra_bytes", [-5, 3], ids=["truncated", "too_long"])
def test_payload_size_must_match_header(idx_dir, extra_bytes):
  path = idx_dir / "train-images-idx3-ubyte.gz"
  content = gzip.decompress(path.read_bytes())
  content = content[:extra_bytes] if extra_bytes < 0 else content + bytes(extra_bytes)
  path.write_bytes(gzip.compress(content))
  expected = f"holds {24 * 16 + extra_bytes} data bytes but its header promises {24 * 16}"
  with pytest.raises(ValueError, match=expected):
    data.create_dataset(make_config(idx_dir=str(idx_dir)))


def test_file_cut_inside_its_header(idx_dir):
  (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03\0\0"))
  with pytest.raises(ValueError, match="ends inside its header"):
    data.create_dataset(make_config(idx_dir=str(idx_dir)))


def test_wrong_magic_number(idx_dir):
  # A labels file where the images file belongs.
  labels = (idx_dir / "train-labels-idx1-ubyte.gz").read_bytes()
  (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(labels)
  with pytest.raises(ValueError, match="magic number 0x00000801, not 0x00000803"):
    data.create_dataset(make_config(idx_dir=str(idx_dir)))


def test_image_and_label_counts_must_agree(idx_dir):
  fixtures().write_idx(idx_dir / "train-labels-idx1-ubyte.gz", np.zeros(23, np.uint8))
  with pytest.raises(ValueError, match="holds 24 images but .* holds 23 labels"):
    data.create_dataset(make_config(idx_dir=str(idx_dir)))


def test_image_shape_must_match_config(idx_dir):
  config = make_config(idx_dir=str(idx_dir), image_shape=(28, 28, 1))
  message = re.escape("shape (4, 4, 1) but config.image_shape is (28, 28, 1)")
  with pytest.raises(ValueError, match=message):
    data.create_dataset(config)


def test_batch_must_split_over_processes(idx_dir):
  # Over the devices is the step's check (test_sharding).
  config = make_config(idx_dir=str(idx_dir), batch_size=6)
  with pytest.raises(ValueError, match="batch_size 6 is not divisible by the 4 processes"):
    data.create_dataset(config, process_index=0, process_count=4)


def test_tfds_not_cached_and_download_off(tmp_path):
  config = make_config(dataset="mnist", data_dir=str(tmp_path), download=False)
  with pytest.raises(FileNotFoundError, match="download is False.*--config.idx_dir=DIR"):
    data.create_dataset(config)


def test_tfds_download_failure_points_to_idx_files(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def offline(self, *args, **kwargs):
    raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
  monkeypatch.setattr(data.tfds, "unreachable_download_host", lambda builder: None)  # host answers
  config = make_config(dataset="mnist", data_dir=str(tmp_path), download=True)
  with pytest.raises(FileNotFoundError, match="could not be downloaded.*dataset-fashion-mnist"):
    data.create_dataset(config)


def test_offline_is_found_out_before_tfds_retries(tmp_path, monkeypatch):
  """No answer from the download host: the error comes at once, tfds never starts retrying."""
  import socket  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  probed = []

  def no_network(address, timeout):
    probed.append((address, timeout))
    raise OSError("Network is unreachable")

  def must_not_download(self, *args, **kwargs):
    raise AssertionError("download_and_prepare ran although the host does not answer")

  monkeypatch.setattr(socket, "create_connection", no_network)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", must_not_download)
  for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
    monkeypatch.delenv(proxy, raising=False)
  config = make_config(dataset="mnist", data_dir=str(tmp_path), download=True)
  with pytest.raises(FileNotFoundError,
                     match="storage.googleapis.com does not answer.*--config.idx_dir=DIR"):
    data.create_dataset(config)
  assert probed == [(("storage.googleapis.com", 443), data.tfds.PROBE_SECONDS)]


def test_unknown_tfds_name(tmp_path):
  config = make_config(dataset="no_such_dataset_xyz", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="Unknown tfds dataset 'no_such_dataset_xyz'.*list_builders"):
    data.create_dataset(config)


def test_tfds_dataset_without_images(tmp_path):
  config = make_config(dataset="imdb_reviews", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="has no 'image' feature"):
    data.create_dataset(config)


# --- Real data ----------------------------------------------------------------


def test_real_fashion_mnist():
  present = all((FASHION_MNIST_DIR / name).is_file() for _, name in IDX_FILE_NAMES)
  if not present and not os.environ.get("CI"):
    pytest.skip(
        f"Fashion-MNIST IDX files not in {FASHION_MNIST_DIR}; `apt-get install"
        " dataset-fashion-mnist` provides them (with CI set, this test fails instead)."
    )
  config = mnist_conv.get_config()
  config.idx_dir = str(FASHION_MNIST_DIR)

  for split, size in (("train", 60_000), ("test", 10_000)):
    images, labels = data.load_split(config, split)
    assert images.shape == (size, 28, 28, 1) and images.dtype == np.uint8
    # Fashion-MNIST is balanced: every one of the 10 classes has a tenth of a split.
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, size // 10))

  batches, info = data.create_dataset(config, start_step=5_000)
  batch = next(batches)
  assert info == data.DatasetInfo((28, 28, 1), 60_000, "train", f"idx:{FASHION_MNIST_DIR}")
  assert batch.shape == (64, 28, 28, 1) and batch.dtype == np.float32
  assert batch.min() == -1.0 and batch.max() == 1.0
