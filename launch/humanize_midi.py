r"""python launch/humanize_midi.py --input=song.mid --output=song_human.mid \
  --model=checkpoints/duv/guitar.lora --intensity=0.9 --include='(?i)guitar'

Humanises velocities and durations of a MIDI file with a DUV model: a bundle folder (the base) or
a `.lora` adapter beside its bundle (see lora_jax.duv.bundle). Bad input ends in one error line
and exit status 1.
"""

from absl import flags

from lora_jax import cli
from lora_jax.data import duv_pairs
from lora_jax.duv import apply, bundle

_INPUT = flags.DEFINE_string("input", None, "MIDI file to humanise", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "MIDI file to write", required=True)
_MODEL = flags.DEFINE_string("model", None, "DUV bundle folder or .lora adapter", required=True)
_INTENSITY = flags.DEFINE_float("intensity", 1.0, "0 keeps the input, 1 takes the model's values")
_INCLUDE = flags.DEFINE_string("include", None, "regex over track names to humanise (all if unset)")
_EXCLUDE = flags.DEFINE_string("exclude", None, "regex over track names to leave alone")
_DRUMS = flags.DEFINE_bool("include_drums", False, "humanise drum tracks too")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  pm = duv_pairs.load_midi(_INPUT.value)
  apply.select_tracks(pm, _INCLUDE.value, _EXCLUDE.value, _DRUMS.value)  # fail before loading
  model = bundle.load_model(_MODEL.value)
  out, report = apply.humanize(pm, model, _INTENSITY.value, _INCLUDE.value, _EXCLUDE.value,
                               _DRUMS.value)
  out.write(_OUTPUT.value)
  print(f"humanised {report.notes} notes of {len(report.tracks)} tracks "
        f"({report.protected} protected, mean |velocity change| "
        f"{report.mean_abs_velocity_change:.2f}) -> {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main, "humanize")
