"""The multi-resolution STFT loss autoencoders for audio are trained with (Yamamoto et al.'s
Parallel WaveGAN loss, as auraloss computes it for stable-audio-tools' recipes).

Per FFT size n (hop n/4, Hann window, frames wholly inside the signal): spectral convergence
||S - S'||_F / ||S||_F, which weights the loud partials, plus the mean |log S - log S'|, which
weights the quiet ones; averaged over the sizes. Small sizes see onsets, large ones pitch.
"""

import jax.numpy as jnp
import numpy as np

_EPS = 1e-5  # magnitude floor: log(0) and a silent target's zero norm stay finite


def magnitudes(x_BxT, n_fft: int):
  """|STFT| [B, frames, n_fft / 2 + 1] with hop n_fft / 4 and a Hann window."""
  hop = n_fft // 4
  frames = 1 + (x_BxT.shape[-1] - n_fft) // hop
  index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
  window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic, as torch.hann_window
  spectrum = jnp.fft.rfft(x_BxT[..., index] * window, axis=-1)
  return jnp.sqrt(jnp.square(spectrum.real) + jnp.square(spectrum.imag) + _EPS ** 2)


def multi_resolution(pred, target, sizes: tuple[int, ...]):
  """Mean over `sizes` of spectral convergence + log-magnitude L1; audio [..., T]."""
  pred = pred.reshape(-1, pred.shape[-1])
  target = target.reshape(-1, target.shape[-1])
  total = 0.0
  for n in sizes:
    s_pred, s_true = magnitudes(pred, n), magnitudes(target, n)
    convergence = jnp.linalg.norm(s_true - s_pred) / jnp.linalg.norm(s_true)
    log_l1 = jnp.mean(jnp.abs(jnp.log(s_true) - jnp.log(s_pred)))
    total = total + convergence + log_l1
  return total / len(sizes)
