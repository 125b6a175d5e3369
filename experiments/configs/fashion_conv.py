"""conv28 on Fashion-MNIST; offline: --config.idx_dir=/usr/share/datasets/fashion-mnist.

Its argument picks the objective: --config=experiments/configs/fashion_conv.py:began
(mnist_conv.OBJECTIVE_VARIANTS).
"""

from experiments.configs import mnist_conv


def get_config(objective: str = "ebgan"):
  config = mnist_conv.get_config(objective)
  config.dataset = "fashion_mnist"
  return config
