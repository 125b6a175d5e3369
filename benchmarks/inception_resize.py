"""How far the resize to 299x299 moves Inception features and FID: pytorch-fid's against others.

  python benchmarks/inception_resize.py [--weights PATH] [--num_images 100]

The same uint8 images go to 299x299 by each resizer, then through the FID
Inception-v3; every number compares a resizer with `torch_bilinear`, the one
ebgan_jax uses (pytorch-fid's), on the same images, so it is the resize's
effect alone:

  torch_bilinear  pytorch-fid: F.interpolate(bilinear, align_corners=False), no antialiasing
  tf1_bilinear    TTUR's TensorFlow graph: the legacy ResizeBilinear (align_corners=False,
                  source pixel dst * in / out, no half-pixel offset)
  pil_bicubic     clean-fid: PIL's bicubic on each channel in float mode
  torch_nearest   F.interpolate(nearest): source pixel floor(dst * in / out)

Per resizer: the RMS and largest pixel difference (on the [-1, 1] scale), the
mean relative change of an image's 2048-d features, and the FID between the
two feature sets; for scale, the FID of the same images blurred by a
Gaussian of sigma = 1 pixel before `torch_bilinear`. Images: Fashion-MNIST
test images (28x28, one channel repeated to RGB) and the same images
enlarged to 64x64 by PIL's bicubic (the 64x64 case). Without --weights the
network has the tests' random weights (tests/fixtures/make_inception_fixtures.py):
the pixel numbers hold, the feature and FID numbers are only relative to the
blur's under the same random network; pass pytorch-fid's weights file for
the real ones. Prints one JSON line per source and resizer.
"""

import json
import os
import pathlib
import sys

from absl import app, flags
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests.fixtures
from ebgan_jax import data, evaluation, inception, metrics  # noqa: E402
from experiments.configs import fashion_conv  # noqa: E402
from tests.fixtures import make_inception_fixtures  # noqa: E402

_WEIGHTS = flags.DEFINE_string("weights", None, "pytorch-fid's weights file; default: random.")
_IDX_DIR = flags.DEFINE_string("idx_dir", "/usr/share/datasets/fashion-mnist", "Fashion-MNIST.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 100, "Test images per source.")
_BATCH = flags.DEFINE_integer("batch", 25, "Images per forward pass.")


def tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of TF1's ResizeBilinear, align_corners=False (no half-pixel offset)."""
  source = np.arange(out_size) * (in_size / out_size)
  lower = np.floor(source).astype(np.int64)
  upper = np.minimum(lower + 1, in_size - 1)
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), lower), 1 - (source - lower))
  np.add.at(matrix, (np.arange(out_size), upper), source - lower)
  return matrix


def nearest_matrix(in_size: int, out_size: int) -> np.ndarray:
  matrix = np.zeros((out_size, in_size))
  matrix[np.arange(out_size), np.floor(np.arange(out_size) * in_size / out_size).astype(int)] = 1
  return matrix


def by_matrices(matrix_fn):
  def resizer(images):
    signed = images.astype(np.float32) / 127.5 - 1
    _, height, width, _ = images.shape
    return np.asarray(inception.resize(signed, matrix_fn(height, inception.INPUT_SIZE),
                                       matrix_fn(width, inception.INPUT_SIZE)))
  return resizer


def pil_bicubic(images):
  size = (inception.INPUT_SIZE, inception.INPUT_SIZE)
  out = np.stack([np.stack([np.asarray(Image.fromarray(image[..., c].astype(np.float32), "F")
                                       .resize(size, Image.BICUBIC)) for c in range(3)], -1)
                  for image in images])
  return out / 127.5 - 1


RESIZERS = {
    "torch_bilinear": lambda images: np.asarray(inception.to_inception_input(images)),
    "tf1_bilinear": by_matrices(tf1_bilinear_matrix),
    "pil_bicubic": pil_bicubic,
    "torch_nearest": by_matrices(nearest_matrix),
}


def main(argv):
  del argv
  if _WEIGHTS.value:
    variables = inception.load_variables(_WEIGHTS.value)
    weights = f"{_WEIGHTS.value} (pytorch-fid's)"
  else:
    variables = inception.variables_from_state_dict(make_inception_fixtures.random_state_dict(
        inception.torch_shapes(), make_inception_fixtures.WEIGHTS_SEED))
    weights = "random (the tests' seed): FID only relative to the blur's"
  extractor = inception.FeatureExtractor(variables, _BATCH.value)
  config = fashion_conv.get_config()
  config.idx_dir = _IDX_DIR.value
  gray, _ = data.load_split(config, "test")
  gray = np.repeat(gray[:_NUM_IMAGES.value], 3, axis=-1)
  enlarged = np.stack([np.asarray(Image.fromarray(image).resize((64, 64), Image.BICUBIC))
                       for image in gray])
  for source, images in (("fashion_mnist_28", gray), ("fashion_mnist_64", enlarged)):
    inputs = {name: resize(images) for name, resize in RESIZERS.items()}
    inputs["blur_sigma1"] = RESIZERS["torch_bilinear"](evaluation.gaussian_blur(images, 1.0))
    reference = inputs["torch_bilinear"]
    features = {name: extractor(x)["pool"].astype(np.float64) for name, x in inputs.items()}
    for name, x in inputs.items():
      change = np.linalg.norm(features[name] - features["torch_bilinear"], axis=1)
      norm = np.linalg.norm(features["torch_bilinear"], axis=1)
      print(json.dumps({
          "source": source, "resize": name, "images": len(images), "weights": weights,
          "pixel_rms": float(np.sqrt(np.mean((x - reference) ** 2))),
          "pixel_max": float(np.abs(x - reference).max()),
          "feature_change": float(np.mean(change / norm)),
          "fid_to_torch_bilinear": metrics.frechet_feature_distance(
              features["torch_bilinear"], features[name]),
      }), flush=True)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main)
