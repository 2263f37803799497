"""Style packs on disk, checked on load, and their token windows for training.

A pack is a directory `<root>/<genre>` (parent) or `<root>/<genre>/<sub_style>` (child) holding
`manifest.json` and `refs_midi/*.mid` (optionally `refs_audio/`, not read here). Every MIDI file is
stored once, in the most specific pack it belongs to; a parent's manifest lists its own pieces and
all its children's (paths like `reel/refs_midi/x.mid`), so loading the parent gives the whole genre,
as parent adapters train on the entire style. Splits are per piece and shared by both levels.
"""
import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np
import pretty_midi

from lora_jax.data import midi_tokenizer

MANIFEST = "manifest.json"
REFS_MIDI = "refs_midi"
PACK_FORMAT = "lora_jax.style_pack/1"
SPLITS = ("train", "validation", "test")
_PIECE_FIELDS = {"id": str, "source": str, "path": str, "split": str, "style": str,
                 "n_notes": int, "duration": (int, float)}


class StylePackError(ValueError):
  """A style pack on disk is missing, malformed or holds a bad file."""


@dataclasses.dataclass(frozen=True)
class PackPiece:
  """One piece of a pack, as its manifest lists it."""
  id: str  # e.g. "oneills1850/0001-0050.abc#3"
  source: str  # where it came from, e.g. "music21-corpus:oneills1850/0001-0050.abc"
  path: str  # MIDI file relative to the pack directory
  split: str  # one of SPLITS
  style: str  # "<genre>" or "<genre>/<sub_style>": the most specific style it belongs to
  n_notes: int
  duration: float  # seconds


@dataclasses.dataclass(frozen=True)
class StylePack:
  """A checked style pack: its manifest and the absolute directory it lives in."""
  path: str
  style: str
  parent: str | None  # None for a parent (genre) pack
  children: tuple[str, ...]
  pieces: tuple[PackPiece, ...]
  manifest: dict[str, Any]

  def split(self, name: str) -> tuple[PackPiece, ...]:
    """Pieces of one split."""
    if name not in SPLITS:
      raise ValueError(f"split {name!r} is not one of {SPLITS}")
    return tuple(p for p in self.pieces if p.split == name)

  def midi_path(self, piece: PackPiece) -> str:
    """Absolute path of a piece's MIDI file."""
    return os.path.join(self.path, piece.path)


def split_of(piece_id: str) -> str:
  """Deterministic 80/10/10 split of a piece from a hash of its id."""
  bucket = int(hashlib.sha256(f"split:{piece_id}".encode()).hexdigest()[:8], 16) % 100
  return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def _piece(manifest_path: str, i: int, raw: Any) -> PackPiece:
  if not isinstance(raw, dict):
    raise StylePackError(f"{manifest_path}: pieces[{i}] is not an object")
  for name, kind in _PIECE_FIELDS.items():
    if not isinstance(raw.get(name), kind):
      raise StylePackError(f"{manifest_path}: pieces[{i}] field {name!r} is "
                           f"{raw.get(name)!r}, not {kind}")
  if raw["split"] not in SPLITS:
    raise StylePackError(f"{manifest_path}: pieces[{i}] split {raw['split']!r} not in {SPLITS}")
  return PackPiece(**{name: raw[name] for name in _PIECE_FIELDS})


def load_style_pack(path: str) -> StylePack:
  """Reads and checks a pack: manifest fields, non-empty, every listed MIDI file present."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise StylePackError(f"{path}: style pack directory does not exist")
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.isfile(manifest_path):
    raise StylePackError(f"{manifest_path}: manifest is missing")
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise StylePackError(f"{manifest_path}: manifest is not valid JSON: {e}") from e
  if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
    raise StylePackError(f"{manifest_path}: format is not {PACK_FORMAT!r}")
  for name, kind in (("style", str), ("children", list), ("pieces", list)):
    if not isinstance(manifest.get(name), kind):
      raise StylePackError(f"{manifest_path}: field {name!r} is {manifest.get(name)!r}, "
                           f"not {kind.__name__}")
  if manifest.get("parent") is not None and not isinstance(manifest["parent"], str):
    raise StylePackError(f"{manifest_path}: field 'parent' is {manifest['parent']!r}")
  pieces = tuple(_piece(manifest_path, i, raw) for i, raw in enumerate(manifest["pieces"]))
  if not pieces:
    raise StylePackError(f"{manifest_path}: pack lists no pieces")
  seen: set[str] = set()
  for piece in pieces:
    if piece.id in seen:
      raise StylePackError(f"{manifest_path}: piece {piece.id!r} is listed twice")
    seen.add(piece.id)
    file = os.path.normpath(os.path.join(path, piece.path))
    if not file.startswith(path + os.sep):
      raise StylePackError(f"{manifest_path}: piece {piece.id!r} path {piece.path!r} leaves the pack")
    if not os.path.isfile(file):
      raise StylePackError(f"{file}: listed MIDI file of piece {piece.id!r} does not exist")
    with open(file, "rb") as f:
      if f.read(4) != b"MThd":
        raise StylePackError(f"{file}: not a MIDI file (no MThd header)")
  return StylePack(path=path, style=manifest["style"], parent=manifest.get("parent"),
                   children=tuple(manifest["children"]), pieces=pieces, manifest=manifest)


@dataclasses.dataclass(frozen=True)
class PackedSequences:
  """Fixed-length token windows of one pack split, ready for a training loop."""
  tokens_NxT: np.ndarray  # int32, BOS first, PAD after the end of a piece
  mask_NxT: np.ndarray  # bool, True on real tokens (BOS included)
  piece_index_N: np.ndarray  # int32, index into `piece_ids` of each window's piece
  piece_ids: tuple[str, ...]
  n_tokens_skipped: int  # tokens of bars longer than a window, left out of every window


def _windows(tokens: list[int], bar_id: int, seq_len: int) -> tuple[list[list[int]], int]:
  """BOS-prefixed windows starting at Bar tokens; each next one starts at the last bar begun."""
  bars = [i for i, t in enumerate(tokens) if t == bar_id]
  body = seq_len - 1
  windows, skipped = [], 0
  start = bars[0] if bars else 1
  while True:
    windows.append([midi_tokenizer.BOS] + tokens[start:start + body])
    end = start + body
    if end >= len(tokens):
      return windows, skipped
    inside = [b for b in bars if start < b <= end]
    next_start = inside[-1] if inside else next((b for b in bars if b > end), len(tokens))
    skipped += max(0, next_start - end)
    if next_start >= len(tokens):
      return windows, skipped
    start = next_start


def pack_sequences(pack: StylePack, tokenizer: midi_tokenizer.MidiTokenizer, split: str,
                   seq_len: int) -> PackedSequences:
  """Tokenizes a split's pieces into [N, seq_len] int32 windows with a mask."""
  if seq_len < 2:
    raise ValueError(f"seq_len {seq_len} leaves no room after BOS")
  pieces = pack.split(split)
  if not pieces:
    raise StylePackError(f"{pack.path}: split {split!r} holds no pieces")
  bar_id = tokenizer.ids["Bar"]
  rows, owners, skipped = [], [], 0
  for index, piece in enumerate(pieces):
    file = pack.midi_path(piece)
    try:
      pm = pretty_midi.PrettyMIDI(file)
    except Exception as e:  # pretty_midi/mido raise many types on corrupt files
      raise StylePackError(f"{file}: corrupt MIDI: {type(e).__name__}: {e}") from e
    try:
      tokens = tokenizer.encode(pm)
    except midi_tokenizer.UnsupportedMidiError as e:
      raise StylePackError(f"{file}: {e}") from e
    windows, n_skipped = _windows(tokens, bar_id, seq_len)
    rows += windows
    owners += [index] * len(windows)
    skipped += n_skipped
  tokens_NxT = np.full((len(rows), seq_len), midi_tokenizer.PAD, dtype=np.int32)
  mask_NxT = np.zeros((len(rows), seq_len), dtype=bool)
  for r, row in enumerate(rows):
    tokens_NxT[r, :len(row)] = row
    mask_NxT[r, :len(row)] = True
  return PackedSequences(tokens_NxT=tokens_NxT, mask_NxT=mask_NxT,
                         piece_index_N=np.asarray(owners, dtype=np.int32),
                         piece_ids=tuple(p.id for p in pieces), n_tokens_skipped=skipped)
