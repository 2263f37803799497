r"""python bench/sample_pianoroll.py --before=runs/demo/samples/base/sample_00.mid \
    --after=runs/demo/samples/runtime_adapters/sample_00.mid --out=assets/demo_rolls/sample_00.png

A piano-roll PNG of two samples on one time and pitch axis (`lora_jax.duv.pianoroll.draw`:
velocity as colour): the base alone above, the same seed with the adapters below. Writes a small
PNG (`--dpi`), for the README.
"""

from absl import app, flags
import pretty_midi

from lora_jax.duv import pianoroll

_BEFORE = flags.DEFINE_string("before", None, "MIDI sample of the base alone.")
_AFTER = flags.DEFINE_string("after", None, "MIDI sample with the adapters.")
_OUT = flags.DEFINE_string("out", None, "PNG to write.")
_SECONDS = flags.DEFINE_string("seconds", "0,20", "START,END of the passage drawn.")
_TITLE = flags.DEFINE_string("title", "", "Figure title.")
flags.mark_flags_as_required(["before", "after", "out"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  start, end = pianoroll.parse_seconds(_SECONDS.value)
  pianoroll.draw(pretty_midi.PrettyMIDI(_BEFORE.value), pretty_midi.PrettyMIDI(_AFTER.value),
                 _OUT.value, start, end, title=_TITLE.value)


if __name__ == "__main__":
  app.run(main)
