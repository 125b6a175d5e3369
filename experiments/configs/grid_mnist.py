r"""The paper's MNIST stability study (Sec. 4.1, Table 1, Figs. 2-3): EBGAN against a GAN.

  python -m experiments.grid_search --config=experiments/configs/grid_mnist.py --workdir=DIR
  python -m experiments.grid_search --config=experiments/configs/grid_mnist.py:reduced ...

Both objectives on fully-connected nets of the mlp family over the grid
nLayerG, nLayerD in {2..5}, sizeG in {400..3200}, sizeD in {128..1024},
dropoutD on / off (512 architectures). EBGAN: Adam lr 1e-3 for both nets, the
"norm" energy with margin 10, one decoder layer: 512 runs. GAN: D of the same
family ending in one logit, optimD, optimG in {adam, sgd}, lr in {1e-2, 1e-3,
1e-4}: 6,144 runs. docs/grid_search.md says where this follows the paper and
where it had to choose (dropout rate, training length, lambda_pt, the clip of I').
"""

import ml_collections

from experiments.configs import mnist_mlp

SUBSETS = ("full", "reduced", "tiny")


def get_config(subset: str = "full") -> ml_collections.ConfigDict:
  config = mnist_mlp.get_config()  # EBGAN: norm energy, m = 10, Adam lr 1e-3 for both nets
  # The paper's grid is plain EBGAN; the pulling-away term belongs to its EBGAN-PT nets.
  config.lambda_pt = 0.0
  config.z_dim = 64  # z ~ U(-1, 1)^64: the paper gives no size for its MNIST nets
  config.batch_size = 64
  config.steps_per_call = 50
  config.grid = ml_collections.ConfigDict({
      "subset": subset,  # one of SUBSETS (experiments/grid_search.py)
      "n_layer_g": (2, 3, 4, 5),
      "n_layer_d": (2, 3, 4, 5),
      "size_g": (400, 800, 1600, 3200),
      "size_d": (128, 256, 512, 1024),
      # dropoutD on is this rate (the paper does not give it; Torch's nn.Dropout default).
      "dropout_rate": 0.5,
      "gan_learning_rates": (1e-2, 1e-3, 1e-4),
      "gan_optimizers": ("adam", "sgd"),
      # Training length of every run, in epochs of the training split (the paper does
      # not say); the tiny subset trains tiny_steps steps instead.
      "epochs": 10.0,
      "tiny_steps": 20,
      # The reduced subset: the grid's smaller widths, then this many architectures of
      # them drawn at random (docs/grid_search.md).
      "reduced_size_g": (400, 800),
      "reduced_size_d": (128, 256),
      "reduced_architectures": 64,
      "eval_samples": 5_000,  # generated images scored per run
  })
  if subset == "reduced":
    config.grid.epochs = 1.0
    config.grid.eval_samples = 2_000
  if subset == "tiny":
    config.grid.eval_samples = 500
    config.steps_per_call = 10
  return config
