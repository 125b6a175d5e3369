"""The runnable experiments: `python -m experiments.NAME`, one module per program.

Before anything imports TensorFlow (which only feeds data here): without
these, every start prints TensorFlow's oneDNN and CPU-feature banners ahead
of the job's own lines. Set either variable yourself to see them again.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO lines
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its banner ignores the level above
