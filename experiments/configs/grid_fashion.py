r"""The grid search of grid_mnist.py on Fashion-MNIST from the IDX files: the same study offline.

  python -m experiments.grid_search --config=experiments/configs/grid_fashion.py:reduced \
      --workdir=/tmp/grid

Scored by the Fashion-MNIST classifier (experiments/configs/classifier_fashion.py).
"""

from experiments.configs import grid_mnist


def get_config(subset: str = "full"):
  config = grid_mnist.get_config(subset)
  config.dataset = "fashion_mnist"
  config.idx_dir = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
  return config
