"""Test-wide settings: CPU only, quiet TensorFlow, hypothesis without deadlines."""

import os

# Before jax or tensorflow is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hypothesis  # noqa: E402

# JAX compiles on first use of each shape, so wall-clock deadlines only flake.
hypothesis.settings.register_profile("ebgan", deadline=None, print_blob=True)
hypothesis.settings.load_profile("ebgan")
