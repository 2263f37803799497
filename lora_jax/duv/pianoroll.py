"""Piano-roll PNG of a passage before and after humanising, velocity as colour.

Two panels on one time and pitch axis: the input above, the humanised copy below, each note a bar
from its start to its end at its pitch, coloured by velocity on one fixed 0-127 scale, so a
deadpan input shows as one flat colour and humanisation as shading and changed lengths.
Drawn with matplotlib's Agg canvas directly: no pyplot, no global backend switch.
"""

from typing import Sequence

import numpy as np
import pretty_midi
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def parse_seconds(text: str) -> tuple[float, float]:
  """'START,END' in seconds ('30,39') as two floats with 0 <= START < END."""
  try:
    start, end = (float(part) for part in text.split(","))
  except ValueError:
    raise ValueError(f"piano-roll seconds {text!r} are not START,END (e.g. 30,39)") from None
  if not 0.0 <= start < end < float("inf"):
    raise ValueError(f"piano-roll seconds {text!r} need 0 <= START < END, got START {start} and "
                     f"END {end}")
  return start, end


def _notes(pm: pretty_midi.PrettyMIDI, tracks: Sequence[int] | None, start: float,
           end: float) -> list[pretty_midi.Note]:
  chosen = range(len(pm.instruments)) if tracks is None else tracks
  return [n for i in chosen for n in pm.instruments[i].notes
          if n.end > start and n.start < end and not pm.instruments[i].is_drum]


def draw(before: pretty_midi.PrettyMIDI, after: pretty_midi.PrettyMIDI, path: str,
         start: float = 0.0, end: float | None = None, tracks: Sequence[int] | None = None,
         title: str = "") -> None:
  """Write a PNG of [start, end] seconds of `before` and `after` (non-drum notes of `tracks`)."""
  end = min(before.get_end_time(), start + 10.0) if end is None else end
  if end <= start:
    raise ValueError(f"empty passage: end {end} <= start {start}")
  panels = [("before", _notes(before, tracks, start, end)),
            ("after", _notes(after, tracks, start, end))]
  if not panels[0][1]:
    raise ValueError(f"no notes between {start} s and {end} s to draw")
  pitches = [n.pitch for _, notes in panels for n in notes]
  fig = Figure(figsize=(12, 6), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, 1, sharex=True, sharey=True)
  collection = None
  for ax, (label, notes) in zip(axes, panels):
    bars = [Rectangle((n.start, n.pitch - 0.4), n.end - n.start, 0.8) for n in notes]
    collection = PatchCollection(bars, cmap="viridis", edgecolor="none")
    collection.set_array(np.array([n.velocity for n in notes], np.float64))
    collection.set_clim(0, 127)
    ax.add_collection(collection)
    mean = np.mean([n.velocity for n in notes]) if notes else float("nan")
    ax.set_ylabel("pitch")
    ax.set_title(f"{label}: {len(notes)} notes, mean velocity {mean:.1f}", fontsize=10)
  axes[0].set_xlim(start, end)
  axes[0].set_ylim(min(pitches) - 2, max(pitches) + 2)
  axes[1].set_xlabel("seconds")
  fig.colorbar(collection, ax=list(axes), label="velocity")
  if title:
    fig.suptitle(title)
  fig.savefig(path, format="png")
