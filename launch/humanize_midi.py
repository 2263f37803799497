r"""python launch/humanize_midi.py --input=song.mid --output=song_human.mid \
  --model=checkpoints/duv/guitar.lora --intensity=0.9 --include='(?i)guitar'

Humanises velocities and durations of a MIDI file with a DUV model: a bundle folder (the base) or
a `.lora` adapter beside its bundle (see lora_jax.duv.bundle). `--deadpan` humanises the input's
deadpan version instead (lora_jax.data.duv.pairs.deadpan_midi: what the models train on), and
`--pianoroll=roll.png --pianoroll_seconds=30,39` draws that passage of the humanised tracks, the
input above the output (lora_jax.duv.pianoroll; needs matplotlib). Bad input ends in one error
line and exit status 1; the output MIDI and the piano roll are written together at the end (both
or neither), so a passage with no notes writes nothing.
"""

import os

from absl import flags

from lora_jax import atomic, cli
from lora_jax.data.duv import pairs as duv_pairs
from lora_jax.duv import apply, bundle

_INPUT = flags.DEFINE_string("input", None, "MIDI file to humanise", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "MIDI file to write", required=True)
_MODEL = flags.DEFINE_string("model", None, "DUV bundle folder or .lora adapter", required=True)
_INTENSITY = flags.DEFINE_float("intensity", 1.0, "0 keeps the input, 1 takes the model's values")
_INCLUDE = flags.DEFINE_string("include", None, "regex over track names to humanise (all if unset)")
_EXCLUDE = flags.DEFINE_string("exclude", None, "regex over track names to leave alone")
_DRUMS = flags.DEFINE_bool("include_drums", False, "humanise drum tracks too")
_DEADPAN = flags.DEFINE_bool("deadpan", False, "humanise the input's deadpan version (one "
                             "velocity, onsets and durations snapped to its tempo map's grid)")
_PIANOROLL = flags.DEFINE_string("pianoroll", None, "also draw input vs output to this PNG")
_SECONDS = flags.DEFINE_string("pianoroll_seconds", None,
                               "START,END of the drawn passage (default: the first 10 s)")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  if _SECONDS.value is not None and _PIANOROLL.value is None:
    raise ValueError("--pianoroll_seconds needs --pianoroll=<file.png>")
  seconds = (0.0, None)
  if _PIANOROLL.value is not None:
    from lora_jax.duv import pianoroll  # matplotlib only when asked
    seconds = pianoroll.parse_seconds(_SECONDS.value) if _SECONDS.value else seconds
  pm = duv_pairs.load_midi(_INPUT.value)
  if _DEADPAN.value:
    pm = duv_pairs.deadpan_midi(pm)
  tracks = apply.select_tracks(pm, _INCLUDE.value, _EXCLUDE.value, _DRUMS.value,  # before loading
                               source=_INPUT.value)
  model = bundle.load_model(_MODEL.value)
  out, report = apply.humanize(pm, model, _INTENSITY.value, _INCLUDE.value, _EXCLUDE.value,
                               _DRUMS.value)
  outputs = [_OUTPUT.value] + ([_PIANOROLL.value] if _PIANOROLL.value is not None else [])
  with atomic.atomic_paths(*outputs) as paths:  # the MIDI and its picture appear together
    out.write(paths[0])
    if _PIANOROLL.value is not None:
      source = os.path.basename(_INPUT.value) + (" (deadpan)" if _DEADPAN.value else "")
      pianoroll.draw(pm, out, paths[1], *seconds, tracks=tracks,
                     title=f"{source} humanised by {_MODEL.value}, intensity {_INTENSITY.value:g}")
  print(f"humanised {report.notes} notes of {len(report.tracks)} tracks "
        f"({report.protected} protected, mean |velocity change| "
        f"{report.mean_abs_velocity_change:.2f}) -> {_OUTPUT.value}"
        + (f", piano roll -> {_PIANOROLL.value}" if _PIANOROLL.value else ""))


if __name__ == "__main__":
  cli.run(main, "humanize")
