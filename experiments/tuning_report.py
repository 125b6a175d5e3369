r"""Tables and figures of a tuning study (experiments/tuning_study.py), for docs/tuning.md.

  python -m experiments.tuning_report --results=/tmp/study/results.jsonl \
      --samples=/tmp/study/samples.npz --out=docs/tuning

Reads one or more results.jsonl and samples.npz files (runs of different
studies are merged) and writes to --out: results.csv (every member and
reference, one row each), summary.md (one row per setting: mean and standard
deviation over its seeds), fid_coverage.png (FID and coverage against the
margin, per lambda_pt and lr_G / lr_D), norm.png, stacked_modes.png, and
samples.png (the first seed's samples of chosen settings, and of each objective of
the objective_NAME studies: docs/objectives.md). Needs matplotlib.
"""

import collections
import csv
import json
import os

from absl import flags
import numpy as np

from ebgan_jax import viz
from experiments import cli

# Summary columns: (result key, header, format).
COLUMNS = (("fid", "FID", "{:.1f}"), ("coverage", "coverage", "{:.3f}"),
           ("precision", "precision", "{:.2f}"), ("recall", "recall", "{:.2f}"),
           ("inception_score", "IS", "{:.2f}"), ("min_class_fraction", "rarest class", "{:.3f}"),
           ("modes_covered", "modes", "{:.0f}"), ("train_energy_real", "E(real)", "{:.3f}"),
           ("train_energy_fake", "E(G(z))", "{:.3f}"))
SETTING = ("study", "energy", "margin", "lambda_pt", "lr_ratio")
# Settings whose samples samples.png shows: the margins at the shipped lr_G / lr_D.
SAMPLE_SETTINGS = [("lr_ratio", "mean", m, 0.1, 2.0) for m in (0.1, 0.3, 0.5, 1.0)]


def define_flags() -> None:
  """The program's flags; only when it runs as one (the tests import this module)."""
  flags.DEFINE_list("results", None, "results.jsonl files of tuning_study.", required=True)
  flags.DEFINE_list("samples", [], "samples.npz files of the same runs.")
  flags.DEFINE_string("out", "docs/tuning", "Output directory.")


def load_rows(paths: list[str]) -> list[dict]:
  rows = []
  for path in paths:
    with open(path) as f:
      rows += [json.loads(line) for line in f]
  return rows


def is_reference(row: dict) -> bool:
  return str(row["member"]).startswith("reference:")


def group_settings(rows: list[dict]) -> dict[tuple, list[dict]]:
  """Members grouped by setting (SETTING fields), in the order they appear."""
  groups = collections.defaultdict(list)
  for row in rows:
    if not is_reference(row):
      groups[tuple(row.get(k) for k in SETTING)].append(row)  # objectives: no margin
  return groups


def mean_std(rows: list[dict], key: str) -> tuple[float, float] | None:
  values = [row[key] for row in rows if row.get(key) is not None]
  return (float(np.mean(values)), float(np.std(values))) if values else None


def summary_table(rows: list[dict]) -> str:
  """Markdown: one row per setting (mean +- std over seeds), then the references."""
  header = ["study", "energy", "margin", "lambda_pt", "lr_G/lr_D", "seeds",
            *(title for _, title, _ in COLUMNS)]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for setting, members in group_settings(rows).items():
    cells = ["" if v is None else str(v) for v in setting] + [str(len(members))]
    for key, _, fmt in COLUMNS:
      stats = mean_std(members, key)
      cells.append("" if stats is None else f"{fmt.format(stats[0])} ± {fmt.format(stats[1])}")
    lines.append("| " + " | ".join(cells) + " |")
  seen = set()
  for row in rows:
    name = (row["study"] == "stacked", row["member"])
    if is_reference(row) and name not in seen:
      seen.add(name)
      cells = [row["study"] if name[0] else "all plain", "", row["member"], "", "", ""]
      cells += ["" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str) -> None:
  columns = list(dict.fromkeys(k for row in rows for k in row if k != "class_histogram"))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _reference(rows: list[dict], study: str, name: str, key: str) -> float | None:
  return next((row[key] for row in rows
               if row["study"] == study and row["member"] == f"reference:{name}"), None)


def plot_margins(rows: list[dict], path: str) -> None:
  """FID (log scale) and coverage against the margin: one line per (lambda_pt, lr ratio)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  groups = group_settings([r for r in rows if r["study"] in ("margin_pt", "lr_ratio")])
  lines = collections.defaultdict(list)
  for (_, _, margin, lambda_pt, ratio), members in groups.items():
    lines[(lambda_pt, ratio)].append((margin, members))
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for (lambda_pt, ratio), points in sorted(lines.items()):
    points.sort(key=lambda p: p[0])
    margins = [p[0] for p in points]
    for ax, key in zip(axes, ("fid", "coverage")):
      stats = np.array([mean_std(members, key) for _, members in points])
      ax.errorbar(margins, stats[:, 0], yerr=stats[:, 1], marker="o", capsize=3,
                  label=f"λ_PT {lambda_pt}, lr_G/lr_D {ratio:g}")
  titles = ("FID (lower is better)", "coverage (higher is better)")
  for ax, key, title in zip(axes, ("fid", "coverage"), titles):
    for name, style in (("blurred_test", "--"), ("train", ":")):
      value = _reference(rows, "margin_pt", name, key)
      if value is not None:
        ax.axhline(value, color="grey", linestyle=style, label=f"reference: {name}")
    ax.set_xscale("log")
    ax.set_xticks(sorted({p[0] for pts in lines.values() for p in pts}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("margin m (mean energy)")
    ax.set_title(title)
  axes[0].set_yscale("log")
  axes[1].legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_bars(groups: dict[tuple, list[dict]], key: str, label, title: str, path: str,
              log: bool = False) -> None:
  """One bar per setting (mean, std over seeds; seeds as dots)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 3.6))
  for x, (setting, members) in enumerate(groups.items()):
    values = [m[key] for m in members]
    ax.bar(x, np.mean(values), yerr=np.std(values), capsize=4, color="tab:blue", alpha=0.6)
    ax.plot([x] * len(values), values, "k.")
  ax.set_xticks(range(len(groups)), [label(s) for s in groups])
  if log:
    ax.set_yscale("log")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _sample_members(rows: list[dict]):
  """(caption, member) of the first seed of each SAMPLE_SETTINGS entry, then of each
  objective_NAME study."""
  first_seeds = [r for r in rows if not is_reference(r) and r["seed"] == 0]
  for setting in SAMPLE_SETTINGS:
    member = next((r for r in first_seeds if tuple(r.get(k) for k in SETTING) == setting),
                  None)
    if member:
      yield f"margin {setting[2]}", member
  for member in first_seeds:
    if member["study"].startswith("objective_"):
      yield member["objective"], member


def sample_mosaic(rows: list[dict], samples: dict, path: str) -> list[str]:
  """The 64 samples of each of _sample_members, side by side."""
  grids, captions = [], []
  for caption, member in _sample_members(rows):
    key = f"{member['study']}/{member['member']}"
    if key in samples:
      grids.append(viz.image_grid(samples[key], columns=8))
      captions.append(f"{caption} (FID {member['fid']:.1f})")
  if grids:
    gap = np.full((grids[0].shape[0], 8, grids[0].shape[2]), 255, np.uint8)
    mosaic = np.concatenate([x for g in grids for x in (g, gap)][:-1], axis=1)
    viz.save_png(path, mosaic[None], columns=1)
  return captions


class ReportError(ValueError):
  """The study's results cannot be read."""


def main(argv):
  del argv  # cli.run rejects positional arguments
  args = flags.FLAGS
  try:
    rows = load_rows(args.results)
    samples = {}
    for path in args.samples:
      with np.load(path) as f:
        samples.update({k: f[k] for k in f.files})
  except (OSError, ValueError) as e:
    raise ReportError(f"cannot read the study's results: {e}") from None
  out = args.out
  os.makedirs(out, exist_ok=True)
  write_csv(rows, os.path.join(out, "results.csv"))
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(summary_table(rows))
  if any(row["study"] in ("margin_pt", "lr_ratio") for row in rows):
    plot_margins(rows, os.path.join(out, "fid_coverage.png"))
  groups = group_settings(rows)
  norm = {s: m for s, m in groups.items() if s[0] == "norm"}
  if norm:
    plot_bars(norm, "fid", lambda s: f"m={s[2]:g}", '"norm" energy ||r||: FID by margin',
              os.path.join(out, "norm.png"), log=True)
  stacked = {s: m for s, m in groups.items() if s[0] == "stacked"}
  if stacked:
    plot_bars(stacked, "modes_covered", lambda s: f"λ_PT={s[3]:g}",
              "stacked Fashion-MNIST: modes covered of 1000",
              os.path.join(out, "stacked_modes.png"))
  captions = sample_mosaic(rows, samples, os.path.join(out, "samples.png"))
  print(f"wrote {out}: results.csv, summary.md, figures; samples.png: {captions}")


if __name__ == "__main__":
  cli.run(main, define_flags, bad_input=(ReportError,))
