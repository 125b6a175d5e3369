r"""The paper's stability study: EBGAN and a GAN over a grid of fully-connected nets.

  python -m experiments.grid_search --config=experiments/configs/grid_mnist.py --workdir=DIR
  python -m experiments.grid_search --config=experiments/configs/grid_fashion.py:reduced \
      --workdir=/tmp/grid

Enumerates the grid of config.grid (experiments/configs/grid_mnist.py: 512
EBGAN and 6,144 GAN runs), keeps config.grid.subset of it ("full",
"reduced" or "tiny"), groups the runs that share every static setting
(objective, architecture, dropout, optimiser kinds) and trains each group as
one population (ebgan_jax/population.py; its members differ in learning
rate). Every run is then scored on the built-in classifier of config.dataset
(trained first if none is cached, experiments.train_classifier.ensure_classifier):
I' (the paper's score) in two readings (metrics.i_prime, with a clip;
metrics.i_prime_torch, Torch7's class-averaged one), log-IS, FID, classes
covered, and whether it diverged. Outputs in --workdir:

  results.csv       one row per run, written after each group: resume after a
                    kill reruns the command, and finished groups are skipped
  groups/ID/        the checkpoints of the group in training (config's
                    checkpoint_every): a group stopped inside resumes from
                    its newest; removed once its rows are written
  samples/ID.png    64 samples of each run, from one fixed z
  summary.md        the share of runs above fixed log-IS and I' thresholds, per
                    model and per GAN setting, with the diverged share; the
                    scores of as many real test images
  fig2_*.png        the paper's Fig. 2 (histograms of each score over all runs,
                    and over nLayerG, nLayerD <= 4 and <= 3; the real test
                    images' score dashed), one file per score of FIGURE_SCORES
  fig3_*.png        Fig. 3: each GAN setting (lr, optimD, optimG) against EBGAN
"""

import csv
import itertools
import math
import os
import shutil
import time

from absl import flags, logging
import jax
import ml_collections
import numpy as np

from ebgan_jax import data, evaluation, objectives, viz
from experiments import cli, train_classifier, trainer
from experiments.configs import grid_mnist

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "grid_mnist.py")
RESULTS = "results.csv"
SUMMARY = "summary.md"
ARCHITECTURE = ("n_layer_g", "n_layer_d", "size_g", "size_d", "dropout_d")
# What a group's members share: everything but the learning rate and seed.
GROUP_FIELDS = ("objective", *ARCHITECTURE, "optim_d", "optim_g")
SCORES = ("i_prime", "i_prime_torch", "log_is", "fid", "inception_score", "classes_1pct")
COLUMNS = ("run", "group", *GROUP_FIELDS, "lr_g", "lr_d", "margin", "lambda_pt",
           "energy_reduction", "seed", "steps", "diverged", *SCORES, "d_loss", "g_loss",
           "group_train_s")
GRID_SAMPLES = 64
# summary.md's columns: the share of runs above each score. log-IS is at most
# log 10 = 2.30; I' with metrics.I_PRIME_CLIP reaches about 11; Torch7's I' is
# read on the paper's Fig. 2 axis (0-1.9), as log-IS is.
THRESHOLDS = {"log_is": (0.4, 1.0, 1.5), "i_prime_torch": (0.4, 1.0, 1.5),
              "i_prime": (0.4, 2.0, 4.0)}
# The scores drawn as Figs. 2 and 3, a pair of files each.
FIGURE_SCORES = ("i_prime", "i_prime_torch", "log_is")
# Fig. 2's panels: (title, largest nLayerG and nLayerD).
PANELS = (("(a) all runs", 5), ("(b) nLayerG, nLayerD <= 4", 4), ("(c) nLayerG, nLayerD <= 3", 3))


class GridError(ValueError):
  """A grid config that cannot run, a workdir whose results belong to another grid."""


def define_flags() -> None:
  cli.define_config("config", _DEFAULT_CONFIG,
                    "Grid config file (optionally :full, :reduced or :tiny); override fields "
                    "with --config.FIELD=VALUE.")
  flags.DEFINE_string("workdir", None, "Directory for results.csv, samples and figures.",
                      required=True)


def architectures(grid) -> list[dict]:
  """Every architecture of the full grid, in a fixed order."""
  return [dict(zip(ARCHITECTURE, values)) for values in itertools.product(
      grid.n_layer_g, grid.n_layer_d, grid.size_g, grid.size_d, (False, True))]


def enumerate_runs(config) -> list[dict]:
  """The full grid: each architecture once for EBGAN, and with every GAN setting."""
  grid = config.grid
  runs = []
  for arch in architectures(grid):
    runs.append({"objective": "ebgan", **arch, "optim_d": "adam", "optim_g": "adam",
                 "lr": float(config.optim_d.learning_rate)})
  for arch in architectures(grid):
    for optim_d, optim_g, lr in itertools.product(grid.gan_optimizers, grid.gan_optimizers,
                                                  grid.gan_learning_rates):
      runs.append({"objective": "gan", **arch, "optim_d": optim_d, "optim_g": optim_g,
                   "lr": float(lr)})
  return runs


def select(runs: list[dict], config) -> list[dict]:
  """The runs of config.grid.subset.

  full: all. reduced: the architectures of the smaller widths
  (reduced_size_g, reduced_size_d), reduced_architectures of them drawn with
  a fixed seed; each drawn one runs EBGAN once and the GAN at every learning
  rate with one (optimD, optimG) pair, the pairs dealt out in turn so each
  gets the same number of architectures. tiny: two small architectures, EBGAN
  on both, the GAN at every learning rate with two of the optimiser pairs.
  """
  grid = config.grid
  subset = grid.subset
  if subset == "full":
    return runs
  pairs = list(itertools.product(grid.gan_optimizers, grid.gan_optimizers))
  if subset == "tiny":
    chosen = [arch for arch in architectures(grid)
              if arch["size_g"] == min(grid.size_g) and arch["size_d"] == min(grid.size_d)
              and arch["n_layer_d"] == min(grid.n_layer_d)][:2]
  else:
    small = [arch for arch in architectures(grid)
             if arch["size_g"] in grid.reduced_size_g and arch["size_d"] in grid.reduced_size_d]
    if not 1 <= grid.reduced_architectures <= len(small):
      raise GridError(f"grid.reduced_architectures must be in [1, {len(small)}], "
                      f"got {grid.reduced_architectures}")
    picked = np.random.default_rng(0).choice(len(small), grid.reduced_architectures,
                                             replace=False)
    chosen = [small[i] for i in sorted(picked)]
  pair_of = {_key(arch, ARCHITECTURE): pairs[i % len(pairs)] for i, arch in enumerate(chosen)}
  keep = []
  for run in runs:
    arch_key = _key(run, ARCHITECTURE)
    if arch_key not in pair_of:
      continue
    if run["objective"] == "ebgan" or (run["optim_d"], run["optim_g"]) == pair_of[arch_key]:
      keep.append(run)
  return keep


def _key(run: dict, fields) -> tuple:
  return tuple(run[f] for f in fields)


def run_id(run: dict) -> str:
  drop = "-dropout" if run["dropout_d"] else ""
  return (f"{run['objective']}-g{run['n_layer_g']}x{run['size_g']}-d{run['n_layer_d']}x"
          f"{run['size_d']}{drop}-{run['optim_d']}-{run['optim_g']}-lr{run['lr']:g}")


def group_id(run: dict) -> str:
  return run_id({**run, "lr": 0}).rsplit("-lr", 1)[0]


def groups(runs: list[dict]) -> dict[str, list[dict]]:
  """Runs that share GROUP_FIELDS, in the order of their first run."""
  grouped = {}
  for run in runs:
    grouped.setdefault(group_id(run), []).append(run)
  return grouped


def group_config(config, run: dict) -> ml_collections.ConfigDict:
  """The single-run config of a group's runs (the learning rate is each member's own)."""
  config = config.copy_and_resolve_references()
  config.objective = run["objective"]
  config.model = {"family": "mlp", **{k: run[k] for k in ARCHITECTURE if k != "dropout_d"},
                  "dropout_d": config.grid.dropout_rate if run["dropout_d"] else 0.0}
  config.optim_d.kind, config.optim_g.kind = run["optim_d"], run["optim_g"]
  config.optim_d.learning_rate = config.optim_g.learning_rate = run["lr"]
  return config


def steps_per_run(config, train_examples: int) -> int:
  """grid.epochs of the training split in steps; grid.tiny_steps for the tiny subset."""
  if config.grid.subset == "tiny":
    return config.grid.tiny_steps
  return max(1, round(config.grid.epochs * train_examples / config.batch_size))


def _check(config) -> None:
  grid = config.grid
  checks = [
      (grid.subset in grid_mnist.SUBSETS,
       f"grid.subset must be one of {grid_mnist.SUBSETS}, got {grid.subset!r}"),
      (grid.epochs > 0, f"grid.epochs must be > 0, got {grid.epochs}"),
      (grid.tiny_steps >= 1, f"grid.tiny_steps must be >= 1, got {grid.tiny_steps}"),
      (grid.eval_samples >= 10, f"grid.eval_samples must be >= 10, got {grid.eval_samples}"),
      (0 <= grid.dropout_rate < 1, f"grid.dropout_rate must be in [0, 1), got "
                                   f"{grid.dropout_rate}"),
      (config.steps_per_call >= 1, f"steps_per_call must be >= 1, got {config.steps_per_call}"),
  ]
  for ok, message in checks:
    if not ok:
      raise GridError(message)


def read_results(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def write_results(rows: list[dict], path: str) -> None:
  """All rows, atomically: a kill leaves the old file or the new one, never half of one."""
  temporary = path + ".tmp"
  with open(temporary, "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


def _group_workdir(workdir: str, run: dict) -> str:
  return os.path.join(workdir, "groups", group_id(run))


def train_group(config, runs: list[dict], evaluator: evaluation.Evaluator, workdir: str
                ) -> list[dict]:
  """Trains one group as a population and scores each run; returns their result rows."""
  config = group_config(config, runs[0])
  objective = objectives.from_config(config)
  hparams = objectives.hyperparameters(objective, config)
  members = [{"seed": config.seed, "lr_g": run["lr"], "lr_d": run["lr"], **hparams}
             for run in runs]
  start = time.perf_counter()
  # Checkpointed in a folder of its own, so a grid stopped inside a group resumes it there.
  population, history = trainer.train_population(config, members,
                                                 _group_workdir(workdir, runs[0]))
  jax.block_until_ready(population)
  train_s = time.perf_counter() - start
  sample_key, grid_key = jax.random.PRNGKey(evaluator.settings.seed), jax.random.PRNGKey(1)
  rows = []
  for i, run in enumerate(runs):
    state = population.member(i)
    images = evaluation.generate_images(state, sample_key, config.grid.eval_samples)
    viz.save_png(os.path.join(workdir, "samples", f"{run_id(run)}.png"),
                 evaluation.generate_images(state, grid_key, GRID_SAMPLES))
    scores = evaluator(images)
    rows.append({
        "run": run_id(run), "group": group_id(run), **{k: run[k] for k in GROUP_FIELDS},
        "lr_g": run["lr"], "lr_d": run["lr"],
        "margin": hparams.get("margin", ""), "lambda_pt": hparams.get("lambda_pt", ""),
        "energy_reduction": config.energy_reduction if objective.name == "ebgan" else "",
        "seed": config.seed, "steps": int(state.step),
        "diverged": bool(population.diverged[i]),
        **{k: scores.get(k, "") for k in SCORES},
        **{k: float(history[k][i, -1]) for k in ("d_loss", "g_loss")},
        "group_train_s": round(train_s, 1),
    })
  return rows


def main(argv):
  del argv  # cli.run rejects positional arguments
  args = flags.FLAGS
  config = args.config
  _check(config)
  runs = select(enumerate_runs(config), config)
  plan = groups(runs)
  for members in plan.values():  # every group's config, before anything is trained
    trainer.validate_config(group_config(config, members[0]))
  results_path = os.path.join(args.workdir, RESULTS)
  try:
    train_classifier.ensure_classifier(config)
    evaluator = evaluation.Evaluator(config)
    config.num_steps = steps_per_run(config, len(data.load_split(config, "train")[0]))
    done = {row["run"]: row for row in read_results(results_path)}
  # EvaluationError and train_classifier.ConfigError are ValueErrors.
  except (ValueError, OSError, KeyError) as e:
    raise GridError(str(e)) from None
  unknown = sorted(set(done) - {run_id(run) for run in runs})
  if unknown:
    raise GridError(f"{results_path} holds runs of another grid (e.g. {unknown[0]}); "
                    "use a new --workdir")
  os.makedirs(os.path.join(args.workdir, "samples"), exist_ok=True)
  # Only whole groups count as done: a group is trained, and written, as one.
  rows = [done[run_id(run)] for members in plan.values()
          if all(run_id(run) in done for run in members) for run in members]
  logging.info("%d runs in %d groups (%s subset); %d runs already done", len(runs), len(plan),
               config.grid.subset, len(rows))
  start = time.perf_counter()
  for n, (name, members) in enumerate(plan.items()):
    if all(run_id(run) in done for run in members):
      continue
    rows += train_group(config, members, evaluator, args.workdir)
    write_results(rows, results_path)
    shutil.rmtree(_group_workdir(args.workdir, members[0]))  # its rows hold what it made
    logging.info("group %d/%d %s: %d runs, %.0f s so far", n + 1, len(plan), name,
                 len(members), time.perf_counter() - start)
  real_images, _ = data.load_split(config, "test")
  real = evaluator(real_images[:config.grid.eval_samples])  # as many as a run's samples
  draw_figures(rows, args.workdir, real)
  with open(os.path.join(args.workdir, SUMMARY), "w") as f:
    f.write(summary_table(rows, real, min(len(real_images), config.grid.eval_samples)))


def summary_table(rows: list[dict], real: dict | None = None, num_real: int = 0) -> str:
  """Markdown: per model and per GAN setting, the share of runs above THRESHOLDS, and more.

  With `real`, the scores of `num_real` real test images, a line below the table.
  """
  header = ["runs", "diverged", *(f"{key} > {t:g}" for key, ts in THRESHOLDS.items() for t in ts),
            "median FID", "median classes >= 1%"]
  lines = ["| model | " + " | ".join(header) + " |", "|" + " --- |" * (len(header) + 1)]

  def line(label, selected):
    cells = [str(len(selected)), f"{np.mean([str(r['diverged']) == 'True' for r in selected]):.0%}"]
    for key, thresholds in THRESHOLDS.items():
      values = _floats(selected, key)
      cells += [f"{np.mean(values > t):.0%}" if len(values) else "" for t in thresholds]
    for key in ("fid", "classes_1pct"):
      values = _floats(selected, key)
      cells.append(f"{np.median(values):.4g}" if len(values) else "")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")

  for name in ("ebgan", "gan"):
    selected = [r for r in rows if r["objective"] == name]
    if selected:
      line(f"**{name.upper()}**", selected)
  for lr, optim_d, optim_g in sorted({(float(r["lr_d"]), r["optim_d"], r["optim_g"])
                                      for r in rows if r["objective"] == "gan"}):
    line(f"GAN lr {lr:g}, D {optim_d}, G {optim_g}",
         [r for r in rows if r["objective"] == "gan" and float(r["lr_d"]) == lr
          and r["optim_d"] == optim_d and r["optim_g"] == optim_g])
  if real:
    lines += ["", f"{num_real} real test images: " + ", ".join(
        f"{key} {real[key]:.4g}" for key in (*THRESHOLDS, "fid") if key in real)]
  return "\n".join(lines) + "\n"


def _floats(rows: list[dict], key: str) -> np.ndarray:
  values = [float(row[key]) for row in rows if row.get(key) not in ("", None)]
  return np.asarray([v for v in values if math.isfinite(v)])


def histogram(ax, rows_by_label: dict[str, list[dict]], key: str, bin_width: float = 0.1,
              real: float | None = None):
  """Share of runs per bin of `key` (bins of bin_width from 0), one bar series per label;
  the real images' score `real`, if given, as a dashed line."""
  values = {label: _floats(rows, key) for label, rows in rows_by_label.items()}
  top = max([v.max() for v in values.values() if len(v)] + [bin_width]
            + ([] if real is None else [real]))
  edges = np.arange(0.0, top + 2 * bin_width, bin_width)
  for label, v in values.items():
    if len(v):
      ax.hist(v, bins=edges, weights=np.full(len(v), 1 / len(v)), alpha=0.55,
              label=f"{label} ({len(v)} runs)")
  if real is not None:
    ax.axvline(real, color="black", linestyle="--", label=f"real test images ({real:.2f})")
  ax.set_xlabel(key)
  ax.set_ylabel("share of runs")
  ax.legend(fontsize=7)


def draw_figures(rows: list[dict], workdir: str, real: dict | None = None) -> None:
  """Fig. 2 (three panels) and Fig. 3 (one panel per GAN setting) of each FIGURE_SCORES key
  that the rows have (results.csv of earlier versions lack i_prime_torch); `real`, the
  real test images' scores, marks each panel."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  def by_objective(selected):
    return {name.upper(): [r for r in selected if r["objective"] == name]
            for name in ("ebgan", "gan")}

  gan_settings = sorted({(float(r["lr_d"]), r["optim_d"], r["optim_g"])
                         for r in rows if r["objective"] == "gan"})
  ebgan = [r for r in rows if r["objective"] == "ebgan"]
  real = real or {}
  for key in FIGURE_SCORES:
    if not len(_floats(rows, key)):
      continue
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    for ax, (title, depth) in zip(axes, PANELS):
      histogram(ax, by_objective([r for r in rows if int(r["n_layer_g"]) <= depth
                                  and int(r["n_layer_d"]) <= depth]), key, real=real.get(key))
      ax.set_title(title)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, f"fig2_{key}.png"), dpi=100)
    plt.close(fig)
    if not gan_settings:
      continue
    columns = min(4, len(gan_settings))
    fig, axes = plt.subplots(-(-len(gan_settings) // columns), columns, squeeze=False,
                             figsize=(4.2 * columns, 3.2 * -(-len(gan_settings) // columns)))
    for ax, (lr, optim_d, optim_g) in zip(axes.flat, gan_settings):
      gan = [r for r in rows if r["objective"] == "gan" and float(r["lr_d"]) == lr
             and r["optim_d"] == optim_d and r["optim_g"] == optim_g]
      histogram(ax, {"EBGAN": ebgan, "GAN": gan}, key, real=real.get(key))
      ax.set_title(f"lr {lr:g}, optimD {optim_d}, optimG {optim_g}", fontsize=9)
    for ax in list(axes.flat)[len(gan_settings):]:
      ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, f"fig3_{key}.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
  cli.run(main, define_flags, bad_input=(GridError, trainer.ConfigError))
