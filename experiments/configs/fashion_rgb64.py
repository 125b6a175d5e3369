"""conv64 on Fashion-MNIST as 64x64 RGB photographs: the image-folder pipeline on real images.

Write the folder once (about 75 s on 2 cores), then point image_dir at it:

  python -m experiments.write_image_folder --out=/tmp/fashion_rgb64
  python -m experiments.mnist_ebgan --config=experiments/configs/fashion_rgb64.py \
      --config.image_dir=/tmp/fashion_rgb64 --workdir=/tmp/ebgan_fashion_rgb64

Its train/ and test/ subfolders are the splits (60,000 and 10,000 images). The argument
picks the objective, e.g. DCGAN beside EBGAN-PT: --config=experiments/configs/fashion_rgb64.py:gan
"""

import ml_collections

from experiments.configs import celeba64


def get_config(objective: str = "ebgan") -> ml_collections.ConfigDict:
  config = celeba64.get_config(objective)
  # The data set's name (e.g. the evaluation's classifier cache); the images
  # come from image_dir, which the user sets.
  config.dataset = "fashion_rgb64"
  config.crop = 0  # the images are square already: nothing is cut off

  # The per-pixel mean energy and its 28x28 margin (docs/tuning.md: 0.3 best of
  # 0.1 to 0.5, 1 collapses to grey): a mean does not grow with the image, and
  # the images are the same garments, only enlarged. (As a norm: sqrt(0.3 *
  # 12288) = 60.7.)
  config.energy_reduction = "mean"
  config.margin = 0.3

  # 937 batches of 64 per epoch: 20,000 steps are about 21 epochs.
  config.num_steps = 20_000
  config.steps_per_epoch = 937
  return config
