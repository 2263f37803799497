"""The seed's command lines spell flags with dashes (`--batch-size`); absl only knows underscores.

absl rejects `--batch-size` ("Unknown command line flag"), so launch scripts rewrite argv before
absl parses it: a `--name` or `--name=value` whose dashed name is a defined flag with
underscores becomes `--name_with_underscores`; `--no-name` of a boolean becomes `--noname`.
Anything else (values, `--config.parent.rank`, arguments after a bare `--`) is left alone.
"""

from typing import Sequence

from absl import flags


def underscore_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
                     ) -> list[str]:
  """argv with dashed flag names rewritten to the underscored flags they mean."""
  known = set(flag_values)
  out = list(argv[:1])
  rest = list(argv[1:])
  while rest:
    arg = rest.pop(0)
    if arg == "--":
      out += [arg] + rest
      break
    if not arg.startswith("--") or "-" not in arg[2:].split("=", 1)[0]:
      out.append(arg)
      continue
    name, eq, value = arg[2:].partition("=")
    underscored = name.replace("-", "_")
    if underscored in known:
      out.append(f"--{underscored}{eq}{value}")
    elif underscored.startswith("no_") and underscored[3:] in known:
      out.append(f"--no{underscored[3:]}{eq}{value}")
    else:
      out.append(arg)
  return out
