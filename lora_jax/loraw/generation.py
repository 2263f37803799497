"""Inference with a LoRAW adapter at a multiplier: latents from a prompt and timing numbers.

The base comes from an original checkpoint or this project's Flax file (`base_weights`), the
adapter from a LoRAW file or a `.lora` (`weights.load_weights`); the multiplier is the adapter's
weight in the forward (`lora_jax.lora.forward`): data, so another multiplier does not recompile,
except 0, which is a bypass: the adapter is left out of the program and the latents are the base
model's bit for bit. Sampling is Stable Audio's default, DPM-Solver++(2M) SDE with
classifier-free guidance (`lora_jax.models.dit.sampler`, `guidance`). The conditioning runs
inside the same adapted program, so a whitelist that reaches the conditioners applies there too.

The prompt goes through the frozen T5 of the user's folder when given (and the model config
names a T5 conditioner), else through the byte-token embedding (`lora_jax.models.dit.conditioned`).

Output by suffix: `.wav`, the latents decoded by the Oobleck autoencoder of the model config's
`pretransform` with the user's autoencoder weights, 32-bit float at the config's sample rate,
as decoded (not peak-normalised, not cut: latent frames x downsampling_ratio samples); `.npy`,
the latents [C, T]. Either is written atomically, after every input was read and checked.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import atomic, lora
from lora_jax.data.dit import autoencoder, wav
from lora_jax.data.song import text as text_tokens
from lora_jax.data.t5 import prompts as t5_prompts
from lora_jax.families import dit as dit_family
from lora_jax.interop import flax_weights, oobleck_convert
from lora_jax.loraw import base_weights, text_encoder, weights
from lora_jax.models.dit import conditioned, guidance, sampler
from lora_jax.models.oobleck import config as oobleck_config


@dataclasses.dataclass(frozen=True)
class Request:
  """What to generate."""

  prompt: str
  seconds_start: float
  seconds_total: float
  latent_length: int  # latent frames T
  steps: int  # sampler steps
  cfg_scale: float
  seed: int
  multiplier: float  # the adapter's strength; 0 bypasses it


def load_base(path: str, config: dit_family.DitConfig, seed: int) -> Any:
  """The base parameters from a Flax file of the dit family or an original checkpoint."""
  if base_weights.is_flax_file(path):
    base_weights.check_text_encoder(path, config)
    family = dit_family.make(config, "float32")
    abstract = jax.eval_shape(lambda k: family.model.init(k, *family.init_args())["params"],
                              jax.random.key(0))
    return flax_weights.load_params(path, abstract)
  return base_weights.from_original(path, config, seed)


def _sample(base, adapter, weight, noise, key, prompt, prompt_mask, seconds, *, model, steps,
            cfg_scale):
  actives = [] if adapter is None else [lora.Active(adapter, weight)]
  with lora.inject(actives):
    cross, global_embed = model.apply({"params": base}, prompt, seconds[:, 0], seconds[:, 1],
                                      prompt_mask, method=conditioned.ConditionedDiT.conditioning)
    denoise = lambda x, t, **cond: model.apply({"params": base}, x, t, cond["cross_attn_cond"],
                                               cond["global_embed"],
                                               method=conditioned.ConditionedDiT.denoise)
    apply_fn = lambda x, t, **cond: guidance.guided(denoise, x, t, cfg_scale=cfg_scale, **cond)
    return sampler.sample(apply_fn, noise, key, steps=steps, cross_attn_cond=cross,
                          global_embed=global_embed)


@functools.lru_cache(maxsize=8)
def _sampler(config: conditioned.ConditionedConfig, steps: int, cfg_scale: float, bypass: bool):
  """The jitted sampler, kept: another request of the same shape and settings (another seed,
  prompt or multiplier) does not compile again."""
  return jax.jit(functools.partial(_sample, model=conditioned.ConditionedDiT(config), steps=steps,
                                   cfg_scale=cfg_scale),
                 static_argnums=(1, 2) if bypass else ())


def prompt_inputs(config: dit_family.DitConfig, text: str,
                  t5: t5_prompts.T5Prompts | None = None) -> tuple[Any, Any]:
  """(prompt, prompt_mask) of one text for the model: T5's output and mask, or token ids and
  None."""
  if config.text_encoder == "t5":
    if t5 is None:
      raise ValueError("a T5-conditioned model needs the user's T5 folder to encode the prompt")
    arrays = t5([text])
    return jnp.asarray(arrays["prompt"]), jnp.asarray(arrays["prompt_mask"])
  return jnp.asarray(text_tokens.encode_text(text, config.text_len))[None], None


def generate(config: dit_family.DitConfig, base: Any, adapter: lora.Adapter | None,
             request: Request, t5: t5_prompts.T5Prompts | None = None) -> np.ndarray:
  """Latents [C, T] for `request`; `adapter` None (or multiplier 0) is the base model alone."""
  key = jax.random.key(request.seed)
  noise_key, sde_key = jax.random.split(key)
  noise = jax.random.normal(noise_key, (1, config.io_channels, request.latent_length))
  prompt, prompt_mask = prompt_inputs(config, request.prompt, t5)
  seconds = jnp.asarray([[request.seconds_start, request.seconds_total]], jnp.float32)
  # A static 0 leaves the adapter out of the traced program (the bit-exact bypass); any other
  # multiplier is an argument, so changing it does not recompile.
  bypass = adapter is None or request.multiplier == 0
  run = _sampler(config.conditioned(), request.steps, request.cfg_scale, bypass)
  weight = 0.0 if bypass else jnp.float32(request.multiplier)
  out = run(base, None if bypass else adapter, None if bypass else weight, noise, sde_key,
            prompt, prompt_mask, seconds)
  return np.asarray(out[0])


def save_latents(latents: np.ndarray, path: str) -> None:
  """The latents as `.npy`, atomically."""
  if not path.endswith(".npy"):
    raise ValueError(f"output {path} must end in .npy (latents [C, T])")
  with atomic.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.save(f, latents)


def load_decoder(mc, autoencoder_path: str
                 ) -> tuple[oobleck_config.AutoencoderConfig, Any]:
  """The model config's pretransform (the Oobleck autoencoder) and its weights from the user's
  file (an autoencoder alone or a whole Stable Audio checkpoint, its `pretransform.model.`)."""
  if mc.pretransform is None:
    raise ValueError("a .wav output needs the model config's pretransform (the autoencoder); "
                     "without one write latents (.npy)")
  if not autoencoder_path:
    raise ValueError("a .wav output needs --autoencoder-ckpt (the autoencoder's weights, or "
                     "the whole Stable Audio checkpoint that holds them)")
  try:
    config = oobleck_config.config_from_original(mc.pretransform, mc.sample_rate)
  except ValueError as e:
    raise ValueError(f"model.pretransform: {e}") from None
  return config, oobleck_convert.load(autoencoder_path, config)


def save_audio(latents_CxT: np.ndarray, decoder: tuple[oobleck_config.AutoencoderConfig, Any],
               path: str) -> np.ndarray:
  """The latents decoded to audio [channels, samples], written as a float WAV atomically."""
  config, params = decoder
  audio = np.asarray(autoencoder.decoder(config)(params, jnp.asarray(latents_CxT)[None]))[0]
  wav.write(path, audio, config.sample_rate)
  return audio


def load_adapter(path: str, config: dit_family.DitConfig, alpha: float) -> lora.Adapter:
  """The adapter at `path` (LoRAW file or .lora) for this config's base."""
  family = dit_family.make(config, "float32")
  abstract = jax.eval_shape(lambda k: family.model.init(k, *family.init_args())["params"],
                            jax.random.key(0))
  return weights.load_weights(path, abstract, alpha).adapter


def run_command(mc, *, base_path: str, lora_path: str, multiplier: float | None, prompt: str,
                seconds_start: float, seconds_total: float, latent_length: int | None,
                steps: int, cfg_scale: float, seed: int, output: str, t5_dir: str = "",
                autoencoder_path: str = "") -> str:
  """`launch/generate_loraw.py`: check the inputs, generate, write; returns the log line."""
  if not output.endswith((".npy", ".wav")):
    raise ValueError(f"--output {output} must end in .wav (audio, through the autoencoder) or "
                     ".npy (latents [C, T])")
  if output.endswith(".npy") and autoencoder_path:
    raise ValueError(f"--autoencoder-ckpt decodes to audio: give a .wav --output, not {output}")
  length = latent_length or mc.latent_frames(seconds_total)
  if length is None or length < 1:
    raise ValueError("give --latent-length (the model config has no pretransform "
                     "downsampling_ratio to derive it from --seconds-total)")
  if steps < 2:
    raise ValueError(f"--steps must be >= 2, got {steps}")
  if multiplier is None:
    multiplier = mc.lora.multiplier if mc.lora is not None else 1.0
  if lora_path and mc.lora is None:
    raise ValueError("--lora-ckpt-path needs the model config's 'lora' section (its alpha)")
  decoder = load_decoder(mc, autoencoder_path) if output.endswith(".wav") else None
  t5 = text_encoder.load(mc, t5_dir)
  config = mc.dit_config(length, t5.width if t5 else 0)
  base = load_base(base_path, config, seed)
  adapter = load_adapter(lora_path, config, mc.lora.alpha) if lora_path else None
  latents = generate(config, base, adapter, Request(prompt, seconds_start, seconds_total, length,
                                                    steps, cfg_scale, seed, multiplier), t5)
  if decoder is None:
    save_latents(latents, output)
    what = f"latents {list(latents.shape)}"
  else:
    audio = save_audio(latents, decoder, output)
    what = (f"{audio.shape[1] / decoder[0].sample_rate:.2f} s of {audio.shape[0]}-channel audio "
            f"at {decoder[0].sample_rate} Hz from latents {list(latents.shape)}")
  return (f"wrote {output}: {what}"
          + (f", adapter {os.path.basename(lora_path)} at multiplier {multiplier:g}"
             if lora_path else ", base model"))
