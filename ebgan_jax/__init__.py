"""ebgan_jax: Energy-Based GANs (Zhao, Mathieu & LeCun, ICLR 2017) in JAX/Flax.

Importing the package has no side effects: no flags, no device or TensorFlow
initialisation, no downloads. Modules are imported on use:

  from ebgan_jax import losses, models, state, train
"""

__version__ = "0.1.0"
