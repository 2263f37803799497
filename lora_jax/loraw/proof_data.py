"""The audio of LoRAW's proof (`bench/loraw_proof.py`): corpus pieces rendered by fluidsynth in
several instrument families, split by piece into training and held-out folders.

Every family plays the same pieces (the rendered evaluation set's recipe, `lora_jax.audio.
eval_set`, one General MIDI program per family), so families differ in timbre, not in the music.
The last piece of each genre in the set's fixed order is held out of every training run
(autoencoder, base, adapters); the rest trains. A WAV's prompt (`<name>.txt`) is its family.
Each WAV is peak-normalised to `PEAK`: fluidsynth's renders sit near -30 dB RMS, where a freshly
initialised autoencoder's biases drown the signal (docs/loraw.md, the autoencoder's diagnosis).
"""

import dataclasses
import os

import numpy as np

from lora_jax import atomic
from lora_jax.audio import eval_set
from lora_jax.data.dit import wav

PEAK = 0.9  # each file's peak after normalisation

GENRES = ("essen_folk", "celtic_fiddle", "baroque_chorale")


@dataclasses.dataclass(frozen=True)
class Instrument:
  name: str  # the family's name, also the clips' prompt
  program: int  # General MIDI program


def build(out: str, instruments: tuple[Instrument, ...], per_genre: int, max_seconds: float
          ) -> dict[str, dict[str, list[str]]]:
  """Render (cached) and split; {instrument: {'train'|'test': [wav paths]}} under `out`."""
  split = {}
  for inst in instruments:
    plans = tuple(eval_set.GenrePlan(g, per_genre, (inst.program,), (70.0, 120.0))
                  for g in GENRES)
    render_dir = os.path.join(out, "render", inst.name)
    entries = eval_set.build(render_dir, plans, max_seconds)
    split[inst.name] = {"train": [], "test": []}
    for genre in GENRES:
      pieces = [e for e in entries if e.genre == genre]
      for i, e in enumerate(pieces):
        part = "test" if i == len(pieces) - 1 else "train"
        folder = os.path.join(out, "wavs", part, inst.name)
        os.makedirs(folder, exist_ok=True)
        dest = os.path.join(folder, e.wav)
        if not os.path.isfile(dest):
          audio, rate = wav.read(os.path.join(render_dir, e.wav))
          wav.write(dest, audio * (PEAK / max(float(np.abs(audio).max()), 1e-6)), rate)
        prompt = os.path.splitext(dest)[0] + ".txt"
        if not os.path.isfile(prompt):
          atomic.write_text(prompt, inst.name)
        split[inst.name][part].append(dest)
  return split
