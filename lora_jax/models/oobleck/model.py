"""Stable Audio's Oobleck autoencoder (stable-audio-tools `AudioAutoencoder` with
`OobleckEncoder`, `OobleckDecoder` and the VAE bottleneck), in Flax.

Module paths are the PyTorch model's: `encoder.layers.2.layers.1.layers.3.weight_v` is the 1x1
convolution of the second residual unit of the second encoder block, Flax's `layers_2` spelled
`layers.2` by `lora_jax.tree_paths`. The one exception is the nearest-neighbour upsampling option,
whose convolution the original nests in an anonymous `nn.Sequential` (`layers.1.1`); here that
module is `upsample` (`lora_jax.interop.oobleck_convert` renames it).

Audio and latents are [batch, channels, time], as in the original. `AudioAutoencoder.encode`
returns the VAE's mean unless given a key to sample with (the original always samples);
`to_latents`/`from_latents` add the pretransform's scale, as the diffusion model sees latents.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.models.oobleck import bottleneck as vae
from lora_jax.models.oobleck.config import AutoencoderConfig, DecoderConfig, EncoderConfig
from lora_jax.models.oobleck.layers import (ResidualUnit, WNConv1d, WNConvTranspose1d,
                                            activation)

_DILATIONS = (1, 3, 9)


def _run(layers, x):
  for layer in layers:
    x = layer(x)
  return x


class EncoderBlock(nn.Module):
  """Three residual units, then a strided convolution (kernel 2s, padding ceil(s/2))."""

  in_channels: int
  out_channels: int
  stride: int
  use_snake: bool
  precision: str

  def setup(self):
    c, s = self.in_channels, self.stride
    self.layers = [ResidualUnit(c, d, self.use_snake, self.precision) for d in _DILATIONS] + [
        activation(self.use_snake, c),
        WNConv1d(c, self.out_channels, 2 * s, stride=s, padding=math.ceil(s / 2),
                 precision=self.precision)]

  def __call__(self, x):
    return _run(self.layers, x)


class NearestUpsample(nn.Module):
  """Repeat each step `stride` times, then a bias-free 'same' convolution of kernel 2s."""

  in_channels: int
  out_channels: int
  stride: int
  precision: str

  @nn.compact
  def __call__(self, x_BxCxT):
    x = jnp.repeat(x_BxCxT, self.stride, axis=-1)
    return WNConv1d(self.in_channels, self.out_channels, 2 * self.stride, padding="same",
                    use_bias=False, precision=self.precision, name="upsample")(x)


class DecoderBlock(nn.Module):
  """An activation, an upsampling by `stride` (transposed convolution or nearest neighbour),
  three residual units."""

  in_channels: int
  out_channels: int
  stride: int
  use_snake: bool
  use_nearest_upsample: bool
  precision: str

  def setup(self):
    s = self.stride
    if self.use_nearest_upsample:
      up = NearestUpsample(self.in_channels, self.out_channels, s, self.precision)
    else:
      up = WNConvTranspose1d(self.in_channels, self.out_channels, 2 * s, stride=s,
                             padding=math.ceil(s / 2), precision=self.precision)
    self.layers = [activation(self.use_snake, self.in_channels), up] + [
        ResidualUnit(self.out_channels, d, self.use_snake, self.precision) for d in _DILATIONS]

  def __call__(self, x):
    return _run(self.layers, x)


class OobleckEncoder(nn.Module):
  """Audio [B, in_channels, T] to [B, latent_dim, T / prod(strides)]."""

  config: EncoderConfig
  precision: str = "highest"

  def setup(self):
    c = self.config
    widths = [m * c.channels for m in (1,) + tuple(c.c_mults)]
    self.layers = [WNConv1d(c.in_channels, widths[0], 7, padding=3, precision=self.precision)] + [
        EncoderBlock(widths[i], widths[i + 1], c.strides[i], c.use_snake, self.precision)
        for i in range(len(c.strides))] + [
        activation(c.use_snake, widths[-1]),
        WNConv1d(widths[-1], c.latent_dim, 3, padding=1, precision=self.precision)]

  def __call__(self, audio_BxCxT):
    return _run(self.layers, audio_BxCxT)


class OobleckDecoder(nn.Module):
  """Latents [B, latent_dim, L] to audio [B, out_channels, L * prod(strides)]."""

  config: DecoderConfig
  precision: str = "highest"

  def setup(self):
    c = self.config
    widths = [m * c.channels for m in (1,) + tuple(c.c_mults)]
    self.layers = [WNConv1d(c.latent_dim, widths[-1], 7, padding=3, precision=self.precision)] + [
        DecoderBlock(widths[i], widths[i - 1], c.strides[i - 1], c.use_snake,
                     c.use_nearest_upsample, self.precision)
        for i in range(len(c.strides), 0, -1)] + [
        activation(c.use_snake, widths[0]),
        WNConv1d(widths[0], c.out_channels, 7, padding=3, use_bias=False,
                 precision=self.precision)]

  def __call__(self, latents_BxLxT):
    h = _run(self.layers, latents_BxLxT)
    return jnp.tanh(h) if self.config.final_tanh else h


class AudioAutoencoder(nn.Module):
  """Encoder, bottleneck and decoder. `__call__` is the training pass (encode, sample, decode)."""

  config: AutoencoderConfig

  def setup(self):
    self.encoder = OobleckEncoder(self.config.encoder, self.config.precision)
    self.decoder = OobleckDecoder(self.config.decoder, self.config.precision)

  def moments(self, audio_BxCxT):
    """(mean, standard deviation) of the latents; the deviation is None without a VAE."""
    h = self.encoder(audio_BxCxT)
    if self.config.bottleneck == "vae":
      return vae.moments(h)
    return h, None

  def encode(self, audio_BxCxT, key=None):
    """Latents [B, latent_dim, T / downsampling_ratio]: the mean, or a sample drawn with `key`."""
    mean, stdev = self.moments(audio_BxCxT)
    if key is None or stdev is None:
      return mean
    return vae.sample(mean, stdev, jax.random.normal(key, mean.shape, mean.dtype))

  def decode(self, latents_BxLxT):
    audio = self.decoder(latents_BxLxT)
    return jnp.tanh(audio) if self.config.soft_clip else audio

  def __call__(self, audio_BxCxT, key):
    """(reconstruction, sampled latents, KL term); the KL is 0 without a VAE."""
    mean, stdev = self.moments(audio_BxCxT)
    if stdev is None:
      return self.decode(mean), mean, jnp.zeros((), mean.dtype)
    latents = vae.sample(mean, stdev, jax.random.normal(key, mean.shape, mean.dtype))
    return self.decode(latents), latents, vae.kl(mean, stdev)


def to_latents(params, config: AutoencoderConfig, audio_BxCxT, key=None):
  """What the diffusion model trains on: the encoding divided by the pretransform's scale."""
  z = AudioAutoencoder(config).apply({"params": params}, audio_BxCxT, key,
                                     method=AudioAutoencoder.encode)
  return z / config.scale


def from_latents(params, config: AutoencoderConfig, latents_BxLxT):
  """Audio from diffusion latents: times the pretransform's scale, then decoded."""
  return AudioAutoencoder(config).apply({"params": params}, latents_BxLxT * config.scale,
                                        method=AudioAutoencoder.decode)


def init(config: AutoencoderConfig, key):
  """Fresh parameters, initialised as the original's modules are."""
  audio = jnp.zeros((1, config.encoder.in_channels, config.downsampling_ratio), jnp.float32)
  # Compiled: run op by op, the ~30 layers' initialisers take tens of seconds on a CPU.
  return jax.jit(lambda k: AudioAutoencoder(config).init(k, audio, jax.random.key(0)))(
      key)["params"]


@functools.lru_cache(maxsize=8)  # converters ask for it once per key check
def abstract_params(config: AutoencoderConfig):
  """Shapes and dtypes of the parameters (jax.ShapeDtypeStruct leaves), nothing computed."""
  return jax.eval_shape(lambda: init(config, jax.random.key(0)))
