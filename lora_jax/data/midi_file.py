"""Reading a MIDI file a user brings: valid long or fine-grained files are read, real limits hold.

pretty_midi refuses any file whose last event is past tick 10,000,000 ("it is likely corrupt"):
it builds a float64 table with one entry per tick. That is a memory heuristic, not a validity
test: music21 writes 10,080 ticks per quarter, so 640 s of music at 120 bpm is 12.9 million ticks.
Here the file is parsed by mido first; when its last tick is past the cap, every event time is
divided by the smallest common factor of them all that brings the last under the cap (exact:
10,080 becomes 5,040 or 840), and only when that is not enough is it re-timed to fewer ticks per
quarter, each event rounded to the nearest new tick (`ReadInfo.retimed`). The limits that matter
are real ones, checked on the parsed file: notes (`max_notes`) and seconds (`max_duration_sec`).
Every problem is a `MidiReadError` naming the file and the reason, for reports that list them all.
"""

import dataclasses
import math
import os

import mido
import pretty_midi

TICK_CAP = int(pretty_midi.pretty_midi.MAX_TICK)  # pretty_midi's table of tick times stays this size
MIN_RETIMED_RESOLUTION = 96  # ticks per quarter a lossy re-time may go down to
MIDI_SUFFIXES = (".mid", ".midi", ".smf", ".kar")


class MidiReadError(ValueError):
  """A MIDI file that cannot be read or breaks a limit; the message names file and reason."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """What a file may hold; beyond it, reading fails with a message naming the limit."""
  max_notes: int = 500_000  # the longest MAESTRO recordings hold ~30,000
  max_duration_sec: float = 4 * 3600.0


@dataclasses.dataclass(frozen=True)
class ReadInfo:
  """How a file was read."""
  file_resolution: int  # ticks per quarter in the file
  resolution: int  # ticks per quarter of the PrettyMIDI (lower when re-timed)
  retimed: str  # '' when read as written; 'exact' (ticks divided by a common factor) or 'rounded'
  midi_format: int  # 0, 1 or 2


def is_midi_name(name: str) -> bool:
  """Whether a file name has a MIDI suffix (case-insensitive)."""
  return name.lower().endswith(MIDI_SUFFIXES)


def _absolute(track: mido.MidiTrack) -> list[int]:
  times, tick = [], 0
  for msg in track:
    tick += msg.time
    times.append(tick)
  return times


def _retime(midi: mido.MidiFile, resolution: int) -> mido.MidiFile:
  """A copy at `resolution` ticks per quarter, each tick rounded to the nearest new one (exact
  when the old resolution is a multiple and every tick divides)."""
  old = midi.ticks_per_beat
  out = mido.MidiFile(type=midi.type, ticks_per_beat=resolution, charset=midi.charset)
  for track in midi.tracks:
    new, last = mido.MidiTrack(), 0
    for msg, tick in zip(track, _absolute(track)):
      t = (2 * tick * resolution + old) // (2 * old)  # round half up, in integers
      new.append(msg.copy(time=t - last))
      last = t
    out.tracks.append(new)
  return out


def read_midi_with_info(path: str, limits: Limits = Limits()
                        ) -> tuple[pretty_midi.PrettyMIDI, ReadInfo]:
  """PrettyMIDI of a file and how it was read; MidiReadError on any problem."""
  if not os.path.isfile(path):
    raise MidiReadError(f"{path}: no such file")
  try:
    midi = mido.MidiFile(path, clip=True)
  except EOFError as e:
    raise MidiReadError(f"{path}: not a readable MIDI file (it ends inside a track)") from e
  except Exception as e:  # mido raises OSError, ValueError, KeyError... on bad bytes
    raise MidiReadError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e})") from e
  if midi.type == 2:
    raise MidiReadError(f"{path}: MIDI format 2 (independent sequences) is not supported")
  if midi.ticks_per_beat <= 0:
    raise MidiReadError(f"{path}: SMPTE time division is not supported (ticks per beat "
                        f"{midi.ticks_per_beat})")
  n_notes = sum(1 for track in midi.tracks for msg in track
                if msg.type == "note_on" and msg.velocity > 0)
  if n_notes > limits.max_notes:
    raise MidiReadError(f"{path}: {n_notes:,} notes, more than the limit of "
                        f"{limits.max_notes:,} (max_notes)")
  file_resolution = midi.ticks_per_beat
  all_ticks = [t for track in midi.tracks for t in _absolute(track)]
  last_tick = max(all_ticks, default=0)
  retimed = ""
  if last_tick >= TICK_CAP:
    common = math.gcd(midi.ticks_per_beat, *all_ticks)
    # the smallest exact divisor that fits keeps the most resolution (10,080 -> 840, not 1)
    factor = next((d for d in range(2, common + 1)
                   if common % d == 0 and last_tick // d < TICK_CAP), None)
    if factor is not None:
      midi, retimed = _retime(midi, midi.ticks_per_beat // factor), "exact"
    else:
      resolution = midi.ticks_per_beat * (TICK_CAP - 1) // last_tick
      if resolution < MIN_RETIMED_RESOLUTION:
        quarters = last_tick / file_resolution
        raise MidiReadError(f"{path}: last event at tick {last_tick:,} ({quarters:,.0f} "
                            f"quarters): too long to read at "
                            f"{MIN_RETIMED_RESOLUTION} ticks per quarter")
      midi, retimed = _retime(midi, resolution), "rounded"
  try:
    pm = pretty_midi.PrettyMIDI(mido_object=midi)
  except Exception as e:  # pretty_midi's own checks on the events
    raise MidiReadError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e})") from e
  duration = pm.get_end_time()
  if duration > limits.max_duration_sec:
    raise MidiReadError(f"{path}: {duration:,.0f} s long, more than the limit of "
                        f"{limits.max_duration_sec:,.0f} s (max_duration_sec)")
  return pm, ReadInfo(file_resolution, pm.resolution, retimed, midi.type)


def read_midi(path: str, limits: Limits = Limits()) -> pretty_midi.PrettyMIDI:
  """PrettyMIDI of a file; MidiReadError naming the file and reason on any problem."""
  return read_midi_with_info(path, limits)[0]
