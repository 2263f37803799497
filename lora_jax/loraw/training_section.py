"""Stable Audio's `training` section of a model config, onto this project's loop.

stable-audio-tools' `diffusion_cond` training wrapper reads these keys; here each is mapped, inert
with the reason, or refused with one line naming it:

  learning_rate       full fine-tuning without optimizer_configs: Adam at this rate, as the
                      original (opt.learning_rate, no weight decay); with --use-lora: the rate
                      when lora.lr is absent, as LoRAW falls back to it.
  optimizer_configs   full fine-tuning: `diffusion.optimizer` of type Adam or AdamW with `lr`,
                      `betas`, `eps`, `weight_decay` (torch's AdamW default 0.01 when absent; Adam
                      only without weight decay: torch's Adam adds it to the gradient, which is not
                      AdamW's decay); it wins over learning_rate, as in the original. Its
                      `scheduler` of type InverseLR (`inv_gamma`, `power`, `warmup`, `final_lr`,
                      the original's defaults 1, 1, 0, 0) is opt.decay 'inverse', stepped per
                      optimiser step as the original's (interval 'step'); other types are refused.
                      With --use-lora: inert, because LoRAW replaces the whole optimizer by Adam
                      on the LoRA factors.
  use_ema             full fine-tuning: true keeps stable-audio-tools' EMA of the weights
                      (opt.ema_beta 0.9999, opt.ema_power 3/4, its ema_pytorch settings), which
                      is what the run exports; with --use-lora inert, as LoRAW trims the EMA.
  cfg_dropout_prob    model.cfg_dropout.
  timestep_sampler    'uniform' only (t ~ U(0, 1)).
  mask_padding        true only: the loss here always averages over real frames (the original's
                      default false averages padded frames too).
  demo, log_loss_info, pre_encoded
                      inert: demos are `launch/generate_loraw.py`'s, logging is the loop's, and
                      the data here are always pre-encoded latents.
Anything else (`mask_padding_dropout`, `p_one_shot`, `timestep_sampler_options`, `inpainting`,
`arc`, ...) is refused by name.
"""

import dataclasses
import math
from typing import Any

from lora_jax import errors

INERT = {"demo": "demos are generate_loraw.py's", "log_loss_info": "the loop logs its losses",
         "pre_encoded": "the data are always pre-encoded latents"}
EMA_BETA, EMA_POWER = 0.9999, 0.75  # stable-audio-tools' EMA(beta=0.9999, power=3/4)
_MAPPED = {"learning_rate", "optimizer_configs", "use_ema", "cfg_dropout_prob",
           "timestep_sampler", "mask_padding"}


class TrainingSectionError(errors.UserError):
  """A `training` key or value this loop cannot honour."""


@dataclasses.dataclass(frozen=True)
class TrainingSection:
  """What the section says, checked; None: not given."""

  learning_rate: float | None
  optimizer: dict[str, Any] | None  # opt.* fields from optimizer_configs.diffusion.optimizer
  scheduler: dict[str, Any] | None  # opt.* fields of an InverseLR scheduler
  use_ema: bool | None
  cfg_dropout: float | None
  inert: tuple[str, ...]  # keys given that do nothing here


def _rate(value: Any, where: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and value > 0):
    raise TrainingSectionError(f"{where} must be a positive number, got {value!r}")
  return float(value)


def _scheduler(scheduler: Any, lr: float, where: str) -> dict[str, Any]:
  """opt.* fields of stable-audio-tools' InverseLR (its constructor's defaults when absent)."""
  if not isinstance(scheduler, dict) or scheduler.get("type") != "InverseLR":
    kind = scheduler.get("type") if isinstance(scheduler, dict) else scheduler
    raise TrainingSectionError(f"{where} type {kind!r} is not supported (InverseLR)")
  cfg = _known_keys(scheduler.get("config", {}), ("inv_gamma", "power", "warmup", "final_lr"),
                    f"{where}.config")
  warmup, power = cfg.get("warmup", 0.0), cfg.get("power", 1.0)
  final = cfg.get("final_lr", 0.0)
  for name, value, ok in (("warmup", warmup, lambda v: 0 <= v < 1),
                          ("power", power, lambda v: v >= 0),
                          ("final_lr", final, lambda v: 0 <= v <= lr)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
      raise TrainingSectionError(f"{where}.config.{name} {value!r} is out of range (warmup in "
                                 f"[0, 1), power >= 0, final_lr in [0, lr {lr:g}])")
  return {"decay": "inverse", "warmup_steps": 0,
          "inv_gamma": _rate(cfg.get("inv_gamma", 1.0), f"{where}.config.inv_gamma"),
          "inv_power": float(power), "inv_warmup": float(warmup),
          "final_lr_fraction": float(final) / lr}


def _optimizer(configs: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
  where = "training.optimizer_configs"
  if not isinstance(configs, dict) or set(configs) != {"diffusion"}:
    raise TrainingSectionError(f"{where} must be {{'diffusion': ...}} (the DiT's optimizer), got "
                               f"keys {sorted(configs) if isinstance(configs, dict) else configs}")
  diffusion = configs["diffusion"]
  if not isinstance(diffusion, dict) or "optimizer" not in diffusion or set(diffusion) - {
      "optimizer", "scheduler"}:
    raise TrainingSectionError(f"{where}.diffusion must hold 'optimizer' (and 'scheduler')")
  opt = diffusion["optimizer"]
  if not isinstance(opt, dict) or opt.get("type") not in ("Adam", "AdamW"):
    raise TrainingSectionError(f"{where}.diffusion.optimizer type "
                               f"{opt.get('type') if isinstance(opt, dict) else opt!r} is not "
                               "supported (Adam or AdamW)")
  cfg = _known_keys(opt.get("config", {}), ("lr", "betas", "eps", "weight_decay"),
                    f"{where}.diffusion.optimizer.config")
  out = {"learning_rate": _rate(cfg.get("lr", 1e-3), f"{where}.diffusion.optimizer.config.lr")}
  betas = cfg.get("betas", [0.9, 0.999])
  if (not isinstance(betas, list) or len(betas) != 2
      or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
    raise TrainingSectionError(f"{where}.diffusion.optimizer.config.betas must be two numbers in "
                               f"[0, 1), got {betas!r}")
  out["b1"], out["b2"] = float(betas[0]), float(betas[1])
  out["eps"] = _rate(cfg.get("eps", 1e-8), f"{where}.diffusion.optimizer.config.eps")
  decay = cfg.get("weight_decay", 0.01 if opt["type"] == "AdamW" else 0.0)
  if isinstance(decay, bool) or not isinstance(decay, (int, float)) or decay < 0:
    raise TrainingSectionError(f"{where}.diffusion.optimizer.config.weight_decay must be >= 0, "
                               f"got {decay!r}")
  if opt["type"] == "Adam" and decay:
    raise TrainingSectionError(f"{where}: Adam with weight_decay {decay} (L2 added to the "
                               "gradient) is not supported; use AdamW (decoupled decay)")
  out["weight_decay"] = float(decay)
  scheduler = (_scheduler(diffusion["scheduler"], out["learning_rate"],
                          f"{where}.diffusion.scheduler") if "scheduler" in diffusion else None)
  return out, scheduler


def parse(section: Any) -> TrainingSection:
  """The `training` object, checked strictly."""
  if not isinstance(section, dict):
    raise TrainingSectionError(f"training must be a JSON object, got {type(section).__name__}")
  unknown = sorted(set(section) - _MAPPED - set(INERT))
  if unknown:
    raise TrainingSectionError(
        f"training.{unknown[0]} is not supported (mapped: {', '.join(sorted(_MAPPED))}; inert: "
        f"{', '.join(sorted(INERT))})")
  if section.get("timestep_sampler", "uniform") != "uniform":
    raise TrainingSectionError(f"training.timestep_sampler {section['timestep_sampler']!r} is "
                               "not supported (only 'uniform')")
  if section.get("mask_padding", True) is not True:
    raise TrainingSectionError(f"training.mask_padding {section['mask_padding']!r} is not "
                               "supported: the loss averages over real frames only (true)")
  use_ema = section.get("use_ema")
  if use_ema is not None and not isinstance(use_ema, bool):
    raise TrainingSectionError(f"training.use_ema must be true or false, got {use_ema!r}")
  dropout = section.get("cfg_dropout_prob")
  if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                              or not 0 <= dropout < 1):
    raise TrainingSectionError(f"training.cfg_dropout_prob must be in [0, 1), got {dropout!r}")
  optimizer, scheduler = (_optimizer(section["optimizer_configs"])
                          if "optimizer_configs" in section else (None, None))
  rate = section.get("learning_rate")
  return TrainingSection(None if rate is None else _rate(rate, "training.learning_rate"),
                         optimizer, scheduler, use_ema,
                         None if dropout is None else float(dropout),
                         tuple(sorted(set(section) & set(INERT))))


def overrides(section: TrainingSection, use_lora: bool, lora_lr: float | None
              ) -> tuple[dict[str, Any], list[str]]:
  """(dotted config overrides, one note per key that is inert in this mode)."""
  out: dict[str, Any] = {}
  notes = [f"training.{k} inert: {INERT[k]}" for k in section.inert]
  if section.cfg_dropout is not None:
    out["model.cfg_dropout"] = section.cfg_dropout
  if use_lora:
    if lora_lr is None and section.learning_rate is not None:
      out["opt.learning_rate"] = section.learning_rate
    if section.optimizer is not None:
      notes.append("training.optimizer_configs inert with --use-lora: LoRAW trains the factors "
                   "with its own Adam")
    if section.use_ema:
      notes.append("training.use_ema inert with --use-lora: LoRAW drops the EMA")
    return out, notes
  if section.use_ema:
    out.update({"opt.ema_beta": EMA_BETA, "opt.ema_power": EMA_POWER})
  if section.optimizer is not None:
    out.update({f"opt.{k}": v for k, v in section.optimizer.items()})
    out.update({f"opt.{k}": v for k, v in (section.scheduler or {}).items()})
  elif section.learning_rate is not None:
    out.update({"opt.learning_rate": section.learning_rate, "opt.weight_decay": 0.0})
  return out, notes


def _known_keys(cfg: object, known: tuple[str, ...], where: str) -> dict:
  """`cfg` when it is a dict of only `known` keys; else one error naming the first other key."""
  unknown = sorted(set(cfg) - set(known)) if isinstance(cfg, dict) else ["config"]
  if unknown:
    raise TrainingSectionError(f"{where}.{unknown[0]} is not supported ({', '.join(known)})")
  return cfg
