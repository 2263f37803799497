"""A folder of WAV files cut into the autoencoder family's training segments.

Each file is read as the model takes it (`wav.load`: its channels, resampled, clamped), cut into
consecutive segments of `segment_samples` (the tail shorter than one is dropped), and segments
whose peak is below `SILENCE` are left out: rendered and recorded files start and end in silence,
and silence teaches an autoencoder nothing but inflates its score.
"""

import numpy as np

from lora_jax.data.dit import wav

SILENCE = 1e-3  # peak amplitude below which a segment is silence


def from_folder(folder: str, sample_rate: int, channels: int, segment_samples: int
                ) -> tuple[dict[str, np.ndarray], int]:
  """({'audio': [N, channels, segment_samples] float32}, number of files)."""
  files = wav.find(folder)
  loaded = [(path, wav.load(path, sample_rate, channels)) for path in files]  # checks them all
  segments = []
  for _, audio in loaded:
    for start in range(0, audio.shape[-1] - segment_samples + 1, segment_samples):
      piece = audio[:, start:start + segment_samples]
      if np.abs(piece).max() >= SILENCE:
        segments.append(piece)
  if not segments:
    raise wav.AudioFileError(f"audio folder {folder}: {len(files)} files hold no segment of "
                             f"{segment_samples} samples at {sample_rate} Hz above silence")
  return {"audio": np.stack(segments).astype(np.float32)}, len(files)
