"""The config boundary: an ml_collections ConfigDict in, frozen dataclasses out.

Code under `lora_jax/` never sees a ConfigDict. The conversion is strict both ways: a key that is
not a field of its dataclass is an error naming it, and so is a field the config does not declare
(every field the program reads is declared in the config file, so no default hides in code).
The `model` group's dataclass is the family's own (`lora_jax.families.REGISTRY`).
"""

import dataclasses
import importlib.util
import json
import math
import os
import types
import typing
from typing import Any, Mapping

from lora_jax import errors, families
from lora_jax.lora.spec import LoraSpec
from lora_jax.quant.kernels import KINDS as QUANT_KINDS


class ConfigError(errors.UserError):
  """A config that does not fit the dataclasses it must become."""


def _check(where: str, value: float, low: float, high: float = math.inf, *,
           low_open: bool = False, high_open: bool = False) -> None:
  """Refuse `value` outside [low, high] (ends excluded as asked); NaN fails every comparison."""
  above = value > low if low_open else value >= low
  below = value < high if high_open else value <= high
  if not (above and below):
    interval = (f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                if math.isfinite(high) else f"{'>' if low_open else '>='} {low:g}")
    raise ConfigError(f"{where} must be {'in ' if math.isfinite(high) else ''}{interval}, "
                      f"got {value!r}")


def _at_least(group: Any, low: int, where: str, *names: str) -> None:
  """Counts are checked where they are declared, so a 0 batch never reaches a division."""
  for name in names:
    value = getattr(group, name)
    if isinstance(value, int) and not isinstance(value, bool) and value < low:
      raise ConfigError(f"config.{where}.{name} must be >= {low}, got {value}")


@dataclasses.dataclass(frozen=True)
class OptConfig:
  """AdamW, its learning-rate schedule, clipping and gradient accumulation."""

  learning_rate: float
  warmup_steps: int
  decay: str  # 'cosine', 'linear' or 'constant' after warm-up, or 'inverse' (InverseLR)
  final_lr_fraction: float  # the decayed learning rate as a fraction of the peak
  inv_gamma: float  # 'inverse': steps until the rate falls to 2^-inv_power of the peak
  inv_power: float  # 'inverse': the decay's exponent
  inv_warmup: float  # 'inverse': exponential warm-up factor in [0, 1) (0: none)
  weight_decay: float  # decoupled, on parameters with two or more dimensions
  b1: float
  b2: float
  eps: float
  clip_norm: float  # global-norm clipping threshold; 0 turns clipping off
  grad_accum_steps: int  # micro-batches per optimiser step
  lr_groups: tuple[tuple[str, float], ...]  # (regex over trainable paths, lr multiplier)
  ema_beta: float  # > 0: keep an EMA of the trained weights (stable-audio-tools': 0.9999)
  ema_power: float  # the EMA's warm-up exponent (stable-audio-tools': 3/4)

  def __post_init__(self):
    if self.decay not in ("cosine", "linear", "constant", "inverse"):
      raise ConfigError(f"opt.decay must be 'cosine', 'linear', 'constant' or 'inverse', got "
                        f"{self.decay!r}")
    if self.decay == "inverse" and self.warmup_steps:
      raise ConfigError(f"opt.warmup_steps {self.warmup_steps}: opt.decay 'inverse' warms up by "
                        "its own opt.inv_warmup; set opt.warmup_steps to 0")
    _check("opt.inv_gamma", self.inv_gamma, 0.0, low_open=True)
    _check("opt.inv_power", self.inv_power, 0.0)
    _check("opt.inv_warmup", self.inv_warmup, 0.0, 1.0, high_open=True)
    _check("opt.ema_beta", self.ema_beta, 0.0, 1.0, high_open=True)
    _check("opt.ema_power", self.ema_power, 0.0, low_open=True)
    _check("opt.learning_rate", self.learning_rate, 0.0)  # 0: evaluation-only runs (tests)
    _check("opt.warmup_steps", self.warmup_steps, 0)
    _check("opt.final_lr_fraction", self.final_lr_fraction, 0.0, 1.0)
    _check("opt.weight_decay", self.weight_decay, 0.0)
    _check("opt.b1", self.b1, 0.0, 1.0, high_open=True)
    _check("opt.b2", self.b2, 0.0, 1.0, high_open=True)
    _check("opt.eps", self.eps, 0.0, low_open=True)
    _check("opt.clip_norm", self.clip_norm, 0.0)
    _check("opt.grad_accum_steps", self.grad_accum_steps, 1)
    for pattern, multiplier in self.lr_groups:
      _check(f"opt.lr_groups multiplier of {pattern!r}", multiplier, 0.0)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the arrays come from and how they are batched."""

  path: str  # .npz holding the family's batch arrays; '' to use synthetic_examples
  val_path: str  # .npz for validation; '' holds out val_fraction of `path`
  val_fraction: float
  synthetic_examples: int  # > 0: the family's learnable synthetic set of this size (no path)
  batch_size: int  # examples per optimiser step, over all devices and micro-batches
  eval_batch_size: int

  def __post_init__(self):
    _at_least(self, 1, "data", "batch_size", "eval_batch_size")
    _at_least(self, 0, "data", "synthetic_examples")
    if bool(self.path) == (self.synthetic_examples > 0):
      raise ConfigError(f"give exactly one of data.path ({self.path!r}) and "
                        f"data.synthetic_examples ({self.synthetic_examples})")
    _check("data.val_fraction", self.val_fraction, 0.0, 1.0, high_open=True)


@dataclasses.dataclass(frozen=True)
class CkptConfig:
  """When checkpoints are written and which survive."""

  every_steps: int  # also written after every evaluation, on SIGTERM/SIGINT and at the end
  keep_last: int
  keep_best: int  # by validation loss
  export: str = "best"  # what the run exports at its end: 'best' (lowest validation loss) or 'final'

  def __post_init__(self):
    _at_least(self, 1, "ckpt", "every_steps", "keep_last")
    _at_least(self, 0, "ckpt", "keep_best")
    if self.export not in ("best", "final"):
      raise ConfigError(f"config.ckpt.export must be 'best' or 'final', got {self.export!r}")
    if self.export == "best" and self.keep_best < 1:
      raise ConfigError("config.ckpt.export 'best' needs config.ckpt.keep_best >= 1, so the "
                        "best checkpoint survives to be exported")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh axis sizes; one may be -1 to take the remaining devices."""

  data: int
  fsdp: int
  model: int


MAX_STEPS = 2**31 - 1  # the train state counts steps in int32


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """What trains, for how long, and how carefully."""

  type: str  # 'lora' or 'full'
  steps: int  # optimiser steps in the whole run
  seed: int
  precision: str  # 'float32', 'bfloat16' or 'float16'
  base_dtype: str  # storage dtype of a frozen base: 'float32' or 'bfloat16'
  base_params: str  # Flax safetensors of the base; '' initialises it from the seed (smoke runs)
  parent_adapter: str  # .lora of a frozen parent adapter the trained one sits on; '' for none
  quantize: str  # base dense kernels as 'int8', 'int8_block' or 'nf4' (QLoRA); '' for base_dtype
  eval_every: int  # steps; evaluation also runs at each epoch end
  patience: int  # evaluations without a better validation loss before stopping; 0 never stops
  log_every: int
  max_nonfinite_in_a_row: int  # skipped non-finite steps in a row that stop the run
  # Resume even where the checkpoint's config differs in a field that alters the result
  # (lora_jax.train.resume lists those that may always change).
  allow_changed_config: bool = False
  # ReLoRA (lora_jax.train.relora): every `relora_every` train steps fold the adapter into the
  # base and restart it; 0 is plain LoRA. `relora_warmup`: steps of linear re-warm after a reset.
  relora_every: int = 0
  relora_warmup: int = 0
  # A .lora whose factors the trained adapter starts from (continuing an adapter trained
  # elsewhere, e.g. LoRAW's --lora-ckpt-path); '' starts from `lora.init`. Its modules and ranks
  # must be the ones `lora` selects; the scales are this config's.
  init_adapter: str = ""

  def __post_init__(self):
    _at_least(self, 1, "training", "steps", "eval_every", "log_every", "max_nonfinite_in_a_row")
    _at_least(self, 0, "training", "patience")
    if isinstance(self.steps, int) and self.steps > MAX_STEPS:
      raise ConfigError(f"config.training.steps {self.steps} is more than the step counter holds "
                        f"({MAX_STEPS}, int32)")
    if self.type not in ("lora", "full"):
      raise ConfigError(f"training.type must be 'lora' or 'full', got {self.type!r}")
    if self.relora_every < 0 or not 0 <= self.relora_warmup <= max(self.relora_every, 0):
      raise ConfigError(f"training.relora_every {self.relora_every} must be >= 0 and "
                        f"training.relora_warmup {self.relora_warmup} in [0, relora_every]")
    if self.relora_every and self.type != "lora":
      raise ConfigError(f"training.relora_every {self.relora_every} folds a LoRA adapter into the "
                        f"base: it needs training.type 'lora', got {self.type!r}")
    if self.type == "full" and (self.base_dtype != "float32" or self.parent_adapter):
      raise ConfigError("full fine-tuning trains the base itself: it needs base_dtype 'float32' "
                        f"(got {self.base_dtype!r}) and no parent adapter "
                        f"(got {self.parent_adapter!r})")
    if self.quantize not in ("", *QUANT_KINDS):
      raise ConfigError(f"training.quantize must be '' or one of {', '.join(QUANT_KINDS)}, got "
                        f"{self.quantize!r}")
    if self.quantize and self.type != "lora":
      raise ConfigError(f"training.quantize {self.quantize!r} stores a frozen base quantised; "
                        f"training.type {self.type!r} trains the base itself (use 'lora')")
    if self.init_adapter and self.type != "lora":
      raise ConfigError(f"training.init_adapter {self.init_adapter!r} starts a LoRA adapter; "
                        f"training.type is {self.type!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run."""

  family: str
  name: str
  model: Any  # the family's model-config dataclass
  lora: LoraSpec
  opt: OptConfig
  data: DataConfig
  ckpt: CkptConfig
  mesh: MeshConfig
  training: TrainingConfig

  def __post_init__(self):
    if self.opt.ema_beta and self.training.relora_every:
      raise ConfigError(f"opt.ema_beta {self.opt.ema_beta} with training.relora_every "
                        f"{self.training.relora_every}: each ReLoRA fold restarts the optimiser "
                        "state, which holds the EMA; use one or the other")

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _is_dataclass_type(t) -> bool:
  return isinstance(t, type) and dataclasses.is_dataclass(t)


def _convert(value: Any, hint: Any, where: str) -> Any:
  """`value` as type `hint`: lists become tuples, ints become floats, nested groups dataclasses."""
  if _is_dataclass_type(hint):
    return from_mapping(hint, value, where)
  origin = typing.get_origin(hint)
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"{where} must be a tuple, got {type(value).__name__} {value!r}")
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
      raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}: {value!r}")
    return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
  if origin in (typing.Union, types.UnionType) or hint is Any:
    return value
  if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    if not math.isfinite(value):  # no setting means NaN or infinity; they fail steps later
      raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)
  if isinstance(hint, type) and not isinstance(value, hint):
    raise ConfigError(f"{where} must be {hint.__name__}, got {type(value).__name__} {value!r}")
  return value


def from_mapping(cls: type, mapping: Mapping[str, Any], where: str, **given: Any) -> Any:
  """Build dataclass `cls` from `mapping`; unknown and undeclared keys are errors naming them."""
  if not hasattr(mapping, "keys"):
    raise ConfigError(f"{where} must be a group of fields for {cls.__name__}, got {mapping!r}")
  hints = typing.get_type_hints(cls)
  fields = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(mapping.keys()) - set(fields))
  if unknown:
    raise ConfigError(f"{', '.join(f'{where}.{k}' for k in unknown)}: no such field in "
                      f"{cls.__name__}; its fields are {', '.join(fields)}")
  missing = [f for f in fields if f not in mapping and f not in given]
  if missing:
    raise ConfigError(f"{where} does not declare {', '.join(missing)} (fields of "
                      f"{cls.__name__}); every field is declared in the config file")
  values = {f: _convert(mapping[f], hints[f], f"{where}.{f}") for f in fields if f not in given}
  try:
    return cls(**values, **given)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: {e}") from e


def from_config_dict(config: Mapping[str, Any]) -> TrainConfig:
  """The frozen `TrainConfig` of an ml_collections ConfigDict (or any nested mapping)."""
  for key in ("family", "model"):
    if key not in config:
      raise ConfigError(f"config has no `{key}` field")
  entry = families.lookup(config["family"])
  model = from_mapping(entry.config_cls, config["model"], "config.model")
  rest = {k: config[k] for k in config.keys() if k != "model"}
  return from_mapping(TrainConfig, rest, "config", model=model)


def load_config_dict(path: str, variant: str | None = None, overrides: Mapping[str, Any] = {}):
  """`get_config(variant)` of a config file, with dotted overrides as `--config.a.b=v` gives them.

  An override of a key the config does not declare is an error, as it is on the command line.
  """
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"lora_jax_config_{name}", path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"cannot load config file {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  for dotted, value in overrides.items():
    *groups, leaf = dotted.split(".")
    node = config
    for g in groups:
      if g not in node:
        raise ConfigError(f"override {dotted}: config has no group {g!r}")
      node = node[g]
    if leaf not in node:
      raise ConfigError(f"override {dotted}: config has no field {leaf!r}")
    node[leaf] = value
  return config


def load(path: str, variant: str | None = None, overrides: Mapping[str, Any] = {}) -> TrainConfig:
  """The frozen `TrainConfig` of a config file, a variant and overrides (tests, notebooks)."""
  return from_config_dict(load_config_dict(path, variant, overrides))
