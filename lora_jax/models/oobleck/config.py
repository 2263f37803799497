"""Sizes of the Oobleck autoencoder, read from stable-audio-tools' JSON model configs.

Field names are the original constructors' arguments. `config_from_original` takes any of the
three places such a config lives: a model config of `model_type` "autoencoder" (the autoencoder's
own training config), one of `model_type` "diffusion_cond" (its `model.pretransform`, as in Stable
Audio Open's model_config.json), or the pretransform object itself. Options this twin does not
compute are refused with their name, never approximated.
"""

import dataclasses
import math
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """`OobleckEncoder`'s arguments; the defaults are Stable Audio Open's."""

  in_channels: int = 2
  channels: int = 128
  latent_dim: int = 128  # twice the autoencoder's latent size with a VAE bottleneck
  c_mults: tuple[int, ...] = (1, 2, 4, 8, 16)
  strides: tuple[int, ...] = (2, 4, 4, 8, 8)
  use_snake: bool = True

  def __post_init__(self):
    _as_tuples(self)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """`OobleckDecoder`'s arguments; the defaults are Stable Audio Open's."""

  out_channels: int = 2
  channels: int = 128
  latent_dim: int = 64
  c_mults: tuple[int, ...] = (1, 2, 4, 8, 16)
  strides: tuple[int, ...] = (2, 4, 4, 8, 8)
  use_snake: bool = True
  use_nearest_upsample: bool = False
  final_tanh: bool = False

  def __post_init__(self):
    _as_tuples(self)


def _as_tuples(config) -> None:
  """Lists from JSON or a caller become tuples: configs are hashed (compiled functions and
  abstract parameter trees are cached per config)."""
  for name in ("c_mults", "strides"):
    object.__setattr__(config, name, tuple(getattr(config, name)))


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """`AudioAutoencoder` with its bottleneck, and the pretransform's latent scale."""

  encoder: EncoderConfig = EncoderConfig()
  decoder: DecoderConfig = DecoderConfig()
  latent_dim: int = 64
  downsampling_ratio: int = 2048
  io_channels: int = 2
  sample_rate: int = 44100
  bottleneck: str = "vae"  # "vae" or "none"
  soft_clip: bool = False  # tanh on the decoded audio (the decoder config's `soft_clip`)
  scale: float = 1.0  # the pretransform divides latents by it after encoding
  # Convolutions at full float32 precision: TF32 or bfloat16 passes on accelerators would add
  # errors of 1e-3 that the ~30 stacked convolutions compound.
  precision: str = "highest"

  def __post_init__(self):
    for name, part in (("encoder", self.encoder), ("decoder", self.decoder)):
      if len(part.c_mults) != len(part.strides):
        raise ValueError(f"{name} has {len(part.c_mults)} c_mults {list(part.c_mults)} but "
                         f"{len(part.strides)} strides {list(part.strides)}")
      if math.prod(part.strides) != self.downsampling_ratio:
        raise ValueError(f"{name} strides {list(part.strides)} multiply to "
                         f"{math.prod(part.strides)}, not the downsampling_ratio "
                         f"{self.downsampling_ratio}")
    if self.bottleneck not in ("vae", "none"):
      raise ValueError(f"bottleneck {self.bottleneck!r} is not implemented; 'vae' or 'none'")
    want = 2 * self.latent_dim if self.bottleneck == "vae" else self.latent_dim
    if self.encoder.latent_dim != want:
      raise ValueError(f"encoder latent_dim {self.encoder.latent_dim} should be {want} for "
                       f"latent_dim {self.latent_dim} with bottleneck {self.bottleneck!r}")
    if self.decoder.latent_dim != self.latent_dim:
      raise ValueError(f"decoder latent_dim {self.decoder.latent_dim} is not the autoencoder's "
                       f"latent_dim {self.latent_dim}")


# The original constructors' defaults, which a JSON config that leaves a key out gets.
_ENCODER_DEFAULTS = {"in_channels": 2, "channels": 128, "latent_dim": 32, "c_mults": (1, 2, 4, 8),
                     "strides": (2, 4, 8, 8), "use_snake": False}
_DECODER_DEFAULTS = {"out_channels": 2, "channels": 128, "latent_dim": 32,
                     "c_mults": (1, 2, 4, 8), "strides": (2, 4, 8, 8), "use_snake": False,
                     "use_nearest_upsample": False, "final_tanh": True}
# Keys accepted only at these values (anything else changes what is computed).
_FIXED = {"antialias_activation": False}
# Keys that steer only how the original runs: frozen weights, one item at a time, float16 (this
# twin computes in float32 whatever the file asks).
_HOW_IT_RUNS = {"requires_grad", "model_half", "iterate_batch"}


def _part(kind: str, spec: Mapping[str, Any], cls, defaults: dict):
  if spec.get("type") != "oobleck":
    raise ValueError(f"{kind} type {spec.get('type')!r} is not implemented; "
                     "lora_jax.models.oobleck implements 'oobleck' only")
  unknown = sorted(set(spec) - {"type", "config", "soft_clip"} - _HOW_IT_RUNS)
  if unknown:
    raise ValueError(f"{kind} options {unknown} are not implemented")
  args = dict(spec.get("config", {}))
  for key, value in _FIXED.items():
    if args.pop(key, value) != value:
      raise ValueError(f"{kind} config {key}=True is not implemented; "
                       f"lora_jax.models.oobleck supports {key}={value!r} only")
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(args) - fields)
  if unknown:
    raise ValueError(f"{kind} config options {unknown} are not implemented by "
                     "lora_jax.models.oobleck")
  return cls(**{**defaults, **args})


def _autoencoder(model: Mapping[str, Any], sample_rate: int, scale: float) -> AutoencoderConfig:
  unknown = sorted(set(model) - {"encoder", "decoder", "bottleneck", "latent_dim",
                                 "downsampling_ratio", "io_channels", "in_channels",
                                 "out_channels"})
  if unknown:
    raise ValueError(f"autoencoder options {unknown} are not implemented (a nested pretransform "
                     "included)")
  for key in ("encoder", "decoder", "latent_dim", "downsampling_ratio", "io_channels"):
    if key not in model:
      raise ValueError(f"autoencoder config has no {key!r} (the original requires it)")
  for key in ("in_channels", "out_channels"):
    if model.get(key) not in (None, model["io_channels"]):
      raise ValueError(f"autoencoder {key}={model[key]} differing from io_channels "
                       f"{model['io_channels']} is not implemented")
  bottleneck = model.get("bottleneck")
  kind = "none" if bottleneck is None else bottleneck.get("type")
  if bottleneck is not None and set(bottleneck) - {"type"}:
    raise ValueError(f"bottleneck options {sorted(set(bottleneck) - {'type'})} are not "
                     "implemented")
  if kind not in ("vae", "none"):
    raise ValueError(f"bottleneck type {kind!r} is not implemented; 'vae' only")
  return AutoencoderConfig(
      encoder=_part("encoder", model["encoder"], EncoderConfig, _ENCODER_DEFAULTS),
      decoder=_part("decoder", model["decoder"], DecoderConfig, _DECODER_DEFAULTS),
      latent_dim=model["latent_dim"], downsampling_ratio=model["downsampling_ratio"],
      io_channels=model["io_channels"], sample_rate=sample_rate, bottleneck=kind,
      soft_clip=bool(model["decoder"].get("soft_clip", False)), scale=float(scale))


def config_from_original(config: Mapping[str, Any], sample_rate: int | None = None
                         ) -> AutoencoderConfig:
  """An `AutoencoderConfig` from an original model config JSON object (see the module doc)."""
  if "model_type" in config:
    sample_rate = config.get("sample_rate", sample_rate)
    if config["model_type"] == "autoencoder":
      if sample_rate is None:
        raise ValueError("the model config has no sample_rate")
      return _autoencoder(config["model"], sample_rate, 1.0)
    if "pretransform" not in config.get("model", {}):
      raise ValueError(f"model config of type {config['model_type']!r} has no "
                       "model.pretransform (the autoencoder)")
    return config_from_original(config["model"]["pretransform"], sample_rate)
  if "type" in config:  # a pretransform object
    if config["type"] != "autoencoder":
      raise ValueError(f"pretransform type {config['type']!r} is not implemented; 'autoencoder' "
                       "only")
    unknown = sorted(set(config) - {"type", "config", "scale", "chunked"} - _HOW_IT_RUNS)
    if unknown:
      raise ValueError(f"pretransform options {unknown} are not implemented")
    if config.get("chunked", False):
      raise ValueError("pretransform chunked=True is not implemented (chunked encoding stitches "
                       "overlapping windows and changes the latents)")
    if sample_rate is None:
      raise ValueError("a pretransform config needs the model's sample_rate")
    return _autoencoder(config["config"], sample_rate, config.get("scale", 1.0))
  if sample_rate is None:
    raise ValueError("an autoencoder config needs the model's sample_rate")
  return _autoencoder(config, sample_rate, 1.0)
