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

A format-1 file may set a channel's program in one track only: MuseScore writes a part of several
staves (piano, organ, harp) as one track per staff on the part's channel, with the program change
in the top staff's track alone. pretty_midi keeps programs per track, so the lower staves would
read as program 0 (a piano). The channel's first program is given to every track that plays on
that channel without a program change of its own (`ReadInfo.programs_carried`).
Tempo, time and key signatures are the whole file's, but pretty_midi reads them from the first
track alone (and warns when other tracks hold any: MuseScore writes a key signature into every
staff's track). Those of later tracks are moved into the first, repeats of one already there
dropped (`ReadInfo.meta_moved`), so a tempo map kept in another track is not lost.
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
  programs_carried: int = 0  # tracks given their channel's program from another track
  meta_moved: int = 0  # tempo, time and key signatures moved from later tracks to the first


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


def _carry_programs(midi: mido.MidiFile) -> int:
  """Gives each track that plays a channel without setting its program the channel's first
  program (by time, over all tracks); the number of tracks changed."""
  first = {}
  for track in midi.tracks:
    for msg, tick in zip(track, _absolute(track)):
      if msg.type == "program_change" and tick < first.get(msg.channel, (math.inf,))[0]:
        first[msg.channel] = (tick, msg.program)
  carried = 0
  for track in midi.tracks:
    played = {m.channel for m in track if m.type == "note_on"}
    programmed = {m.channel for m in track if m.type == "program_change"}
    for channel in sorted(played - programmed):
      if channel in first and channel != 9:
        track.insert(0, mido.Message("program_change", channel=channel,
                                     program=first[channel][1], time=0))
        carried += 1
  return carried


_GLOBAL_META = ("set_tempo", "time_signature", "key_signature")


def _rebuild(events: list[tuple[int, mido.Message]]) -> mido.MidiTrack:
  track, last = mido.MidiTrack(), 0
  for tick, msg in events:
    track.append(msg.copy(time=tick - last))
    last = tick
  return track


def _meta_key(tick: int, msg: mido.MetaMessage) -> tuple:
  return (tick, *sorted(msg.copy(time=0).dict().items()))


def _gather_global_meta(midi: mido.MidiFile) -> int:
  """Moves the tempo, time and key signatures of tracks after the first into the first; the
  number of events moved (a repeat of one the first track holds is dropped, not counted)."""
  first = [(t, m) for m, t in zip(midi.tracks[0], _absolute(midi.tracks[0]))
           if m.type != "end_of_track"]
  held = {_meta_key(t, m) for t, m in first if m.type in _GLOBAL_META}
  moved = []
  for index in range(1, len(midi.tracks)):
    track = midi.tracks[index]
    events = list(zip(_absolute(track), track))
    if not any(m.type in _GLOBAL_META for _, m in events):
      continue
    for tick, msg in events:
      if msg.type in _GLOBAL_META and _meta_key(tick, msg) not in held:
        held.add(_meta_key(tick, msg))
        moved.append((tick, msg))
    midi.tracks[index] = _rebuild([(t, m) for t, m in events if m.type not in _GLOBAL_META])
  if moved:
    merged = sorted(moved + first, key=lambda e: e[0])  # stable: the first track's order holds
    end = max(_absolute(midi.tracks[0]), default=0)
    midi.tracks[0] = _rebuild(merged + [(max(end, merged[-1][0]),
                                         mido.MetaMessage("end_of_track"))])
  return len(moved)


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
  carried = _carry_programs(midi) if midi.type == 1 else 0
  meta_moved = _gather_global_meta(midi) if midi.type == 1 and len(midi.tracks) > 1 else 0
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
  return pm, ReadInfo(file_resolution, pm.resolution, retimed, midi.type, carried,
                      meta_moved)


def read_midi(path: str, limits: Limits = Limits()) -> pretty_midi.PrettyMIDI:
  """PrettyMIDI of a file; MidiReadError naming the file and reason on any problem."""
  return read_midi_with_info(path, limits)[0]
