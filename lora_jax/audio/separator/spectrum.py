"""The separator's STFT magnitude in JAX, frame for frame what librosa.stft computes.

Training computes it inside the jitted step (from waveforms, so a random vocal gain mixes exact
stems); inference masks librosa's complex STFT of the same settings and inverts it with librosa.
Both: a periodic Hann window, frames centred (n_fft // 2 zeros each side, librosa's default
`pad_mode='constant'`), so a signal of N samples has 1 + N // hop frames. The test
`separator_test.test_magnitude_is_librosas` holds them equal.
"""

import jax.numpy as jnp
import numpy as np


def hann(n_fft: int) -> np.ndarray:
  """The periodic Hann window (scipy's get_window('hann', n_fft), librosa's default)."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def magnitude(wave_BxN: jnp.ndarray, n_fft: int, hop: int) -> jnp.ndarray:
  """|STFT| float32 [B, 1 + N // hop, n_fft // 2 + 1] of float waves [B, N]."""
  n = wave_BxN.shape[-1]
  padded_BxM = jnp.pad(wave_BxN.astype(jnp.float32), ((0, 0), (n_fft // 2, n_fft // 2)))
  starts_T = np.arange(1 + n // hop) * hop
  frames_BxTxW = padded_BxM[:, starts_T[:, None] + np.arange(n_fft)[None, :]] * hann(n_fft)
  return jnp.abs(jnp.fft.rfft(frames_BxTxW, axis=-1))
