"""The paper's MNIST margin study setting: MLP nets 5 x 1600 / 2 x 1024, "norm" energy, m = 10.

Zhao et al. (2017), Sec. 4.1 and Appendix C: the best of their 512-run grid,
Adam with lr 1e-3 for both nets, no dropout.
"""

from experiments.configs import mnist_conv


def get_config():
  config = mnist_conv.get_config()
  config.model = {"family": "mlp", "n_layer_g": 5, "size_g": 1600,
                  "n_layer_d": 2, "size_d": 1024, "dropout_d": 0.0}
  config.energy_reduction = "norm"  # ||Dec(Enc(x)) - x||, the paper's Eq. 13
  config.margin = 10.0
  config.optim_g.learning_rate = 1e-3
  config.optim_d.learning_rate = 1e-3
  return config
