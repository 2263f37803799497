"""The calls the studio's audio endpoints make (`lora_jax/studio/audio_bridge.py`), each on one
uploaded file: analysis as JSON-ready data, clips cut at beats, stems, and its notes as MIDI.
Audio outputs are WAV at `load.SAMPLE_RATE`, written together or not at all."""

import hashlib
import os
import time

import numpy as np
import soundfile

from lora_jax import atomic
from lora_jax.audio import analysis as analysis_lib
from lora_jax.audio import clips as clips_lib
from lora_jax.audio import energy as energy_lib
from lora_jax.audio import load as load_lib
from lora_jax.audio import stems as stems_lib
from lora_jax.audio import transcribe as transcribe_lib


def _write(files: dict[str, np.ndarray]) -> None:
  with atomic.atomic_paths(*files) as tmps:
    for tmp, samples in zip(tmps, files.values()):
      soundfile.write(tmp, samples, load_lib.SAMPLE_RATE, format="WAV", subtype="PCM_16")


def analyze_file(path: str) -> dict:
  """One file's row of the seed's metadata table (genre, bpm, key, mood, instruments,
  description) with the confidences behind it. Mood is the energy class; one file alone has
  no distribution to be placed in, so it is "medium" and `mood_basis` says so."""
  a = analysis_lib.analyze(path)
  classes = energy_lib.classes([a.energy.level_dbfs])
  mood = classes.labels[0]
  return {"genre": a.genre.name, "genre_confidence": a.genre.confidence,
          "bpm": round(a.tempo.bpm, 1), "tempo_confidence": a.tempo.confidence,
          "key": a.key.name, "key_confidence": a.key.confidence,
          "key_runner_up": a.key.runner_up, "mood": mood, "mood_basis": classes.basis,
          "level_dbfs": a.energy.level_dbfs, "instruments": a.instruments.name,
          "instruments_confidence": a.instruments.confidence,
          "description": f"{a.tempo.bpm:.0f} BPM, {a.key.name}, {mood} energy "
                         f"({a.energy.level_dbfs:.1f} dBFS)",
          "seconds": a.seconds}


def split_file(path: str, out_dir: str) -> list[str]:
  """The file cut into 10-30 s clips at beats (`clips.cut`); the clips' paths, in order."""
  started = time.monotonic()
  audio = load_lib.load(path)  # read once: analysed for its tempo, then cut
  a = analysis_lib.analyze_loaded(path, audio, started)
  stem = os.path.splitext(os.path.basename(path))[0]
  files = {}
  for i, clip in enumerate(clips_lib.cut(audio.samples, audio.sample_rate, a.tempo.bpm)):
    span = slice(int(clip.start * audio.sample_rate), int(clip.end * audio.sample_rate))
    files[os.path.join(out_dir, f"{stem}_{i:03d}.wav")] = audio.samples[span]
  _write(files)
  return list(files)


def separate_stems(path: str, out_dir: str) -> dict[str, str]:
  """Vocal and accompaniment stems by the trained separator, or harmonic and percussive ones by
  HPSS where its weights are absent (`stems.separator()` says which runs)."""
  audio = load_lib.load(path)
  parts = stems_lib.separate(audio.samples, audio.sample_rate).parts
  stem = os.path.splitext(os.path.basename(path))[0]
  files = {os.path.join(out_dir, f"{stem}_{name}.wav"): samples for name, samples in parts.items()}
  _write(files)
  return {name: p for name, p in zip(parts, files)}


def transcribe_file(path: str, out_dir: str) -> str:
  """The file's notes as MIDI (basic-pitch: note F about 0.42 on GM renders, far better on plucked
  and bowed solo lines than on organ or choir), written to `<out_dir>/<stem>.mid`; its path."""
  load_lib.load(path)  # decoded and checked first: a bad file is one BadAudio line
  pm = transcribe_lib.transcribe(path)
  if not any(i.notes for i in pm.instruments):
    raise load_lib.BadAudio(f"{path}: basic-pitch found no notes in it")
  os.makedirs(out_dir, exist_ok=True)
  out = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".mid")
  with atomic.atomic_path(out) as tmp:
    pm.write(tmp)
  return out


def transcribe_cached(path: str, cache_dir: str) -> str:
  """`transcribe_file` once per content: `<cache_dir>/<sha256 of the file, 16 hex>.mid`, reused
  while the audio is unchanged (a folder rebuilt after adding one song transcribes one song)."""
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  out = os.path.join(cache_dir, digest + ".mid")
  if os.path.isfile(out):
    return out
  written = transcribe_file(path, cache_dir)
  os.replace(written, out)
  return out
