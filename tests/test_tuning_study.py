"""experiments.tuning_study and tuning_report: data order, a tiny study end to end, the summary."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import tuning_report, tuning_study
from tests import test_cli
from tests.test_classifier import save_pattern_classifier, write_pattern_idx_dir

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """The "norm" study (5 margins), 1 seed, 2 steps, scored on 20 samples."""
  tmp = tmp_path_factory.mktemp("study")
  idx_dir = write_pattern_idx_dir(tmp / "idx", num_train=256, num_test=64)
  cache = save_pattern_classifier(tmp / "classifiers", datasets=("fashion_mnist",))
  result = _run("experiments.tuning_study", f"--idx_dir={idx_dir}", f"--out={tmp / 'out'}",
                f"--classifier_dir={cache}", "--studies=norm", "--seeds=1", "--steps=2",
                "--steps_per_call=2", "--eval_samples=20")
  assert result.returncode == 0, result.stderr
  return tmp / "out"


def test_a_study_scores_every_member_and_the_references(study):
  rows = [json.loads(line) for line in (study / "results.jsonl").read_text().splitlines()]
  members = [row for row in rows if not str(row["member"]).startswith("reference:")]
  assert [row["margin"] for row in members] == list(tuning_study.NORM_MARGINS)
  assert all(row["energy"] == "norm" and row["steps"] == 2 and row["seed"] == 0
             for row in members)
  assert all(np.isfinite(row[key]) for row in members
             for key in ("fid", "coverage", "train_d_loss", "min_class_fraction"))
  references = {row["member"]: row for row in rows if row not in members}
  assert set(references) == {"reference:train", "reference:blurred_test",
                             "reference:uniform_noise"}
  # The classifier knows these images perfectly: training images score near the floor.
  assert references["reference:train"]["fid"] < references["reference:uniform_noise"]["fid"]
  with np.load(study / "samples.npz") as samples:
    assert sorted(samples.files) == [f"norm/{i}" for i in range(5)]
    assert samples["norm/0"].shape == (64, 28, 28, 1) and samples["norm/0"].dtype == np.uint8


def test_the_report_summarises_a_study(study, tmp_path):
  result = _run("experiments.tuning_report", f"--results={study / 'results.jsonl'}",
                f"--samples={study / 'samples.npz'}", f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr
  summary = (tmp_path / "summary.md").read_text().splitlines()
  assert len(summary) == 2 + 5 + 3  # header, 5 settings, 3 references
  assert (tmp_path / "results.csv").read_text().count("\n") == 5 + 3 + 1
  # No margin study (margin_pt, lr_ratio) in it: no fid_coverage.png, rather than an empty one.
  assert {p.name for p in tmp_path.glob("*.png")} == {"norm.png"}


def test_summary_rows_are_mean_and_std_over_seeds():
  rows = [{"study": "margin_pt", "member": i, "energy": "mean", "margin": 0.3, "lambda_pt": 0.1,
           "lr_ratio": 1.0, "seed": i, "fid": fid, "coverage": 0.5} for i, fid in enumerate((4, 8))]
  rows.append({"study": "margin_pt", "member": "reference:train", "fid": 0.7})
  table = tuning_report.summary_table(rows).splitlines()
  assert table[2].startswith("| margin_pt | mean | 0.3 | 0.1 | 1.0 | 2 | 6.0 ± 2.0 | 0.500 ± 0.000")
  assert table[3].startswith("| all plain |  | reference:train |") and "| 0.7 |" in table[3]


def test_missing_classifier_fails_before_training(tmp_path):
  idx_dir = write_pattern_idx_dir(tmp_path / "idx", num_train=64, num_test=16)
  result = test_cli.run_in_process("experiments.tuning_study", f"--idx_dir={idx_dir}",
                                   f"--out={tmp_path / 'out'}",
                                   f"--classifier_dir={tmp_path / 'none'}", "--studies=norm")
  test_cli.assert_one_error_line(result, "no trained classifier for 'fashion_mnist'")
  assert not (tmp_path / "out").exists()


def test_the_objective_studies_train_each_config_variant_and_are_summarised():
  # The members' settings are the variant config's (fashion_conv.py:NAME).
  assert tuning_study.objective_setting("began") == {"lr_g": 4e-4, "lr_d": 2e-4, "gamma": 0.5,
                                                     "lambda_k": 0.1}
  assert tuning_study.objective_setting("gan") == {"lr_g": 2e-4, "lr_d": 2e-4}
  rows = [{"study": f"objective_{name}", "member": i, "objective": name, "energy": "mean",
           "lr_ratio": 1.0, "seed": i, "fid": fid} for name in ("gan", "began")
          for i, fid in enumerate((10, 20))]
  table = tuning_report.summary_table(rows).splitlines()
  assert table[2].startswith("| objective_gan | mean |  |  | 1.0 | 2 | 15.0 ± 5.0 |")
  shown = [(caption, row["member"]) for caption, row in tuning_report._sample_members(rows)]
  assert shown == [("gan", 0), ("began", 0)]
