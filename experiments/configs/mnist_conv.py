"""Default experiment: EBGAN with the conv28 nets on MNIST (docs/design.md starting values)."""

import ml_collections
from ml_collections import config_dict

from ebgan_jax import classifier


def add_photograph_fields(config: ml_collections.ConfigDict) -> None:
  """The data fields of photograph sources (ebgan_jax/data/photos.py), off: data as stored."""
  config.image_dir = config_dict.placeholder(str)  # a folder tree of JPEG / PNG files instead
  config.crop = 0  # side of the centered square cut before resizing (0: the largest)
  config.resize = False  # crop and resize tfds images too (implied by crop; folders always are)
  config.test_fraction = 0.02  # image folders without train/ and test/: the held-out share
  config.max_eval_images = 10_000  # images load_split gives evaluation from photographs (0: all)
  config.tfds_splits = ml_collections.ConfigDict()  # pipeline split -> tfds split, if they differ


# The objectives a config can be run with, as its argument (--config=...fashion_conv.py:began),
# each with the settings that differ from EBGAN's (docs/objectives.md).
OBJECTIVE_VARIANTS = ("ebgan", "gan", "began", "magan")


def use_objective(config: ml_collections.ConfigDict, objective: str) -> None:
  """Sets config.objective to one of OBJECTIVE_VARIANTS, with the optimiser settings its
  paper gives where they differ from this config's (which are tuned for EBGAN)."""
  if objective not in OBJECTIVE_VARIANTS:
    raise ValueError(f"unknown objective variant {objective!r}; the configs offer "
                     f"{', '.join(OBJECTIVE_VARIANTS)}")
  config.objective = objective
  if objective == "gan":
    # Radford et al.'s DCGAN setting, which the paper's baseline follows: 2e-4 for both.
    config.optim_g.learning_rate = 2e-4
    config.optim_d.learning_rate = 2e-4
  elif objective == "magan":
    config.lambda_pt = 0.0  # MAGAN has no pulling-away term


def get_config(objective: str = "ebgan") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data: a tfds dataset by name, or the four IDX gz files from `idx_dir`
  # (offline use, e.g. Debian's dataset-fashion-mnist).
  config.dataset = "mnist"
  config.idx_dir = config_dict.placeholder(str)
  config.data_dir = config_dict.placeholder(str)  # tfds data_dir; None = tfds default
  config.download = True
  config.shuffle_buffer = 60_000  # covers all of MNIST: a full shuffle
  config.image_shape = (28, 28, 1)
  add_photograph_fields(config)

  # Nets (models.py): family name plus that family's own fields.
  config.model = ml_collections.ConfigDict({"family": "conv28", "embedding_dim": 32})
  config.z_dim = 64

  # The objective (objectives.py): "ebgan"; "gan", the paper's baseline (D's
  # encoder ends in one logit; margin and lambda_pt unused); "began"; "magan".
  # Set by get_config's argument (use_objective).
  # EBGAN objective (losses.py). m = 0.3, not the common 1: D's tanh output
  # bounds the energy of a flat grey image near 1, so m = 1 lets G settle on grey
  # (docs/tuning.md: FID ~550, every seed; 0.1 to 0.5 all work, 0.3 best).
  # lambda_pt 0.1 is as good as 0 on Fashion-MNIST; 1 is harmful (docs/tuning.md).
  config.energy_reduction = "mean"
  config.margin = 0.3
  config.lambda_pt = 0.1
  # The margin's schedule (objectives.MarginSchedule): "constant", or "linear" /
  # "cosine" from `margin` down to margin_end over margin_decay_steps steps from
  # step margin_decay_begin (the semi-supervised EBGAN-LN decays it to 0).
  config.margin_schedule = "constant"
  config.margin_end = 0.0
  config.margin_decay_steps = 0
  config.margin_decay_begin = 0
  # "absolute": margin and margin_end are energies; "real_energy": multiples of the
  # batch's mean real energy E(x), e.g. margin 1.5 decaying to 0 starts the hinge above
  # the data's energy however D's energies scale (objectives.MarginSchedule.acting).
  config.margin_unit = "absolute"
  # BEGAN (objectives.BEGAN): gamma, the ratio E L(G(z)) / E L(x) that k_t steers to
  # (the paper's diversity ratio: 0.5 its default, 0.3 to 0.7 shown), and lambda_k,
  # the gain of k_t's controller. The paper's 0.001 moves k_t by about 1e-4 a step, too
  # slowly for runs of thousands of steps: on Fashion-MNIST after 300 steps, FD 115
  # and 1 class with it, FD 32 and 7 classes with 0.1 (docs/objectives.md).
  config.gamma = 0.5
  config.lambda_k = 0.1
  # MAGAN (objectives.MAGAN): D trains alone for magan_pretrain_epochs epochs of
  # steps_per_epoch steps, then the margin adapts at each epoch end. Its authors' code
  # pre-trains 2 epochs of runs of 200; 1 here, where runs are 10 to 20 epochs.
  config.magan_pretrain_epochs = 1
  config.steps_per_epoch = 937  # 60,000 training images in batches of 64

  # Adam per net: Radford et al.'s DCGAN setting, as in the paper, but G's
  # learning rate twice D's. docs/tuning.md: at margins 0.1 to 0.5, lr_G / lr_D
  # = 2 raised coverage at every margin and lowered FID at most (m = 0.3:
  # 7.3 -> 5.7 on 5,000 samples after 10,000 steps); 5 was mixed.
  # kind "sgd" (plain, no momentum) reads learning_rate only.
  config.optim_g = ml_collections.ConfigDict(
      {"kind": "adam", "learning_rate": 4e-4, "b1": 0.5, "b2": 0.999, "eps": 1e-8})
  config.optim_d = ml_collections.ConfigDict(
      {"kind": "adam", "learning_rate": 2e-4, "b1": 0.5, "b2": 0.999, "eps": 1e-8})

  # Training loop. One process per host with `distributed` (multi-host TPU
  # pods and GPU clusters, see the README); one process sees every local device.
  config.distributed = False
  config.seed = 0
  config.batch_size = 64
  config.num_steps = 10_000
  config.train_seconds = 0.0  # wall-clock budget in seconds; 0 = none
  config.log_every = 100
  config.sample_every = 1_000
  config.checkpoint_every = 1_000
  config.keep = 3
  config.num_samples = 10_000
  # Built-in metrics every eval_every steps (0: never), scored by the classifier
  # that experiments.train_classifier cached for config.dataset.
  config.eval_every = 0
  config.eval = ml_collections.ConfigDict({
      "classifier_dir": classifier.DEFAULT_CACHE_DIR,
      "num_samples": 2_000,
      "kid_subsets": 10,  # a tenth of the full evaluation's 100: ~2 s, not 13
      # "inception": FID / KID / IS comparable with papers, from the FID
      # Inception-v3 against this many images of this split (docs/inception.md).
      "features": "classifier",
      "inception_split": "test",
      "inception_reference_size": 10_000,
  })
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (None: $EBGAN_INCEPTION_WEIGHTS).
  config.inception_weights = config_dict.placeholder(str)

  # Speed (README, "Performance"); neither changes what is learned, up to float rounding.
  # Steps per jitted call (a lax.scan over that many batches): fewer dispatches
  # and host round trips, and on CPU XLA allocates the step's temporary buffers
  # once per call rather than once per step (conv28 on 2 cores: 19 steps/s with
  # 1, 24 with 16). Keep num_steps and the *_every intervals multiples of it:
  # steps up to a boundary that is not one run singly, and only runs stopped at
  # a multiple of it resume bit-exactly.
  config.steps_per_call = 20
  # dtype the layers compute in: "bfloat16" for GPU / TPU (params, optimiser and
  # losses stay float32); on CPU it is slower than "float32".
  config.compute_dtype = "float32"
  # "bfloat16": the conv layers' matmuls (XLA:CPU's matmul forms) take bfloat16 operands
  # and sum in float32, faster on CPUs with AVX512_BF16 (README, "Performance"); it rounds
  # differently, so it changes what is learned a little. float32 is the default.
  config.matmul_operands = "float32"

  use_objective(config, objective)
  return config
