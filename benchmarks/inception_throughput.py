"""Time to score samples with the FID Inception-v3: features per image, then the metrics.

  python benchmarks/inception_throughput.py [--num_images 1000] [--size 64] [--batch 50]

Times `inception.FeatureExtractor` (resize to 299x299 and the network) on
--num_images random uint8 RGB images of --size pixels after one warm-up batch
(the compilation), and the metrics of `Evaluator.__call__` (FID, KID over 100
subsets of 1,000, precision / recall / density / coverage) on --num_metrics
random 2048-d feature rows against as many reference rows. The weights are
random (the network's cost does not depend on them). Prints one JSON line,
with the time to score 10,000 images extrapolated from --num_images.
"""

import json
import time

from absl import app, flags
import jax
import numpy as np

from ebgan_jax import inception, metrics

_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "Images timed through the network.")
_SIZE = flags.DEFINE_integer("size", 64, "Side of the square images.")
_BATCH = flags.DEFINE_integer("batch", 50, "Images per forward pass.")
_NUM_METRICS = flags.DEFINE_integer("num_metrics", 10_000, "Feature rows per side for metrics.")


def main(argv):
  del argv
  rng = np.random.default_rng(0)

  def random_leaf(path, leaf):  # He-scaled kernels, BatchNorm the identity: finite activations
    name = path[-1].key
    if name == "kernel":
      return (rng.standard_normal(leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(
          np.float32)
    return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  variables = jax.tree_util.tree_map_with_path(random_leaf, inception.variable_shapes())
  extractor = inception.FeatureExtractor(variables, _BATCH.value)
  images = rng.integers(0, 256, (_NUM_IMAGES.value, _SIZE.value, _SIZE.value, 3), np.uint8)
  start = time.perf_counter()
  extractor(images[:_BATCH.value])
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  extractor(images)
  features_s = time.perf_counter() - start

  real = rng.normal(size=(_NUM_METRICS.value, inception.FEATURE_DIM))
  fake = rng.normal(size=(_NUM_METRICS.value, inception.FEATURE_DIM)) + 0.1
  timings = {}
  start = time.perf_counter()
  real_statistics = metrics.feature_statistics(real)
  radii = metrics.nearest_neighbour_radii(real, 5)
  timings["reference_statistics_s"] = time.perf_counter() - start
  start = time.perf_counter()
  metrics.frechet_distance(*real_statistics, *metrics.feature_statistics(fake))
  timings["fid_s"] = time.perf_counter() - start
  start = time.perf_counter()
  metrics.kernel_inception_distance(real, fake, num_subsets=100, subset_size=1000)
  timings["kid_s"] = time.perf_counter() - start
  start = time.perf_counter()
  metrics.precision_recall_density_coverage(real, fake, 5, real_radii=radii)
  timings["prdc_s"] = time.perf_counter() - start
  per_image = features_s / _NUM_IMAGES.value
  print(json.dumps({
      "images": _NUM_IMAGES.value, "size": _SIZE.value, "batch": _BATCH.value,
      "devices": str(jax.devices()), "compile_s": round(compile_s, 1),
      "features_s": round(features_s, 1), "ms_per_image": round(1000 * per_image, 1),
      "metric_rows": _NUM_METRICS.value, **{k: round(v, 1) for k, v in timings.items()},
      "score_10000_extrapolated_s": round(
          10_000 * per_image + timings["fid_s"] + timings["kid_s"] + timings["prdc_s"]),
  }))


if __name__ == "__main__":
  app.run(main)
