"""Listening to an adapter: a short piece sampled with it and one from the base alone, from the same
seed, each rendered to WAV by fluidsynth with the General MIDI soundfont.

The pieces are the project's own generator (`hierarchy.generation.generate`: the base with the
adapter applied at run time, a child with its parent, grammar-constrained, so every sample
decodes), then `audio.render.render`. Both WAVs are written together (atomically) under
`<root>/listen/<adapter id>/<seed>/` and served from there: a (adapter, seed) pair is rendered
once. Without fluidsynth or a soundfont, or without the audio package, `Unavailable` says what to
install (503), before anything is sampled.
"""

import importlib
import os
import shutil
import tempfile
import threading

import pretty_midi
import soundfile

from lora_jax import atomic, errors
from lora_jax.hierarchy import generation

LENGTH = 256  # tokens after BOS: about 4-8 bars of the corpus styles, 10-20 s
MIN_BARS = 4  # EOS held back until then, so a sample is never a single note
TEMPERATURE, TOP_P = 0.9, 0.95
WHICH = ("adapter", "base")


class Unavailable(RuntimeError):
  """Rendering is not possible on this machine; the message says what is missing."""


def _renderer():
  """`lora_jax.audio.render`, checked to find fluidsynth and a soundfont."""
  try:
    render = importlib.import_module("lora_jax.audio.render")
  except ModuleNotFoundError as e:
    raise Unavailable(f"listening needs the audio package ({e}): pip install -e '.[audio]'") from e
  if shutil.which("fluidsynth") is None:
    raise Unavailable("listening needs fluidsynth to render MIDI to audio, and it is not "
                      "installed: apt-get install fluidsynth fluid-soundfont-gm "
                      "(scripts/setup.sh does)")
  try:
    render.soundfont()
  except errors.UserError as e:
    raise Unavailable(f"listening needs a General MIDI soundfont: {e}") from e
  return render


class Listener:
  """Renders (adapter, seed) pairs one at a time and keeps them."""

  def __init__(self, root: str, base_model: str):
    self.root = os.path.join(root, "listen")
    self.base_model = base_model
    self._lock = threading.Lock()  # one render at a time: each samples on the whole CPU

  def paths(self, adapter_id: str, seed: int) -> dict[str, str]:
    folder = os.path.join(self.root, adapter_id, str(seed))
    return {which: os.path.join(folder, f"{which}.wav") for which in WHICH}

  def forget(self, adapter_id: str) -> None:
    shutil.rmtree(os.path.join(self.root, adapter_id), ignore_errors=True)

  def render(self, adapter_id: str, adapter_files: list[str], seed: int) -> dict[str, str]:
    """The WAV paths of the pair, rendered now unless kept from before."""

    def make(tmp: str) -> dict:
      render = _renderer()
      samples = {}
      for which, adapters in (("adapter", adapter_files), ("base", [])):
        made = generation.generate(
            self.base_model, adapters, [1.0] * len(adapters), blend_mode="additive",
            output_dir=tmp, n_samples=1, length=LENGTH, temperature=TEMPERATURE, top_k=0,
            top_p=TOP_P, seed=seed, prefix=which, min_bars=MIN_BARS)
        samples[which] = (render.render(pretty_midi.PrettyMIDI(made[0].path)),
                          render.SAMPLE_RATE)
      return samples

    return self.keep(adapter_id, seed, make)

  def keep(self, adapter_id: str, seed: int, make) -> dict[str, str]:
    """The pair's WAV paths; unless kept from before, `make(scratch folder)` gives {which:
    (samples, sample rate)} and both are written together. One render at a time."""
    paths = self.paths(adapter_id, seed)
    with self._lock:
      if all(os.path.isfile(p) for p in paths.values()):
        return paths
      with tempfile.TemporaryDirectory(prefix=".listen.", dir=os.path.dirname(self.root)) as tmp:
        samples = make(tmp)
      os.makedirs(os.path.dirname(paths["adapter"]), exist_ok=True)
      with atomic.atomic_paths(*paths.values()) as tmps:
        for tmp_path, which in zip(tmps, paths):
          wave, rate = samples[which]
          soundfile.write(tmp_path, wave, rate, format="WAV", subtype="PCM_16")
    return paths
