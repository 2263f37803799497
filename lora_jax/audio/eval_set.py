"""The rendered evaluation set: corpus pieces with a known tempo and key, played by fluidsynth.

Each piece of the music21 corpus (`style_packs.corpus`) is parsed, written as MIDI, retimed to a
beat tempo drawn from its genre's range, transposed so that the set covers every one of the 24
keys, cut to `max_seconds`, and rendered. The truth written beside it:
  tempo  beats per minute, where a beat is the meter's denominator note for simple meters (2/4,
         3/4, 4/4, 2/2) and three of them for compound ones (6/8, 9/8, 12/8: the dotted quarter).
  key    the key signature's major tonic moved to the piece's final lowest note: a final on the
         signature's 1st, 4th or 5th degree (ionian, lydian, mixolydian) is major, on its 2nd, 3rd
         or 6th (dorian, phrygian, aeolian) minor, so modal tunes count by their mode's third. A
         piece with no key signature, several, or a locrian final is left out (its key is not
         known), as is one with several tempos or meters. These are rules about notation, not an
         analysis of the notes: the analysis is what is measured against them.
Pieces are taken in a fixed hash order per genre, so a larger set extends a smaller one; each
render is cached under `<out>/<id>.wav` with its `<id>.mid`, and reused when the recipe (piece,
tempo, transposition, program, renderer version) is unchanged. `<out>/manifest.jsonl` lists every
piece with its truth; `<out>/skipped.json` every piece left out and why.
"""

import dataclasses
import hashlib
import json
import os
import re

import music21
from music21 import converter, key as m21key, meter, stream
import numpy as np
import pretty_midi
import soundfile

from lora_jax import atomic, progress
from lora_jax.audio import render
from lora_jax.data.style_packs import corpus

RECIPE_VERSION = "eval-set/1"  # bump when a render would differ: invalidates the cache
MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.json"
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


@dataclasses.dataclass(frozen=True)
class GenrePlan:
  """How many pieces of a corpus genre the set takes, and how they are played."""
  genre: str  # a corpus.GENRES name
  n_pieces: int
  programs: tuple[int, ...]  # General MIDI programs; a piece takes one by a hash of its id
  bpm_range: tuple[float, float]  # beat tempo drawn uniformly from this


DEFAULT_PLANS = (
    GenrePlan("celtic_fiddle", 64, (40,), (80.0, 130.0)),  # violin
    GenrePlan("essen_folk", 56, (73,), (60.0, 140.0)),  # flute
    GenrePlan("renaissance", 40, (52,), (50.0, 100.0)),  # choir aahs
    GenrePlan("baroque_chorale", 64, (19,), (50.0, 100.0)),  # church organ
)
# For the genre guess: every genre played by the same instruments (piano, strings, flute, organ,
# clarinet, guitar), so that a classifier cannot tell genres by timbre.
SHARED_PROGRAMS = (0, 48, 73, 19, 71, 24)
GENRE_PLANS = tuple(dataclasses.replace(p, programs=SHARED_PROGRAMS) for p in DEFAULT_PLANS)


@dataclasses.dataclass(frozen=True)
class Truth:
  """What the analysis of a render should find."""
  bpm: float
  tonic: int  # pitch class, 0 = C
  mode: str  # "major" or "minor"
  meter: str  # e.g. "6/8"

  @property
  def key_name(self) -> str:
    return f"{PITCH_NAMES[self.tonic]} {self.mode}"


_MODE_OF_FINAL = {0: "major", 5: "major", 7: "major", 2: "minor", 4: "minor", 9: "minor"}


def _hash(text: str) -> int:
  return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def _beat_quarters(numerator: int, denominator: int) -> float:
  """Quarter notes per beat (see the module docstring)."""
  unit = 4.0 / denominator
  return 3 * unit if numerator % 3 == 0 and numerator > 3 else unit


def _written_key(score: stream.Score, pm: pretty_midi.PrettyMIDI) -> tuple[int, str]:
  """(tonic, mode) by the notation rule of the module docstring, or ValueError."""
  signatures = {(ks.sharps) for ks in score.recurse().getElementsByClass(m21key.KeySignature)}
  if len(signatures) != 1:
    raise ValueError(f"{len(signatures)} key signatures")
  major_tonic = (7 * signatures.pop()) % 12
  notes = [n for i in pm.instruments for n in i.notes]
  last_start = max(n.start for n in notes)
  final = min(n.pitch for n in notes if n.start >= last_start - 1e-3 or n.end >= pm.get_end_time() - 1e-3)
  degree = (final - major_tonic) % 12
  if degree not in _MODE_OF_FINAL:
    raise ValueError(f"final {PITCH_NAMES[final % 12]} is degree {degree} of "
                     f"{PITCH_NAMES[major_tonic]} major: no mode with a known third")
  return final % 12, _MODE_OF_FINAL[degree]


def _meter(score: stream.Score) -> tuple[int, int]:
  parts = list(score.parts) or [score]
  found = {(ts.numerator, ts.denominator)
           for ts in parts[0].recurse().getElementsByClass(meter.TimeSignature)}
  if len(found) != 1:
    raise ValueError(f"{len(found)} meters")
  return found.pop()


def _retimed(pm: pretty_midi.PrettyMIDI, qpm: float, shift: int, program: int,
             max_seconds: float) -> pretty_midi.PrettyMIDI:
  """`pm` at `qpm` quarter notes a minute, transposed by `shift`, notes after max_seconds cut."""
  _, tempos = pm.get_tempo_changes()
  if len(set(np.round(tempos, 3))) != 1:
    raise ValueError(f"{len(set(tempos))} tempos")
  scale = float(tempos[0]) / qpm
  out = pretty_midi.PrettyMIDI(initial_tempo=qpm)
  for instrument in pm.instruments:
    played = pretty_midi.Instrument(program=program, name=instrument.name)
    for n in instrument.notes:
      start, end = n.start * scale, n.end * scale
      if start < max_seconds:
        played.notes.append(pretty_midi.Note(n.velocity, n.pitch + shift, start, min(end, max_seconds + 1.0)))
    out.instruments.append(played)
  return out


@dataclasses.dataclass(frozen=True)
class Entry:
  """One rendered piece of the set."""
  id: str
  genre: str
  sub_style: str
  wav: str  # relative to the set's folder
  midi: str
  seconds: float
  truth: Truth


def _piece_entry(piece: corpus.CorpusPiece, plan: GenrePlan, index: int, out: str,
                 root: str, max_seconds: float) -> Entry:
  """Parses, retimes, transposes and renders one piece (or reuses its cached render)."""
  name = re.sub(r"[^A-Za-z0-9.-]+", "_", piece.id)
  score = (converter.parseData(piece.abc_text, format="abc") if piece.abc_text is not None
           else converter.parse(os.path.join(root, piece.corpus_path), forceSource=True))
  if isinstance(score, stream.Opus):
    score = score.mergeScores()
  program = plan.programs[_hash(f"program:{piece.id}") % len(plan.programs)]
  pm, _ = corpus.score_to_midi(score, program)
  if not any(i.notes for i in pm.instruments):
    raise ValueError("no notes")
  numerator, denominator = _meter(score)
  tonic, mode = _written_key(score, pm)
  # Every key: the i-th piece of a genre goes to tonic 7*i mod 12 (a walk round the circle of
  # fifths) offset by a hash of its id, so that each mode in each genre spreads over all twelve
  # tonics; the shift is at most a tritone (an octave more when the range would leave the piano's).
  target = (7 * index + _hash(piece.id) % 12) % 12
  shift = (target - tonic + 6) % 12 - 6
  low = min(n.pitch for i in pm.instruments for n in i.notes)
  high = max(n.pitch for i in pm.instruments for n in i.notes)
  if low + shift < 21 or high + shift > 108:
    shift = shift - 12 if high + shift > 108 else shift + 12
  lo, hi = plan.bpm_range
  bpm = round(lo + (hi - lo) * (_hash(f"bpm:{piece.id}") % 1000) / 999, 1)
  qpm = bpm * _beat_quarters(numerator, denominator)
  truth = Truth(bpm, (tonic + shift) % 12, mode, f"{numerator}/{denominator}")
  recipe = f"{RECIPE_VERSION}|{piece.id}|{bpm}|{shift}|{program}|{max_seconds}"
  wav, mid = f"{name}.wav", f"{name}.mid"
  recipe_file = os.path.join(out, f"{name}.recipe")
  if not (os.path.isfile(os.path.join(out, wav)) and os.path.isfile(recipe_file)
          and open(recipe_file).read() == recipe):
    played = _retimed(pm, qpm, shift, program, max_seconds)
    samples = render.render(played)
    with atomic.atomic_path(os.path.join(out, mid)) as tmp:
      played.write(tmp)
    with atomic.atomic_path(os.path.join(out, wav)) as tmp:
      soundfile.write(tmp, samples, render.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    atomic.write_text(recipe_file, recipe)
  seconds = soundfile.info(os.path.join(out, wav)).duration
  return Entry(piece.id, plan.genre, piece.sub_style, wav, mid, round(seconds, 3), truth)


def build(out: str, plans: tuple[GenrePlan, ...] = DEFAULT_PLANS,
          max_seconds: float = 45.0, exclude: frozenset[str] = frozenset()) -> list[Entry]:
  """Builds (or completes from its cache) the set under `out`; returns its entries.

  Pieces whose id is in `exclude` are passed over (not counted, not listed as skipped): a
  training set built with the evaluation set's ids excluded takes the next pieces of the same
  genres in the same order, so no piece is in both.
  """
  root = music21.common.getCorpusFilePath()
  os.makedirs(out, exist_ok=True)
  candidates = []
  for plan in plans:
    pieces = corpus.GENRES[plan.genre].collect(root)
    pieces = sorted(pieces, key=lambda p: _hash(f"eval:{p.id}"))
    candidates.append((plan, pieces))
  bar = progress.Progress(sum(p.n_pieces for p in plans), "rendering")
  entries, skipped = [], []
  for plan, pieces in candidates:
    taken = 0
    for piece in pieces:
      if taken == plan.n_pieces:
        break
      if piece.id in exclude:
        continue
      try:
        entries.append(_piece_entry(piece, plan, taken, out, root, max_seconds))
      except Exception as e:  # music21 raises many types; every skip is listed with its reason
        skipped.append({"id": piece.id, "genre": plan.genre, "reason": f"{type(e).__name__}: {e}"[:300]})
        continue
      taken += 1
      bar.step(f"{len(skipped)} skipped")
  bar.close()
  write_manifest(out, entries, skipped)
  return entries


def write_manifest(out: str, rows: list, skipped: list[dict]) -> None:
  """A rendered set's `manifest.jsonl` (one dataclass row a line) and `skipped.json`, each
  atomically: the evaluation set's and the separator's stem set's."""
  atomic.write_text(os.path.join(out, MANIFEST), "".join(
      json.dumps(dataclasses.asdict(r), sort_keys=True) + "\n" for r in rows))
  atomic.write_text(os.path.join(out, SKIPPED), json.dumps(skipped, indent=1))


def read_manifest(out: str) -> list[Entry]:
  """The entries a build wrote."""
  entries = []
  with open(os.path.join(out, MANIFEST)) as f:
    for line in f:
      row = json.loads(line)
      entries.append(Entry(**{**row, "truth": Truth(**row["truth"])}))
  return entries
