"""A disk that refuses a write (full, over quota, a file-size limit, read-only, no permission) as
one line naming the file and the problem.

Such a failure is neither a bug nor bad input: the user makes room or picks another folder and
runs the same command again. It reaches the code in several shapes: an OSError with its errno
from Python's own writes; the same re-raised by a library from its writer threads (Orbax);
tensorstore's `ValueError` that carries the errno as text (`... "path" ... [os_error_code='28']`);
and often as the `__context__` of a later error raised while cleaning up. `describe` finds it
anywhere in that chain.
"""

import errno
import re

from lora_jax import errors

PROBLEMS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large for the file system (or the process's file size limit)",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted"}

# tensorstore: 'Error writing local file "<path>": ... [os_error_code='28']'
_TENSORSTORE = re.compile(r"\"([^\"]+)\".*\[os_error_code='(\d+)'\]")


class StorageError(errors.UserError):
  """A write the disk refused."""


def describe(error: BaseException) -> str | None:
  """'<file>: <problem>' for the first disk refusal in `error`'s chain (itself, its cause, its
  context) that names its file, else the first that does not; None if there is none."""
  found, seen, todo = [], set(), [error]
  while todo:
    e = todo.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError):
      if e.errno in PROBLEMS:
        found.append((e.filename, PROBLEMS[e.errno]))
    elif (match := _TENSORSTORE.search(str(e))) and int(match[2]) in PROBLEMS:
      found.append((match[1], PROBLEMS[int(match[2])]))
    todo += [e.__cause__, e.__context__]
  if not found:
    return None
  path, problem = next((f for f in found if f[0]), found[0])
  return f"{path}: {problem}" if path else problem
