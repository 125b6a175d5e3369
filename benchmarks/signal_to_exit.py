"""Seconds from a SIGTERM to the exit of the main runner, with the checkpoint of the step reached.

  python benchmarks/signal_to_exit.py --idx_dir=/usr/share/datasets/fashion-mnist \
      [--image_dir=/tmp/fashion_rgb64] [--delays=0.3,0.7]

Starts `python -m experiments.mnist_ebgan` with each config (conv28 on the IDX
files; conv64 on an image folder of experiments.write_image_folder, when
--image_dir is given) at its shipped steps_per_call, periodic checkpoints off,
waits for its second log line of losses (the two lines, one call apart, time a
call with compilation excluded), then sends SIGTERM a fraction (--delays) of
that call's duration later, and prints one JSON line per run: the exit status, the step saved, the
seconds from the signal to the exit, and the duration of one call, which
bounds the wait for the call in flight.
"""

import json
import os
import pathlib
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]

_IDX_DIR = flags.DEFINE_string("idx_dir", "/usr/share/datasets/fashion-mnist",
                               "Fashion-MNIST IDX files, for conv28.")
_IMAGE_DIR = flags.DEFINE_string("image_dir", None,
                                 "Fashion as 64x64 RGB folder, for conv64; None skips conv64.")
_DELAYS = flags.DEFINE_list("delays", ["0.5"], "When to signal, as fractions of a call.")


def _first_line(process, pattern: str) -> str:
  for line in process.stderr:
    if re.search(pattern, line):
      return line
  raise RuntimeError(f"the run ended before a line matching {pattern!r}")


def stop_once(config: str, data_flag: str, delay_fraction: float) -> dict:
  """One run: trains until its second log line, then SIGTERM `delay_fraction` of a call later."""
  with tempfile.TemporaryDirectory() as workdir:
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.mnist_ebgan", f"--config={config}", data_flag,
         f"--workdir={workdir}", "--config.num_steps=1000000", "--config.log_every=20",
         "--config.checkpoint_every=1000000", "--config.sample_every=1000000"],
        cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    # Log lines come once per call of 20 steps (log_every = steps_per_call): two of them
    # time one call, compilation excluded.
    _first_line(process, r"d_loss")
    started = time.monotonic()
    _first_line(process, r"d_loss")
    call_seconds = time.monotonic() - started
    time.sleep(delay_fraction * call_seconds)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=900)
    seconds = time.monotonic() - sent
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped: ")]
    saved = sorted(int(p.name) for p in pathlib.Path(workdir, "checkpoints").glob("*")
                   if p.name.isdigit())
  return {"config": os.path.relpath(config, REPO), "delay_fraction": delay_fraction,
          "exit_status": process.returncode, "saved_steps": saved,
          "call_seconds": round(call_seconds, 2), "signal_to_exit_s": round(seconds, 2),
          "stopped_line": stopped[0] if stopped else None, "cpu": _cpu_model(),
          "cpus": os.cpu_count()}


def _cpu_model() -> str:
  for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return platform.machine()


def main(argv):
  del argv
  runs = [(str(REPO / "experiments/configs/fashion_conv.py"), f"--config.idx_dir={_IDX_DIR.value}")]
  if _IMAGE_DIR.value:
    runs.append((str(REPO / "experiments/configs/fashion_rgb64.py"),
                 f"--config.image_dir={_IMAGE_DIR.value}"))
  for config, data_flag in runs:
    for delay in _DELAYS.value:
      print(json.dumps(stop_once(config, data_flag, float(delay))), flush=True)


if __name__ == "__main__":
  app.run(main)
