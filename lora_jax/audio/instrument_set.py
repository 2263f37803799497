"""The instrument set: the evaluation set's pieces replayed by General MIDI programs of 8 families.

Each piece's MIDI (already retimed and transposed by `eval_set`) is cut to `seconds`, every part
given one program, moved by whole octaves so that its median note sits near that program's usual
register (a tuba does not play a fiddle tune two octaves up), and rendered by fluidsynth.
A piece is rendered `per_piece` times, by families drawn by a hash of its id (all different).
Splits are by piece, so a piece's renders never straddle them: 60% fit, 20% validation (the
temperature and threshold), 20% test. The last program of each family is held out of fitting:
fit pieces never play it, validation and test pieces may, so the test says how the classifier does
on an instrument its weights never heard as well as on new pieces by known ones, and the
calibration is set where it is needed, on instruments unlike the fitted ones (a user's recording
is never one of the soundfont's programs).
Each render is cached under `<out>/<name>.wav` with a recipe file, as `eval_set` does;
`<out>/manifest.jsonl` lists them.
"""

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pretty_midi
import soundfile

from lora_jax import atomic, progress
from lora_jax.audio import eval_set, render

RECIPE_VERSION = "instrument-set/1"  # bump when a render would differ: invalidates the cache
MANIFEST = "manifest.jsonl"

# family -> (General MIDI program, usual median pitch); the last program of each is held out.
FAMILIES = {
    "piano": ((0, 64), (2, 64), (4, 64), (1, 64)),
    "organ": ((19, 60), (16, 64), (17, 64), (20, 62)),
    "strings": ((40, 74), (42, 50), (48, 62), (41, 62)),
    "brass": ((56, 70), (57, 53), (61, 62), (60, 60)),
    "woodwind": ((73, 79), (71, 65), (65, 63), (74, 77), (68, 72)),
    "guitar": ((24, 59), (25, 59), (27, 62), (26, 60)),
    "plucked": ((46, 62), (45, 62), (105, 64), (6, 64)),
    "voice": ((52, 62), (54, 64), (53, 60)),
}


@dataclasses.dataclass(frozen=True)
class Render:
  """One piece played by one program."""
  id: str  # piece id and program
  piece: str
  family: str
  program: int
  held_out_program: bool
  split: str  # "fit", "validation" or "test"
  wav: str  # relative to the set's folder


def _hash(text: str) -> int:
  return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def split_of(piece_id: str) -> str:
  h = _hash(f"instrument-split:{piece_id}") % 10
  return "fit" if h < 6 else "validation" if h < 8 else "test"


def _played(pm: pretty_midi.PrettyMIDI, program: int, centre: int,
            seconds: float) -> pretty_midi.PrettyMIDI:
  notes = [n for i in pm.instruments for n in i.notes if n.start < seconds]
  if not notes:
    raise ValueError(f"no notes in the first {seconds:g} s")
  octaves = int(np.round((centre - np.median([n.pitch for n in notes])) / 12))
  out = pretty_midi.PrettyMIDI(initial_tempo=120.0)
  for part in pm.instruments:
    played = pretty_midi.Instrument(program=program, name=part.name)
    played.notes = [pretty_midi.Note(n.velocity, int(np.clip(n.pitch + 12 * octaves, 21, 108)),
                                     n.start, min(n.end, seconds + 1.0))
                    for n in part.notes if n.start < seconds]
    out.instruments.append(played)
  return out


def plan(entries: list[eval_set.Entry], per_piece: int) -> list[Render]:
  """Which piece each family and program plays (no rendering)."""
  families = list(FAMILIES)
  renders = []
  for e in entries:
    split = split_of(e.id)
    start = _hash(f"family:{e.id}") % len(families)
    for k in range(per_piece):
      family = families[(start + k * 3) % len(families)]  # 3 is coprime with 8: all different
      programs = FAMILIES[family][:-1] if split == "fit" else FAMILIES[family]
      program, _ = programs[_hash(f"program:{e.id}:{k}") % len(programs)]
      name = re.sub(r"[^A-Za-z0-9.-]+", "_", e.id) + f"_p{program}"
      renders.append(Render(f"{e.id}|{program}", e.id, family, program,
                            program == FAMILIES[family][-1][0], split, f"{name}.wav"))
  return renders


def build(out: str, source: str, per_piece: int = 2, seconds: float = 20.0) -> list[Render]:
  """Renders (or reuses) the set under `out` from the evaluation set in `source`."""
  entries = eval_set.read_manifest(source)
  renders = plan(entries, per_piece)
  centre = {p: c for programs in FAMILIES.values() for p, c in programs}
  midi_of = {e.id: os.path.join(source, e.midi) for e in entries}
  os.makedirs(out, exist_ok=True)
  bar = progress.Progress(len(renders), "rendering")
  for r in renders:
    recipe = f"{RECIPE_VERSION}|{r.id}|{seconds}"
    recipe_file = os.path.join(out, os.path.splitext(r.wav)[0] + ".recipe")
    if not (os.path.isfile(os.path.join(out, r.wav)) and os.path.isfile(recipe_file)
            and open(recipe_file).read() == recipe):
      played = _played(pretty_midi.PrettyMIDI(midi_of[r.piece]), r.program, centre[r.program],
                       seconds)
      with atomic.atomic_path(os.path.join(out, r.wav)) as tmp:
        soundfile.write(tmp, render.render(played), render.SAMPLE_RATE, format="WAV",
                        subtype="PCM_16")
      atomic.write_text(recipe_file, recipe)
    bar.step(r.family)
  bar.close()
  atomic.write_text(os.path.join(out, MANIFEST), "".join(
      json.dumps(dataclasses.asdict(r), sort_keys=True) + "\n" for r in renders))
  return renders


@dataclasses.dataclass(frozen=True)
class Mixture:
  """A test piece with its upper parts played by one family and its lowest part by another."""
  piece: str
  upper: str  # family of the upper parts
  lower: str  # family of the lowest part
  wav: str


def build_mixtures(out: str, source: str, seconds: float = 20.0) -> list[Mixture]:
  """Two-family renders of the test pieces that have several parts (chorales, renaissance), to
  see what a one-family model says about a mixture; cached like `build`."""
  families = list(FAMILIES)
  centre = {p: c for programs in FAMILIES.values() for p, c in programs}
  mixtures = []
  for e in eval_set.read_manifest(source):
    pm = pretty_midi.PrettyMIDI(os.path.join(source, e.midi))
    parts = [i for i in pm.instruments if i.notes]
    if split_of(e.id) != "test" or len(parts) < 2:
      continue
    upper = families[_hash(f"upper:{e.id}") % len(families)]
    lower = families[(families.index(upper) + 1 + _hash(f"lower:{e.id}") % 7) % len(families)]
    p_up, p_low = FAMILIES[upper][0][0], FAMILIES[lower][0][0]
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", e.id) + f"_mix{p_up}-{p_low}.wav"
    recipe = f"{RECIPE_VERSION}|mix|{e.id}|{p_up}|{p_low}|{seconds}"
    recipe_file = os.path.join(out, os.path.splitext(name)[0] + ".recipe")
    if not (os.path.isfile(os.path.join(out, name)) and os.path.isfile(recipe_file)
            and open(recipe_file).read() == recipe):
      lowest = min(parts, key=lambda i: np.median([n.pitch for n in i.notes]))
      top, bottom = pretty_midi.PrettyMIDI(), pretty_midi.PrettyMIDI()
      top.instruments = [i for i in parts if i is not lowest]
      bottom.instruments = [lowest]
      def kept(part_pm):  # as written: the bass stays below the tune
        return int(np.median([n.pitch for i in part_pm.instruments for n in i.notes
                              if n.start < seconds]))
      played = _played(top, p_up, kept(top), seconds)
      played.instruments += _played(bottom, p_low, kept(bottom), seconds).instruments
      with atomic.atomic_path(os.path.join(out, name)) as tmp:
        soundfile.write(tmp, render.render(played), render.SAMPLE_RATE, format="WAV",
                        subtype="PCM_16")
      atomic.write_text(recipe_file, recipe)
    mixtures.append(Mixture(e.id, upper, lower, name))
  return mixtures


def read_manifest(out: str) -> list[Render]:
  with open(os.path.join(out, MANIFEST)) as f:
    return [Render(**json.loads(line)) for line in f]
