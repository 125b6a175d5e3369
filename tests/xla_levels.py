"""XLA's optimisation level in the test run.

Most tests compile far more than they compute, so the run compiles at -O0 (tests/conftest.py
sets `FAST_COMPILE`): about twice as fast to compile (a small conv64 step 8 s instead of 15),
the same values computed a little slower. The few tests that train for hundreds of steps
compile their steps at the users' -O3 (`optimized_steps` in this process, `optimized_env` for
a subprocess): there the faster run outweighs the slower compile (150 conv28 steps: 39 s at
-O3, 50 s at -O0; a tiny grid of 8 x 200 steps, killed and resumed: 67 s against 76).
"""

import contextlib
import os
import re

_LEVEL = "--xla_backend_optimization_level"
FAST_COMPILE = f"{_LEVEL}=0"


def optimized_env() -> dict:
  """Environment for a subprocess whose steps compile at -O3, the other flags kept."""
  return {"XLA_FLAGS": re.sub(rf"{_LEVEL}=\d+", f"{_LEVEL}=3", os.environ.get("XLA_FLAGS", ""))}


@contextlib.contextmanager
def optimized_steps():
  """Within: the train steps that ebgan_jax.train jits compile at -O3."""
  import pytest
  from ebgan_jax import train

  real = train.compiler_options
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train, "compiler_options",
                  lambda mesh: {**(real(mesh) or {}), "xla_backend_optimization_level": 3})
    yield
