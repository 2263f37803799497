"""The vocal/accompaniment mask estimator: a small 1-D convolutional net over STFT frames.

Open-Unmix's shape without its LSTM (which would be slow on a CPU and adds little at this size):
the log magnitude of each frame (per-bin learned shift and scale) is projected to `hidden`
features, `n_layers` residual dilated convolutions over time (dilations 1, 2, 4, ...: with kernel
3 and 4 layers a frame sees 15 frames either side, 0.35 s at hop 256 and 22050 Hz) mix context,
and a projection back to the bins gives the vocal's soft mask in [0, 1]. The accompaniment's mask
is its complement, so the two stems always add up to the mix. Any number of frames goes in.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

LOG_FLOOR = 1e-3  # magnitudes below this (about -100 dB of a full-scale sine) look the same


@dataclasses.dataclass(frozen=True)
class MaskNetConfig:
  n_bins: int  # n_fft // 2 + 1
  hidden: int
  n_layers: int
  kernel: int  # frames per convolution tap set
  dtype: str = "float32"


class MaskNet(nn.Module):
  """magnitude [B, T, F] -> {'vocal_mask': [B, T, F] in [0, 1]}."""

  config: MaskNetConfig

  @nn.compact
  def __call__(self, magnitude_BxTxF, deterministic: bool = True):
    del deterministic  # no dropout: the model is small and the data plentiful
    c = self.config
    if magnitude_BxTxF.shape[-1] != c.n_bins:
      raise ValueError(f"magnitude has {magnitude_BxTxF.shape[-1]} bins, the model "
                       f"{c.n_bins} (n_fft {2 * (c.n_bins - 1)})")
    shift_F = self.param("in_shift", nn.initializers.zeros, (c.n_bins,))
    scale_F = self.param("in_scale", nn.initializers.ones, (c.n_bins,))
    x_BxTxF = (jnp.log(magnitude_BxTxF + LOG_FLOOR) / 4.0 + shift_F) * scale_F
    h_BxTxH = nn.gelu(nn.LayerNorm(name="in_norm")(
        nn.Dense(c.hidden, dtype=c.dtype, name="in_proj")(x_BxTxF.astype(c.dtype))))
    for i in range(c.n_layers):
      r_BxTxH = nn.Conv(c.hidden, (c.kernel,), kernel_dilation=(2 ** i,), padding="SAME",
                        dtype=c.dtype, name=f"conv_{i}")(h_BxTxH)
      h_BxTxH = h_BxTxH + nn.gelu(nn.LayerNorm(name=f"norm_{i}")(r_BxTxH))
    logits_BxTxF = nn.Dense(c.n_bins, dtype=c.dtype, name="out_proj")(h_BxTxH)
    return {"vocal_mask": nn.sigmoid(logits_BxTxF.astype(jnp.float32))}
