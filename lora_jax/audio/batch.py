"""A folder (or list) of audio files in, clips and a metadata table out: what the CLI runs.

Every file is analysed on its own; a file that cannot be (`load.BadAudio`: unreadable, silent, a
few milliseconds, too long, NaN samples) is reported in one line by name and the rest go on.
Energy classes come from the levels of the files analysed together (`energy.classes`), and the
table says which thresholds those were. The table has the seed's columns (File, Genre, BPM, Key,
Mood, Instruments, Description) plus what a training set needs to trace a row back (source file,
clip start and end, confidences). Genre is the genre guess (one of the corpus genres it was fitted
on, or "unknown" below its calibrated threshold, with its confidence beside it); Instruments is
the instrument family guess (`instruments`: one of eight families, or "unknown" below its
threshold, with its confidence). Mood is the energy class.
With `stems` each row gets vocal and accompaniment stems under `stems/` from the project's trained
mask model, or harmonic and percussive ones (HPSS) where its weights are absent; report.json says
which separator ran (`stems.separator()`).
With `to_midi` each song is transcribed (`transcribe`, basic-pitch) and each row gets the MIDI of
its own span under `midi/` (a clip's notes start at its start), so the folder can become a style
pack (`launch/build_style_packs.py --from_files=<out>/midi/*.mid --style=...`).
Outputs (`metadata.jsonl`, `metadata.csv`, `report.json`, `clips/`, `midi/`) are written together
at the end, atomically: an interrupted run leaves nothing behind.
"""

import csv
import dataclasses
import io
import json
import os
import time

import soundfile

from lora_jax import atomic, errors, progress
from lora_jax.audio import analysis as analysis_lib
from lora_jax.audio import clips as clips_lib
from lora_jax.audio import energy as energy_lib
from lora_jax.audio import load as load_lib
from lora_jax.audio import stems as stems_lib
from lora_jax.audio import transcribe as transcribe_lib
from lora_jax.audio.separator import demucs_model

SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")
COLUMNS = ("File", "Genre", "BPM", "Key", "Mood", "Instruments", "Description")


@dataclasses.dataclass(frozen=True)
class Report:
  rows: tuple[dict, ...]
  failures: tuple[str, ...]  # one line per file left out
  energy_basis: str


def collect(inputs: list[str]) -> list[str]:
  """Audio files named, or found (by suffix, recursively) in the folders named."""
  found = []
  for item in inputs:
    if os.path.isdir(item):
      for folder, dirs, files in os.walk(item):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(folder, f) for f in sorted(files)
                  if f.lower().endswith(SUFFIXES) and not f.startswith(".")]
    elif os.path.exists(item):
      found.append(item)  # named explicitly: read even without an audio suffix, refused if not audio
    else:
      raise errors.UserError(f"--input {item}: no such file or folder")
  if not found:
    raise errors.UserError(f"no audio files ({', '.join(SUFFIXES)}) in {', '.join(inputs)}")
  return found


def _clip_name(path: str, index: int, used: set[str]) -> str:
  stem = os.path.splitext(os.path.basename(path))[0]
  name = f"{stem}_{index:03d}.wav"
  n = 1
  while name in used:
    n += 1
    name = f"{stem}-{n}_{index:03d}.wav"
  used.add(name)
  return name


def run(inputs: list[str], out: str, split_clips: bool, to_midi: bool = False,
        stems: bool = False, settings: clips_lib.ClipSettings = clips_lib.ClipSettings(),
        limits: load_lib.Limits = load_lib.Limits(), demucs_weights: str = "") -> Report:
  """Analyses every file; writes the table (and clips) under `out`; returns what it did.
  `demucs_weights`: a Demucs model file of the user's, which then makes the stems."""
  if demucs_weights and not stems:
    raise errors.UserError(f"Demucs weights {demucs_weights} given without stems asked")
  demucs = demucs_model.load(demucs_weights) if demucs_weights else None
  paths = collect(inputs)
  results, failures, cuts, midis, separated = [], [], {}, {}, {}
  bar = progress.Progress(len(paths), "analysing")
  for path in paths:
    try:
      started = time.monotonic()
      audio = load_lib.load(path, limits)  # read once: analysed, then cut and separated
      a = analysis_lib.analyze_loaded(path, audio, started)
      if split_clips or stems:
        pieces = (clips_lib.cut(audio.samples, audio.sample_rate, a.tempo.bpm, settings)
                  if split_clips else [clips_lib.Clip(0.0, a.seconds, True)])
        cuts[path] = (audio, pieces)
      if stems:
        separated[path] = stems_lib.separate(cuts[path][0].samples, audio.sample_rate, demucs)
      if to_midi:
        midis[path] = transcribe_lib.transcribe(path)
      results.append(a)
    except load_lib.BadAudio as e:
      failures.append(str(e))
    bar.step(f"{len(failures)} refused")
  bar.close()
  if not results:
    raise errors.UserError(f"none of the {len(paths)} files could be analysed: "
                           + "; ".join(failures))
  classes = energy_lib.classes([a.energy.level_dbfs for a in results])
  rows, wav_files, midi_files, used = [], {}, {}, set()
  for a, mood in zip(results, classes.labels):
    base = {"Genre": a.genre.name, "BPM": round(a.tempo.bpm, 1), "Key": a.key.name, "Mood": mood,
            "Instruments": a.instruments.name, "genre_confidence": a.genre.confidence,
            "instruments_confidence": a.instruments.confidence,
            "Description": f"{a.tempo.bpm:.0f} BPM, {a.key.name}, {mood} energy "
                           f"({a.energy.level_dbfs:.1f} dBFS)",
            "source": os.path.abspath(a.path), "tempo_confidence": a.tempo.confidence,
            "key_confidence": a.key.confidence, "key_runner_up": a.key.runner_up,
            "level_dbfs": a.energy.level_dbfs}
    if split_clips or stems:
      audio, pieces = cuts[a.path]
    if split_clips:
      spans = [(_clip_name(a.path, i, used), clip) for i, clip in enumerate(pieces)]
    else:
      spans = [(_clip_name(a.path, 0, used), clips_lib.Clip(0.0, a.seconds, True))]
    for name, clip in spans:
      row = {"File": os.path.abspath(a.path), **base, "start": clip.start, "end": clip.end}
      if split_clips:
        wav_files[os.path.join(out, "clips", name)] = audio.samples[
            int(clip.start * audio.sample_rate):int(clip.end * audio.sample_rate)]
        row.update(File=os.path.join("clips", name), cut_at_beat=clip.at_beat)
      if stems:
        span = slice(int(clip.start * audio.sample_rate), int(clip.end * audio.sample_rate))
        for part, samples in separated[a.path].parts.items():
          stem_name = os.path.join("stems", f"{os.path.splitext(name)[0]}_{part}.wav")
          wav_files[os.path.join(out, stem_name)] = samples[span]
          row[f"stem_{part}"] = stem_name
      if to_midi:
        midi_name = os.path.join("midi", os.path.splitext(name)[0] + ".mid")
        midi_files[os.path.join(out, midi_name)] = transcribe_lib.window(midis[a.path],
                                                                         clip.start, clip.end)
        row["midi"] = midi_name
      rows.append(row)
  jsonl = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
  table = io.StringIO()
  writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  report = {"n_files": len(paths), "n_analysed": len(results), "failures": failures,
            "energy_classes": {"low_below_dbfs": classes.low_below,
                               "high_from_dbfs": classes.high_from, "basis": classes.basis},
            "instruments": "logistic regression on rendered instrument families "
                           f"{', '.join(c for c, _ in results[0].instruments.probabilities)}",
            "genre": "logistic regression on corpus genres "
                     f"{', '.join(c for c, _ in results[0].genre.probabilities)}",
            "stems": stems_lib.separator(demucs) if stems else "not asked",
            "transcription": "basic-pitch 0.4.0 ONNX" if to_midi else "not asked"}
  texts = {os.path.join(out, "metadata.jsonl"): jsonl, os.path.join(out, "metadata.csv"):
           table.getvalue(), os.path.join(out, "report.json"): json.dumps(report, indent=1)}
  with atomic.atomic_paths(*texts, *wav_files, *midi_files) as tmps:
    for tmp, text in zip(tmps, texts.values()):
      with open(tmp, "w") as f:
        f.write(text)
    for tmp, samples in zip(tmps[len(texts):], wav_files.values()):
      soundfile.write(tmp, samples, load_lib.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    for tmp, pm in zip(tmps[len(texts) + len(wav_files):], midi_files.values()):
      pm.write(tmp)
  return Report(tuple(rows), tuple(failures), classes.basis)
