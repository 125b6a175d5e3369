"""The MNIST digit classifier of the sample-quality metrics (and of stacked MNIST's modes).

  python -m experiments.train_classifier --config=experiments/configs/classifier_mnist.py

Saved to <cache_dir>/mnist, where experiments.evaluate finds it for every
config with dataset "mnist" (stacked MNIST included).
"""

import ml_collections
from ml_collections import config_dict

from ebgan_jax import classifier
from experiments.configs import mnist_conv


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data, read as by the GAN configs: tfds by name, or the IDX files of idx_dir.
  # `dataset` also names the cache entry that evaluation looks up.
  config.dataset = "mnist"
  config.idx_dir = config_dict.placeholder(str)
  config.data_dir = config_dict.placeholder(str)  # tfds data_dir; None = tfds default
  config.download = True
  config.image_shape = (28, 28, 1)
  mnist_conv.add_photograph_fields(config)  # the same data fields as the GAN configs

  # "labels": learn the dataset's classes; "rotation": which of 4 rotations an
  # image shows, for images without labels (ebgan_jax/classifier.py).
  config.task = "labels"
  config.model = ml_collections.ConfigDict(
      {"num_classes": 10, "feature_dim": 128, "dropout_rate": 0.5})

  # Adam with a cosine decay to 0: about 1 minute per epoch of 60,000 images
  # on two CPU cores.
  config.num_epochs = 8
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.seed = 0

  config.cache_dir = classifier.DEFAULT_CACHE_DIR
  config.retrain = False  # True: train again even if the cache has this classifier
  return config
