"""EBGAN-PT on ImageNet at 128x128 with the conv128 nets (the paper's Sec. 4.5, App. C).

tfds's imagenet2012 needs a manual download: ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar (from https://image-net.org/download-images) in
<data_dir>/downloads/manual/ (tfds's manual_dir; data_dir defaults to
~/tensorflow_datasets). Each image: the largest centered square, resized to
128x128. The rest is celeba64.py's, but for the paper's ImageNet margin.
"""

import ml_collections

from experiments.configs import celeba64

# Values per image of 128x128 RGB: mean(r^2) = sum(r^2) / 49152.
NUM_VALUES = 128 * 128 * 3


def get_config(objective: str = "ebgan") -> ml_collections.ConfigDict:
  config = celeba64.get_config(objective)
  config.dataset = "imagenet2012"
  config.image_shape = (128, 128, 3)
  config.crop = 0  # no fixed crop: the largest centered square of each image
  config.resize = True  # of every size: resized to image_shape
  # The 50,000 labelled validation images are the test split (tfds's "test"
  # has no labels, and needs a third archive).
  config.tfds_splits = ml_collections.ConfigDict({"train": "train", "test": "validation"})
  # 48 KB per decoded 128x128x3 image: 10,000 in the shuffle buffer are 492 MB,
  # and so are the 10,000 evaluation images.
  config.shuffle_buffer = 10_000
  config.max_eval_images = 10_000

  config.model = ml_collections.ConfigDict({"family": "conv128"})

  # The paper's ImageNet 128 margin, on its norm energy (celeba64.py explains the
  # scale): sum(r^2) = 40^2 = 1600, a per-pixel mean of 1600 / 49152 = 0.033,
  # as for CelebA at 64x64.
  config.margin = 40.0

  # 20,018 batches of 64 per epoch (1,281,167 images): 200,000 steps are about 10 epochs.
  config.num_steps = 200_000
  config.steps_per_epoch = 20_018
  config.sample_every = 5_000
  config.checkpoint_every = 5_000
  return config
