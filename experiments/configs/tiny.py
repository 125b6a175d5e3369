"""A seconds-long run for tests and smoke checks: small MLP nets, a few steps."""

from experiments.configs import mnist_conv


def get_config():
  config = mnist_conv.get_config()
  config.model = {"family": "mlp", "n_layer_g": 2, "size_g": 64,
                  "n_layer_d": 2, "size_d": 32, "dropout_d": 0.0}
  config.batch_size = 16
  config.shuffle_buffer = 1_000
  config.num_steps = 20
  config.log_every = 5
  config.sample_every = 10
  config.checkpoint_every = 10
  config.keep = 2
  config.num_samples = 100
  return config
