"""Every program's bad input ends in one `error:` line and exit status 2, with nothing written."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments/configs/tiny.py")

# Runs a program as `python -m`, with every network connection refused first:
# the machine then looks offline even where it is not.
_OFFLINE = ("import runpy, socket, sys\n"
            "def refuse(*args, **kwargs): raise OSError('Network is unreachable')\n"
            "socket.create_connection = refuse\n"
            "sys.argv[0] = sys.argv[1]; del sys.argv[1]\n"
            "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")


def run_program(module, *args, env=None, offline=False, timeout=120):
  prefix = ["-c", _OFFLINE, module] if offline else ["-m", module]
  return subprocess.run([sys.executable, *prefix, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_one_error_line(result, message, status=2):
  assert result.returncode == status, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr and "FATAL" not in result.stderr, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr
  assert message in errors[0], errors[0]


def write_config(tmp_path, body):
  path = tmp_path / "config.py"
  path.write_text(body)
  return str(path)


@pytest.mark.parametrize("args, env, message", [
    (["--config=/nonexistent/config.py"], {},
     "cannot load --config=/nonexistent/config.py: [Errno 2] No such file or directory"),
    (["--config.margn=0.3"], {},
     "the config has no field 'margn' (did you mean \"margin\"?)"),
    (["--config.margin=abc"], {},
     "flag --config.margin=abc: could not convert string to float: 'abc'"),
    (["--mode=fly"], {}, "flag --mode=fly: value should be one of <train|sample>"),
    (["--bogus=1"], {}, "Unknown command line flag 'bogus'"),
    (["stray"], {}, "unexpected arguments: stray"),
    ([], {"EBGAN_DISTRIBUTED": "1", "EBGAN_PROCESS_ID": "x"},
     "EBGAN_PROCESS_ID must be a non-negative integer, got 'x'"),
    (["--config.batch_size=1"], {}, "batch_size must be >= 2"),
    (["--config.objective=wgan"], {}, "unknown objective 'wgan'; known objectives: ebgan, gan"),
    (["--config.objective=gan", "--config.model.family=conv28"],
     {}, "model family 'conv28' has no D with a 'logit' output"),
    (["--config.optim_d.kind=rmsprop"], {},
     "optimizer kind must be one of ('adam', 'sgd'), got 'rmsprop'"),
])
def test_training_cli_bad_input(tmp_path, args, env, message):
  workdir = tmp_path / "run"
  result = run_program("experiments.mnist_ebgan", f"--config={TINY}", f"--workdir={workdir}",
                       *args, env=env)
  assert_one_error_line(result, message)
  assert not workdir.exists()


def test_training_cli_needs_a_workdir():
  result = run_program("experiments.mnist_ebgan", f"--config={TINY}")
  assert_one_error_line(result, "--workdir must have a value")


def test_a_config_file_that_raises_is_one_line(tmp_path):
  config = write_config(tmp_path, "def get_config():\n  raise ValueError('no such preset')\n")
  result = run_program("experiments.mnist_ebgan", f"--config={config}",
                       f"--workdir={tmp_path / 'run'}")
  assert_one_error_line(result, "ValueError: no such preset")


def test_a_misspelt_field_of_another_config_file_is_one_line(tmp_path):
  result = run_program("experiments.mnist_ebgan", f"--config={TINY}", "--config.num_stepz=3",
                       f"--workdir={tmp_path / 'run'}")
  assert_one_error_line(result, "the config has no field 'num_stepz' (did you mean \"num_steps\"?)")


def test_offline_tfds_download_fails_at_once_with_the_hint(tmp_path):
  """MNIST through tfds with no network: the error, not minutes of download retries."""
  result = run_program("experiments.mnist_ebgan", f"--config={TINY}",
                       f"--workdir={tmp_path / 'run'}", f"--config.data_dir={tmp_path / 'tfds'}",
                       offline=True, timeout=90)  # tfds' own retries would take minutes
  assert_one_error_line(result, "does not answer (no network?); set --config.idx_dir=DIR")


def test_a_good_run_prints_no_tensorflow_banner(tmp_path):
  from tests import data_fixtures  # pylint: disable=g-import-not-at-top

  idx_dir = data_fixtures.write_idx_dir(tmp_path / "idx", num_train=64, num_test=16,
                                        height=28, width=28)
  env = {name: value for name, value in os.environ.items()
         if name not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
  result = subprocess.run(
      [sys.executable, "-m", "experiments.mnist_ebgan", f"--config={TINY}",
       f"--workdir={tmp_path / 'run'}", f"--config.idx_dir={idx_dir}", "--config.num_steps=2"],
      cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  for banner in ("oneDNN", "cpu_feature_guard", "InitializeLog"):
    assert banner not in result.stderr, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--config.margn=0.3"], "the config has no field 'margn'"),
    (["--samples=/nonexistent/samples.npz"], "cannot read samples from /nonexistent/samples.npz"),
    ([], "give --samples=PATH.npz, --workdir=DIR"),
    (["--reference=maybe"], "flag --reference=maybe"),
])
def test_evaluate_cli_bad_input(tmp_path, args, message):
  result = run_program("experiments.evaluate", f"--config={TINY}", *args)
  assert_one_error_line(result, message)


def test_evaluate_cli_without_a_checkpoint_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  result = run_program("experiments.evaluate", f"--config={TINY}", f"--workdir={workdir}")
  assert_one_error_line(result, "no checkpoint in")
  assert not (workdir / "eval.jsonl").exists()


def test_train_classifier_cli_cannot_load_its_config():
  result = run_program("experiments.train_classifier", "--config=/nonexistent/classifier.py")
  assert_one_error_line(result, "cannot load --config=/nonexistent/classifier.py")


@pytest.mark.parametrize("args, message", [
    (["--config.num_epochs=0"], "num_epochs must be >= 1, got 0"),
    (["--config.num_epochz=1"], "the config has no field 'num_epochz'"),
])
def test_train_classifier_cli_bad_input(tmp_path, args, message):
  result = run_program("experiments.train_classifier", *args,
                       f"--config.cache_dir={tmp_path / 'cache'}")
  assert_one_error_line(result, message)
  assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args, message", [
    (["--studies=nope"], "give --studies from"),
    (["--steps=0"], "--steps >= 1"),
    (["--steps=many"], "flag --steps=many"),
    (["--idx_dir=/nonexistent/idx"], "no trained classifier for 'fashion_mnist'"),
])
def test_tuning_study_cli_bad_input(tmp_path, args, message):
  out = tmp_path / "study"
  result = run_program("experiments.tuning_study", f"--out={out}",
                       f"--classifier_dir={tmp_path / 'cache'}", *args)
  assert_one_error_line(result, message)
  assert not out.exists()


def test_tuning_report_cli_bad_input(tmp_path):
  out = tmp_path / "report"
  result = run_program("experiments.tuning_report", "--results=/nonexistent/results.jsonl",
                       f"--out={out}")
  assert_one_error_line(result, "cannot read the study's results")
  assert not out.exists()


def test_write_image_folder_cli_bad_input(tmp_path):
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "keep.txt").write_text("already here")
  result = run_program("experiments.write_image_folder", f"--out={taken}")
  assert_one_error_line(result, "exists and is not an empty folder")
  assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
  result = run_program("experiments.write_image_folder", "--idx_dir=/nonexistent/idx",
                       f"--out={tmp_path / 'new'}")
  assert_one_error_line(result, "IDX directory /nonexistent/idx does not exist")
  assert not (tmp_path / "new").exists()
