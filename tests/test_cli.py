"""Every program's bad input ends in one `error:` line and exit status 2, with nothing written.

Most cases run the program inside the test process (`run_in_process`: its `__main__` block,
flags, config file and `cli.run`'s mapping of bad input to one line and an exit status), which
costs milliseconds instead of a Python start and the imports of JAX and TensorFlow. One case per
program runs it as a real `python -m` subprocess (`run_program`): the process's exit status 2
and its whole stderr, with no traceback and no other `error:` line. mnist_ebgan's is in
tests/test_experiment.py (a workdir of the other objective), grid_search's in
tests/test_grid_search.py.
"""

import contextlib
import io
import logging
import os
import pathlib
import runpy
import socket
import subprocess
import sys
from unittest import mock
import warnings

from absl import app, flags, logging as absl_logging
import pytest

from experiments import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments/configs/tiny.py")


def run_program(module, *args, env=None, timeout=120):
  """`python -m module *args` in a fresh process: its exit status, stdout and stderr."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})


@contextlib.contextmanager
def _absl_restored():
  """absl's flags, app and log handler as they were: the program's flags are removed again."""
  app.define_help_flags()  # once per process, as app.run would
  names, parsed = set(flags.FLAGS), flags.FLAGS.is_parsed()
  parse_state = {key: flags.FLAGS.__dict__[key]
                 for key in ("__flags_parsed", "__unparse_flags_called")}
  done = (app._run_init.done, app._register_and_parse_flags_with_usage.done)
  config_flags = list(cli._config_flags)
  handler = absl_logging.get_absl_handler()
  filters, root_handlers = list(handler.filters), list(logging.root.handlers)
  # app.run's one-time set-up and parse run again, as in a fresh process.
  app._run_init.done = app._register_and_parse_flags_with_usage.done = False
  try:
    yield
  finally:
    for name in set(flags.FLAGS) - names:
      delattr(flags.FLAGS, name)
    if not parsed:
      flags.FLAGS.unparse_flags()
    flags.FLAGS.__dict__.update(parse_state)
    app._run_init.done, app._register_and_parse_flags_with_usage.done = done
    cli._config_flags[:] = config_flags
    handler.filters[:] = filters
    logging.root.handlers[:] = root_handlers


def run_in_process(module, *args, env=None, offline=False):
  """`run_program` inside this process: the module's `__main__` block with these arguments.

  Its exit status and stderr as a CompletedProcess; an exception it lets escape (a traceback
  in a real run) fails the test. offline: every network connection is refused, so the machine
  looks offline even where it is not.
  """
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.ExitStack() as stack:
    stack.enter_context(_absl_restored())
    stack.enter_context(mock.patch.dict(os.environ, env or {}))
    stack.enter_context(mock.patch.object(sys, "argv", [module, *args]))
    if offline:
      stack.enter_context(mock.patch.object(socket, "create_connection", _refuse))
    stack.enter_context(contextlib.redirect_stdout(stdout))
    stack.enter_context(contextlib.redirect_stderr(stderr))
    # A module that the tests imported already runs again as __main__, as with `python -m`.
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", "'experiments.* found in sys.modules", RuntimeWarning)
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
      status = 0
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
      if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
  return subprocess.CompletedProcess([module, *args], status, stdout.getvalue(),
                                     stderr.getvalue())


def _refuse(*args, **kwargs):
  raise OSError("Network is unreachable")


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
    (["--config.objective=wgan"], {},
     "unknown objective 'wgan'; known objectives: ebgan, gan, began, magan"),
    (["--config.objective=gan", "--config.model.family=ladder"],
     {}, "model family 'ladder' has no D with a 'logit' output"),
    (["--config.optim_d.kind=rmsprop"], {},
     "optimizer kind must be one of ('adam', 'sgd'), got 'rmsprop'"),
])
def test_training_cli_bad_input(tmp_path, args, env, message):
  workdir = tmp_path / "run"
  result = run_in_process("experiments.mnist_ebgan", f"--config={TINY}",
                          f"--workdir={workdir}", *args, env=env)
  assert_one_error_line(result, message)
  assert not workdir.exists()


def test_training_cli_needs_a_workdir():
  result = run_in_process("experiments.mnist_ebgan", f"--config={TINY}")
  assert_one_error_line(result, "--workdir must have a value")


def test_a_config_file_that_raises_is_one_line(tmp_path):
  config = write_config(tmp_path, "def get_config():\n  raise ValueError('no such preset')\n")
  result = run_in_process("experiments.mnist_ebgan", f"--config={config}",
                          f"--workdir={tmp_path / 'run'}")
  assert_one_error_line(result, "ValueError: no such preset")


def test_a_misspelt_field_of_another_config_file_is_one_line(tmp_path):
  result = run_in_process("experiments.mnist_ebgan", f"--config={TINY}", "--config.num_stepz=3",
                          f"--workdir={tmp_path / 'run'}")
  assert_one_error_line(result, "the config has no field 'num_stepz' (did you mean \"num_steps\"?)")


def test_offline_tfds_download_fails_at_once_with_the_hint(tmp_path):
  """MNIST through tfds with no network: the error, not minutes of download retries."""
  result = run_in_process("experiments.mnist_ebgan", f"--config={TINY}",
                          f"--workdir={tmp_path / 'run'}",
                          f"--config.data_dir={tmp_path / 'tfds'}", offline=True)
  assert_one_error_line(result, "does not answer (no network?); set --config.idx_dir=DIR")


# A good run prints no TensorFlow banner: tests/test_experiment.py's test_cli_trains_then_samples.


@pytest.mark.parametrize("args, message", [
    (["--config.margn=0.3"], "the config has no field 'margn'"),
    (["--samples=/nonexistent/samples.npz"], "cannot read samples from /nonexistent/samples.npz"),
    ([], "give --samples=PATH.npz, --workdir=DIR"),
    (["--reference=maybe"], "flag --reference=maybe"),
])
def test_evaluate_cli_bad_input(tmp_path, args, message):
  result = run_in_process("experiments.evaluate", f"--config={TINY}", *args)
  assert_one_error_line(result, message)


def test_evaluate_cli_without_a_checkpoint_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  result = run_program("experiments.evaluate", f"--config={TINY}", f"--workdir={workdir}")
  assert_one_error_line(result, "no checkpoint in")
  assert not (workdir / "eval.jsonl").exists()


def test_train_classifier_cli_cannot_load_its_config():
  result = run_in_process("experiments.train_classifier", "--config=/nonexistent/classifier.py")
  assert_one_error_line(result, "cannot load --config=/nonexistent/classifier.py")


@pytest.mark.parametrize("run, args, message", [
    (run_program, ["--config.num_epochs=0"], "num_epochs must be >= 1, got 0"),
    (run_in_process, ["--config.num_epochz=1"], "the config has no field 'num_epochz'"),
], ids=["subprocess-num_epochs", "misspelt-field"])
def test_train_classifier_cli_bad_input(tmp_path, run, args, message):
  result = run("experiments.train_classifier", *args,
               f"--config.cache_dir={tmp_path / 'cache'}")
  assert_one_error_line(result, message)
  assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("run, args, message", [
    (run_in_process, ["--studies=nope"], "give --studies from"),
    (run_program, ["--steps=0"], "--steps >= 1"),
    (run_in_process, ["--steps=many"], "flag --steps=many"),
    (run_in_process, ["--idx_dir=/nonexistent/idx"], "no trained classifier for 'fashion_mnist'"),
], ids=["studies", "subprocess-steps", "steps-not-a-number", "no-classifier"])
def test_tuning_study_cli_bad_input(tmp_path, run, args, message):
  out = tmp_path / "study"
  result = run("experiments.tuning_study", f"--out={out}",
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
  result = run_in_process("experiments.write_image_folder", "--idx_dir=/nonexistent/idx",
                          f"--out={tmp_path / 'new'}")
  assert_one_error_line(result, "IDX directory /nonexistent/idx does not exist")
  assert not (tmp_path / "new").exists()
