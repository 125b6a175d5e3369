"""Sample quality against a dataset's test split: IS, FD, KID, PRDC, class counts, modes.

The scores come from the classifier that experiments.train_classifier cached
for config.dataset (stacked MNIST: the digit classifier, on each channel);
every result names it by path and SHA-256. "fid" and "kid" are the Frechet
and kernel distances in that classifier's feature space: comparable between
runs scored by one classifier, not with Inception-network numbers.
`reference_images` gives their scale: training images (the real-vs-real
floor), test images blurred by a Gaussian of sigma = 1 pixel and uniform noise.

With config.eval.features = "inception" the features are instead those of
the FID Inception-v3 (ebgan_jax/inception.py, from pytorch-fid's weights file
at config.inception_weights or $EBGAN_INCEPTION_WEIGHTS): FID, KID and IS on
the scale of published numbers, against config.eval.inception_reference_size
images of the config.eval.inception_split split, whose features are computed
once and cached (docs/inception.md has the protocol).

`Evaluator(config)` scores image sets, and with `score_generator(state)` a
GANState's generator, for periodic evaluation during training. Settings come
from config.eval (fields: EVAL_DEFAULTS), defaults for those missing. The
trainer, the studies, the notebook and `python -m experiments.evaluate` share
this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import ml_collections
import numpy as np
from scipy import ndimage, special

from ebgan_jax import classifier as classifier_lib, data, inception, metrics, train, viz

# Settings of an evaluation, overridden by the fields of config.eval.
EVAL_DEFAULTS = {
    "classifier_dir": classifier_lib.DEFAULT_CACHE_DIR,  # cache of experiments.train_classifier
    "num_samples": 2000,  # images per periodic evaluation (score_generator)
    "seed": 0,            # z of periodic evaluations, KID subsets, reference draws
    "is_splits": 10,      # Salimans et al. (2016)
    "kid_subsets": 100,   # Binkowski et al. (2018), App. D
    "kid_subset_size": 1000,
    "nearest_k": 5,       # Naeem et al. (2020)
    # The feature network: "classifier" (the built-in one, no download) or
    # "inception" (the FID Inception-v3, weights from config.inception_weights).
    "features": "classifier",
    # Inception only: the real images, drawn (seed) from this split, 0 = all of it
    # (the usual protocols: 10,000 test images, or 50,000 training images) ...
    "inception_split": "test",
    "inception_reference_size": 10_000,
    # ... whose features are cached here, one .npz per dataset, split and size.
    "inception_stats_dir": "~/.cache/ebgan_jax/inception",
    # The weights file's SHA-256: pytorch-fid's; "" accepts any file of this
    # layout (other weights: numbers not comparable with papers).
    "inception_sha256": inception.FID_WEIGHTS_SHA256,
    "inception_batch_size": 50,  # images per forward pass
}
FEATURES = ("classifier", "inception")
# Pixels of the Gaussian blur of the "blurred_test" reference.
BLUR_SIGMA = 1.0
# Images generated per call of train.generate: one compiled shape for any count.
_GENERATE_BATCH = 500


# The experiments/configs/ file of experiments.train_classifier that makes each dataset's
# classifier; any other dataset's is CLASSIFIER_CONFIG_IMAGES's, read from its GAN config.
CLASSIFIER_CONFIGS = {"fashion_mnist": "classifier_fashion.py", "mnist": "classifier_mnist.py"}
CLASSIFIER_CONFIG_IMAGES = "classifier_images.py"


class EvaluationError(ValueError):
  """Bad user input: no classifier, unreadable samples, images of the wrong shape."""


def eval_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """EVAL_DEFAULTS updated with config.eval's fields."""
  settings = ml_collections.ConfigDict(EVAL_DEFAULTS)
  overrides = dict(config.eval)
  unknown = sorted(set(overrides) - set(EVAL_DEFAULTS))
  if unknown:
    raise EvaluationError(f"unknown config.eval fields {unknown}; known: {sorted(EVAL_DEFAULTS)}")
  settings.update(overrides)
  return settings


def score(classifier: classifier_lib.Classifier, images) -> tuple[np.ndarray, np.ndarray]:
  """Class log-probabilities and features of images; multi-channel images scored per channel.

  With a one-channel classifier and C-channel images (stacked MNIST), each
  channel is classified alone: the features are the C channels' features side
  by side, the log-probabilities those of the K^C modes
  (metrics.stacked_mode_log_probabilities).
  """
  images = np.asarray(images)
  height, width, channels = classifier.image_shape
  if (images.ndim != 4 or images.shape[1:3] != (height, width)
          or (images.shape[3] != channels and channels != 1)):
    raise EvaluationError(
        f"images of shape {images.shape} do not fit the classifier in {classifier.directory}, "
        f"trained on {classifier.image_shape} images")
  if images.shape[3] == channels:
    return classifier_lib.predict_log(classifier.model, classifier.params, images)
  n, stacked_channels = len(images), images.shape[3]
  digits = np.moveaxis(images, 3, 1).reshape(n * stacked_channels, height, width, 1)
  log_probabilities, features = classifier_lib.predict_log(classifier.model, classifier.params,
                                                           digits)
  return (metrics.stacked_mode_log_probabilities(
      log_probabilities.reshape(n, stacked_channels, -1)), features.reshape(n, -1))


def load_classifier(config: ml_collections.ConfigDict) -> classifier_lib.Classifier:
  """The cached classifier of config.dataset; EvaluationError saying how to train it if absent."""
  dataset = config.dataset
  directory = classifier_lib.cache_path(eval_settings(config).classifier_dir, dataset)
  try:
    return classifier_lib.load(directory)
  except FileNotFoundError:
    config_file = CLASSIFIER_CONFIGS.get(dataset, f"{CLASSIFIER_CONFIG_IMAGES}:GAN_CONFIG")
    raise EvaluationError(
        f"no trained classifier for {dataset!r} in {directory}; train it with `python -m "
        f"experiments.train_classifier --config=experiments/configs/{config_file}` (with the "
        "same idx_dir / data_dir and cache_dir)") from None


def inception_weights(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """The FID Inception's weights file, as an absolute path, and its SHA-256, both checked.

  The file is config.inception_weights, else $EBGAN_INCEPTION_WEIGHTS; its
  SHA-256 must be config.eval.inception_sha256 (pytorch-fid's; "" accepts
  any). EvaluationError saying where to get the file if it is absent.
  """
  path = config.get("inception_weights") or os.environ.get(inception.WEIGHTS_ENV)
  try:
    sha256 = inception.check_weights_file(path, eval_settings(config).inception_sha256 or None)
  except inception.WeightsError as e:
    raise EvaluationError(str(e)) from None
  return os.path.abspath(os.path.expanduser(path)), sha256


def load_inception(config: ml_collections.ConfigDict) -> tuple[dict, str, str]:
  """The FID Inception's variables, and inception_weights(config)."""
  path, sha256 = inception_weights(config)
  try:
    return inception.load_variables(path, sha256), path, sha256
  except inception.WeightsError as e:
    raise EvaluationError(str(e)) from None


def _load_split(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  try:
    images, _ = data.load_split(config, split)
  except ValueError as e:  # the data's or the config's fault
    raise EvaluationError(str(e)) from None
  return images


class Evaluator:
  """Scores image sets against one config's real images, whose statistics it computes once."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.settings = eval_settings(config)
    if self.settings.features not in FEATURES:
      raise EvaluationError(
          f"config.eval.features must be one of {FEATURES}, got {self.settings.features!r}")
    self.image_shape = tuple(config.image_shape)
    if self.settings.features == "inception":
      self._init_inception(config)
    else:
      self._init_classifier(config)
    self._real_statistics = metrics.feature_statistics(self._real_features)
    self._real_radii = metrics.nearest_neighbour_radii(self._real_features,
                                                       self.settings.nearest_k)

  def _init_classifier(self, config: ml_collections.ConfigDict) -> None:
    self.classifier = load_classifier(config)
    self.stacked = data.is_stacked(config)
    # A feature network trained on rotations has no classes to count (classifier.TASKS).
    self.has_classes = self.classifier.metadata["task"] == "labels"
    real_images = _load_split(config, "test")
    _, self._real_features = score(self.classifier, real_images)
    self._score = functools.partial(score, self.classifier)
    self.description = {
        "real": f"{data.source_name(config)} test split ({len(real_images)} images)",
        "features": "classifier",
        "classifier": self.classifier.directory,
        "classifier_sha256": self.classifier.metadata["params_sha256"],
        "classifier_test_accuracy": self.classifier.metadata["test_accuracy"],
    }

  def _init_inception(self, config: ml_collections.ConfigDict) -> None:
    settings = self.settings
    weights, weights_path, sha256 = load_inception(config)
    self.stacked = False  # no digit classifier: no modes to count
    self.has_classes = True  # ImageNet's: an Inception Score, no class counts of the data
    self._extractor = inception.FeatureExtractor(weights, settings.inception_batch_size)
    self._score = self._inception_outputs
    split = settings.inception_split
    if split not in ("train", "test"):
      raise EvaluationError(f"config.eval.inception_split must be 'train' or 'test', got {split!r}")
    key = {"source": data.source_name(config), "split": split,
           "size": settings.inception_reference_size, "seed": settings.seed,
           "image_shape": list(self.image_shape), "weights_sha256": sha256,
           "resize": inception.RESIZE}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(os.path.expanduser(settings.inception_stats_dir),
                        f"{config.dataset}_{split}_{digest}.npz")
    if os.path.isfile(path):
      try:
        self._real_features, _, _, _ = inception.load_reference(path)
      except (OSError, ValueError, KeyError) as e:
        raise EvaluationError(f"cannot read the reference statistics {path} ({e}); delete the "
                              "file to compute them again") from None
    else:
      real_images = _load_split(config, split)
      size = settings.inception_reference_size
      if 0 < size < len(real_images):
        rng = np.random.default_rng(settings.seed)
        real_images = real_images[np.sort(rng.choice(len(real_images), size, replace=False))]
      _, self._real_features = self._inception_outputs(real_images)
      try:
        inception.save_reference(path, self._real_features, **{
            name: value if isinstance(value, str) else json.dumps(value)
            for name, value in key.items()})
      except OSError as e:
        raise EvaluationError(f"cannot write the reference statistics {path} ({e})") from None
    self.description = {
        "real": f"{key['source']} {split} split ({len(self._real_features)} images)",
        "features": "inception",
        "inception_weights": weights_path,
        "inception_sha256": sha256,
        "resize": inception.RESIZE,
        "reference_statistics": path,
    }

  @property
  def network(self) -> str:
    """The feature network, named as every result names it: path and SHA-256."""
    if self.settings.features == "inception":
      return (f"Inception-v3 {self.description['inception_weights']} "
              f"(sha256 {self.description['inception_sha256']})")
    return (f"classifier {self.description['classifier']} "
            f"(sha256 {self.description['classifier_sha256']})")

  def _inception_outputs(self, images) -> tuple[np.ndarray, np.ndarray]:
    """log p(y|x) over the 1008 logits without bias (the IS code's) and the pool features."""
    outputs = self._extractor(images)
    return (special.log_softmax(outputs["logits_unbiased"].astype(np.float64), axis=1),
            outputs["pool"])

  def __call__(self, images) -> dict[str, float | list[int]]:
    """All metrics of images (uint8, or floats in [-1, 1]) against the real images.

    Keys: fid, kid(_std), precision, recall, density, coverage; with a
    classifier of labels or the Inception network also inception_score(_std),
    log_is (over all the images: one split), i_prime (metrics.i_prime, clipped)
    and i_prime_torch (metrics.i_prime_torch, from the log-probabilities);
    with a classifier of labels and plain data, classes_1pct (classes with
    >= 1% of the samples), kl_to_uniform and class_histogram (argmax counts);
    for stacked MNIST, modes_covered (of 10^C) and kl_modes_to_uniform instead.
    """
    settings = self.settings
    images = np.asarray(images)
    if images.shape[1:] != self.image_shape:
      raise EvaluationError(
          f"images of shape {images.shape} do not match config.image_shape {self.image_shape}")
    if len(images) < max(settings.is_splits, settings.nearest_k + 1):
      raise EvaluationError(
          f"{len(images)} images are too few to score; give at least "
          f"{max(settings.is_splits, settings.nearest_k + 1)}")
    log_probabilities, features = self._score(images)
    kid, kid_std = metrics.kernel_inception_distance(
        self._real_features, features, num_subsets=settings.kid_subsets,
        subset_size=settings.kid_subset_size, seed=settings.seed)
    results = {
        "fid": metrics.frechet_distance(*self._real_statistics,
                                        *metrics.feature_statistics(features)),
        "kid": kid,
        "kid_std": kid_std,
        **metrics.precision_recall_density_coverage(
            self._real_features, features, settings.nearest_k, real_radii=self._real_radii),
    }
    if not self.has_classes:
      return results
    probabilities = np.exp(log_probabilities)
    results["inception_score"], results["inception_score_std"] = metrics.inception_score(
        probabilities, settings.is_splits)
    results["log_is"] = metrics.log_inception_score(probabilities)
    results["i_prime"] = metrics.i_prime(probabilities)
    results["i_prime_torch"] = metrics.i_prime_torch(log_probabilities)
    if self.settings.features == "inception":
      return results  # ImageNet's classes: no class counts of the data
    histogram = metrics.class_histogram(probabilities)
    if self.stacked:
      results.update(metrics.mode_coverage(np.argmax(probabilities, axis=1), len(histogram)))
    else:
      results["classes_1pct"] = metrics.classes_above(histogram, 0.01)
      results["kl_to_uniform"] = metrics.kl_to_uniform(histogram)
      results["class_histogram"] = histogram.tolist()
    return results

  def score_generator(self, state) -> dict[str, float]:
    """The scalar metrics of a GANState's generator, for periodic evaluation during training.

    Draws config.eval.num_samples images, always from the same z (seeded by
    config.eval.seed) so that the numbers of two steps differ by the
    generator only, quantises them to uint8 like samples.npz, and scores
    them (every key but class_histogram). With fewer samples than the test
    split's 10,000, fid and kid sit above their reference values (FD is
    biased upwards at small N) and recall reads high: compare periodic
    numbers with each other.
    """
    images = generate_images(state, jax.random.PRNGKey(self.settings.seed),
                             self.settings.num_samples)
    return {name: float(value) for name, value in self(images).items()
            if name != "class_histogram"}


def generate_images(state, key: jax.Array, n: int) -> np.ndarray:
  """n uint8 samples of a GANState, as `--mode=sample` writes them to samples.npz."""
  chunks = [viz.to_uint8(train.generate(state, jax.random.fold_in(key, i), _GENERATE_BATCH))
            for i in range(-(-n // _GENERATE_BATCH))]
  return np.concatenate(chunks)[:n]


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
  """uint8 images (N, H, W, C) blurred over H and W by a Gaussian of `sigma` pixels.

  scipy.ndimage.gaussian_filter (kernel truncated at 4 sigma, edges
  reflected), rounded back to uint8.
  """
  blurred = ndimage.gaussian_filter(np.asarray(images, np.float64), (0, sigma, sigma, 0),
                                    mode="mirror", truncate=4.0)
  return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def reference_images(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Image sets of known quality, config.num_samples of each (seed: config.eval.seed).

  "train": training images, the real-vs-real floor; "blurred_test": test
  images blurred by a Gaussian of BLUR_SIGMA pixel, a familiar degradation
  (they differ from the reference set by the blur alone); "uniform_noise".
  """
  rng = np.random.default_rng(eval_settings(config).seed)
  try:
    train_images, _ = data.load_split(config, "train")
    test_images, _ = data.load_split(config, "test")
  except ValueError as e:
    raise EvaluationError(str(e)) from None
  n = min(config.num_samples, len(train_images))
  # Drawn in this order, so that "train" and "uniform_noise" are the sets that
  # evaluations before "blurred_test" existed used.
  train = train_images[rng.choice(len(train_images), n, replace=False)]
  noise = rng.integers(0, 256, size=(n, *train_images.shape[1:]), dtype=np.uint8)
  blurred = gaussian_blur(
      test_images[rng.choice(len(test_images), min(n, len(test_images)), replace=False)],
      BLUR_SIGMA)
  return {"train": train, "blurred_test": blurred, "uniform_noise": noise}


def load_samples(path: str) -> np.ndarray:
  """The 'images' array of an .npz file."""
  try:
    samples = np.load(path)
  except (OSError, ValueError) as e:
    raise EvaluationError(f"cannot read samples from {path}: {e}") from None
  if not isinstance(samples, np.lib.npyio.NpzFile):
    raise EvaluationError(f"{path} is not an .npz file; save the samples with np.savez(path, "
                          "images=images)")
  with samples:
    if "images" not in samples:
      raise EvaluationError(f"{path} has no 'images' array (it has {sorted(samples)})")
    return samples["images"]
