"""Which notes a DUV run trains on, which pick its checkpoint, which it never sees; and the record.

Tracks (manifest rows) are chosen by two regexes, searched in each row's `instrument` and
`piece_id`. Of those, the pieces matching `heldout` are the test set: never trained on and never
used to choose a checkpoint. Every other track trains on its first notes and validates on the last
`valid_tail` share of them, so early stopping looks at unheard music of the training pieces and
never at a test piece. (Validating on held-out pieces, as the first version did, turns them into
training signal: with four pop songs, a validation song is a test song.)

`SplitRecord` is what `evaluate` needs to score a trained model honestly: the model it wrote, the
manifest and regexes that rebuild the split, the pieces on each side, and the mean human velocity
of the training pieces (the constant-velocity baseline). Training writes it as `duv_split.json` in
its workdir.
"""

import dataclasses
import json
import re
from typing import Sequence

import numpy as np

from lora_jax import atomic, errors

RECORD_FILE = "duv_split.json"


class SplitError(errors.UserError):
  """Regexes or shares that leave a DUV run without the data it needs."""


@dataclasses.dataclass(frozen=True)
class Split:
  """Rows of one run: training notes, their tails for validation, and the held-out pieces whole."""

  train: list[dict]
  valid: list[dict]
  heldout: list[dict]


@dataclasses.dataclass(frozen=True)
class SplitRecord:
  """What a training run used and wrote (`duv_split.json`)."""

  training_type: str  # 'full' (a base bundle) or 'lora' (an adapter beside its bundle)
  model: str  # what the run wrote: the bundle folder, or <bundle>/<adapter_name>.lora
  step: int  # the training step whose weights were written (the best-validated one)
  bundle: str  # the base bundle folder
  manifest: str
  instrument: str
  pieces: str
  heldout: str
  valid_tail: float
  train_pieces: tuple[str, ...]
  heldout_pieces: tuple[str, ...]
  train_notes: int  # before the validation tails were cut off
  train_velocity_mean: float  # over the training pieces' notes (tails included), never held-out


def _search(pattern: str, what: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise SplitError(f"bad {what} regex {pattern!r}: {e}") from None


def select(rows: Sequence[dict], instrument: str, pieces: str) -> list[dict]:
  """The rows whose instrument and piece id the regexes search ('' keeps all); never empty."""
  by_instrument, by_piece = _search(instrument, "instrument"), _search(pieces, "pieces")
  kept = [r for r in rows if by_instrument.search(r["instrument"])]
  if not kept:
    raise SplitError(f"duv.instrument {instrument!r} matches no row; the instruments are "
                     f"{sorted({r['instrument'] for r in rows})}")
  chosen = [r for r in kept if by_piece.search(r["piece_id"])]
  if not chosen:
    raise SplitError(f"duv.pieces {pieces!r} matches no {instrument!r} piece; they are "
                     f"{sorted({r['piece_id'] for r in kept})}")
  return chosen


def cut(row: dict, start: int, stop: int) -> dict:
  """The row's notes [start, stop): every per-note list cut, everything else shared."""
  return {**row, "n_notes": stop - start,
          **{group: {k: v[start:stop] for k, v in row[group].items()}
             for group in ("notes", "features", "targets")}}


def split(rows: Sequence[dict], heldout: str, valid_tail: float) -> Split:
  """Held-out pieces whole; every other track cut into its head (train) and tail (valid)."""
  if not 0.0 < valid_tail < 1.0:
    raise SplitError(f"duv.valid_tail must be in (0, 1), got {valid_tail}")
  pattern = _search(heldout, "heldout")
  test = [r for r in rows if heldout and pattern.search(r["piece_id"])]
  if heldout and not test:
    raise SplitError(f"duv.heldout {heldout!r} matches none of the pieces "
                     f"{sorted({r['piece_id'] for r in rows})}")
  rest = [r for r in rows if r not in test]
  if not rest:
    raise SplitError(f"duv.heldout {heldout!r} holds out every piece; nothing is left to train on")
  train, valid = [], []
  for row in rest:
    n = len(row["notes"]["onset_beats"])
    head = int(round(n * (1.0 - valid_tail)))
    if not 0 < head < n:
      raise SplitError(f"track {row['file']} of {n} notes leaves {head} to train on and "
                       f"{n - head} to validate with duv.valid_tail {valid_tail}; both need one")
    train.append(cut(row, 0, head))
    valid.append(cut(row, head, n))
  return Split(train, valid, test)


def velocity_mean(rows: Sequence[dict]) -> float:
  """Mean human velocity over the rows' notes."""
  return float(np.mean(np.concatenate([np.asarray(r["targets"]["velocity"], np.float64)
                                       for r in rows])))


def record(training_type: str, model: str, step: int, bundle: str, manifest: str,
           instrument: str, pieces: str, heldout: str, valid_tail: float,
           parts: Split) -> SplitRecord:
  """The record of a run that trained on `parts` and wrote `model` from step `step`."""
  train_notes = sum(len(r["notes"]["onset_beats"]) for r in parts.train + parts.valid)
  return SplitRecord(
      training_type, model, step, bundle, manifest, instrument, pieces, heldout, valid_tail,
      tuple(sorted({r["piece_id"] for r in parts.train})),
      tuple(sorted({r["piece_id"] for r in parts.heldout})), train_notes,
      round(velocity_mean(parts.train + parts.valid), 4))


def write_record(path: str, rec: SplitRecord) -> None:
  """Write the record as JSON, atomically."""
  atomic.write_text(path, json.dumps(dataclasses.asdict(rec), indent=1) + "\n")


def read_record(path: str) -> SplitRecord:
  """A record written by `write_record`; unknown or missing fields are errors."""
  try:
    with open(path) as f:
      fields = json.load(f)
  except FileNotFoundError:
    raise SplitError(f"no split record {path}: train the run first") from None
  known = [f.name for f in dataclasses.fields(SplitRecord)]
  if sorted(fields) != sorted(known):
    raise SplitError(f"{path}: fields {sorted(fields)} differ from {sorted(known)}")
  fields["train_pieces"] = tuple(fields["train_pieces"])
  fields["heldout_pieces"] = tuple(fields["heldout_pieces"])
  return SplitRecord(**fields)
