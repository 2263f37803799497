"""The project's error contract: what a user did wrong, as opposed to what the code did wrong.

`UserError` is the base of every error that a bad input, a bad setting or a failed run raises
(a corrupt file, a value out of range, an adapter trained on another base, a loss that went NaN).
Launch scripts (`lora_jax.cli.run`) turn it into one line `name: error: message` and exit status
1. It is a `ValueError`, so code that catches `ValueError` keeps working, and the ValueErrors and
OSErrors that parsers of user files raise (json, safetensors, pretty_midi) count as user errors
too. Anything else (`KeyError`, `TypeError`, `ZeroDivisionError`, ...) is a bug and stays a
traceback: code that reads user input checks it and raises a `UserError` instead.
"""

import math
import re


class UserError(ValueError):
  """Bad input, a bad setting, or a run that cannot go on: one line for the user, no traceback."""


_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def check_name(name: object, what: str) -> str:
  """`name` if it is a plain identifier that is safe as one path component, else a UserError.

  Names that become file or folder names (adapter and style names) must not climb out of their
  folder (`..`, `/`), hide (`.x`), take an extension, or carry characters a shell or a file
  system mangles: ASCII letters, digits, '_' and '-', starting with a letter or digit.
  """
  if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
    raise UserError(f"{what} {name!r} must be a plain name: 1 to 100 ASCII letters, digits, "
                    f"'_' and '-', starting with a letter or digit")
  return name


def check_finite(value: object, what: str, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False) -> float:
  """`value` as a float if it is a finite number within [low, high] (low excluded with
  `low_open`), else a UserError naming `what` and the value."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise UserError(f"{what} {value!r} is not a number")
  value = float(value)
  if not math.isfinite(value):
    raise UserError(f"{what} {value} is not a finite number")
  if low is not None and (value <= low if low_open else value < low):
    raise UserError(f"{what} {value:g} must be {'>' if low_open else '>='} {low:g}")
  if high is not None and value > high:
    raise UserError(f"{what} {value:g} must be <= {high:g}")
  return value
