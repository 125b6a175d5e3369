"""EBGAN-PT on LSUN bedrooms at 64x64 with the conv64 nets (the paper's Sec. 4.4, App. C).

tfds's lsun/bedroom (3,033,042 training images of various sizes, a 43 GB
download): the largest centered square of each, resized to 64x64. The rest is
celeba64.py's, but for the paper's LSUN margin.
"""

import ml_collections

from experiments.configs import celeba64


def get_config(objective: str = "ebgan") -> ml_collections.ConfigDict:
  config = celeba64.get_config(objective)
  config.dataset = "lsun/bedroom"
  config.crop = 0  # no fixed crop: the largest centered square of each image
  config.resize = True  # of every size: resized to image_shape
  # lsun has no test split; its 300 validation images serve (an FID reference
  # that small is biased high: for 10,000, export images to an image folder).
  config.tfds_splits = ml_collections.ConfigDict({"train": "train", "test": "validation"})

  # The paper's LSUN margin, on its norm energy (celeba64.py explains the
  # scale): sum(r^2) = 80^2 = 6400, a per-pixel mean of 6400 / 12288 = 0.52, at
  # the top of the mean-energy margins that train on 28x28 Fashion-MNIST
  # (0.1 to 0.5; 1 collapses to grey, docs/tuning.md).
  config.margin = 80.0

  # 47,391 batches of 64 per epoch: 100,000 steps are about two epochs.
  config.num_steps = 100_000
  config.steps_per_epoch = 47_391
  return config
