"""Stems the separator learns from: corpus pieces whose top voice is sung by a synthesised voice.

Each piece (a Bach chorale or a Renaissance part-song from the music21 corpus) is played twice by
fluidsynth: its first part (the soprano, the cantus) alone on a General MIDI voice program (Choir
Aahs, Voice Oohs or Synth Voice) is the "vocal" stem, its other parts together on instrument
programs, and in half the pieces a drum kit on the beat, are the accompaniment. The stems are
exact because each is rendered alone; a mix is their sum. The "vocals" are synthesised voices,
never singers: a model trained here has heard no consonants, vibrato or breath.

The split is by piece, from a hash of its corpus path: 'train', 'val' (the training loop's
validation) and 'test' (held out for `bench/separator_eval.py`). Test pieces are rendered twice:
'test' with the training instrument programs and 'test_unseen' with programs no training piece
has. So that the model cannot learn "the highest line is the voice", in 30% of the pieces the voice
sings an octave lower (inside the accompaniment's range). Tempo, transposition, programs and
drums come from hashes of the piece, so a build is deterministic and cached per render
(`<out>/<split>/<name>.{vocal,accompaniment}.wav` beside a recipe file); `<out>/manifest.jsonl`
lists every render, `<out>/skipped.json` every piece left out and why.
"""

import dataclasses
import hashlib
import json
import os
import re

import music21
from music21 import converter, stream
import numpy as np
import pretty_midi
import soundfile

from lora_jax import atomic, progress
from lora_jax.audio import eval_set, render
from lora_jax.data.style_packs import corpus

RECIPE_VERSION = "separator-stems/1"  # bump when a render would differ: invalidates the cache
MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.json"
SAMPLE_RATE = render.SAMPLE_RATE
VOICE_PROGRAMS = (52, 53, 54)  # GM Choir Aahs, Voice Oohs, Synth Voice (0-based)
# Piano, e-piano, vibraphone, church organ, nylon guitar, acoustic bass, cello, harp, strings,
# trombone, french horn, bassoon, clarinet, flute.
TRAIN_PROGRAMS = (0, 4, 11, 19, 24, 32, 42, 46, 48, 57, 60, 70, 71, 73)
# Marimba, accordion, jazz guitar, violin, viola, tuba, brass section, oboe: never in training.
UNSEEN_PROGRAMS = (12, 21, 26, 40, 41, 58, 61, 68)
SPLITS = ("train", "val", "test", "test_unseen")


@dataclasses.dataclass(frozen=True)
class Render:
  """One rendered piece: its two stems (relative to the set's folder) and how it was played."""
  id: str
  split: str
  vocal: str
  accompaniment: str
  seconds: float
  voice_program: int
  programs: tuple[int, ...]  # the accompaniment parts', in part order
  drums: bool
  octave_down: bool


def _hash(text: str) -> int:
  return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def piece_split(piece_id: str) -> str:
  """'test' for 20% of the pieces, 'val' for 5%, 'train' for the rest, by a hash of the id."""
  bucket = _hash(f"split:{piece_id}") % 20
  return "test" if bucket < 4 else "val" if bucket == 4 else "train"


def _part_notes(part: stream.Part, seconds_per_quarter: float, shift: int,
                max_seconds: float) -> list[pretty_midi.Note]:
  notes = []
  for element in part.stripTies(inPlace=False).flatten().notes:
    if element.duration.isGrace or element.quarterLength == 0 or not element.pitches:
      continue
    start = float(element.offset) * seconds_per_quarter
    if start >= max_seconds:
      continue
    end = start + float(element.quarterLength) * seconds_per_quarter
    notes += [pretty_midi.Note(80, p.midi + shift, start, end) for p in element.pitches]
  return notes


def _drum_part(end: float, seconds_per_quarter: float) -> pretty_midi.Instrument:
  """Kick and snare alternating on the quarters, closed hi-hat on the eighths."""
  kit = pretty_midi.Instrument(program=0, is_drum=True)
  for i, t in enumerate(np.arange(0.0, end, seconds_per_quarter / 2)):
    hits = [42] + ([36 if (i // 2) % 2 == 0 else 38] if i % 2 == 0 else [])
    kit.notes += [pretty_midi.Note(70, p, t, t + 0.1) for p in hits]
  return kit


def _stems_midi(piece: corpus.CorpusPiece, root: str, split: str, max_seconds: float):
  """(vocal MIDI, accompaniment MIDI, Render fields) of one piece, or ValueError."""
  score = converter.parse(os.path.join(root, piece.corpus_path))
  if isinstance(score, stream.Opus):
    score = score.mergeScores()
  parts = list(score.parts)
  if len(parts) < 2:
    raise ValueError(f"{len(parts)} parts; the separator needs a voice and an accompaniment")
  h = _hash(f"{split}:{piece.id}")
  qpm = 60.0 + h % 51  # 60-110 quarters a minute
  shift = (h >> 8) % 9 - 4
  spq = 60.0 / qpm
  octave_down = (h >> 16) % 10 < 3
  drums = (h >> 24) % 2 == 0
  pool = UNSEEN_PROGRAMS if split == "test_unseen" else TRAIN_PROGRAMS
  voice_program = VOICE_PROGRAMS[(h >> 28) % len(VOICE_PROGRAMS)]
  programs = tuple(pool[(h >> (32 + 3 * i)) % len(pool)] for i in range(len(parts) - 1))
  vocal_notes = _part_notes(parts[0], spq, shift - 12 * octave_down, max_seconds)
  if not vocal_notes:
    raise ValueError("the top part has no notes")
  vocal = pretty_midi.PrettyMIDI(initial_tempo=qpm)
  vocal.instruments.append(pretty_midi.Instrument(voice_program, name="vocal"))
  vocal.instruments[0].notes = vocal_notes
  accompaniment = pretty_midi.PrettyMIDI(initial_tempo=qpm)
  for part, program in zip(parts[1:], programs):
    accompaniment.instruments.append(pretty_midi.Instrument(program))
    accompaniment.instruments[-1].notes = _part_notes(part, spq, shift, max_seconds)
  if drums:
    accompaniment.instruments.append(_drum_part(max(n.end for n in vocal_notes), spq))
  fields = dict(voice_program=voice_program, programs=programs, drums=drums,
                octave_down=octave_down)
  return vocal, accompaniment, fields


def _balanced(vocal: np.ndarray, accompaniment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both stems as long as the longer, the vocal at the accompaniment's RMS (0 dB), peak 0.9."""
  n = max(len(vocal), len(accompaniment))
  vocal = np.pad(vocal, (0, n - len(vocal)))
  accompaniment = np.pad(accompaniment, (0, n - len(accompaniment)))
  vocal = vocal * np.sqrt(np.mean(accompaniment ** 2) / np.mean(vocal ** 2))
  peak = max(np.abs(vocal + accompaniment).max(), np.abs(vocal).max(), np.abs(accompaniment).max())
  return (vocal * 0.9 / peak).astype(np.float32), (accompaniment * 0.9 / peak).astype(np.float32)


def render_piece(piece: corpus.CorpusPiece, root: str, split: str, out: str,
                 max_seconds: float) -> Render:
  """One piece's two stems under `out/split/` (or their cached render), as played for `split`."""
  name = re.sub(r"[^A-Za-z0-9.-]+", "_", piece.id)
  folder = os.path.join(out, split)
  os.makedirs(folder, exist_ok=True)
  files = {stem: os.path.join(split, f"{name}.{stem}.wav") for stem in ("vocal", "accompaniment")}
  recipe_file = os.path.join(folder, f"{name}.recipe")
  recipe = f"{RECIPE_VERSION}|{piece.id}|{split}|{max_seconds}"
  if os.path.isfile(recipe_file) and open(recipe_file).read().startswith(recipe + "|"):
    fields = json.loads(open(recipe_file).read()[len(recipe) + 1:])
  else:
    vocal_midi, accompaniment_midi, fields = _stems_midi(piece, root, split, max_seconds)
    vocal, accompaniment = _balanced(render.render(vocal_midi), render.render(accompaniment_midi))
    for stem, samples in (("vocal", vocal), ("accompaniment", accompaniment)):
      with atomic.atomic_path(os.path.join(out, files[stem])) as tmp:
        soundfile.write(tmp, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    atomic.write_text(recipe_file, f"{recipe}|{json.dumps(fields)}")
  seconds = soundfile.info(os.path.join(out, files["vocal"])).duration
  return Render(piece.id, split, files["vocal"], files["accompaniment"], round(seconds, 3),
                fields["voice_program"], tuple(fields["programs"]), fields["drums"],
                fields["octave_down"])


def candidate_pieces(root: str, n_renaissance: int) -> list[corpus.CorpusPiece]:
  """Every Bach chorale, and `n_renaissance` Renaissance pieces in a fixed hash order."""
  renaissance = sorted(corpus.GENRES["renaissance"].collect(root),
                       key=lambda p: _hash(f"separator:{p.id}"))
  # Josquin's ABC files hold one voice per tune (merged by mergeScores); the others are scores.
  return corpus.GENRES["baroque_chorale"].collect(root) + renaissance[:n_renaissance]


def build(out: str, n_pieces: int = 240, n_renaissance: int = 40,
          max_seconds: float = 24.0) -> list[Render]:
  """Renders (or completes from its cache) `n_pieces` pieces' stems under `out`."""
  root = music21.common.getCorpusFilePath()
  pieces = sorted(candidate_pieces(root, n_renaissance), key=lambda p: _hash(f"order:{p.id}"))
  os.makedirs(out, exist_ok=True)
  bar = progress.Progress(n_pieces, "rendering stems")
  renders, skipped, taken = [], [], 0
  for piece in pieces:
    if taken == n_pieces:
      break
    split = piece_split(piece.id)
    try:
      renders.append(render_piece(piece, root, split, out, max_seconds))
      if split == "test":
        renders.append(render_piece(piece, root, "test_unseen", out, max_seconds))
    except Exception as e:  # music21 raises many types; every skip is listed with its reason
      skipped.append({"id": piece.id, "reason": f"{type(e).__name__}: {e}"[:300]})
      continue
    taken += 1
    bar.step(f"{len(skipped)} skipped")
  bar.close()
  eval_set.write_manifest(out, renders, skipped)
  return renders


def read_manifest(out: str) -> list[Render]:
  """The renders a build wrote."""
  with open(os.path.join(out, MANIFEST)) as f:
    return [Render(**{**r, "programs": tuple(r["programs"])}) for r in map(json.loads, f)]


def load_stems(out: str, r: Render) -> tuple[np.ndarray, np.ndarray]:
  """(vocal, accompaniment) float32 samples of one render."""
  return tuple(soundfile.read(os.path.join(out, path), dtype="float32")[0]
               for path in (r.vocal, r.accompaniment))


def segments(out: str, renders: list[Render], per_piece: int, n_samples: int,
             seed: int) -> dict[str, np.ndarray]:
  """`per_piece` random windows of `n_samples` from each render: {'vocal', 'accompaniment'}
  float16 [N, n_samples] (half the memory; the model reads float32)."""
  rng = np.random.default_rng(seed)
  vocal, accompaniment = [], []
  for r in renders:
    v, a = load_stems(out, r)
    if len(v) < n_samples:
      continue
    for start in rng.integers(0, len(v) - n_samples + 1, per_piece):
      vocal.append(v[start:start + n_samples])
      accompaniment.append(a[start:start + n_samples])
  return {"vocal": np.stack(vocal).astype(np.float16),
          "accompaniment": np.stack(accompaniment).astype(np.float16)}
