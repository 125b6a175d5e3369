"""Stacked MNIST, the mode-collapse test: conv28 nets on 28x28x3 images of three digits.

Metz et al. (2017, "Unrolled GANs", Sec. 3.3): each image stacks three
independently drawn MNIST digits as its R, G and B channels, 1000 equally
likely modes. experiments.evaluate classifies each channel with the MNIST
digit classifier (experiments/configs/classifier_mnist.py) and reports the
modes covered out of 1000 and the KL of the mode distribution to uniform.
Offline: --config.idx_dir=DIR with MNIST's four IDX files.
"""

import ml_collections

from experiments.configs import mnist_conv


def get_config(objective: str = "ebgan"):
  config = mnist_conv.get_config(objective)
  config.image_shape = (28, 28, 3)
  # Stacked images per split, the digit triples fixed per split (ebgan_jax/data/stacked.py).
  config.stacked_split_sizes = ml_collections.ConfigDict({"train": 100_000, "test": 10_000})
  config.shuffle_buffer = 100_000  # all of the stacked training set: a full shuffle
  config.steps_per_epoch = 1_562  # 100,000 stacked images in batches of 64
  # 26 samples per mode on average: a generator that spreads its samples
  # evenly over the 1000 modes leaves almost none empty (1000 e^-26 ~ 0).
  config.num_samples = 26_000
  config.eval.num_samples = 10_000
  return config
