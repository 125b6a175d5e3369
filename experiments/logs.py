"""Console logs of the experiment programs: their own INFO lines, and only warnings of libraries."""

import logging

from absl import logging as absl_logging


class _JobLogsOnly(logging.Filter):
  """Keeps INFO lines from the experiments and clu's metric writer; libraries may only warn.

  Orbax alone logs some twenty INFO lines per checkpoint.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING
            or any(part in record.pathname for part in ("/experiments/", "/clu/")))


def keep_job_logs_only() -> None:
  """Filters absl's log handler; call once from a program's main."""
  absl_logging.get_absl_handler().addFilter(_JobLogsOnly())
