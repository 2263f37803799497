"""A PEFT `adapter_config.json` checked as a schema before `peft.import_peft` reads it.

The file comes from anywhere (a hub download, another trainer), so every field the importer reads
has its JSON type checked here, and each regex key of a pattern compiles: a missing `r` or a
string `lora_alpha` is one error naming the field, not a KeyError or TypeError mid-import.
"""

import math
import re
from typing import Any

from lora_jax import errors


class PeftConfigError(errors.UserError):
  """An adapter_config.json that is not a PEFT LoRA config lora_jax can read."""


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v) -> bool:  # LoraSpec's rule for alphas
  return _number(v) and v > 0


def _rank(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _patterns(ok):
  return lambda v: v is None or (isinstance(v, dict) and all(
      isinstance(k, str) and ok(x) for k, x in v.items()))


def _rule(v) -> bool:  # PEFT's module rule: one regex, or a list of name suffixes
  return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


# field -> (required, check of its value, what the check wants)
_FIELDS = {
    "peft_type": (True, lambda v: isinstance(v, str), "a string"),
    "r": (True, _rank, "an integer >= 1"),
    "lora_alpha": (True, _positive, "a finite number > 0"),
    "lora_dropout": (False, lambda v: v is None or (_number(v) and 0 <= v < 1),
                     "null or a number in [0, 1)"),
    "use_rslora": (False, lambda v: isinstance(v, bool), "true or false"),
    "use_dora": (False, lambda v: isinstance(v, bool), "true or false"),
    "fan_in_fan_out": (False, lambda v: isinstance(v, bool), "true or false"),
    "bias": (False, lambda v: isinstance(v, str), "a string"),
    "modules_to_save": (False, lambda v: v is None or isinstance(v, list), "null or a list"),
    "target_modules": (False, lambda v: v is None or _rule(v),
                       "null, a regex or a list of module names"),
    "exclude_modules": (False, lambda v: v is None or _rule(v),
                        "null, a regex or a list of module names"),
    "rank_pattern": (False, _patterns(_rank), "null or an object of regex: integer >= 1"),
    "alpha_pattern": (False, _patterns(_positive), "null or an object of regex: number > 0"),
}


def check(config: Any, path: str) -> dict:
  """`config` if it is a PEFT config whose fields have the types the importer reads."""
  if not isinstance(config, dict):
    raise PeftConfigError(f"{path} must hold a JSON object, got {type(config).__name__}")
  for name, (required, ok, wanted) in _FIELDS.items():
    if name not in config:
      if required:
        raise PeftConfigError(f"{path} has no field {name!r}")
      continue
    if not ok(config[name]):
      raise PeftConfigError(f"{path}: field {name!r} must be {wanted}, got "
                            f"{config[name]!r:.60}")
  for name in ("target_modules", "exclude_modules"):
    if isinstance(config.get(name), str):
      try:
        re.compile(config[name])
      except re.error as e:
        raise PeftConfigError(f"{path}: {name} {config[name]!r:.60} is not a regex ({e})") from None
  for name in ("rank_pattern", "alpha_pattern"):
    for key in config.get(name) or {}:
      try:
        re.compile(key)
      except re.error as e:
        raise PeftConfigError(f"{path}: {name} key {key!r} is not a regex ({e})") from None
  return config
