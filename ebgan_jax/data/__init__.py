"""Input pipelines: endless streams of image batches in [-1, 1].

Every source feeds one tf.data pipeline (pipeline.py), so all behave the same.
The sources are entries of a registry, `SOURCES` (sources.py), one module
each, and `source_kind(config)` is the one place that picks one:

- "tfds" (tfds.py): a tensorflow-datasets image dataset by name
  (`config.dataset`), downloaded on first use;
- "idx" (idx.py): a directory of the four MNIST-format IDX files
  (`config.idx_dir`), how machines without internet, and CI, read real data;
- "images" (image_folder.py): any directory tree of JPEG and PNG files
  (`config.image_dir`), decoded when their batch is due;
- "stacked" (stacked.py): stacked MNIST, C digits of "idx" or "tfds" as the
  C channels of one image (`config.stacked_split_sizes`).

Photographs (image folders; tfds with `config.crop` or `config.resize`) are
cropped to a centered square and resized to config.image_shape (photos.py).

TensorFlow is imported inside the functions that use it, never when this
package is imported, and it is denied every accelerator: JAX owns them, and a
TensorFlow that saw a GPU would reserve most of its memory.
"""

from ebgan_jax.data.common import DatasetInfo, NO_LABEL, Source
from ebgan_jax.data.idx import read_idx
from ebgan_jax.data.pipeline import array_batches, CorruptImageError, pixels_to_signed
from ebgan_jax.data.sources import (create_dataset, load_split, source_for, source_kind,
                                    source_name, SOURCES)
from ebgan_jax.data.stacked import is_stacked

__all__ = [
    "array_batches",
    "CorruptImageError",
    "create_dataset",
    "DatasetInfo",
    "is_stacked",
    "load_split",
    "NO_LABEL",
    "pixels_to_signed",
    "read_idx",
    "Source",
    "source_for",
    "source_kind",
    "source_name",
    "SOURCES",
]
