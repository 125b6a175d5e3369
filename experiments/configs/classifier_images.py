r"""The feature network that scores samples of photographs (CelebA, LSUN, ImageNet, a folder).

  python -m experiments.train_classifier --config=experiments/configs/classifier_images.py:celeba64
  python -m experiments.train_classifier \
      --config=experiments/configs/classifier_images.py:fashion_rgb64 \
      --config.image_dir=/tmp/fashion_rgb64

The argument names the GAN config whose data it learns, read exactly as that
config reads it (its data fields are copied); pass the same --config.image_dir
or data_dir. Photographs have no class labels here, so the network learns which
of four rotations an image shows (ebgan_jax/classifier.py, `rotation_task`),
from at most max_eval_images training images. Its features give FID, KID and
precision / recall / density / coverage against the test split; there is no
Inception Score or class count for these data. Saved to
<cache_dir>/<the GAN config's dataset>, where ebgan_jax.evaluation finds it.
"""

import importlib

import ml_collections

from experiments.configs import classifier_mnist

# The fields of a GAN config that say which images it reads, and how.
DATA_FIELDS = ("dataset", "idx_dir", "data_dir", "download", "image_dir", "image_shape", "crop",
               "resize", "test_fraction", "max_eval_images", "tfds_splits")


def get_config(gan_config: str = "celeba64") -> ml_collections.ConfigDict:
  gan = importlib.import_module(f"experiments.configs.{gan_config}").get_config()
  config = classifier_mnist.get_config()
  with config.unlocked():
    for field in DATA_FIELDS:
      config[field] = gan[field]
  config.task = "rotation"
  config.model.num_classes = 4
  # 10,000 images of 64x64x3 (max_eval_images) per epoch: about 2 minutes an
  # epoch on two CPU cores.
  config.num_epochs = 4
  return config
