"""How a training command's exit status tells a scheduler the way its run ended.

  0    finished (or stopped early by patience): the outputs are written
  75   stopped by SIGTERM/SIGINT after a checkpoint: run the same command again to resume
       (EX_TEMPFAIL of sysexits.h, "try again later"); nothing is exported yet
  1    bad input, or a run that cannot go on (non-finite steps, a workdir in use): one error line
  a signal's (137 for kill -9 in a shell): killed; the same command resumes from the last
       checkpoint, which is whole (Orbax renames a checkpoint into place once complete)
"""

STOPPED = 75


class Stopped(RuntimeError):
  """A library call that trains and then writes results found its run stopped by a signal."""


def of(status: str) -> int:
  """The exit status of a run that ended with loop.Result.status `status`."""
  return STOPPED if status == "stopped" else 0
