"""One run per workdir: an OS lock on `<workdir>/run.lock`, taken before anything is written.

The lock is `flock` on an open file, so the kernel releases it with the process however it ends
(kill -9 included): a dead run never leaves it stuck, and there is no stale-lock guesswork. The
holder writes its pid, host and start time into the file so a refused run can name it.

In a multi-process run each process locks its own file (`run.lock` for process 0, `run.lock.<i>`
for process i), so the processes of one run do not refuse each other, while every process of a
second run started into the same workdir is refused at once: its process 0 always collides with
the first run's, and each other process fails fast instead of hanging in a collective that waits
for a refused process 0. On a shared file system the lock reaches across hosts where the file
system implements `flock` (NFS does, as POSIX locks); where it cannot lock, a warning says so and
the run goes on unguarded.
"""

import datetime
import errno
import fcntl
import os
import socket

from absl import logging

NAME = "run.lock"


class WorkdirBusyError(ValueError):
  """Another run holds the workdir."""


def path(workdir: str, process_index: int = 0) -> str:
  return os.path.join(workdir, NAME if process_index == 0 else f"{NAME}.{process_index}")


class WorkdirLock:
  """Holds `<workdir>/run.lock` (per process index) while open; raises WorkdirBusyError if held."""

  def __init__(self, workdir: str, process_index: int = 0):
    self.path = path(workdir, process_index)
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors="replace").strip() or "a run that is starting"
      os.close(fd)
      raise WorkdirBusyError(f"{os.path.dirname(self.path)} is in use by another run "
                             f"({holder}); wait for it, stop it, or use another workdir") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        os.close(fd)
        raise
      logging.warning("cannot lock %s (%s): nothing stops a second run into this workdir",
                      self.path, e.strerror)
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the only descriptor releases the flock
      self._fd = None
