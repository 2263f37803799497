"""SIGTERM and SIGINT as a request to stop: the loop finishes its step, checkpoints and returns.

The handler only sets a flag (nothing else is safe inside a signal handler); the previous handlers
come back when the context exits. Signals can only be caught on the main thread; elsewhere
(a notebook's worker thread) the context is a no-op flag that `request()` can still set.
"""

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """A flag set by SIGTERM/SIGINT (or `request()`) while the context is open."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def request(self, reason: str = "request") -> None:
    self.signal_name = reason

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()
