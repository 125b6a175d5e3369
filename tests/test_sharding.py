"""The sharded step and checkpoints across device counts, on 8 simulated CPU devices.

The checks run in subprocesses (tests/multidevice.py): the number of CPU
devices is fixed when JAX starts, and this process keeps one. The checks on
8 devices of one process share one subprocess.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from ebgan_jax import checkpoint, data, train
from experiments import trainer
from experiments.configs import tiny
from tests import data_fixtures, multidevice

REPO = pathlib.Path(__file__).resolve().parents[1]


def _xla_flags(devices):
  """The test run's XLA flags (tests/conftest.py) and `devices` CPU devices."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


class _Checks:
  """tests.multidevice running `checks`, each (CHECK, ARG...), in one subprocess."""

  def __init__(self, *checks, devices=8, env=None):
    argv = []
    for check in checks:
      argv += ["+"] * bool(argv) + [str(arg) for arg in check]
    env = {**os.environ, "XLA_FLAGS": _xla_flags(devices), "JAX_PLATFORMS": "cpu",
           **(env or {})}
    self._process = subprocess.Popen(
        [sys.executable, "-m", "tests.multidevice", *argv], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self._lines = self._stderr = None

  def report(self, *check) -> dict:
    """`check`'s report, once the process has ended; fails if the check failed or never ran."""
    if self._lines is None:
      stdout, self._stderr = self._process.communicate(timeout=1200)  # a guard against hangs
      lines = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"check"')]
      self._lines = {tuple(line["check"]): line for line in lines}
    line = self._lines.get(tuple(str(arg) for arg in check))
    assert line is not None, f"{check} did not report:\n{self._stderr[-4000:]}"
    assert "error" not in line, line["error"]
    return line["report"]


def _run(check, *args, devices=8, env=None) -> dict:
  return _Checks((check, *args), devices=devices, env=env).report(check, *args)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  return data_fixtures.write_idx_dir(tmp_path_factory.mktemp("idx"), num_train=256, num_test=64,
                                     height=28, width=28)


# ladder: EBGAN-LN; counting: an objective that carries state (tests/stateful_objective.py)
FAMILIES = ["conv28", "mlp", "conv64", "ladder", "counting"]


@pytest.fixture(scope="module")
def eight_devices(idx_dir):
  """The checks on 8 devices of one process, run in one subprocess for the module."""
  return _Checks(("check_population_sharding", idx_dir),
                 *[("check_step_equality", family, 3) for family in FAMILIES],
                 ("check_batch_statistics_are_global",))


def test_population_sharded_over_members_equals_one_device(eight_devices, idx_dir):
  report = eight_devices.report("check_population_sharding", idx_dir)
  assert report["devices"] == 8 and report["members"] == 5


def test_two_processes_train_a_population_as_one(idx_dir, tmp_path):
  """Two processes x 2 CPU devices: the members spread over both hosts, and each process
  gets back the population one process trains alone."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  checks = [("check_population_processes", idx_dir, port, i, tmp_path / f"{i}.npz")
            for i in (0, 1)]
  runs = [_Checks(check, devices=2, env=env) for check in checks]
  for run, check in zip(runs, checks):
    report = run.report(*check)
    assert report["devices"] == 4 and report["local_devices"] == 2
  config, members = multidevice.population_setting(str(idx_dir))
  alone, history = trainer.train_population(config, members)
  for i in (0, 1):
    with np.load(tmp_path / f"{i}.npz") as got:
      assert got["diverged"].tolist() == alone.diverged.tolist() == [False] * 3 + [True, False]
      np.testing.assert_allclose(got["d_loss"], history["d_loss"], rtol=multidevice.METRICS_RTOL)
      trained = [got[f"arr_{k}"] for k in range(len(got.files) - 2)]
      _assert_leaves_close(trained, [np.asarray(x) for x in jax.tree.leaves(alone.states)])


def test_two_processes_stop_at_the_same_step_when_one_is_signalled(idx_dir, tmp_path):
  """Two processes train one run; SIGTERM reaches process 1 only. Both stop after the same
  call and save that step together (one checkpoint)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  workdir = tmp_path / "run"
  checks = [("check_stop_processes", idx_dir, port, i, workdir) for i in (0, 1)]
  runs = [_Checks(check, devices=2, env=env) for check in checks]
  reports = [run.report(*check) for run, check in zip(runs, checks)]
  assert [r["signal"] for r in reports] == [15, 15]
  assert reports[0]["calls"] == reports[1]["calls"] == 3
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
  assert saved == [6], saved
  assert all("at step 6" in r["message"] for r in reports)


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_step_equals_one_device(eight_devices, family):
  report = eight_devices.report("check_step_equality", family, 3)
  assert report["devices"] == 8


def test_batchnorm_statistics_are_those_of_the_global_batch(eight_devices):
  report = eight_devices.report("check_batch_statistics_are_global")
  assert report["devices"] == 8 and report["running_stats_match_global_batch"]


def test_global_batch_must_divide_over_devices():
  config = tiny.get_config()
  config.batch_size = 12
  train.make_train_step(config, train.make_mesh())  # 12 over this process's 1 device
  eight_devices = types.SimpleNamespace(size=8)  # all that the check reads of a mesh
  with pytest.raises(ValueError, match="global batch_size 12 is not divisible by the 8 devices"):
    train.make_train_step(config, eight_devices)


def _tiny_state(idx_dir, workdir, num_steps):
  config = multidevice.tolerant_adam(tiny.get_config())
  config.idx_dir = str(idx_dir)
  config.num_steps = num_steps
  config.checkpoint_every = 1_000
  return trainer.train_and_evaluate(config, str(workdir))


def _assert_leaves_close(actual, expected):
  assert len(actual) == len(expected)
  for a, b in zip(actual, expected):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoint_moves_between_8_devices_and_1(idx_dir, tmp_path, monkeypatch):
  straight = [np.asarray(x) for x in jax.tree.leaves(_tiny_state(idx_dir, tmp_path / "a", 12))]

  # Saved on 8 devices, resumed and finished on 1 (this process). Each resumed
  # run does only the 6 remaining steps: one that retrained from step 0 would
  # end in the same state.
  report = _run("check_train", tmp_path / "b", idx_dir, 6, tmp_path / "b6.npz")
  assert report == {"devices": 8, "step": 6, "steps_run": 6}
  counter = multidevice.StepCounter().install(monkeypatch.setattr)
  resumed_on_1 = _tiny_state(idx_dir, tmp_path / "b", 12)
  assert counter.steps == 6
  _assert_leaves_close([np.asarray(x) for x in jax.tree.leaves(resumed_on_1)], straight)

  # Saved on 1 device, resumed and finished on 8.
  _tiny_state(idx_dir, tmp_path / "c", 6)
  report = _run("check_train", tmp_path / "c", idx_dir, 12, tmp_path / "c12.npz")
  assert report == {"devices": 8, "step": 12, "steps_run": 6}
  resumed_on_8 = np.load(tmp_path / "c12.npz")
  _assert_leaves_close([resumed_on_8[f"arr_{i}"] for i in range(len(straight))], straight)


def _image_steps(events) -> list[int]:
  """The steps of the sample grids in a TensorBoard events file."""
  # pylint: disable-next=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator

  accumulator = event_accumulator.EventAccumulator(str(events), size_guidance={"tensors": 0})
  accumulator.Reload()
  return [event.step for event in accumulator.Tensors("samples")]


def test_two_processes_train_as_one(idx_dir, tmp_path):
  """Two CLI processes x 2 CPU devices (jax.distributed on localhost) == one process's step.

  Each process reads its own data shard; the reference feeds their
  concatenation, the global batch, to the same step on one device.
  """
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "run"
  flags = [f"--config={REPO / 'experiments/configs/tiny.py'}", f"--workdir={workdir}",
           f"--config.idx_dir={idx_dir}", "--config.num_steps=4",
           "--config.optim_g.eps=1e-3", "--config.optim_d.eps=1e-3"]  # see tolerant_adam
  processes = []
  for process_id in (0, 1):
    env = {**os.environ, "XLA_FLAGS": _xla_flags(2),
           "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
           "EBGAN_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "EBGAN_NUM_PROCESSES": "2", "EBGAN_PROCESS_ID": str(process_id)}
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.mnist_ebgan", *flags], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  logs = []
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    logs.append(stderr)
  assert all("global batch 16 over 4 devices in 2 processes" in log for log in logs)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]
  assert [p.name for p in workdir.glob("samples_*.png")] == ["samples_0000004.png"]
  # Only process 0 writes TensorBoard events and sample grids; process 1 logs
  # its metrics to its own stderr only (clu's just_logging writer).
  events = list(workdir.glob("events.out.tfevents.*"))
  assert len(events) == 1, events
  assert _image_steps(events[0]) == [4]
  assert "[4] Got images: {'samples'" in logs[0]
  assert "Got images" not in logs[1]
  assert all("] [4] d_loss=" in log for log in logs)

  config = multidevice.tolerant_adam(tiny.get_config())
  config.idx_dir = str(idx_dir)
  shards = [data.create_dataset(config, process_index=i, process_count=2)[0]
            for i in (0, 1)]
  batches = [np.concatenate([next(shard) for shard in shards]) for _ in range(4)]
  reference, _, _ = multidevice.run_steps(config, train.make_mesh(), batches)
  manager = checkpoint.create_manager(str(workdir / "checkpoints"), keep=2)
  trained = checkpoint.restore(manager, reference)
  _assert_leaves_close([np.asarray(x) for x in jax.tree.leaves(trained)],
                       [np.asarray(x) for x in jax.tree.leaves(reference)])
