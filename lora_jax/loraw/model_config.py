"""Stable Audio's model config JSON, with LoRAW's `lora` section, read strictly into the dit
family's config fields.

What is read: `model_type` 'diffusion_cond'; `sample_rate`, `sample_size`, `audio_channels`;
`model.diffusion` (`type` 'dit', its `config` through `lora_jax.models.dit.model`'s own check,
`cross_attention_cond_ids`, `global_cond_ids`, `diffusion_objective` 'v'); `model.conditioning`
(`cond_dim` and the conditioners `prompt` of type t5, with `t5_model_name` (one the original
accepts), `max_length` (the prompt length), `project_out`, and `enable_grad` false only (T5 stays
frozen), and `seconds_start`/`seconds_total` of type number with `min_val`/`max_val`);
`model.pretransform` (type 'autoencoder': its `latent_dim` must be the DiT's io_channels; its
encoder and decoder are the autoencoder's business, kept as given); `model.io_channels`; and
`lora` (`component_whitelist`, `multiplier`, `rank`, `alpha`, `dropout`, `module_dropout`, `lr`,
`weight_decompose`); `training` through `lora_jax.loraw.training_section`, which maps, names as
inert, or refuses each of its keys. Any other key, and any value this project does not implement,
is an error naming it: a config option silently ignored would train another model than the file
describes.

LoRAW's whitelist selects every linear layer with a whitelisted name among its ancestors or
itself (`scan_model`): here one regex per component over the dotted module path. Its multiplier
scales the delta once (the original's `load_weights` applied it to both factors); training at
multiplier m is training at scale m * alpha / rank, so the LoRA spec's alpha is m * alpha.
"""

import dataclasses
import json
import math
import re
from typing import Any

from lora_jax import errors
from lora_jax.data.t5 import prompts as t5_prompts
from lora_jax.families import dit as dit_family
from lora_jax.loraw import training_section
from lora_jax.models.dit import model as dit


class ModelConfigError(errors.UserError, ValueError):
  """A model config this project cannot train faithfully."""


@dataclasses.dataclass(frozen=True)
class LorawSection:
  """LoRAW's `lora` section."""

  component_whitelist: tuple[str, ...]
  multiplier: float
  rank: int
  alpha: float
  dropout: float
  module_dropout: float
  lr: float | None
  weight_decompose: bool


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """What a Stable Audio model config JSON says, as this project's config fields."""

  model_fields: dict  # config.model overrides of configs/dit.py
  sample_rate: int
  lora: LorawSection | None
  pretransform: dict | None  # the original's pretransform object, for the autoencoder
  text_encoder_name: str  # the T5 model the original names ('' without a prompt conditioner)
  t5_project_out: bool  # the T5 conditioner's project_out option
  training: training_section.TrainingSection | None  # the `training` section, checked

  def text_fields(self, t5_width: int) -> dict[str, Any]:
    """The dit family's text encoder fields: T5's output of `t5_width` (the user's T5 folder's
    d_model) when given and the config names a T5 conditioner, else the byte-token embedding."""
    if t5_width and not self.text_encoder_name:
      raise ModelConfigError("T5 files are given but the model config has no 'prompt' "
                             "conditioner of type t5")
    if t5_width:
      return {"text_encoder": "t5", "t5_width": t5_width, "t5_project_out": self.t5_project_out}
    return {"text_encoder": "embedding", "t5_width": 0, "t5_project_out": False}

  def dit_config(self, latent_length: int, t5_width: int = 0):
    """The dit family's model config for inference (no conditioning dropout)."""
    return dit_family.DitConfig(**self.model_fields, **self.text_fields(t5_width),
                                latent_length=latent_length, cfg_dropout=0.0)

  def latent_frames(self, seconds: float) -> int | None:
    """Latent frames of `seconds` of audio, from the pretransform's downsampling ratio."""
    ratio = (self.pretransform or {}).get("config", {}).get("downsampling_ratio")
    if not isinstance(ratio, int) or ratio < 1:
      return None
    return max(1, math.ceil(seconds * self.sample_rate / ratio))

  def config_overrides(self) -> dict[str, Any]:
    """Dotted config overrides (`model.*`, and from `lora` also `lora.*` and `opt.*`)."""
    out = {f"model.{k}": v for k, v in self.model_fields.items()}
    if self.lora is not None:
      out.update(lora_overrides(self.lora))
    return out


def whitelist_rules(components: tuple[str, ...]) -> tuple[str, ...]:
  """One regex per component name: a path component equal to it (LoRAW's ancestor test)."""
  return tuple(r"(^|\.)" + re.escape(c) + r"(\.|$)" for c in components)


def lora_overrides(section: LorawSection) -> dict[str, Any]:
  out = {"lora.rank": section.rank, "lora.alpha": section.alpha * section.multiplier,
         "lora.dropout": section.dropout, "lora.module_dropout": section.module_dropout,
         "lora.target_modules": (), "lora.include": whitelist_rules(section.component_whitelist),
         "lora.use_dora": section.weight_decompose}
  if section.lr is not None:
    out["opt.learning_rate"] = section.lr
  return out


def _object(value: Any, where: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
  if not isinstance(value, dict):
    raise ModelConfigError(f"{where} must be a JSON object, got {type(value).__name__}")
  unknown = sorted(set(value) - allowed)
  if unknown:
    raise ModelConfigError(f"{where}.{unknown[0]} is not supported (supported keys: "
                           f"{', '.join(sorted(allowed))})")
  missing = sorted(required - set(value))
  if missing:
    raise ModelConfigError(f"{where} lacks {missing[0]}")
  return value


def _num(value: Any, where: str, low: float = -math.inf, *, low_open: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ModelConfigError(f"{where} must be a finite number, got {value!r}")
  if value < low or (low_open and value == low):
    raise ModelConfigError(f"{where} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
  return float(value)


def _int(value: Any, where: str, low: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ModelConfigError(f"{where} must be an integer >= {low}, got {value!r}")
  return value


def _ids(value: Any, where: str) -> tuple[str, ...]:
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise ModelConfigError(f"{where} must be a list of strings, got {value!r}")
  return tuple(value)


def _lora(section: Any) -> LorawSection:
  s = _object(section, "lora", {"component_whitelist", "multiplier", "rank", "alpha", "dropout",
                                "module_dropout", "lr", "weight_decompose"},
              {"component_whitelist", "multiplier", "rank", "alpha"})
  whitelist = _ids(s["component_whitelist"], "lora.component_whitelist")
  if not whitelist:
    raise ModelConfigError("lora.component_whitelist is empty: it would adapt nothing")
  fractions = {}
  for key in ("dropout", "module_dropout"):
    value = s.get(key) or 0.0  # LoRAW reads 0 and null alike as off
    fractions[key] = _num(value, f"lora.{key}", 0.0)
    if fractions[key] >= 1.0:
      raise ModelConfigError(f"lora.{key} must be in [0, 1), got {value!r}")
  lr = s.get("lr")
  decompose = s.get("weight_decompose", False)
  if not isinstance(decompose, bool):
    raise ModelConfigError(f"lora.weight_decompose must be true or false, got {decompose!r}")
  return LorawSection(whitelist, _num(s["multiplier"], "lora.multiplier", 0.0),
                      _int(s["rank"], "lora.rank"), _num(s["alpha"], "lora.alpha", 0.0,
                                                         low_open=True),
                      fractions["dropout"], fractions["module_dropout"],
                      None if lr is None else _num(lr, "lora.lr", 0.0, low_open=True), decompose)


def _conditioning(section: Any) -> tuple[dict, str, bool]:
  c = _object(section, "model.conditioning", {"configs", "cond_dim"}, {"configs", "cond_dim"})
  # Without a prompt conditioner the prompt is one padding token, which no id uses.
  fields = {"cond_dim": _int(c["cond_dim"], "model.conditioning.cond_dim"), "text_len": 1}
  if not isinstance(c["configs"], list):
    raise ModelConfigError("model.conditioning.configs must be a list")
  t5_name, project_out = "", False
  seen = set()
  for i, entry in enumerate(c["configs"]):
    where = f"model.conditioning.configs[{i}]"
    e = _object(entry, where, {"id", "type", "config"}, {"id", "type"})
    cid, kind, cfg = e["id"], e["type"], e.get("config", {})
    if cid in seen:
      raise ModelConfigError(f"{where}: conditioner id {cid!r} appears twice")
    seen.add(cid)
    if cid == "prompt" and kind == "t5":
      cfg = _object(cfg, f"{where}.config", {"t5_model_name", "max_length", "project_out",
                                              "enable_grad"})
      t5_name = cfg.get("t5_model_name", "t5-base")
      if t5_name not in t5_prompts.MODEL_DIMS:
        raise ModelConfigError(f"{where}.config.t5_model_name {t5_name!r} is not one the "
                               f"original accepts ({', '.join(t5_prompts.MODEL_DIMS)})")
      project_out = cfg.get("project_out", False)
      if not isinstance(project_out, bool):
        raise ModelConfigError(f"{where}.config.project_out must be true or false, got "
                               f"{project_out!r}")
      if cfg.get("enable_grad", False) is not False:
        raise ModelConfigError(f"{where}.config.enable_grad {cfg['enable_grad']!r} is not "
                               "supported: T5 stays frozen here (the original's default)")
      fields["text_len"] = _int(cfg.get("max_length", 128), f"{where}.config.max_length")
    elif cid in ("seconds_start", "seconds_total") and kind == "number":
      cfg = _object(cfg, f"{where}.config", {"min_val", "max_val"})
      lo = _num(cfg.get("min_val", 0), f"{where}.config.min_val")
      hi = _num(cfg.get("max_val", 1), f"{where}.config.max_val")
      if not lo < hi:
        raise ModelConfigError(f"{where}.config: min_val {lo:g} is not below max_val {hi:g}")
      fields[f"{cid}_range"] = (lo, hi)
    else:
      raise ModelConfigError(f"{where}: conditioner {cid!r} of type {kind!r} is not supported "
                             "(prompt: t5; seconds_start, seconds_total: number)")
  for cid in ("seconds_start", "seconds_total"):
    if cid not in seen:
      raise ModelConfigError(f"model.conditioning.configs has no {cid!r} number conditioner; "
                             "the dit family always conditions on both")
  return fields, t5_name, project_out


def _diffusion(section: Any) -> dict:
  d = _object(section, "model.diffusion",
              {"type", "config", "cross_attention_cond_ids", "global_cond_ids",
               "diffusion_objective"}, {"type", "config"})
  if d["type"] != "dit":
    raise ModelConfigError(f"model.diffusion.type {d['type']!r} is not supported (only 'dit')")
  if d.get("diffusion_objective", "v") != "v":
    raise ModelConfigError(f"model.diffusion.diffusion_objective {d['diffusion_objective']!r} "
                           "is not supported (only 'v')")
  try:
    cfg = dit.config_from_original(_object(d["config"], "model.diffusion.config",
                                           set(d["config"]) if isinstance(d["config"], dict)
                                           else set()))
  except ValueError as e:
    raise ModelConfigError(f"model.diffusion.config: {e}") from None
  if cfg.patch_size != 1 or cfg.prepend_cond_dim:
    raise ModelConfigError("model.diffusion.config: patch_size other than 1 and "
                           "prepend_cond_dim are not supported by the dit family")
  return {"io_channels": cfg.io_channels, "embed_dim": cfg.embed_dim, "depth": cfg.depth,
          "num_heads": cfg.num_heads, "cond_token_dim": cfg.cond_token_dim,
          "global_cond_dim": cfg.global_cond_dim,
          "project_cond_tokens": cfg.project_cond_tokens,
          "project_global_cond": cfg.project_global_cond,
          "cross_attention_cond_ids": _ids(d.get("cross_attention_cond_ids", []),
                                           "model.diffusion.cross_attention_cond_ids"),
          "global_cond_ids": _ids(d.get("global_cond_ids", []), "model.diffusion.global_cond_ids")}


def _pretransform(section: Any, io_channels: int) -> dict:
  p = _object(section, "model.pretransform", {"type", "config", "iterate_batch", "scale",
                                              "chunked", "model_half"}, {"type", "config"})
  if p["type"] != "autoencoder":
    raise ModelConfigError(f"model.pretransform.type {p['type']!r} is not supported (only "
                           "'autoencoder')")
  cfg = p["config"]
  if not isinstance(cfg, dict) or "latent_dim" not in cfg:
    raise ModelConfigError("model.pretransform.config lacks latent_dim")
  if _int(cfg["latent_dim"], "model.pretransform.config.latent_dim") != io_channels:
    raise ModelConfigError(f"model.pretransform.config.latent_dim {cfg['latent_dim']} differs "
                           f"from the DiT's io_channels {io_channels}")
  return p


def parse(config: Any, source: str = "model config") -> ModelConfig:
  """The model config JSON object `config`, checked strictly."""
  try:
    top = _object(config, source, {"model_type", "sample_rate", "sample_size", "audio_channels",
                                   "model", "lora", "training"},
                  {"model_type", "sample_rate", "model"})
    if top["model_type"] != "diffusion_cond":
      raise ModelConfigError(f"model_type {top['model_type']!r} is not supported (only "
                             "'diffusion_cond')")
    for key in ("sample_size", "audio_channels"):
      if key in top:
        _int(top[key], key)
    model = _object(top["model"], "model", {"pretransform", "conditioning", "diffusion",
                                            "io_channels"}, {"conditioning", "diffusion"})
    fields = _diffusion(model["diffusion"])
    cond_fields, t5_name, project_out = _conditioning(model["conditioning"])
    fields.update(cond_fields)
    if "io_channels" in model and _int(model["io_channels"], "model.io_channels") != \
        fields["io_channels"]:
      raise ModelConfigError(f"model.io_channels {model['io_channels']} differs from "
                             f"model.diffusion.config.io_channels {fields['io_channels']}")
    pretransform = (_pretransform(model["pretransform"], fields["io_channels"])
                    if "pretransform" in model else None)
    lora = _lora(top["lora"]) if "lora" in top else None
    try:
      training = training_section.parse(top["training"]) if "training" in top else None
    except training_section.TrainingSectionError as e:
      raise ModelConfigError(str(e)) from None
    return ModelConfig(fields, _int(top["sample_rate"], "sample_rate"), lora, pretransform,
                       t5_name, project_out, training)
  except ModelConfigError as e:
    raise ModelConfigError(f"{source}: {e}") from None


def load(path: str) -> ModelConfig:
  """The model config JSON file at `path`, checked strictly."""
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ModelConfigError(f"model config {path}: {e}") from None
  return parse(config, path)
