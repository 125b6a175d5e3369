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

# Compiles at -O0, faster for the many tests that compile more than they run (see
# tests/xla_levels.py). Subprocesses inherit it; an optimisation level set beforehand is kept.
from tests import xla_levels  # noqa: E402

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_levels.FAST_COMPILE}".strip()

import hypothesis  # noqa: E402

# JAX compiles on first use of each shape, so wall-clock deadlines only flake.
hypothesis.settings.register_profile("ebgan", deadline=None, print_blob=True)
hypothesis.settings.load_profile("ebgan")


# The files that take longest in all, longest first (a CI run's --durations=0). With
# --dist loadfile, xdist hands whole files to its workers in collection order (setup.cfg turns
# off its reordering by test count, which queued these few-test files last): started first,
# they leave the short files to fill in at the end instead of one worker idling through a long
# file while the other has finished.
_LONGEST_FILES = ("test_learning.py", "test_semi_supervised.py", "test_sharding.py",
                  "test_population.py", "test_performance_features.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
