"""What an adapter adapts: rank, alpha, target rules, and their resolution against a base tree.

Rules are spelled over dotted module paths (`blocks.0.attn.q_proj`, see `lora_jax.tree_paths`):
- `target_modules`: PEFT-style suffixes; `attn.q_proj` matches any module whose path is
  `attn.q_proj` or ends in `.attn.q_proj`.
- `include` / `exclude`: regexes searched in the module path (anchor with ^ and $ as needed).
  `{lo-hi}` is shorthand for the integers lo..hi, so `blocks\\.{0-11}\\.` selects twelve layers.
- `rank_pattern` / `alpha_pattern`: (regex, value) pairs searched in the module path; the first
  match wins, as in PEFT.
Only modules with a 2-D `kernel` (dense layers) can be adapted. Every rule must match something:
a rule that matches nothing is an error listing the paths there are, never a silent no-op.
"""

import dataclasses
import json
import math
import re
from typing import Any, Mapping

from lora_jax import errors, tree_paths

_RANGE = re.compile(r"\{(\d+)-(\d+)\}")


class LoraRuleError(errors.UserError):
  """A target rule that matches nothing, or a malformed rule."""


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Hyper-parameters and target rules of one LoRA adapter."""

  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0  # dropout on the adapter's input, as PEFT's lora_dropout
  target_modules: tuple[str, ...] = ()
  include: tuple[str, ...] = ()
  exclude: tuple[str, ...] = ()
  rank_pattern: tuple[tuple[str, int], ...] = ()
  alpha_pattern: tuple[tuple[str, float], ...] = ()
  use_rslora: bool = False  # scale alpha / sqrt(rank) instead of alpha / rank
  init: str = "zeros"  # 'zeros': B = 0 and A kaiming-uniform (PEFT); 'gaussian': A ~ N(0, 1/r)
  module_dropout: float = 0.0  # probability of skipping a whole adapted module in a train step
  use_dora: bool = False  # DoRA: a learned per-output magnitude over the normalised W + s A B

  def __post_init__(self):
    for name in ("target_modules", "include", "exclude"):
      value = getattr(self, name)
      if isinstance(value, str):
        value = (value,)
      object.__setattr__(self, name, tuple(value))
    for name, cast in (("rank_pattern", int), ("alpha_pattern", float)):
      value = getattr(self, name)
      items = value.items() if isinstance(value, Mapping) else value
      object.__setattr__(self, name, tuple((str(k), cast(v)) for k, v in items))
    if self.rank < 1 or any(r < 1 for _, r in self.rank_pattern):
      raise LoraRuleError(f"LoRA rank must be >= 1, got {self.rank} (rank_pattern "
                          f"{self.rank_pattern})")
    for where, alpha in (("alpha", self.alpha),) + tuple(
        (f"alpha_pattern {p!r}", a) for p, a in self.alpha_pattern):
      if not (math.isfinite(alpha) and alpha > 0):  # NaN or inf scales every update by it
        raise LoraRuleError(f"LoRA {where} must be a finite number > 0, got {alpha!r}")
    if self.init not in ("zeros", "gaussian"):
      raise LoraRuleError(f"LoRA init must be 'zeros' or 'gaussian', got {self.init!r}")
    for name in ("dropout", "module_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise LoraRuleError(f"LoRA {name} must be in [0, 1), got {getattr(self, name)}")
    if not self.target_modules and not self.include:
      raise LoraRuleError("LoRA spec selects nothing: give target_modules or include")

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "LoraSpec":
    """The spec a file records, every field type-checked (the file may come from anywhere)."""
    try:
      fields = json.loads(text)
    except json.JSONDecodeError as e:
      raise LoraRuleError(f"LoRA spec is not JSON ({e})") from None
    if not isinstance(fields, dict):
      raise LoraRuleError(f"LoRA spec must be a JSON object, got {type(fields).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise LoraRuleError(f"unknown LoRA spec fields: {', '.join(map(str, unknown))}")
    for name, value in fields.items():
      if not _SPEC_FIELD_CHECKS[name](value):
        raise LoraRuleError(f"LoRA spec field {name} has the wrong type: {value!r:.60}")
    return cls(**fields)


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _strings(v) -> bool:
  return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _pairs(v) -> bool:
  items = v.items() if isinstance(v, dict) else v
  return isinstance(v, (dict, list)) and all(
      isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) and _number(p[1])
      for p in items)


_SPEC_FIELD_CHECKS = {
    "rank": lambda v: isinstance(v, int) and not isinstance(v, bool), "alpha": _number,
    "dropout": _number, "target_modules": _strings, "include": _strings, "exclude": _strings,
    "rank_pattern": _pairs, "alpha_pattern": _pairs, "use_rslora": lambda v: isinstance(v, bool),
    "init": lambda v: isinstance(v, str), "module_dropout": _number,
    "use_dora": lambda v: isinstance(v, bool)}


@dataclasses.dataclass(frozen=True)
class Target:
  """One adapted module: where it is, its kernel's shape, and its rank and alpha."""

  keys: tuple[str, ...]  # Flax keys of the module (not the leaf), e.g. ('blocks_0', 'attn', 'q_proj')
  path: str  # dotted module path, e.g. 'blocks.0.attn.q_proj'
  in_dim: int
  out_dim: int
  rank: int
  alpha: float
  scale: float
  use_dora: bool = False  # the module also learns a DoRA magnitude [out]


def expand_ranges(pattern: str) -> str:
  """`blocks\\.{0-11}\\.` -> `blocks\\.(?:0|1|...|11)\\.`."""

  def alternation(m):
    lo, hi = int(m.group(1)), int(m.group(2))
    if lo > hi:
      raise LoraRuleError(f"empty range {{{lo}-{hi}}} in rule {pattern!r}")
    return "(?:" + "|".join(str(i) for i in range(lo, hi + 1)) + ")"

  return _RANGE.sub(alternation, pattern)


def _compile(pattern: str) -> re.Pattern:
  try:
    return re.compile(expand_ranges(pattern))
  except re.error as e:
    raise LoraRuleError(f"bad regex {pattern!r} in LoRA rules: {e}") from e


def _suffix_match(path: str, suffix: str) -> bool:
  return path == suffix or path.endswith("." + suffix)


def dense_modules(params: Any) -> dict[str, tuple[tuple[str, ...], tuple[int, int]]]:
  """{dotted module path: (Flax keys, kernel shape)} for every 2-D kernel in a (abstract) tree."""
  out = {}
  for keys, leaf in tree_paths.flatten(params).items():
    if keys[-1] == "kernel" and len(leaf.shape) == 2:
      out[tree_paths.dotted(keys[:-1])] = (keys[:-1], tuple(leaf.shape))
  return out


def _first(pairs, path, default):
  for pattern, value in pairs:
    if _compile(pattern).search(path):
      return value
  return default


def module_rank(spec: LoraSpec, path: str) -> int:
  """Rank of the module at `path` after `rank_pattern`."""
  return _first(spec.rank_pattern, path, spec.rank)


def module_scale(spec: LoraSpec, path: str, rank: int) -> tuple[float, float]:
  """(alpha, scale) of the module at `path`: alpha/rank, or alpha/sqrt(rank) with rsLoRA."""
  alpha = _first(spec.alpha_pattern, path, spec.alpha)
  return alpha, alpha / (math.sqrt(rank) if spec.use_rslora else rank)


def _nothing_matched(kind: str, rule: str, candidates) -> LoraRuleError:
  shown = ", ".join(sorted(candidates)[:12])
  more = f" (+{len(candidates) - 12} more)" if len(candidates) > 12 else ""
  return LoraRuleError(
      f"LoRA {kind} rule {rule!r} matches no dense module; modules are: {shown}{more}")


def resolve(spec: LoraSpec, params: Any) -> tuple[Target, ...]:
  """The modules `spec` adapts in the (abstract) base tree `params`, checking every rule."""
  modules = dense_modules(params)
  if not modules:
    raise LoraRuleError("the base tree has no 2-D kernels to adapt")
  selected = set()
  for suffix in spec.target_modules:
    hits = {p for p in modules if _suffix_match(p, suffix)}
    if not hits:
      raise _nothing_matched("target_modules", suffix, modules)
    selected |= hits
  for pattern in spec.include:
    hits = {p for p in modules if _compile(pattern).search(p)}
    if not hits:
      raise _nothing_matched("include", pattern, modules)
    selected |= hits
  for pattern in spec.exclude:
    hits = {p for p in selected if _compile(pattern).search(p)}
    if not hits:
      raise _nothing_matched("exclude", pattern, selected)
    selected -= hits
  if not selected:
    raise LoraRuleError("LoRA exclude rules removed every selected module")
  for kind, pairs in (("rank_pattern", spec.rank_pattern), ("alpha_pattern", spec.alpha_pattern)):
    for pattern, _ in pairs:
      if not any(_compile(pattern).search(p) for p in selected):
        raise _nothing_matched(kind, pattern, selected)
  targets = []
  for path in sorted(selected, key=lambda p: modules[p][0]):
    keys, (in_dim, out_dim) = modules[path]
    rank = module_rank(spec, path)
    if rank > min(in_dim, out_dim):  # B A would hold more numbers than the delta it stands for
      raise LoraRuleError(f"LoRA rank {rank} of {path} exceeds its kernel's smaller side "
                          f"min({in_dim}, {out_dim}) = {min(in_dim, out_dim)}")
    alpha, scale = module_scale(spec, path, rank)
    targets.append(Target(keys, path, in_dim, out_dim, rank, alpha, scale, spec.use_dora))
  return tuple(targets)


def describe(targets: tuple[Target, ...]) -> str:
  """One line a run logs: how many modules and parameters the rules selected."""
  n = sum(t.rank * (t.in_dim + t.out_dim) + (t.out_dim if t.use_dora else 0) for t in targets)
  return f"LoRA adapts {len(targets)} modules with {n:,} parameters"


def count_by_rule(spec: LoraSpec, targets: tuple[Target, ...]) -> dict[str, int]:
  """{rule: parameters it selected}, for the per-rule log line the seeds' users asked for."""
  counts = {}
  for rule in spec.target_modules:
    counts[rule] = sum(t.rank * (t.in_dim + t.out_dim) for t in targets if _suffix_match(t.path, rule))
  for rule in spec.include:
    counts[rule] = sum(
        t.rank * (t.in_dim + t.out_dim) for t in targets if _compile(rule).search(t.path))
  return counts

