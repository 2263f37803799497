"""The real-recordings truth set: six recordings from the synctoolbox source distribution.

`scripts/fetch_recordings.sh` puts them in `.cache/recordings`. Their truth, and its sources:
  key    each performance's global key. Singers transpose Winterreise, so the key a song was
         written in is not the key it is sung in: these are the keys the performances are in, from
         the local-key annotations of the Schubert Winterreise Dataset's performances by Christof
         Weiß (published with Schreiber, Weiß & Müller, ICASSP 2020, in hendriks73/key-cnn,
         annotations/winterreise/): "Gute Nacht" (written in D minor) is sung in C minor by both
         Hüsch (HU33) and Scarlata (SC06); "Gefror'ne Tränen" (written in F minor) in D minor by
         Hüsch and in E-flat minor by Scarlata. Every annotated stretch of those songs returns to
         that key. Chopin's Etude Op. 10 No. 3 is in E major; its first 8 measures (the
         excerpts) stay there, and a piano plays as written.
  tempo  from the recordings' own measure annotations (the csv beside each Schubert wav, from the
         Winterreise Dataset): beats per measure times 60 over the median measure duration, the
         beat being the meter's quarter note as in the rendered set (Gute Nacht is in 2/4,
         Gefror'ne Tränen in 4/4). The Chopin excerpts have no measure annotation: key only.
A performer's tempo moves (ritardandi, fermatas, rubato), so "within 4%" of the median is a stricter
test here than on the renders, whose tempo is constant.
"""

import dataclasses
import os

import numpy as np

from lora_jax.audio import eval_set


@dataclasses.dataclass(frozen=True)
class Recording:
  """One recording and its truth (bpm None where no measure annotation exists)."""
  id: str
  group: str  # "lied" or "piano"
  tonic: int
  mode: str
  beats_per_measure: int | None
  source: str


RECORDINGS = (
    Recording("Schubert_D911-01_HU33", "lied", 0, "minor", 2, "Gute Nacht, Hüsch/Müller 1933"),
    Recording("Schubert_D911-01_SC06", "lied", 0, "minor", 2, "Gute Nacht, Scarlata/Denk 2006"),
    Recording("Schubert_D911-03_HU33", "lied", 2, "minor", 4,
              "Gefror'ne Tränen, Hüsch/Müller 1933"),
    Recording("Schubert_D911-03_SC06", "lied", 3, "minor", 4,
              "Gefror'ne Tränen, Scarlata/Denk 2006"),
    Recording("Chopin_Op010-03-Measures1-8_Igoshina", "piano", 4, "major", None,
              "Chopin Op. 10 No. 3, mm. 1-8, Igoshina"),
    Recording("Chopin_Op010-03-Measures1-8_Varsi", "piano", 4, "major", None,
              "Chopin Op. 10 No. 3, mm. 1-8, Varsi"),
)
FETCH_COMMAND = "bash scripts/fetch_recordings.sh"


def measure_bpm(csv_path: str, beats_per_measure: int) -> float:
  """Beats a minute at the median measure duration of an annotation `start;measure` per line."""
  starts, measures = [], []
  with open(csv_path) as f:
    next(f)
    for line in f:
      start, measure = line.strip().split(";")
      starts.append(float(start))
      measures.append(float(measure))
  starts, measures = np.array(starts), np.array(measures)
  whole = np.isclose(measures, np.round(measures))  # downbeats; pickups and the end are partial
  durations = np.diff(starts[whole]) / np.diff(measures[whole])
  return round(float(beats_per_measure * 60 / np.median(durations)), 2)


@dataclasses.dataclass(frozen=True)
class Entry:
  recording: Recording
  wav: str
  bpm: float | None  # None where only the key is known

  @property
  def key_name(self) -> str:
    return f"{eval_set.PITCH_NAMES[self.recording.tonic]} {self.recording.mode}"


def entries(folder: str) -> list[Entry]:
  """Every recording of the set in `folder`; a ValueError naming the fetch command when absent."""
  missing = [r.id for r in RECORDINGS if not os.path.isfile(os.path.join(folder, f"{r.id}.wav"))]
  if missing:
    raise ValueError(f"{folder} lacks {len(missing)} recordings ({missing[0]}.wav, ...): run "
                     f"{FETCH_COMMAND} {folder}")
  out = []
  for r in RECORDINGS:
    bpm = None
    if r.beats_per_measure is not None:
      bpm = measure_bpm(os.path.join(folder, f"{r.id}.csv"), r.beats_per_measure)
    out.append(Entry(r, os.path.join(folder, f"{r.id}.wav"), bpm))
  return out
