"""Tests of the image-folder source and of cropping and resizing photographs (ebgan_jax.data)."""

import hashlib
import io
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from ebgan_jax import data
from experiments.configs import celeba64, fashion_rgb64, imagenet128, lsun_bedroom64, mnist_conv

NUM_IMAGES = 24  # complete images in the folder of `image_dir`
# (height, width) of the images, in turn: wide, tall and square, small and large.
SIZES = [(40, 30), (30, 40), (32, 32), (50, 20), (20, 50), (64, 64)]
SKIPPED = ("broken.png", "sub/cut.jpg")  # not complete images: left out and listed


def value(index):
  """The grey level filling image `index`: 10 apart, so JPEG's error cannot blur two together."""
  return 10 * index + 5


def relative_name(index):
  """Nested folders, both formats, extensions in any case."""
  folder = ("a", "a/b", "c/d/e")[index % 3]
  suffix = (".png", ".jpg", ".PNG", ".JPEG")[index % 4]
  return f"{folder}/{index:03d}{suffix}"


def write_image(path, pixels):
  path.parent.mkdir(parents=True, exist_ok=True)
  image_format = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
  Image.fromarray(pixels).save(path, image_format, **({"quality": 95} if image_format == "JPEG"
                                                      else {}))
  return path


def write_folder(root):
  """NUM_IMAGES flat-coloured images (grey, RGB and RGBA), a text file and two broken files."""
  for index in range(NUM_IMAGES):
    height, width = SIZES[index % len(SIZES)]
    mode = ("L", "RGB", "RGBA")[index % 3] if relative_name(index).endswith(".png") else "RGB"
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    pixels = np.full((height, width, *channels), value(index), np.uint8)
    if mode == "RGBA":
      pixels[..., 3] = 128  # alpha is dropped, whatever it is
    write_image(root / relative_name(index), pixels)
  (root / "notes.txt").write_text("not an image")
  (root / "broken.png").write_bytes(b"<html>404 Not Found</html>")
  cut = write_image(root / "sub" / "cut.jpg", np.zeros((40, 40, 3), np.uint8))
  cut.write_bytes(cut.read_bytes()[:-200])  # an interrupted copy: no end marker
  return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  return write_folder(tmp_path_factory.mktemp("images"))


def make_config(image_dir, **overrides):
  """mnist_conv with an image folder, 8x8 RGB images, small batches, everything in "train"."""
  config = mnist_conv.get_config()
  config.update({"image_shape": (8, 8, 3), "batch_size": 4, "download": False})
  config.image_dir = str(image_dir)
  config.crop = 0
  config.test_fraction = 0.0
  config.max_eval_images = 0
  config.update(overrides)
  return config


def take(iterator, num_batches):
  return np.stack([next(iterator) for _ in range(num_batches)])


def image_ids(images):
  """The index of each image (see `value`), from its centre pixel: uint8 or in [-1, 1]."""
  images = np.asarray(images)
  images = images.reshape(-1, *images.shape[-3:])
  centre = images[:, images.shape[1] // 2, images.shape[2] // 2, 0].astype(np.float64)
  if images.dtype != np.uint8:
    centre = (centre + 1.0) * 127.5
  return np.rint((centre - 5) / 10).astype(np.int64)


def sorted_ids():
  """The image indices in the source's order: sorted relative paths."""
  return [index for _, index in sorted((relative_name(i), i) for i in range(NUM_IMAGES))]


# --- The stream ---------------------------------------------------------------


def test_batches_hold_each_image_once_per_epoch_in_range(image_dir):
  batches, info = data.create_dataset(make_config(image_dir))
  epoch = take(batches, NUM_IMAGES // 4)

  assert info == data.DatasetInfo((8, 8, 3), NUM_IMAGES, "train", f"images:{image_dir}",
                                  SKIPPED)
  assert epoch.shape == (6, 4, 8, 8, 3) and epoch.dtype == np.float32
  assert epoch.min() >= -1.0 and epoch.max() <= 1.0
  ids = image_ids(epoch)
  assert sorted(ids) == list(range(NUM_IMAGES))
  # Flat images stay flat, grey in every channel, and at their level (JPEG: within 3).
  expected = data.pixels_to_signed(value(ids).astype(np.float32)).reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(epoch.reshape(-1, 8, 8, 3), np.broadcast_to(expected, (24, 8, 8, 3)),
                             atol=3 / 127.5)


def test_same_seed_same_stream_other_seed_other_order(image_dir):
  first, _ = data.create_dataset(make_config(image_dir))
  again, _ = data.create_dataset(make_config(image_dir))
  other, _ = data.create_dataset(make_config(image_dir, seed=1))
  batches = take(first, 12)
  np.testing.assert_array_equal(batches, take(again, 12))
  assert list(image_ids(batches)) != list(image_ids(take(other, 12)))


@pytest.mark.parametrize("start_step", [1, 4, 5, 7, 19])
def test_resumed_stream_equals_fresh_stream(image_dir, start_step):
  # 24 images in batches of 5: batches straddle epochs (epoch 1 starts in step 4).
  config = make_config(image_dir, batch_size=5)
  fresh, _ = data.create_dataset(config)
  resumed, _ = data.create_dataset(config, start_step=start_step)
  np.testing.assert_array_equal(take(resumed, 6), take(fresh, start_step + 6)[start_step:])


def test_two_processes_read_disjoint_halves(image_dir):
  config = make_config(image_dir, batch_size=8)
  seen = []
  for process_index in range(2):
    batches, info = data.create_dataset(config, process_index=process_index, process_count=2)
    half = take(batches, 3)  # 12 images per process / local batch of 4
    assert half.shape == (3, 4, 8, 8, 3) and info.num_examples == NUM_IMAGES
    seen.append(set(image_ids(half)))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(NUM_IMAGES))


def test_resume_skips_names_without_decoding(image_dir):
  # A million batches: decoding what they skip would take hours.
  batches, _ = data.create_dataset(make_config(image_dir), start_step=1_000_000)
  assert next(batches).shape == (4, 8, 8, 3)


# --- Cropping and resizing ----------------------------------------------------


def one_image_config(tmp_path, pixels, name="image.png", **overrides):
  write_image(tmp_path / "one" / name, pixels)
  return make_config(tmp_path / "one", **overrides)


def test_largest_centered_square_is_resized_with_antialiasing(tmp_path):
  # A white 20x20 square at the centre of a black 40x40 image, shrunk 5 times.
  pixels = np.zeros((40, 40), np.uint8)
  pixels[10:30, 10:30] = 255
  images, labels = data.load_split(one_image_config(tmp_path, pixels, image_shape=(8, 8, 1)),
                                   "train")
  image = images[0, ..., 0]
  assert images.shape == (1, 8, 8, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, [data.NO_LABEL])
  # Output pixels whose filter (5 input pixels either side of their centre)
  # lies inside the square are white; those that reach only black stay black.
  np.testing.assert_array_equal(image[3:5, 3:5], 255)
  assert image[0, 0] == 0 and image[0, 7] == 0 and image[7, 0] == 0 and image[7, 7] == 0
  # Between the two, a blend: the antialiasing filter, not point sampling.
  assert 0 < image[2, 2] < 255
  np.testing.assert_array_equal(image, image[::-1, ::-1])  # symmetric about the centre
  np.testing.assert_array_equal(image, image.T)


def test_default_crop_cuts_the_longer_side_evenly(tmp_path):
  # 30 high, 40 wide: the largest centered square is columns 5 to 34, all black.
  pixels = np.zeros((30, 40, 3), np.uint8)
  pixels[:, :5] = pixels[:, 35:] = (255, 0, 0)
  images, _ = data.load_split(one_image_config(tmp_path, pixels), "train")
  np.testing.assert_array_equal(images, 0)


def test_crop_is_a_centered_square_of_that_side(tmp_path):
  # 60 high, 50 wide, grey 50 but for a centered 20x20 square of grey 200.
  pixels = np.full((60, 50, 3), 50, np.uint8)
  pixels[20:40, 15:35] = 200
  cropped, _ = data.load_split(
      one_image_config(tmp_path, pixels, crop=20, image_shape=(10, 10, 3)), "train")
  np.testing.assert_array_equal(cropped, 200)
  whole, _ = data.load_split(make_config(tmp_path / "one", image_shape=(10, 10, 3)), "train")
  assert whole[0, 5, 5, 0] == 200 and whole[0, 0, 0, 0] == 50


def test_an_image_of_the_target_size_is_unchanged(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  config = one_image_config(tmp_path, pixels)
  images, _ = data.load_split(config, "train")
  np.testing.assert_array_equal(images[0], pixels)
  batches, _ = data.create_dataset(make_config(tmp_path / "one", batch_size=1))
  np.testing.assert_array_equal(next(batches)[0], data.pixels_to_signed(pixels.astype(np.float32)))


# --- Splits and load_split ----------------------------------------------------


def test_hash_split_holds_out_files_by_their_relative_path(image_dir):
  config = make_config(image_dir, test_fraction=0.3)
  held_out = {relative_name(i) for i in range(NUM_IMAGES)
              if int.from_bytes(hashlib.sha256(relative_name(i).encode()).digest()[:8], "big")
              < 0.3 * 2**64}
  train, _ = data.load_split(config, "train")
  test, labels = data.load_split(config, "test")
  expected_test = [i for i in sorted_ids() if relative_name(i) in held_out]
  assert 0 < len(expected_test) < NUM_IMAGES
  assert list(image_ids(test)) == expected_test
  assert list(image_ids(train)) == [i for i in sorted_ids() if relative_name(i) not in held_out]
  np.testing.assert_array_equal(labels, np.full(len(test), -1))
  _, info = data.create_dataset(config, "test", process_index=0, process_count=1)
  assert info.num_examples == len(expected_test) and info.split == "test"


def test_train_and_test_subfolders_are_the_splits(tmp_path):
  for split, count in (("train", 5), ("test", 3)):
    for index in range(count):
      write_image(tmp_path / "tree" / split / "x" / f"{index}.png",
                  np.full((9, 9, 3), value(index), np.uint8))
  write_image(tmp_path / "tree" / "stray.png", np.zeros((9, 9, 3), np.uint8))  # in no split
  config = make_config(tmp_path / "tree", test_fraction=0.5)  # not used: the folders decide
  train, _ = data.load_split(config, "train")
  test, _ = data.load_split(config, "test")
  assert list(image_ids(train)) == [0, 1, 2, 3, 4] and list(image_ids(test)) == [0, 1, 2]


def test_load_split_returns_sorted_files_and_at_most_max_eval_images(image_dir):
  images, labels = data.load_split(make_config(image_dir), "train")
  assert images.shape == (NUM_IMAGES, 8, 8, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int64 and set(labels) == {data.NO_LABEL}
  assert list(image_ids(images)) == sorted_ids()

  few, _ = data.load_split(make_config(image_dir, max_eval_images=5), "train")
  assert list(image_ids(few)) == [sorted_ids()[i] for i in (0, 4, 9, 14, 19)]  # evenly spaced


def test_no_test_images_is_an_error(image_dir):
  with pytest.raises(ValueError, match="has no test images: config.test_fraction 0.0"):
    data.load_split(make_config(image_dir), "test")


# --- Unreadable files ---------------------------------------------------------


def test_incomplete_files_are_skipped_and_listed(image_dir):
  _, info = data.create_dataset(make_config(image_dir))
  assert info.skipped == SKIPPED and info.num_examples == NUM_IMAGES


def write_damaged_folder(directory, num_good=7):
  """num_good good 9x9 PNGs and x.png, whose header and end are intact but whose middle is not."""
  for index in range(num_good):
    write_image(directory / f"{index}.png", np.full((9, 9, 3), value(index % 25), np.uint8))
  noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(noise).save(buffer, "PNG")
  content = bytearray(buffer.getvalue())
  content[len(content) // 2:len(content) // 2 + 8] = bytes(8)
  (directory / "x.png").write_bytes(bytes(content))
  return directory


def test_a_file_damaged_inside_stops_the_stream_naming_it(tmp_path):
  config = make_config(write_damaged_folder(tmp_path / "damaged"), batch_size=3)

  batches, info = data.create_dataset(config)
  assert info.num_examples == 8 and not info.skipped  # its header and end look fine
  with pytest.raises(ValueError, match=r"damaged/x.png cannot be decoded \(Invalid PNG data"):
    take(batches, 6)  # two epochs: it is in one of them
  with pytest.raises(ValueError, match=r"damaged/x.png cannot be decoded"):
    data.load_split(config, "train")


def test_training_stops_on_a_damaged_file_with_one_line_and_keeps_its_checkpoint(tmp_path):
  from experiments import trainer  # pylint: disable=g-import-not-at-top
  from experiments.configs import tiny  # pylint: disable=g-import-not-at-top

  config = tiny.get_config()
  # 60 good files, 30 batches an epoch: x.png comes after some checkpoints.
  config.update({"image_shape": (8, 8, 3), "batch_size": 2, "steps_per_call": 1,
                 "checkpoint_every": 2, "num_steps": 60, "test_fraction": 0.0,
                 "image_dir": str(write_damaged_folder(tmp_path / "damaged", num_good=60))})
  with pytest.raises(trainer.ConfigError, match=r"x.png cannot be decoded .* Training stopped; "
                     r"the last checkpoint is step \d+") as error:
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  last = re.search(r"the last checkpoint is step (\d+)", str(error.value))[1]
  assert last in os.listdir(tmp_path / "run" / "checkpoints")


# --- Errors -------------------------------------------------------------------


def test_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="image_dir .*absent does not exist"):
    data.create_dataset(make_config(tmp_path / "absent"))


def test_folder_without_images(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
  with pytest.raises(FileNotFoundError, match="holds no JPEG or PNG file"):
    data.create_dataset(make_config(tmp_path / "empty"))


def test_folder_of_broken_files_only(tmp_path):
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "a.jpg").write_bytes(b"")
  with pytest.raises(ValueError, match="none of the 1 train files .* is a complete JPEG or PNG"):
    data.create_dataset(make_config(tmp_path / "bad"))


@pytest.mark.parametrize("image_shape", [(8, 8, 2), (8, 8), (8, 0, 3)])
def test_image_shape_must_be_grey_or_rgb(image_dir, image_shape):
  with pytest.raises(ValueError, match=re.escape("must be (height, width, 1 or 3)")):
    data.create_dataset(make_config(image_dir, image_shape=image_shape))


def test_crop_larger_than_an_image_names_it(image_dir):
  # The smallest side is 20: the 20-wide 50-high images.
  with pytest.raises(ValueError, match=r"config.crop 25 is larger than .*\(20x50 pixels\)"):
    data.create_dataset(make_config(image_dir, crop=25))


def test_crop_must_be_a_positive_side(image_dir):
  with pytest.raises(ValueError, match="config.crop must be the side in pixels .* got -3"):
    data.create_dataset(make_config(image_dir, crop=-3))


def test_unknown_split_and_bad_test_fraction(image_dir):
  with pytest.raises(ValueError, match="image folders have no split 'validation'"):
    data.load_split(make_config(image_dir), "validation")
  with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\), got 1.5"):
    data.load_split(make_config(image_dir, test_fraction=1.5), "train")


def test_image_dir_and_idx_dir_conflict(image_dir, tmp_path):
  config = make_config(image_dir, idx_dir=str(tmp_path))
  with pytest.raises(ValueError, match="sets both image_dir .* and idx_dir"):
    data.create_dataset(config)


# --- tfds photographs ---------------------------------------------------------


@pytest.fixture
def mock_tfds(tmp_path, monkeypatch):
  """tfds replaced by 16 random examples per split; data_dir is empty, nothing downloads."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(data.tfds, "unreachable_download_host", lambda builder: None)
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    yield tmp_path


@pytest.mark.parametrize("make", [celeba64.get_config, lsun_bedroom64.get_config],
                         ids=["celeb_a", "lsun_bedroom"])
def test_tfds_photographs_are_cropped_and_resized(mock_tfds, make):
  config = make()
  config.update({"data_dir": str(mock_tfds), "batch_size": 8})
  batches, info = data.create_dataset(config)
  epoch = take(batches, 2)
  train_images, _ = data.load_split(config, "train")
  test_images, labels = data.load_split(config, "test")  # lsun: its "validation" split

  assert info == data.DatasetInfo((64, 64, 3), 16, "train", f"tfds:{config.dataset}")
  assert epoch.shape == (2, 8, 64, 64, 3) and epoch.dtype == np.float32
  assert epoch.min() >= -1.0 and epoch.max() <= 1.0
  assert test_images.shape == (16, 64, 64, 3) and test_images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.full(16, data.NO_LABEL))
  # One preprocessing for the stream and for load_split.
  by_bytes = lambda arrays: sorted(array.tobytes() for array in arrays)
  signed = data.pixels_to_signed(train_images.astype(np.float32))
  assert by_bytes(epoch.reshape(16, 64, 64, 3)) == by_bytes(signed)


def test_tfds_photographs_need_resize_or_crop(mock_tfds):
  config = celeba64.get_config()
  config.update({"data_dir": str(mock_tfds), "crop": 0, "resize": False})
  with pytest.raises(ValueError, match=r"\(218, 178, 3\) .* or --config.resize=True"):
    data.create_dataset(config)
  config.update({"crop": 200, "resize": True})
  with pytest.raises(ValueError, match="config.crop 200 is larger than the 178x218 images"):
    data.create_dataset(config)


def test_imagenet_manual_download_names_the_directory(tmp_path, monkeypatch):
  import socket  # pylint: disable=g-import-not-at-top

  def no_network(*args, **kwargs):
    raise AssertionError("the network was touched")

  monkeypatch.setattr(socket, "create_connection", no_network)
  monkeypatch.setattr(data.tfds, "unreachable_download_host", no_network)
  config = imagenet128.get_config()
  config.data_dir = str(tmp_path)
  manual_dir = tmp_path / "downloads" / "manual"
  with pytest.raises(FileNotFoundError) as raised:
    data.create_dataset(config)
  message = str(raised.value)
  assert "\n" not in message
  assert f"must be downloaded by hand into {manual_dir}/" in message
  assert "ILSVRC2012_img_train.tar" in message


# --- Configs and write_image_folder -------------------------------------------


@pytest.mark.parametrize("module", [celeba64, lsun_bedroom64, imagenet128, fashion_rgb64],
                         ids=lambda module: module.__name__.rsplit(".", 1)[-1])
def test_configs_are_valid(module):
  from ebgan_jax import models  # pylint: disable=g-import-not-at-top
  from experiments import trainer  # pylint: disable=g-import-not-at-top

  config = module.get_config()
  for field in ("num_steps", "log_every", "sample_every", "checkpoint_every"):
    assert config[field] % config.steps_per_call == 0, field
  if config.model.family not in models.FAMILIES:
    pytest.skip(f"model family {config.model.family!r} is not registered yet")
  trainer.validate_config(config)


def test_write_image_folder_then_train_from_it(tmp_path):
  from experiments import write_image_folder  # pylint: disable=g-import-not-at-top
  from tests import data_fixtures  # pylint: disable=g-import-not-at-top

  idx_dir = data_fixtures.write_idx_dir(tmp_path / "idx", 24, 8, height=28, width=28)
  out = tmp_path / "folder"
  root = pathlib.Path(__file__).parents[1]
  subprocess.run([sys.executable, "-m", "experiments.write_image_folder", f"--idx_dir={idx_dir}",
                  f"--out={out}"], check=True, cwd=root, capture_output=True, timeout=120)

  files = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.png"))
  assert len(files) == 32 and "train/3/00013.png" in files and "test/7/00007.png" in files
  with Image.open(out / "train/3/00013.png") as image:
    assert image.mode == "RGB" and image.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(image), 13)  # numbered image 13, enlarged, grey
  with pytest.raises(write_image_folder.OutputExists, match="exists and is not an empty folder"):
    write_image_folder.write_image_folder(str(idx_dir), out)

  config = fashion_rgb64.get_config()
  config.update({"image_dir": str(out), "batch_size": 8})
  batches, info = data.create_dataset(config)
  assert next(batches).shape == (8, 64, 64, 3)
  assert (info.num_examples, info.image_shape) == (24, (64, 64, 3))
  test_images, _ = data.load_split(config, "test")
  assert test_images.shape == (8, 64, 64, 3)
