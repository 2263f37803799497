"""Writes that never leave a half-written file: write beside the target, then rename over it.

The rule for output paths, the same in every command: missing parent folders are created when
the output is written (never before the inputs were checked), and a file appears complete or not
at all.
"""

import contextlib
import os
import shutil
import tempfile

from lora_jax import disk_errors, errors


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path in the target's folder; on success it is renamed to `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  os.close(fd)
  try:
    with _naming(path, {tmp: path}):
      yield tmp
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any new file
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def _naming(what: str, targets: dict[str, str] | None = None, staging: tuple[str, ...] = ()):
  """A write the disk refused names the output it was for ('<output>: no space left on
  device'), not a temporary path: where it named no file (Python's own `write` calls never do)
  or a temporary path of `targets` ({temporary: output}), or any path in a `staging` folder
  (`what`)."""
  try:
    yield
  except OSError as e:
    if e.errno not in disk_errors.PROBLEMS:
      raise
    if e.filename is None:
      raise OSError(e.errno, e.strerror, what) from e
    for tmp, target in (targets or {}).items():
      if str(e.filename).startswith(tmp):
        raise OSError(e.errno, e.strerror, target) from e
    if str(e.filename).startswith(staging):
      raise OSError(e.errno, e.strerror, what) from e
    raise


def write_text(path: str, text: str) -> None:
  """Atomically write a text file."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


@contextlib.contextmanager
def atomic_paths(*paths: str):
  """Yields one temporary path per target; all are moved into place only after the block wrote
  every one, so a command's outputs appear together or not at all.

  Each temporary path sits in a hidden folder beside its target and has the target's own file
  name, so writers that pick a format by suffix (`.pt`, `.png`) still see it. A target's missing
  parent folders are created here, when the outputs are about to be written: the one rule every
  command follows, after its inputs were checked.
  """
  targets = [os.path.abspath(p) for p in paths]
  if len(set(targets)) != len(targets):
    same = sorted({t for t in targets if targets.count(t) > 1})
    raise errors.UserError(f"two outputs name the same file: {', '.join(same)}")
  staging: dict[str, str] = {}
  try:
    tmps = []
    for target in targets:
      folder = os.path.dirname(target)
      if folder not in staging:
        os.makedirs(folder, exist_ok=True)
        staging[folder] = tempfile.mkdtemp(prefix=".staging.", suffix=".tmp", dir=folder)
      tmps.append(os.path.join(staging[folder], os.path.basename(target)))
    with _naming(", ".join(targets), dict(zip(tmps, targets)), tuple(staging.values())):
      yield tmps
    unwritten = [t for t, tmp in zip(targets, tmps) if not os.path.isfile(tmp)]
    if unwritten:
      raise RuntimeError(f"outputs {unwritten} were not written")  # a bug in the caller
    for target, tmp in zip(targets, tmps):
      os.replace(tmp, target)
  finally:
    for folder in staging.values():
      shutil.rmtree(folder, ignore_errors=True)
