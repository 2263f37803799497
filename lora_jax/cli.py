"""What every launch script shares: its command line, and bad input ending in one clear line.

`run(main, name)` is `absl.app.run(main)` with four additions:
- Dashed flag names work: the seed's commands spell them `--batch-size`, which absl rejects
  ("Unknown command line flag"), so argv is rewritten first (`underscore_flags`).
- A `--config` flag from `define_config` gets its default file on the command line before absl
  parses it. config_flags would otherwise load a default, and apply `--config.<key>=value` to it,
  while the launch script is imported, where nothing can catch a bad override.
- A user error ends in one line `name: error: message` and exit status 1, without a traceback:
  a `lora_jax.errors.UserError` (the project's error types), any other ValueError or OSError
  from `main` (what parsers of user files raise; a disk that refuses a write reads
  '<file>: no space left on device', `lora_jax.disk_errors`), a flag absl refuses, a config file that fails
  to load, and a `--config.<key>` override naming a key the config does not have. Every other
  exception is a bug and keeps its traceback (see lora_jax/errors.py).
- Before anything starts JAX, glibc's malloc is set to keep freed memory for the next step
  (`lora_jax.allocator`: on CPU, XLA's per-step buffers otherwise cost a page fault per page).
- On a machine with no TPU chip, JAX's log line "Unable to initialize backend 'tpu'" (it tries
  every backend and says so at INFO, which absl prints) is dropped. Only that line: a backend
  that fails loudly still raises, and on a machine with TPU device files the line stays.
"""

import difflib
import functools
import glob
import logging
import re
import sys
from typing import NoReturn, Sequence

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import is_config_flag  # public, not re-exported

from lora_jax import allocator
from lora_jax import disk_errors
from lora_jax import errors

flags.disclaim_key_flags()  # `define_config` defines its flag for the launch script that calls it

_CONFIG_DEFAULTS: dict[str, str] = {}  # config flag -> the file `run` gives it when argv does not


def underscore_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
                     ) -> list[str]:
  """argv with dashed flag names rewritten to the underscored flags they mean.

  A `--name` or `--name=value` whose dashed name is a defined flag with underscores becomes
  `--name_with_underscores`; `--no-name` of a boolean becomes `--noname`. Anything else (values,
  `--config.parent.rank`, arguments after a bare `--`) is left alone.
  """
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


class _NoTpuLineFilter(logging.Filter):
  """Drops JAX's 'Unable to initialize backend 'tpu'' record."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_NO_TPU_LINE)


_NO_TPU_LINE = "Unable to initialize backend 'tpu'"
_TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")  # how TPU VMs expose their chips


def quiet_missing_tpu() -> None:
  """Silence JAX's line about a TPU backend it could not start, unless TPU chips are present."""
  if any(glob.glob(pattern) for pattern in _TPU_DEVICE_FILES):
    return
  logger = logging.getLogger("jax._src.xla_bridge")
  if not any(isinstance(f, _NoTpuLineFilter) for f in logger.filters):
    logger.addFilter(_NoTpuLineFilter())


def define_config(default: str, help_string: str, name: str = "config") -> flags.FlagHolder:
  """`--config` (or `--<name>`): a locked config file, `default` unless given; `run` applies the
  default."""
  _CONFIG_DEFAULTS[name] = default
  holder = config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
  flags.FLAGS[name].default_as_str = repr(default)  # what --help shows
  return holder


def run(main, name: str) -> None:
  """`absl.app.run(main)` with dashed flags, config defaults and one-line errors (see above)."""

  @functools.wraps(main)
  def guarded(argv):
    try:
      return main(argv)
    except (errors.UserError, ValueError, OSError) as e:
      disk = None if isinstance(e, errors.UserError) else disk_errors.describe(e)
      message = disk or (str(e).splitlines()[0] if str(e) else type(e).__name__)
      _fail(name, message)

  argv = underscore_flags(sys.argv)
  for flag, default in _CONFIG_DEFAULTS.items():
    if _value_given(argv, flag) is None:
      argv.insert(1, f"--{flag}={default}")
  sys.argv = argv  # config_flags reads its `--config.<key>` overrides from sys.argv
  allocator.keep_freed_memory()
  quiet_missing_tpu()
  app.run(guarded, flags_parser=functools.partial(_parse_flags, name))


def _fail(name: str, message: str) -> NoReturn:
  print(f"{name}: error: {message}", file=sys.stderr)
  sys.exit(1)


def _one_line(message: str) -> str:
  """A multi-line message as its first line and its last, where absl and config_flags put the
  flag and the cause (a config file's traceback in between)."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if len(lines) < 2:
    return "".join(lines)
  return f"{lines[0]}{'' if lines[0].endswith(':') else ':'} {lines[-1]}"


def _parse_flags(name: str, argv: list[str]) -> list[str]:
  try:
    args = flags.FLAGS(argv)
  except (flags.Error, OSError) as e:  # OSError: a config file that failed to load
    _fail(name, _one_line(str(e)))
  except (AttributeError, KeyError):  # config_flags looking up a `--config.<key>` override
    message = _unknown_key(argv)
    if message is None:
      raise
    _fail(name, message)
  for flag in _config_flags():
    try:  # config_flags defers a failed load until the config is first read: read it now
      getattr(flag.value, "keys", None)
    except OSError as e:
      _fail(name, _one_line(str(e)))
  return args


def _config_flags() -> list[flags.Flag]:
  return [flags.FLAGS[n] for n in flags.FLAGS if is_config_flag(flags.FLAGS[n])]


def _value_given(argv: Sequence[str], flag: str) -> str | None:
  """The last value argv gives `--flag` (as `--flag=v` or `--flag v`), or None."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    match = re.fullmatch(rf"--?{re.escape(flag)}(=(.*))?", arg)
    if match:
      value = match[2] if match[1] else (argv[i + 1] if i + 1 < len(argv) else None)
  return value


def _unknown_key(argv: Sequence[str]) -> str | None:
  """The first `--config.<key>` of argv whose key its config lacks, as an error line; or None."""
  for flag in _config_flags():
    source = _value_given(argv, flag.name)
    if source is None:
      continue
    try:
      config = flag.parser.parse(source)
    except Exception:  # pylint: disable=broad-except; the caller re-raises the original error
      return None
    for arg in argv[1:]:
      if arg == "--":
        break
      match = re.match(rf"--?(?:no)?{re.escape(flag.name)}\.([^=]+)", arg)
      missing = match and _missing_key(config, match[1])
      if missing:
        return f"{arg}: {source} has no field {missing}"
  return None


def _missing_key(config: ml_collections.ConfigDict, path: str) -> str | None:
  """The first key of `path` that `config` lacks, with a hint (`'a.b' (did you mean ...)`);
  None where every key exists."""
  node, keys = config, path.split(".")
  for i, key in enumerate(keys):
    where = ".".join(keys[:i])
    if node is None or "[" in key:
      return None  # a group config_flags creates, or an index: not a key it failed to find
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{'.'.join(keys[:i + 1])!r} ({where} is {node!r}, not a group of fields)"
    if key not in node:
      fields = sorted(node.keys())
      close = difflib.get_close_matches(key, fields, n=1)
      hint = (f"did you mean {'.'.join(keys[:i] + close[:1])!r}?" if close else
              f"{where or 'the config'} has {', '.join(fields)}")
      return f"{'.'.join(keys[:i + 1])!r} ({hint})"
    node = node[key]
  return None


def define_distributed() -> None:
  """`--distributed` and the cluster flags of a multi-process run; see `initialize_distributed`."""
  flags.DEFINE_bool("distributed", False,
                    "Join a multi-process run (a TPU pod slice, multi-host GPUs, or several CPU "
                    "processes) through jax.distributed.initialize before anything else uses JAX. "
                    "The cluster is detected (TPU, SLURM, ...) unless the three flags below give "
                    "it.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
  flags.DEFINE_integer("num_processes", None, "Processes in the run (with --distributed).")
  flags.DEFINE_integer("process_id", None, "This process's index, 0.. (with --distributed).")


def initialize_distributed() -> None:
  """Start JAX's multi-process runtime when `--distributed` says so (call first in `main`).

  CPU processes exchange collectives through gloo; accelerators use their own interconnect.
  """
  if not flags.FLAGS.distributed:
    return
  import jax  # pylint: disable=g-import-not-at-top; only launch scripts that train need it
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=flags.FLAGS.coordinator_address,
                             num_processes=flags.FLAGS.num_processes,
                             process_id=flags.FLAGS.process_id)
