"""Inference with a LoRAW adapter at a multiplier: latents from a prompt and timing numbers.

The base comes from an original checkpoint or this project's Flax file (`base_weights`), the
adapter from a LoRAW file or a `.lora` (`weights.load_weights`); the multiplier is the adapter's
weight in the forward (`lora_jax.lora.forward`): data, so another multiplier does not recompile,
except 0, which is a bypass: the adapter is left out of the program and the latents are the base
model's bit for bit. Sampling is Stable Audio's default, DPM-Solver++(2M) SDE with
classifier-free guidance (`lora_jax.models.dit.sampler`, `guidance`). The conditioning runs
inside the same adapted program, so a whitelist that reaches the conditioners applies there too.

Output: the latents [C, T] as `.npy`. Decoding to audio needs the Oobleck decoder, which this
module does not have; the latents are what `launch/generate_loraw.py` writes.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import atomic, lora
from lora_jax.data.song import text as text_tokens
from lora_jax.families import dit as dit_family
from lora_jax.interop import flax_weights
from lora_jax.loraw import base_weights, weights
from lora_jax.models.dit import conditioned, guidance, sampler


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
    family = dit_family.make(config, "float32")
    abstract = jax.eval_shape(lambda k: family.model.init(k, *family.init_args())["params"],
                              jax.random.key(0))
    return flax_weights.load_params(path, abstract)
  return base_weights.from_original(path, config, seed)


def _sample(base, adapter, weight, noise, key, prompt, seconds, *, model, steps, cfg_scale):
  actives = [] if adapter is None else [lora.Active(adapter, weight)]
  with lora.inject(actives):
    cross, global_embed = model.apply({"params": base}, prompt, seconds[:, 0], seconds[:, 1],
                                      method=conditioned.ConditionedDiT.conditioning)
    denoise = lambda x, t, **cond: model.apply({"params": base}, x, t, cond["cross_attn_cond"],
                                               cond["global_embed"],
                                               method=conditioned.ConditionedDiT.denoise)
    apply_fn = lambda x, t, **cond: guidance.guided(denoise, x, t, cfg_scale=cfg_scale, **cond)
    return sampler.sample(apply_fn, noise, key, steps=steps, cross_attn_cond=cross,
                          global_embed=global_embed)


def generate(config: dit_family.DitConfig, base: Any, adapter: lora.Adapter | None,
             request: Request) -> np.ndarray:
  """Latents [C, T] for `request`; `adapter` None (or multiplier 0) is the base model alone."""
  model = conditioned.ConditionedDiT(config.conditioned())
  key = jax.random.key(request.seed)
  noise_key, sde_key = jax.random.split(key)
  noise = jax.random.normal(noise_key, (1, config.io_channels, request.latent_length))
  prompt = jnp.asarray(text_tokens.encode_text(request.prompt, config.text_len))[None]
  seconds = jnp.asarray([[request.seconds_start, request.seconds_total]], jnp.float32)
  # A static 0 leaves the adapter out of the traced program (the bit-exact bypass); any other
  # multiplier is an argument, so changing it does not recompile.
  bypass = adapter is None or request.multiplier == 0
  run = jax.jit(functools.partial(_sample, model=model, steps=request.steps,
                                  cfg_scale=request.cfg_scale),
                static_argnums=(1, 2) if bypass else ())
  weight = 0.0 if bypass else jnp.float32(request.multiplier)
  out = run(base, None if bypass else adapter, None if bypass else weight, noise, sde_key,
            prompt, seconds)
  return np.asarray(out[0])


def save_latents(latents: np.ndarray, path: str) -> None:
  """The latents as `.npy`, atomically."""
  if not path.endswith(".npy"):
    raise ValueError(f"output {path} must end in .npy (latents [C, T])")
  with atomic.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.save(f, latents)


def load_adapter(path: str, config: dit_family.DitConfig, alpha: float) -> lora.Adapter:
  """The adapter at `path` (LoRAW file or .lora) for this config's base."""
  family = dit_family.make(config, "float32")
  abstract = jax.eval_shape(lambda k: family.model.init(k, *family.init_args())["params"],
                            jax.random.key(0))
  return weights.load_weights(path, abstract, alpha).adapter


def run_command(mc, *, base_path: str, lora_path: str, multiplier: float | None, prompt: str,
                seconds_start: float, seconds_total: float, latent_length: int | None,
                steps: int, cfg_scale: float, seed: int, output: str) -> str:
  """`launch/generate_loraw.py`: check the inputs, generate, write; returns the log line."""
  if not output.endswith(".npy"):
    raise ValueError(f"--output {output} must end in .npy (latents [C, T])")
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
  config = mc.dit_config(length)
  base = load_base(base_path, config, seed)
  adapter = load_adapter(lora_path, config, mc.lora.alpha) if lora_path else None
  latents = generate(config, base, adapter, Request(prompt, seconds_start, seconds_total, length,
                                                    steps, cfg_scale, seed, multiplier))
  save_latents(latents, output)
  return (f"wrote {output}: latents {list(latents.shape)}"
          + (f", adapter {os.path.basename(lora_path)} at multiplier {multiplier:g}"
             if lora_path else ", base model"))
