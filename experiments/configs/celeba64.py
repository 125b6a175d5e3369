"""EBGAN-PT on CelebA faces at 64x64 with the conv64 nets (the paper's Sec. 4.4, App. C).

The images are tfds's celeb_a (202,599 aligned 178x218 faces; it downloads on
first use): the usual 108-pixel centered face crop, resized to 64x64
(ebgan_jax/data/photos.py). The optimiser, batch and objective are common public
settings for this size, a starting point only: they are not tuned here.
An export of the images works as well: --config.image_dir=.../img_align_celeba
(then 2% of the files, chosen by a hash of their names, form the test split).
"""

import ml_collections

from experiments.configs import mnist_conv

# Values per image of 64x64 RGB, the scale between the energies: for a
# reconstruction error r, mean(r^2) = sum(r^2) / 12288 and ||r|| = sqrt(sum(r^2)).
NUM_VALUES = 64 * 64 * 3


def get_config(objective: str = "ebgan") -> ml_collections.ConfigDict:
  config = mnist_conv.get_config()

  # Data (ebgan_jax/data/photos.py: photographs are center-cropped, then resized with
  # antialiasing).
  # (Or --config.image_dir=.../img_align_celeba, a folder of the same JPEGs.)
  config.dataset = "celeb_a"
  config.image_shape = (64, 64, 3)
  config.crop = 108  # side of the centered square cut from the 178x218 faces, then resized
  # FID's real set: at most max_eval_images (10,000) test images, 123 MB at 64x64x3.
  # tfds images are decoded and resized before the shuffle buffer, which then
  # holds 12 KB per image: 20,000 of them are 246 MB. (An image folder shuffles
  # all its file names instead.)
  config.shuffle_buffer = 20_000

  # Nets: the conv64 family at its own defaults (models.py).
  config.model = ml_collections.ConfigDict({"family": "conv64"})
  config.z_dim = 100

  # Objective. The paper gives margins of 20 (CelebA), 80 (LSUN) and 40
  # (ImageNet 128) for D(x) = ||Dec(Enc(x)) - x||, its Eq. 13: the L2 norm, the
  # scale on which this project reads the paper's MNIST margin of 10 too
  # (mnist_mlp.py, docs/tuning.md). So the energy is the norm, m = 20 as published. On the
  # sum-of-squares scale that is m^2 = 400, and as a per-pixel mean
  # 400 / 12288 = 0.033: a tenth of the 0.3 that suits the mean energy on
  # 28x28 Fashion-MNIST (docs/tuning.md), i.e. D only has to reconstruct
  # generated faces a little worse than real ones. (Read as sum(r^2) instead,
  # m = 20 would be a per-pixel mean of 20 / 12288 = 0.0016.)
  config.energy_reduction = "norm"
  config.margin = 20.0
  config.lambda_pt = 0.1

  # Adam as in DCGAN-style 64x64 training: lr_G 2e-4, lr_D 1e-4 (b1 0.5, batch
  # 64 as in mnist_conv.py).
  config.optim_g.learning_rate = 2e-4
  config.optim_d.learning_rate = 1e-4

  # Training loop: 162,770 training faces are 2,543 batches of 64, so 50,000
  # steps are about 20 epochs. Grids and checkpoints every 2,000 steps (a 64x64
  # checkpoint is larger, and slower to write, than a 28x28 one); every
  # interval is a multiple of steps_per_call (20).
  config.num_steps = 50_000
  config.steps_per_epoch = 2_543
  config.sample_every = 2_000
  config.checkpoint_every = 2_000
  mnist_conv.use_objective(config, objective)
  return config
