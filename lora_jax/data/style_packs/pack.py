"""Style packs on disk, checked on load, and their token windows for training.

A pack is a directory `<root>/<genre>` (parent) or `<root>/<genre>/<sub_style>` (child) holding
`manifest.json` and `refs_midi/*.mid` (optionally `refs_audio/`, not read here). The README's
"What a style pack is" lists every manifest field; an unknown field is an error. Every MIDI file is
stored once, in the most specific pack it belongs to; a parent's manifest lists its own pieces and
all its children's (paths like `reel/refs_midi/x.mid`), so loading the parent gives the whole genre,
as parent adapters train on the entire style. Splits are per piece and shared by both levels.
"""
import dataclasses
import hashlib
import json
import math
import os
from typing import Any

import numpy as np
import pretty_midi

from lora_jax.data import midi_file, midi_tokenizer

MANIFEST = "manifest.json"
REFS_MIDI = "refs_midi"
PACK_FORMAT = "lora_jax.style_pack/1"
SPLITS = ("train", "validation", "test")
_PIECE_FIELDS = {"id": str, "source": str, "path": str, "split": str, "style": str,
                 "n_notes": int, "duration": float}
# Written by the builders for the record; checked when present, never required.
_OPTIONAL_PIECE_FIELDS = {"title": str, "source_hash": str, "n_dropped_notes": int,
                          "n_dropped_meters": int}
_PACK_FIELDS = {"format": str, "style": str, "parent": (str, type(None)), "children": list,
                "pieces": list}
_OPTIONAL_PACK_FIELDS = {"program": int, "converter": str, "music21_version": str,
                         "in_place": bool}
DURATION_TOLERANCE = 0.01  # seconds: the builders round durations to milliseconds


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


def type_name(kind) -> str:
  """'str', 'int', 'float' or 'str or null': how error messages spell a JSON field's type."""
  kinds = kind if isinstance(kind, tuple) else (kind,)
  return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _check_field(where: str, name: str, value: Any, kind) -> None:
  """A JSON value of the wanted type (an int is a float; a bool is neither), else an error."""
  kinds = kind if isinstance(kind, tuple) else (kind,)
  ok = isinstance(value, bool) if kind is bool else not isinstance(value, bool) and (
      isinstance(value, kinds) or (float in kinds and isinstance(value, int)))
  if not ok:
    raise StylePackError(f"{where} field {name!r} is {value!r}, not {type_name(kind)}")
  if kind in (int, float) and not (math.isfinite(value) and value >= 0):
    raise StylePackError(f"{where} field {name!r} is {value!r}, not a finite number >= 0")


def _check_fields(where: str, raw: dict, required: dict, optional: dict) -> None:
  unknown = sorted(set(raw) - set(required) - set(optional))
  if unknown:
    raise StylePackError(f"{where} has unknown field {unknown[0]!r}; a manifest holds "
                         f"{', '.join(sorted(required))} (and optionally "
                         f"{', '.join(sorted(optional))})")
  for name, kind in required.items():
    if name not in raw:  # a missing field is not a null one (`parent` may be null)
      raise StylePackError(f"{where} has no field {name!r}")
    _check_field(where, name, raw[name], kind)
  for name, kind in optional.items():
    if name in raw:
      _check_field(where, name, raw[name], kind)


def _piece(manifest_path: str, i: int, raw: Any) -> PackPiece:
  where = f"{manifest_path}: pieces[{i}]"
  if not isinstance(raw, dict):
    raise StylePackError(f"{where} is {raw!r}, not an object")
  _check_fields(where, raw, _PIECE_FIELDS, _OPTIONAL_PIECE_FIELDS)
  if raw["split"] not in SPLITS:
    raise StylePackError(f"{where} split {raw['split']!r} not in {SPLITS}")
  return PackPiece(**{name: raw[name] for name in _PIECE_FIELDS})


def _inside(root: str, file: str) -> bool:
  return file.startswith(root + os.sep)


def load_style_pack(path: str) -> StylePack:
  """Reads and checks a pack: every manifest field, and every listed MIDI file present inside it.

  The files' notes and durations are checked against the manifest when they are read
  (`pack_sequences`), not here: loading stays cheap.
  """
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
  _check_fields(f"{manifest_path}:", manifest, _PACK_FIELDS, _OPTIONAL_PACK_FIELDS)
  if manifest.get("program") is not None and not 0 <= manifest["program"] <= 127:
    raise StylePackError(f"{manifest_path}: program {manifest['program']} is not in 0..127")
  for i, child in enumerate(manifest["children"]):
    if not isinstance(child, str) or not child:
      raise StylePackError(f"{manifest_path}: children[{i}] is {child!r}, not a style name")
  parent, style = manifest["parent"], manifest["style"]
  if parent is not None and manifest["children"]:
    raise StylePackError(f"{manifest_path}: a sub-style pack (parent {parent!r}) lists children")
  allowed = ({f"{parent}/{style}"} if parent is not None
             else {style} | {f"{style}/{c}" for c in manifest["children"]})
  pieces = tuple(_piece(manifest_path, i, raw) for i, raw in enumerate(manifest["pieces"]))
  if not pieces:
    raise StylePackError(f"{manifest_path}: pack lists no pieces")
  if all(p.n_notes == 0 for p in pieces):
    raise StylePackError(f"{manifest_path}: all {len(pieces)} pieces have no notes "
                         f"(n_notes 0): nothing to train on")
  real_root = os.path.realpath(path)
  seen: set[str] = set()
  for piece in pieces:
    if piece.id in seen:
      raise StylePackError(f"{manifest_path}: piece {piece.id!r} is listed twice")
    seen.add(piece.id)
    if piece.style not in allowed:
      raise StylePackError(f"{manifest_path}: piece {piece.id!r} has style {piece.style!r}; "
                           f"this pack holds {', '.join(sorted(allowed))}")
    file = os.path.normpath(os.path.join(path, piece.path))
    if not _inside(path, file):
      raise StylePackError(f"{manifest_path}: piece {piece.id!r} path {piece.path!r} leaves the pack")
    if not os.path.isfile(file):
      raise StylePackError(f"{file}: listed MIDI file of piece {piece.id!r} does not exist")
    if not _inside(real_root, os.path.realpath(file)):
      raise StylePackError(f"{file}: a link to {os.path.realpath(file)}, outside the pack; "
                           f"copy the file into the pack")
    with open(file, "rb") as f:
      if f.read(4) != b"MThd":
        raise StylePackError(f"{file}: not a MIDI file (no MThd header)")
  return StylePack(path=path, style=style, parent=parent,
                   children=tuple(manifest["children"]), pieces=pieces, manifest=manifest)


def check_against_file(pack: StylePack, piece: PackPiece, pm: pretty_midi.PrettyMIDI) -> None:
  """Raise unless the file holds the manifest's n_notes and duration."""
  file = pack.midi_path(piece)
  n_notes = sum(len(i.notes) for i in pm.instruments)
  if n_notes != piece.n_notes:
    raise StylePackError(f"{file}: holds {n_notes} notes, the manifest says n_notes "
                         f"{piece.n_notes} (was the file changed after the pack was built?)")
  duration = pm.get_end_time()
  if abs(duration - piece.duration) > DURATION_TOLERANCE:
    raise StylePackError(f"{file}: lasts {duration:.3f} s, the manifest says duration "
                         f"{piece.duration} (was the file changed after the pack was built?)")


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
      pm = midi_file.read_midi(file)
    except midi_file.MidiReadError as e:
      raise StylePackError(str(e)) from e
    check_against_file(pack, piece, pm)
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
