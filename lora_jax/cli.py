"""What every launch script shares: bad input ends in one clear line and a non-zero exit."""

import functools
import sys

from absl import app


def run(main, name: str) -> None:
  """`absl.app.run(main)`, turning a user error (ValueError, OSError) into `name: message`, exit 1."""

  @functools.wraps(main)
  def guarded(argv):
    try:
      return main(argv)
    except (ValueError, OSError) as e:
      message = str(e).splitlines()[0] if str(e) else type(e).__name__
      print(f"{name}: error: {message}", file=sys.stderr)
      sys.exit(1)

  app.run(guarded)
