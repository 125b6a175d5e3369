"""Test-wide settings: CPU only, quiet TensorFlow, a compilation cache, fast compiles,
hypothesis without deadlines."""

import atexit
import os
import shutil
import tempfile

# Before jax or tensorflow is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# JAX's persistent compilation cache, one per test run: the suite compiles the same programs
# many times over (every trainer run jits its steps anew, every subprocess starts with no
# compiled program), and a program compiled once is then read from disk. The subprocesses
# that tests start inherit it through these variables. JAX_COMPILATION_CACHE_DIR set
# beforehand (to reuse a cache, or to "" for none) is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="ebgan_jax_compilation_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# XLA's LLVM backend at -O0: most tests compile far more than they compute, and -O0 compiles
# about twice as fast (a small conv64 step 8 s instead of 15, its create_state 2 s instead of
# 14) for programs that run a little slower (150 conv28 steps: 50 s instead of 40) and compute
# the same values. Subprocesses inherit it; an optimisation level set beforehand is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

import hypothesis  # noqa: E402

# JAX compiles on first use of each shape, so wall-clock deadlines only flake.
hypothesis.settings.register_profile("ebgan", deadline=None, print_blob=True)
hypothesis.settings.load_profile("ebgan")
