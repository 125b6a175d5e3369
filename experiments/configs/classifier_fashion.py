"""The Fashion-MNIST classifier of the sample-quality metrics.

  python -m experiments.train_classifier --config=experiments/configs/classifier_fashion.py \
      --config.idx_dir=/usr/share/datasets/fashion-mnist
"""

from experiments.configs import classifier_mnist


def get_config():
  config = classifier_mnist.get_config()
  config.dataset = "fashion_mnist"
  return config
