"""Tiny style-pack hierarchies written here (no corpus conversion), for the hierarchy tests.

A genre pack `<root>/<genre>` lists its own pieces and its sub-styles' (as `build_style_packs`
lays them out); each sub-style gets its own rhythm and meter so that adapters have something to
learn, and every split holds pieces.
"""

import json
import os
import pathlib

import numpy as np
import pretty_midi

from lora_jax import atomic
from lora_jax.data import midi_tokenizer as mt
from lora_jax.data.style_packs import pack as sp

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (meter numerator, note length in ticks, pitch range) per sub-style.
STYLES = {"march": (4, 240, (60, 72)), "waltz": (3, 480, (55, 67)), "air": (4, 480, (62, 74)),
          "song": (2, 240, (50, 62))}
SPLITS = ("train",) * 4 + ("validation", "test")


def piece(style: str, n_bars: int, seed: int, program: int) -> pretty_midi.PrettyMIDI:
  """A piece of `n_bars` bars of one sub-style."""
  numerator, step, (lo, hi) = STYLES[style]
  rng = np.random.default_rng(seed)
  pm = mt.midi_with_meter([(0, 110.0)], [(0, numerator, 4)])
  inst = pretty_midi.Instrument(program=program)
  for i in range(n_bars * numerator * 480 // step):
    start, end = pm.tick_to_time(i * step), pm.tick_to_time((i + 1) * step)
    inst.notes.append(pretty_midi.Note(velocity=80, pitch=int(rng.integers(lo, hi)), start=start,
                                       end=end))
  pm.instruments.append(inst)
  return pm


def _manifest(path: str, style: str, parent: str | None, children: list[str], entries: list):
  atomic.write_text(os.path.join(path, sp.MANIFEST), json.dumps({
      "format": sp.PACK_FORMAT, "style": style, "parent": parent, "children": children,
      "pieces": sorted(entries, key=lambda e: e["id"])}))


def write_genre(root: str, genre: str, children: list[str], program: int = 40,
                n_bars: int = 6) -> str:
  """`<root>/<genre>` with one pack per child (six pieces each: 4 train, 1 validation, 1 test)."""
  genre_dir = os.path.join(root, genre)
  union = []
  for c, child in enumerate(children):
    child_dir = os.path.join(genre_dir, child)
    os.makedirs(os.path.join(child_dir, sp.REFS_MIDI), exist_ok=True)
    entries = []
    for i, split in enumerate(SPLITS):
      rel = os.path.join(sp.REFS_MIDI, f"{child}_{i}.mid")
      pm = piece(child, n_bars, seed=100 * c + i, program=program)
      pm.write(os.path.join(child_dir, rel))
      entries.append({"id": f"{genre}/{child}#{i}", "source": "test", "path": rel,
                      "split": split, "style": f"{genre}/{child}",
                      "n_notes": len(pm.instruments[0].notes), "duration": pm.get_end_time()})
    _manifest(child_dir, child, genre, [], entries)
    union += [dict(e, path=os.path.join(child, e["path"])) for e in entries]
  _manifest(genre_dir, genre, None, list(children), union)
  return genre_dir


def write_configs(folder: str, genre: str, children: list[str], genre_lines: str = "",
                  style_lines: dict[str, str] | None = None) -> str:
  """Copy the real adapter defaults into `folder` with genre and style files; returns its path."""
  defaults = os.path.join(folder, "lora_adapter_config.py")
  os.makedirs(os.path.join(folder, "genres"), exist_ok=True)
  with open(ROOT / "configs" / "lora_adapter_config.py") as f:
    text = f.read()
  with open(defaults, "w") as f:
    f.write(text)
  with open(os.path.join(folder, "genres", f"{genre}.py"), "w") as f:
    f.write("import ml_collections\n\n\ndef get_config(arg=None):\n"
            "  config = ml_collections.ConfigDict()\n"
            f"  config.name = {genre!r}\n{genre_lines}  return config\n")
  os.makedirs(os.path.join(folder, "styles", genre), exist_ok=True)
  for child in children:
    lines = (style_lines or {}).get(child, "")
    with open(os.path.join(folder, "styles", genre, f"{child}.py"), "w") as f:
      f.write("import ml_collections\n\n\ndef get_config(arg=None):\n"
              "  config = ml_collections.ConfigDict()\n"
              f"  config.parent = {genre!r}\n  config.name = {child!r}\n{lines}  return config\n")
  return defaults
