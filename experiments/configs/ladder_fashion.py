"""ladder_mnist on Fashion-MNIST; offline: --config.idx_dir=/usr/share/datasets/fashion-mnist."""

from experiments.configs import ladder_mnist


def get_config():
  config = ladder_mnist.get_config()
  config.dataset = "fashion_mnist"
  return config
