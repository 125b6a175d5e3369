"""What every program of experiments/ shares: flags, one-line errors, exit statuses.

  def define_flags(): cli.define_config("config", DEFAULT, "...")  # and absl flags
  if __name__ == "__main__":
    cli.run(main, define_flags, bad_input=(MyConfigError,))

Bad input of any kind (an unknown or malformed flag, a config file that does
not load, a misspelt `--config.FIELD`, a value `main` rejects by raising one of
`bad_input`) prints one line `error: ...` on stderr and exits with status
EXIT_BAD_INPUT, before anything is written; `diverged` exceptions exit with
EXIT_DIVERGED. No traceback reaches the user for either. Training stopped by
SIGTERM, SIGINT or SIGUSR1 (`Stopped`, raised by experiments/trainer.py once
its checkpoint is written) prints one line `stopped: ...` and exits with
128 + the signal's number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import contextlib
import re
import signal
import sys
import threading
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import logs

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
# A run stopped by a signal after saving exits with the shell's status of that signal,
# 128 + its number: SIGINT 130, SIGUSR1 138, SIGTERM 143.
EXIT_SIGNAL_BASE = 128
# What stops a run with a checkpoint: SLURM's and TPU VMs' preemption (SIGTERM; SLURM's
# early warning, --signal=USR1@...), and Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Stopped(Exception):
  """Training stopped on a signal, with a checkpoint of the step it reached."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
  """While training: a list that receives the first of STOP_SIGNALS to arrive.

  The training loop polls it between calls, saves and raises Stopped. Later
  signals are logged and ignored, so that the checkpoint being written
  completes (orbax writes each one atomically: a kill leaves the newest whole
  one). Outside the main thread, where Python cannot handle signals, the list
  stays empty.
  """
  received = []

  def handler(signum, frame):
    del frame
    name = signal.Signals(signum).name
    if received:
      logging.warning("%s: already stopping; the checkpoint is being written", name)
      return
    received.append(signum)
    logging.warning("%s: finishing the call in flight, then saving a checkpoint", name)

  if threading.current_thread() is not threading.main_thread():
    yield received
    return
  previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
  try:
    yield received
  finally:
    for signum, old_handler in previous.items():
      signal.signal(signum, old_handler)


_config_flags: list[flags.FlagHolder] = []


def fail(message: str, status: int = EXIT_BAD_INPUT) -> NoReturn:
  print(f"error: {one_line(message)}", file=sys.stderr)
  sys.exit(status)


def one_line(message: str) -> str:
  """The first and the last line of a message (a wrapped traceback's exception), joined."""
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else "(no message)"
  return f"{lines[0]} {lines[-1]}"


def define_config(name: str, default: str, help_string: str) -> flags.FlagHolder:
  """An ml_collections config-file flag whose loading errors `run` reports in one line."""
  holder = config_flags.DEFINE_config_file(name, default, help_string)
  _config_flags.append(holder)
  return holder


def define_config_and_workdir(default_config: str, workdir_help: str) -> None:
  """The --config file flag (its fields overridable) and the required --workdir flag."""
  define_config("config", default_config,
                "Experiment config file; override fields with --config.FIELD=VALUE.")
  flags.DEFINE_string("workdir", None, workdir_help, required=True)


def _define(define_flags: Callable[[], None]) -> None:
  # ml_collections applies --config.FIELD overrides to the default config
  # while the flag is defined, so a misspelt field fails here.
  try:
    define_flags()
  except (AttributeError, KeyError) as e:
    _no_such_field(e)


def _no_such_field(error: Exception) -> NoReturn:
  """ml_collections' error for a --config.FIELD the config lacks, as one line."""
  field = re.search(r"'([^'\\]+)", str(error))
  hint = re.search(r'Did you mean "([^"]+)"', str(error))
  fail(f"the config has no field {field[1] if field else str(error)!r}"
       + (f' (did you mean "{hint[1]}"?)' if hint else "")
       + "; the config file in experiments/configs/ lists its fields")


def _parse(argv: list[str]) -> list[str]:
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{one_line(str(e))}; --helpshort lists the flags")
  except (AttributeError, KeyError) as e:  # an override of a --config file's missing field
    _no_such_field(e)
  except Exception as e:  # pylint: disable=broad-except  # raised by a --config file's code
    fail(f"the flags could not be parsed: {type(e).__name__}: {one_line(str(e))}")
  for holder in _config_flags:
    # A config file that failed to load raises only when its value is first read.
    try:
      holder.value.to_dict()
    except Exception as e:  # pylint: disable=broad-except
      cause = e.__cause__ or e
      path = config_flags.get_config_filename(flags.FLAGS[holder.name])
      reason = [line.strip() for line in str(cause).splitlines() if line.strip()][-1:]
      fail(f"cannot load --{holder.name}={path}: {' '.join(reason) or type(cause).__name__}")
  return remaining


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None], *,
        bad_input: Sequence[type[BaseException]] = (),
        diverged: Sequence[type[BaseException]] = ()) -> None:
  """Defines the flags, parses them and runs `main(argv)`, each failure as one line."""
  _define(define_flags)

  def guarded_main(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}; flags are written --name=value")
    logs.keep_job_logs_only()
    try:
      main(argv)
    except (app.UsageError, FileNotFoundError, *bad_input) as e:
      fail(str(e))
    except tuple(diverged) as e:
      fail(str(e), EXIT_DIVERGED)
    except Stopped as e:
      print(f"stopped: {one_line(str(e))}", file=sys.stderr)
      sys.exit(EXIT_SIGNAL_BASE + e.signum)

  app.run(guarded_main, flags_parser=_parse)
