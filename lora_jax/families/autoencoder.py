"""Stable Audio's Oobleck autoencoder (`lora_jax.models.oobleck`) as a training family: the whole
model trained on audio segments, so the project can make its own latents for the DiT.

Batch (per example): `audio` float32 [io_channels, segment_samples], a segment of a WAV file at
the model's sample rate (`lora_jax.data.dit.segments`).

`prepare` draws the VAE's noise [latent_dim, frames] from the step's key, so the reparameterised
sample is reproducible and resume is bit-exact. In training the decoder reads mean + stdev * noise;
in evaluation (deterministic) the mean, what `encode_latents` stores, so the validation loss is
the reconstruction the DiT's latents will actually give.

The loss (`lora_jax.audio.stft_loss`): multi-resolution STFT (spectral convergence
plus log-magnitude L1, the term stable-audio-tools' autoencoder recipes weight most) + `l1_weight`
times the waveform L1 + `kl_weight` times the original's KL. No adversarial discriminator: it
doubles the cost of a step, and on a CPU budget of minutes the spectral terms are what moves.

The parameters are the original's names and layouts, so the run's `params.safetensors` is read by
`lora_jax.interop.oobleck_convert` (and `launch/train_autoencoder.py` writes the original's state
dict and model config JSON besides). Sharding: everything replicated (a small convolutional model).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lora_jax.audio import stft_loss

from lora_jax.models.oobleck import bottleneck as vae
from lora_jax.models.oobleck import config as oobleck_config
from lora_jax.models.oobleck import model as oobleck
from lora_jax.train.family import Example, Family

NAME = "autoencoder"
PARTITION_RULES = ((r".*", P()),)


@dataclasses.dataclass(frozen=True)
class AutoencoderTrainConfig:
  """The `config.model` group of the autoencoder family (names follow the original's JSON)."""

  sample_rate: int
  io_channels: int  # audio channels (1 mono, 2 stereo)
  channels: int  # the encoder's and decoder's base width
  c_mults: tuple[int, ...]  # width multipliers per block
  strides: tuple[int, ...]  # down/upsampling per block; their product is the latent hop
  latent_dim: int  # latent channels the DiT sees (the encoder outputs twice this: VAE)
  use_snake: bool  # SnakeBeta activations (else ELU)
  segment_samples: int  # audio samples per training example
  stft_sizes: tuple[int, ...]  # FFT sizes of the multi-resolution STFT loss (hop = size / 4)
  l1_weight: float  # weight of the waveform L1 term
  kl_weight: float  # weight of the VAE's KL term

  def __post_init__(self):
    for name in ("c_mults", "strides", "stft_sizes"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    hop = math.prod(self.strides)
    if self.segment_samples < 1 or self.segment_samples % hop:
      raise ValueError(f"model.segment_samples {self.segment_samples} must be a positive multiple "
                       f"of the strides' product {hop}")
    too_long = [n for n in self.stft_sizes if n > self.segment_samples or n < 4]
    if not self.stft_sizes or too_long:
      raise ValueError(f"model.stft_sizes {list(self.stft_sizes)}: each must be in [4, "
                       f"segment_samples {self.segment_samples}]")
    if self.l1_weight < 0 or self.kl_weight < 0:
      raise ValueError(f"model.l1_weight {self.l1_weight} and model.kl_weight {self.kl_weight} "
                       "must be >= 0")
    self.autoencoder()  # the model's own checks, now

  def autoencoder(self) -> oobleck_config.AutoencoderConfig:
    return oobleck_config.config_from_original(self.original_json())

  def original_json(self) -> dict:
    """stable-audio-tools' model config (`model_type` autoencoder) of this model: what
    `encode_latents`/`decode_latents` and the original read."""
    part = {"channels": self.channels, "c_mults": list(self.c_mults),
            "strides": list(self.strides), "use_snake": self.use_snake}
    return {
        "model_type": "autoencoder", "sample_rate": self.sample_rate,
        "audio_channels": self.io_channels, "sample_size": self.segment_samples,
        "model": {
            "encoder": {"type": "oobleck", "config": {
                **part, "in_channels": self.io_channels, "latent_dim": 2 * self.latent_dim}},
            "decoder": {"type": "oobleck", "config": {
                **part, "out_channels": self.io_channels, "latent_dim": self.latent_dim,
                "final_tanh": False}},
            "bottleneck": {"type": "vae"}, "latent_dim": self.latent_dim,
            "downsampling_ratio": math.prod(self.strides), "io_channels": self.io_channels}}


class _Reconstruct(oobleck.AudioAutoencoder):
  """The family's forward: (reconstruction, KL). Same parameters as `AudioAutoencoder`."""

  def __call__(self, audio_BxCxT, noise_BxLxN, deterministic: bool = True):
    mean, stdev = self.moments(audio_BxCxT)
    latents = mean if deterministic else vae.sample(mean, stdev, noise_BxLxN)
    return self.decode(latents), vae.kl(mean, stdev)


def prepare(batch, key, latent_dim: int, hop: int):
  audio = batch["audio"]
  shape = (audio.shape[0], latent_dim, audio.shape[-1] // hop)
  return {**batch, "noise": jax.random.normal(key, shape, audio.dtype)}


def loss_fn(outputs, batch, config: AutoencoderTrainConfig):
  recon, kl = outputs
  target = batch["audio"].astype(jnp.float32)
  recon = recon.astype(jnp.float32)
  stft = stft_loss.multi_resolution(recon, target, config.stft_sizes)
  l1 = jnp.mean(jnp.abs(recon - target))
  loss = stft + config.l1_weight * l1 + config.kl_weight * kl
  return loss, {"stft": stft, "l1": l1, "kl": kl.astype(jnp.float32)}


def synthetic(config: AutoencoderTrainConfig, n: int, seed: int) -> dict[str, np.ndarray]:
  """Learnable audio: per example two decaying sine tones at random pitches."""
  rng = np.random.default_rng(seed)
  t = np.arange(config.segment_samples) / config.sample_rate
  freqs = 110.0 * 2 ** (rng.integers(0, 36, (n, 2, 1)) / 12)
  tones = np.sin(2 * np.pi * freqs * t + rng.uniform(0, 2 * np.pi, (n, 2, 1)))
  audio = 0.3 * np.sum(tones * np.exp(-3 * t), axis=1, keepdims=True)
  return {"audio": np.repeat(audio, config.io_channels, axis=1).astype(np.float32)}


def make(config: AutoencoderTrainConfig, compute_dtype: str) -> Family:
  """The autoencoder family (trained whole, in float32: `compute_dtype` must say so)."""
  if compute_dtype != "float32":
    raise ValueError(f"the autoencoder family trains in float32 (its ~30 stacked convolutions "
                     f"compound rounding), got precision {compute_dtype!r}")
  ae = config.autoencoder()
  return Family(
      name=NAME,
      model=_Reconstruct(ae),
      batch_spec={"audio": Example((config.io_channels, config.segment_samples), "float32")},
      inputs=("audio", "noise"),
      loss_fn=functools.partial(loss_fn, config=config),
      partition_rules=PARTITION_RULES,
      synthetic=lambda n, seed: synthetic(config, n, seed),
      prepare=functools.partial(prepare, latent_dim=ae.latent_dim,
                                hop=ae.downsampling_ratio))
