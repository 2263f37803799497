"""Writes that never leave a half-written file: write beside the target, then rename over it."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path in the target's folder; on success it is renamed to `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  os.close(fd)
  try:
    yield tmp
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any new file
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  """Atomically write a text file."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)
