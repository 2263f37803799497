"""A style pack split as the .npz of token windows the training loop reads, cached by content.

The file holds exactly what the music_lm family eats: `tokens` int32 [N, seq_len] and `mask`
float32 [N, seq_len] (1 on real tokens, BOS included), built by `style_pack.pack_sequences`.
Its name carries a digest of everything that decides its bytes: the split, the window length, the
tokenizer's vocabulary and, per pack, every piece of the split (id, path and the MIDI file's
bytes), and the augmentation settings when the windows are augmented (`augment`: the base's train
split). Editing, adding or removing a piece, or changing the tokenizer, gives a new file; an
unchanged pack reuses the old one. A JSON sidecar records what the windows came from. With no
cache folder given, the cache lives in the first pack's `.windows/`.
"""

import dataclasses
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from lora_jax import atomic
from lora_jax.data import midi_tokenizer
from lora_jax.data.style_packs import pack as style_pack
from lora_jax.hierarchy import augment as augment_lib

FORMAT = "lora_jax.hierarchy.windows/1"
CACHE_FOLDER = ".windows"  # inside the first pack, when no cache folder is given


@dataclasses.dataclass(frozen=True)
class Windows:
  """One cached split: where its arrays are and what they hold."""

  path: str  # the .npz
  split: str
  styles: tuple[str, ...]  # the packs' styles, e.g. ('celtic_fiddle/reel',)
  n_pieces: int
  n_windows: int
  n_tokens: int  # real tokens, BOS included


def _file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _full_style(pack: style_pack.StylePack) -> str:
  return f"{pack.parent}/{pack.style}" if pack.parent else pack.style


def content_key(packs: Sequence[style_pack.StylePack], split: str, seq_len: int,
                tokenizer: midi_tokenizer.MidiTokenizer,
                augment: augment_lib.AugmentSettings | None = None) -> str:
  """sha256 over what decides the windows' bytes (see the module docstring)."""
  h = hashlib.sha256()
  h.update(json.dumps([FORMAT, split, seq_len, dataclasses.asdict(tokenizer.config),
                       tokenizer.tokens]).encode())
  # Plain windows keep the keys of caches written before augmentation existed.
  if augment is not None and (augment.copies or augment.concat_short):
    h.update(json.dumps(["augment", dataclasses.asdict(augment)]).encode())
  for pack in packs:
    h.update(f"\npack {_full_style(pack)}\n".encode())
    for piece in pack.split(split):
      h.update(f"{piece.id}\t{piece.path}\t{_file_digest(pack.midi_path(piece))}\n".encode())
  return h.hexdigest()


def split_windows(pack_dirs: Sequence[str], split: str, tokenizer: midi_tokenizer.MidiTokenizer,
                  seq_len: int, cache_dir: str = "",
                  augment: augment_lib.AugmentSettings | None = None) -> Windows:
  """The windows of `split` over all `pack_dirs` (concatenated), from the cache or built now.

  With `augment`, its augmented copies follow the windows (`augment.augment_windows`).
  """
  if not pack_dirs:
    raise ValueError("no style packs given")
  packs = [style_pack.load_style_pack(d) for d in pack_dirs]
  seen: dict[str, str] = {}
  for pack in packs:
    for piece in pack.pieces:
      if piece.id in seen and seen[piece.id] != pack.path:
        raise style_pack.StylePackError(
            f"piece {piece.id!r} is in both {seen[piece.id]} and {pack.path}: give a genre pack "
            f"or its sub-style packs, not both")
      seen[piece.id] = pack.path
  # Beside the data, not in the current directory: a run from elsewhere finds the same cache.
  cache_dir = cache_dir or os.path.join(packs[0].path, CACHE_FOLDER)
  styles = tuple(_full_style(p) for p in packs)
  key = content_key(packs, split, seq_len, tokenizer, augment)
  stem = "+".join(s.replace("/", ".") for s in styles)
  if len(stem) > 80:
    stem = stem[:80]
  path = os.path.join(cache_dir, f"{stem}-{split}-{seq_len}-{key[:16]}.npz")
  sidecar = path[:-len(".npz")] + ".json"
  if os.path.isfile(path) and os.path.isfile(sidecar):
    with open(sidecar) as f:
      info = json.load(f)
    return Windows(os.path.abspath(path), split, styles, info["n_pieces"], info["n_windows"],
                   info["n_tokens"])

  tokens, masks, piece_ids = [], [], []
  for pack in packs:
    packed = style_pack.pack_sequences(pack, tokenizer, split, seq_len)
    tokens.append(packed.tokens_NxT)
    masks.append(packed.mask_NxT.astype(np.float32))
    piece_ids += list(packed.piece_ids)
  tokens_NxT = np.concatenate(tokens).astype(np.int32)
  mask_NxT = np.concatenate(masks)
  if augment is not None and (augment.copies or augment.concat_short):
    tokens_NxT, mask_NxT = augment_lib.augment_windows(tokens_NxT, mask_NxT, augment, tokenizer)
  info = {"format": FORMAT, "key": key, "split": split, "seq_len": seq_len,
          "styles": list(styles), "packs": [p.path for p in packs], "n_pieces": len(piece_ids),
          "n_windows": int(len(tokens_NxT)), "n_tokens": int(mask_NxT.sum()),
          "augmented_copies": augment.copies if augment is not None else 0,
          "piece_ids": piece_ids}
  os.makedirs(cache_dir, exist_ok=True)
  atomic.write_text(sidecar, json.dumps(info, indent=1) + "\n")
  with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, tokens=tokens_NxT, mask=mask_NxT)
  return Windows(os.path.abspath(path), split, styles, info["n_pieces"], info["n_windows"],
                 info["n_tokens"])


def load_arrays(windows: Windows) -> dict[str, np.ndarray]:
  """The `tokens` and `mask` arrays of cached windows."""
  with np.load(windows.path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}
