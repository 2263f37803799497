"""The audio endpoints' link to `lora_jax.audio.service` (analysis, clips, stems, audio to MIDI),
looked up per request.

The studio does not import the audio package when it starts: a checkout without it (or without
its own requirements) still serves everything symbolic, and each audio endpoint answers 501 with
one line naming what is missing. Once the package is there, the same endpoints call it, with no
change here. What they call (the contract; each takes a WAV path and an output folder):
  analyze_file(path: str) -> dict            tempo, key, genre, energy... (JSON-ready)
  split_file(path: str, out_dir: str) -> list[str]     clip paths
  separate_stems(path: str, out_dir: str) -> dict[str, str]   stem name -> path
  transcribe_file(path: str, out_dir: str) -> str     the MIDI file of its notes (basic-pitch)
"""

import importlib

PACKAGE = "lora_jax.audio.service"


class Missing(RuntimeError):
  """The audio function an endpoint needs is not available here; the message says what."""


def function(name: str):
  """`lora_jax.audio.<name>`, or Missing naming what is absent."""
  try:
    module = importlib.import_module(PACKAGE)
  except ModuleNotFoundError as e:
    raise Missing(f"audio analysis is not available: {PACKAGE} cannot be imported ({e}); it "
                  f"comes with the audio package and its extra (pip install -e '.[audio]')") from e
  fn = getattr(module, name, None)
  if not callable(fn):
    raise Missing(f"{PACKAGE} has no function {name}(): this studio expects it (see "
                  f"lora_jax/studio/audio_bridge.py)")
  return fn
