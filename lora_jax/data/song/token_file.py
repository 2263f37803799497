"""Token files written by the SongGeneration fork's `prepare_data.py`, read without unpickling.

Each `{idx}.pt` holds {'tokens': int tensor [3, T] (mixed, vocal, accompaniment codes at 25 Hz),
'lyrics': str, 'descriptions': str} (those of `launch/prepare_song_data.py` also 'codec', the
hash of the codec file that made them); `manifest.jsonl` names them. They load with
`torch.load(weights_only=True)`, so tokens made with the original tokenizers elsewhere train
here; a file that needs pickle, lacks a field, or holds codes outside 0..code_size-1 is refused
with the reason.
"""

import dataclasses

import numpy as np
import torch

from lora_jax.interop import torch_convert
from lora_jax.interop.flax_weights import WeightFileError


@dataclasses.dataclass(frozen=True)
class SongTokens:
  codes: np.ndarray  # int32 [K, T]
  lyrics: str
  descriptions: str
  codec: str = ""  # `lora_jax.song.codec.file_id` of the codec that made the codes; '' = unrecorded


def read(path: str, *, code_depth: int = 3, code_size: int = 16384) -> SongTokens:
  """One fork token file, checked."""
  data = torch_convert.load_weights_only(path)
  if not isinstance(data, dict):
    raise WeightFileError(f"{path} holds a {type(data).__name__}, expected a dict with tokens, "
                          "lyrics and descriptions")
  missing = [k for k in ("tokens", "lyrics", "descriptions") if k not in data]
  if missing:
    raise WeightFileError(f"{path} lacks {', '.join(missing)} (has {', '.join(sorted(data))})")
  tokens = data["tokens"]
  if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point:
    raise WeightFileError(f"{path}: tokens must be an integer tensor, got "
                          f"{getattr(tokens, 'dtype', type(tokens).__name__)}")
  if tokens.ndim != 2 or tokens.shape[0] != code_depth or tokens.shape[1] == 0:
    raise WeightFileError(f"{path}: tokens have shape {list(tokens.shape)}, expected "
                          f"[{code_depth}, T > 0]")
  codes = tokens.numpy().astype(np.int64)
  if codes.min() < 0 or codes.max() >= code_size:
    raise WeightFileError(f"{path}: codes range {codes.min()}..{codes.max()}, expected "
                          f"0..{code_size - 1}")
  for k in ("lyrics", "descriptions"):
    if not isinstance(data[k], str):
      raise WeightFileError(f"{path}: {k} is a {type(data[k]).__name__}, expected text")
  codec = data.get("codec", "")
  if not isinstance(codec, str):
    raise WeightFileError(f"{path}: codec is a {type(codec).__name__}, expected text")
  return SongTokens(codes.astype(np.int32), data["lyrics"], data["descriptions"], codec)
