"""Analyses audio files (tempo, key, energy) and writes a metadata table, optionally with clips.

  python launch/analyze_audio.py --input=my_songs --out=my_set --split_clips --stems
  python launch/analyze_audio.py --input=a.wav,b.flac --out=my_set --to_midi

Writes <out>/metadata.jsonl and metadata.csv (File, Genre, BPM, Key, Mood, Instruments,
Description), report.json, with --split_clips the clips under <out>/clips/ (10-30 s, cut at
beats), with --to_midi each row's MIDI under <out>/midi/ (basic-pitch), with --stems its vocal
and accompaniment stems under <out>/stems/ (the project's mask model; HPSS's harmonic and
percussive stems where its weights are absent). A file that cannot be analysed is named in one
line; the rest are still processed.
"""
from absl import flags

from lora_jax import cli, errors
from lora_jax.audio import batch, clips

_INPUT = flags.DEFINE_list("input", None, "Audio files and/or folders of audio files.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_SPLIT = flags.DEFINE_bool("split_clips", False, "Cut each song into clips at beats.")
_MIN = flags.DEFINE_float("clip_min_seconds", 10.0, "Shortest clip.")
_MAX = flags.DEFINE_float("clip_max_seconds", 30.0, "Longest clip.")
_TARGET = flags.DEFINE_float("clip_target_seconds", 20.0, "Preferred clip length.")
_TO_MIDI = flags.DEFINE_bool("to_midi", False, "Transcribe each song (clip) to MIDI under "
                              "<out>/midi/ with basic-pitch.")
_STEMS = flags.DEFINE_bool("stems", False, "Write vocal and accompaniment stems of each row under "
                            "<out>/stems/ (HPSS's harmonic/percussive without the separator's "
                            "weights); report.json names the separator.")
_DEMUCS = flags.DEFINE_string("demucs_weights", "", "With --stems: a Demucs model file (.th) of "
                              "yours to separate with instead; needs the demucs package. Read "
                              "weights-only, never downloaded.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  if not _INPUT.value or not _OUT.value:
    raise errors.UserError("--input and --out are required")
  settings = clips.ClipSettings(_MIN.value, _MAX.value, _TARGET.value)
  report = batch.run(_INPUT.value, _OUT.value, _SPLIT.value, _TO_MIDI.value, _STEMS.value,
                     settings, demucs_weights=_DEMUCS.value)
  for line in report.failures:
    print(f"skipped: {line}")
  print(f"wrote {len(report.rows)} rows to {_OUT.value}/metadata.jsonl "
        f"({len(report.failures)} files skipped; energy classes: {report.energy_basis})")


if __name__ == "__main__":
  cli.run(main, "analyze_audio")
