"""conv28 on Fashion-MNIST; offline: --config.idx_dir=/usr/share/datasets/fashion-mnist."""

from experiments.configs import mnist_conv


def get_config():
  config = mnist_conv.get_config()
  config.dataset = "fashion_mnist"
  return config
