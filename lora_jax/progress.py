"""A progress line for long loops: a `\r` bar on a terminal, a log line every few seconds elsewhere.

A redirected log (CI, `> build.log`) should not fill with carriage returns, so the bar is drawn
only when stderr is a terminal; otherwise absl logging reports the count every `log_seconds`.
"""

import sys
import time

from absl import logging


class Progress:
  """Counts done items out of `total`; `step()` after each, `close()` at the end."""

  def __init__(self, total: int, what: str, log_seconds: float = 5.0, stream=None):
    self.total, self.what, self.done = total, what, 0
    self._stream = stream or sys.stderr
    self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
    self._log_seconds = log_seconds
    self._start = self._last = time.monotonic()

  def step(self, note: str = "") -> None:
    """One more item done; `note` (e.g. '2 failed') is shown beside the count."""
    self.done += 1
    now = time.monotonic()
    if self._tty:
      width = 30
      filled = width * self.done // max(self.total, 1)
      self._stream.write(f"\r{self.what} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} {note}  ")
      self._stream.flush()
    elif now - self._last >= self._log_seconds or self.done == self.total:
      logging.info("%s %d/%d %s(%.1f s)", self.what, self.done, self.total,
                   f"{note} " if note else "", now - self._start)
      self._last = now

  def close(self) -> None:
    """Ends the bar's line on a terminal."""
    if self._tty and self.total:
      self._stream.write("\n")
      self._stream.flush()
