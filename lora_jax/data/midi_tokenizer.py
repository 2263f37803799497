"""REMI-like MIDI tokenizer: bars, grid positions, notes, tempo, time signature, program.

Time is a grid of `steps_per_quarter` steps per quarter note, 12 by default: it holds sixteenths
(3 steps), eighth-note triplets (4), sixteenth triplets (2) and compound meters (a 6/8 jig bar is
36 steps of 6-step eighths). 16 steps would lose every triplet, common in reels and hornpipes.

A piece is written as:
  BOS, then per bar: Bar TimeSig_n/d Position_0 Tempo_t, then per occupied position (ascending):
  Position_p, then its notes sorted by (program, pitch, duration, velocity), each as
  [Program_x] Pitch_k Velocity_b Duration_s; and EOS at the end.
Every bar restates its meter and tempo, and the first note of a bar (or of a new program within
it) carries a Program token, so any window that starts at a Bar token decodes on its own.
A bar longer than `max_bar_quarters` (4/1, 3/1 and 6/2 occur in the Essen folksongs) is written as
equal parts, each opened by Bar and the bar's TimeSig: positions never exceed the Position tokens.
Durations longer than `max_duration_quarters` are clipped and counted (`EncodeStats`); nothing is
dropped silently. Notes of one program merge into one instrument; decode splits them again where
two notes of one pitch overlap, which one MIDI channel cannot hold.
"""
import dataclasses
import json
import math
import os
from typing import Sequence

import mido
import numpy as np
import pretty_midi

from lora_jax import atomic, errors

PAD, BOS, EOS = 0, 1, 2
DRUM_PROGRAM = 128  # program index of drum instruments
MIDI_RESOLUTION = 480  # ticks per quarter of decoded MIDI: a multiple of 12 and 16
VOCAB_FORMAT = "lora_jax.midi_tokenizer/1"


class UnsupportedMidiError(errors.UserError):
  """A MIDI file holds something the tokenizer's vocabulary cannot express."""


class TokenSequenceError(errors.UserError):
  """A token sequence breaks the grammar decode expects."""


@dataclasses.dataclass(frozen=True)
class MidiTokenizerConfig:
  """Grid and vocabulary sizes of the tokenizer."""
  steps_per_quarter: int = 12  # 12 holds sixteenths and triplets alike
  max_bar_quarters: int = 8  # Position tokens cover this; longer bars are split in equal parts
  max_meter_quarters: int = 16  # longest time signature in the vocabulary (4/1, 16/4, 32/8)
  max_duration_quarters: int = 8  # longer notes are clipped to this, and counted
  n_velocity_bins: int = 16  # uniform bins over MIDI velocity 0..127
  n_tempo_bins: int = 32  # log-spaced bin centres from tempo_min_qpm to tempo_max_qpm
  tempo_min_qpm: float = 30.0
  tempo_max_qpm: float = 300.0
  pitch_min: int = 0  # notes outside [pitch_min, pitch_max] are dropped, and counted
  pitch_max: int = 127
  time_signature_denominators: tuple[int, ...] = (1, 2, 4, 8)

  def __post_init__(self):
    object.__setattr__(
        self, "time_signature_denominators", tuple(self.time_signature_denominators))
    for d in self.time_signature_denominators:
      if (4 * self.steps_per_quarter) % d:
        raise ValueError(f"time signature denominator {d} does not divide a whole note of "
                         f"{4 * self.steps_per_quarter} steps")
    if not 0 <= self.pitch_min <= self.pitch_max <= 127:
      raise ValueError(f"pitch range [{self.pitch_min}, {self.pitch_max}] is not within 0..127")
    if self.n_tempo_bins < 2 or not 0 < self.tempo_min_qpm < self.tempo_max_qpm:
      raise ValueError(f"tempo bins {self.n_tempo_bins} over [{self.tempo_min_qpm}, "
                       f"{self.tempo_max_qpm}] qpm: need >= 2 bins and 0 < min < max")
    if not 1 <= self.n_velocity_bins <= 128:
      raise ValueError(f"n_velocity_bins {self.n_velocity_bins} is not within 1..128")


@dataclasses.dataclass(frozen=True)
class EncodeStats:
  """What encoding changed or dropped, beyond snapping to the grid."""
  n_notes: int  # notes in the MIDI
  n_encoded: int  # notes written as tokens
  n_pitch_out_of_range: int  # dropped: pitch outside the configured range
  n_duration_clipped: int  # longer than max_duration_quarters: written as the maximum
  n_duration_raised: int  # shorter than half a step: written as one step
  n_off_grid: int  # onset or end more than half a MIDI tick off the grid
  n_tempo_clamped: int  # tempo outside [tempo_min_qpm, tempo_max_qpm]
  n_time_signatures_moved: int  # inside a bar: applied from the next; after the last event: left out


@dataclasses.dataclass(frozen=True, order=True)
class _Note:
  onset: int  # grid step
  program: int  # 0..127, DRUM_PROGRAM for drums
  pitch: int
  duration: int  # grid steps
  velocity_bin: int


def _time_signatures(config: MidiTokenizerConfig) -> list[tuple[int, int]]:
  return [(n, d) for d in config.time_signature_denominators
          for n in range(1, config.max_meter_quarters * d // 4 + 1)]


def _bar_part_steps(config: MidiTokenizerConfig, n: int, d: int) -> int:
  """Steps between Bar tokens in meter n/d: the bar, or its largest equal part that fits."""
  full = n * 4 * config.steps_per_quarter // d
  longest = config.max_bar_quarters * config.steps_per_quarter
  parts = next(k for k in range(-(-full // longest), full + 1) if full % k == 0)
  return full // parts


def _token_names(config: MidiTokenizerConfig) -> list[str]:
  names = ["PAD", "BOS", "EOS", "Bar"]
  names += [f"TimeSig_{n}/{d}" for n, d in _time_signatures(config)]
  names += [f"Position_{p}" for p in range(config.max_bar_quarters * config.steps_per_quarter)]
  names += [f"Tempo_{i}" for i in range(config.n_tempo_bins)]
  names += [f"Program_{p}" for p in range(128)] + ["Program_drums"]
  names += [f"Pitch_{k}" for k in range(config.pitch_min, config.pitch_max + 1)]
  names += [f"Velocity_{b}" for b in range(config.n_velocity_bins)]
  names += [f"Duration_{s}"
            for s in range(1, config.max_duration_quarters * config.steps_per_quarter + 1)]
  return names


def midi_with_meter(tempos: Sequence[tuple[int, float]],
                    time_signatures: Sequence[tuple[int, int, int]],
                    resolution: int = MIDI_RESOLUTION) -> pretty_midi.PrettyMIDI:
  """PrettyMIDI with no notes and the given (tick, qpm) tempo and (tick, num, den) meter map."""
  track = mido.MidiTrack()
  events = [(t, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(qpm), time=0))
            for t, qpm in tempos]
  events += [(t, 1, mido.MetaMessage("time_signature", numerator=n, denominator=d, time=0))
             for t, n, d in time_signatures]
  last = 0
  for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
    track.append(msg.copy(time=tick - last))
    last = tick
  track.append(mido.MetaMessage("end_of_track", time=0))
  midi = mido.MidiFile(ticks_per_beat=resolution)
  midi.tracks.append(track)
  return pretty_midi.PrettyMIDI(mido_object=midi)


def split_overlapping_notes(notes: list[pretty_midi.Note]) -> list[list[pretty_midi.Note]]:
  """Spreads notes over voices so no two notes of one pitch overlap within a voice."""
  voices: list[list[pretty_midi.Note]] = []
  ends: list[dict[int, float]] = []  # per voice: end time of its last note of each pitch
  for note in sorted(notes, key=lambda n: (n.start, n.pitch, n.end)):
    free = [v for v, e in enumerate(ends) if e.get(note.pitch, -math.inf) <= note.start]
    if not free:
      voices.append([])
      ends.append({})
    v = free[0] if free else len(voices) - 1
    voices[v].append(note)
    ends[v][note.pitch] = note.end
  return voices


class MidiTokenizer:
  """Turns PrettyMIDI into REMI-like token ids and back."""

  def __init__(self, config: MidiTokenizerConfig):
    self.config = config
    self.tokens = _token_names(config)
    self.ids = {name: i for i, name in enumerate(self.tokens)}
    spq = config.steps_per_quarter
    self._max_duration = config.max_duration_quarters * spq
    self._tempo_centres = np.exp(np.linspace(
        math.log(config.tempo_min_qpm), math.log(config.tempo_max_qpm), config.n_tempo_bins))
    self._bar_steps = {ts: _bar_part_steps(config, *ts) for ts in _time_signatures(config)}
    self._kind = [name.split("_", 1)[0] for name in self.tokens]
    self._value = [name.split("_", 1)[1] if "_" in name else "" for name in self.tokens]

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  def bar_steps(self, numerator: int, denominator: int) -> int:
    """Grid steps between Bar tokens in meter numerator/denominator (a long bar's equal part)."""
    return self._bar_steps[(numerator, denominator)]

  def velocity_bin(self, velocity: int) -> int:
    """Bin of a MIDI velocity."""
    return min(int(velocity) * self.config.n_velocity_bins // 128, self.config.n_velocity_bins - 1)

  def bin_velocity(self, velocity_bin: int) -> int:
    """MIDI velocity at the centre of a bin."""
    n = self.config.n_velocity_bins
    return max(1, min(127, (2 * velocity_bin + 1) * 128 // (2 * n)))

  def tempo_bin(self, qpm: float) -> int:
    """Bin of a tempo in quarter notes per minute (nearest centre in log space)."""
    return int(np.argmin(np.abs(np.log(self._tempo_centres) - math.log(qpm))))

  def bin_tempo(self, tempo_bin: int) -> float:
    """Tempo at the centre of a bin, in quarter notes per minute."""
    return float(self._tempo_centres[tempo_bin])

  def _steps(self, pm: pretty_midi.PrettyMIDI, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid steps of times in seconds, and whether each was more than half a tick off the grid."""
    change_times, qpm = pm.get_tempo_changes()
    if len(change_times) == 0 or change_times[0] != 0.0:
      raise UnsupportedMidiError(f"tempo map does not start at 0 s: {change_times[:3]}")
    change_quarters = np.concatenate([[0.0], np.cumsum(np.diff(change_times) * qpm[:-1] / 60.0)])
    idx = np.searchsorted(change_times, times, side="right") - 1
    exact = (change_quarters[idx] + (times - change_times[idx]) * qpm[idx] / 60.0)
    exact = exact * self.config.steps_per_quarter
    steps = np.floor(exact + 0.5).astype(np.int64)
    ticks_per_step = pm.resolution / self.config.steps_per_quarter
    return steps, np.abs(exact - steps) * ticks_per_step > 0.5 + 1e-6

  def encode(self, pm: pretty_midi.PrettyMIDI) -> list[int]:
    """Token ids of a piece, BOS first and EOS last."""
    return self.encode_with_stats(pm)[0]

  def encode_with_stats(self, pm: pretty_midi.PrettyMIDI) -> tuple[list[int], EncodeStats]:
    """Token ids of a piece and counts of what encoding changed or dropped."""
    cfg = self.config
    raw = [(inst, note) for inst in pm.instruments for note in inst.notes]
    n_notes = len(raw)
    kept = [(i, n) for i, n in raw if cfg.pitch_min <= n.pitch <= cfg.pitch_max]
    starts = np.array([n.start for _, n in kept], dtype=np.float64)
    ends = np.array([n.end for _, n in kept], dtype=np.float64)
    onset, onset_off = self._steps(pm, starts)
    end, end_off = self._steps(pm, ends)
    raw_duration = end - onset
    duration = np.clip(raw_duration, 1, self._max_duration)
    notes = sorted(_Note(int(onset[j]), DRUM_PROGRAM if inst.is_drum else inst.program,
                         n.pitch, int(duration[j]), self.velocity_bin(n.velocity))
                   for j, (inst, n) in enumerate(kept))

    change_times, qpm = pm.get_tempo_changes()
    tempo_steps, _ = self._steps(pm, change_times)
    tempo_at = {int(s): self.tempo_bin(q) for s, q in zip(tempo_steps, qpm)}  # last one wins
    n_tempo_clamped = int(np.sum((qpm < cfg.tempo_min_qpm) | (qpm > cfg.tempo_max_qpm)))

    meters = sorted(pm.time_signature_changes, key=lambda ts: ts.time)
    meter_steps, _ = self._steps(pm, np.array([ts.time for ts in meters], dtype=np.float64))
    meter_changes = [(int(s), (ts.numerator, ts.denominator)) for s, ts in zip(meter_steps, meters)]
    for (_, ts), m in zip(meter_changes, meters):
      if ts not in self._bar_steps:
        raise UnsupportedMidiError(
            f"time signature {ts[0]}/{ts[1]} at {m.time:.3f}s is not in the vocabulary "
            f"(denominators {cfg.time_signature_denominators}, bars up to "
            f"{cfg.max_meter_quarters} quarters)")
    if not meter_changes or meter_changes[0][0] > 0:
      meter_changes.insert(0, (0, (4, 4)))  # the MIDI standard's meter when none is given

    last_step = max(notes[-1].onset if notes else 0, max(tempo_at))  # meters alone add no bar
    tokens = [BOS]
    tempo_steps_sorted = sorted(tempo_at)
    n_moved, meter_i, tempo_i, note_i, bar_start = 0, 0, 0, 0, 0
    tempo = tempo_at[tempo_steps_sorted[0]]
    while bar_start <= last_step:
      first = meter_i
      while meter_i < len(meter_changes) and meter_changes[meter_i][0] <= bar_start:
        meter_i += 1
      if meter_i > first:  # the last change wins; any other, or one inside a bar, moved
        meter = meter_changes[meter_i - 1][1]
        n_moved += meter_i - first - (meter_changes[meter_i - 1][0] == bar_start)
      bar_end = bar_start + self._bar_steps[meter]
      tokens += [self.ids["Bar"], self.ids[f"TimeSig_{meter[0]}/{meter[1]}"]]
      events: dict[int, list] = {0: [("tempo", tempo)]}  # restated at every bar
      while tempo_i < len(tempo_steps_sorted) and tempo_steps_sorted[tempo_i] < bar_end:
        step = tempo_steps_sorted[tempo_i]
        tempo = tempo_at[step]
        events.setdefault(step - bar_start, []).append(("tempo", tempo))
        tempo_i += 1
      while note_i < len(notes) and notes[note_i].onset < bar_end:
        events.setdefault(notes[note_i].onset - bar_start, []).append(("note", notes[note_i]))
        note_i += 1
      program = None
      for position in sorted(events):
        tokens.append(self.ids[f"Position_{position}"])
        tempos = [e[1] for e in events[position] if e[0] == "tempo"]
        if tempos:
          tokens.append(self.ids[f"Tempo_{tempos[-1]}"])
        for kind, note in events[position]:
          if kind != "note":
            continue
          if note.program != program:
            program = note.program
            name = "drums" if program == DRUM_PROGRAM else program
            tokens.append(self.ids[f"Program_{name}"])
          tokens += [self.ids[f"Pitch_{note.pitch}"], self.ids[f"Velocity_{note.velocity_bin}"],
                     self.ids[f"Duration_{note.duration}"]]
      bar_start = bar_end
    n_moved += len(meter_changes) - meter_i  # after the last event: left out
    tokens.append(EOS)
    stats = EncodeStats(
        n_notes=n_notes, n_encoded=len(notes), n_pitch_out_of_range=n_notes - len(kept),
        n_duration_clipped=int(np.sum(raw_duration > self._max_duration)),
        n_duration_raised=int(np.sum(raw_duration < 1)),
        n_off_grid=int(np.sum(onset_off | end_off)), n_tempo_clamped=n_tempo_clamped,
        n_time_signatures_moved=n_moved)
    return tokens, stats

  def decode(self, tokens: Sequence[int], truncated: bool = False) -> pretty_midi.PrettyMIDI:
    """PrettyMIDI of a token sequence; raises TokenSequenceError on a malformed one.

    With truncated=True a sequence cut at a length limit may end inside a note or bar header,
    which is then left out; anywhere else the grammar is enforced as usual.
    """
    notes, tempos, meters = self._parse(list(tokens), truncated)
    ticks = MIDI_RESOLUTION // self.config.steps_per_quarter
    pm = midi_with_meter([(s * ticks, self.bin_tempo(b)) for s, b in tempos],
                         [(s * ticks, n, d) for s, (n, d) in meters])
    by_program: dict[int, list[pretty_midi.Note]] = {}
    for note in notes:
      by_program.setdefault(note.program, []).append(pretty_midi.Note(
          velocity=self.bin_velocity(note.velocity_bin), pitch=note.pitch,
          start=pm.tick_to_time(note.onset * ticks),
          end=pm.tick_to_time((note.onset + note.duration) * ticks)))
    for program in sorted(by_program):
      for voice in split_overlapping_notes(by_program[program]):
        inst = pretty_midi.Instrument(program=program % 128, is_drum=program == DRUM_PROGRAM)
        inst.notes = voice
        pm.instruments.append(inst)
    return pm

  def _parse(self, tokens: list[int], truncated: bool):
    """Notes, (step, tempo bin) changes and (step, meter) changes of a token sequence."""
    def fail(i: int, why: str):
      name = self.tokens[tokens[i]] if 0 <= tokens[i] < len(self.tokens) else tokens[i]
      raise TokenSequenceError(f"token {i} ({name}): {why}")

    for i, tok in enumerate(tokens):  # first: the lookups below read tokens ahead of i
      if not 0 <= tok < len(self.tokens):
        fail(i, f"id outside the vocabulary of {len(self.tokens)}")
    notes, tempos, meters = [], [], []
    bar_start, bar_len, position, program, tempo = None, 0, -1, None, None
    i = 1 if tokens and tokens[0] == BOS else 0
    while i < len(tokens):
      tok = tokens[i]
      if not 0 <= tok < len(self.tokens):
        fail(i, f"id outside the vocabulary of {len(self.tokens)}")
      kind, value = self._kind[tok], self._value[tok]
      if kind == "EOS":
        if any(t != PAD for t in tokens[i + 1:]):
          fail(i, "tokens other than PAD follow EOS")
        break
      if kind == "Bar":
        if truncated and i + 1 == len(tokens):
          break
        if i + 1 >= len(tokens) or self._kind[tokens[i + 1]] != "TimeSig":
          fail(i, "Bar is not followed by a TimeSig token")
        n, d = (int(x) for x in self._value[tokens[i + 1]].split("/"))
        bar_start = 0 if bar_start is None else bar_start + bar_len
        bar_len, position, program = self._bar_steps[(n, d)], -1, None
        if not meters or meters[-1][1] != (n, d):
          meters.append((bar_start, (n, d)))
        i += 2
        continue
      if bar_start is None:
        fail(i, "expected Bar first")
      if kind == "Position":
        p = int(value)
        if not position < p < bar_len:
          fail(i, f"position {p} is not after {position} within a bar of {bar_len} steps")
        position = p
        if i + 1 < len(tokens) and self._kind[tokens[i + 1]] == "Tempo":
          b = int(self._value[tokens[i + 1]])
          if b != tempo:
            tempos.append((bar_start + p, b))
            tempo = b
          i += 1
      elif kind == "Program":
        if position < 0:
          fail(i, "Program before any Position in its bar")
        program = DRUM_PROGRAM if value == "drums" else int(value)
      elif kind == "Pitch":
        if program is None:
          fail(i, "note without a Program token earlier in its bar")
        if tempo is None:
          fail(i, "note before any Tempo token")
        if truncated and i + 2 >= len(tokens) and all(
            self._kind[t] == "Velocity" for t in tokens[i + 1:]):
          break
        if i + 2 >= len(tokens) or (self._kind[tokens[i + 1]], self._kind[tokens[i + 2]]) != (
            "Velocity", "Duration"):
          fail(i, "Pitch is not followed by Velocity and Duration")
        notes.append(_Note(bar_start + position, program, int(value),
                           int(self._value[tokens[i + 2]]), int(self._value[tokens[i + 1]])))
        i += 2
      else:
        fail(i, f"unexpected {kind} token")
      i += 1
    if not tempos and notes:
      raise TokenSequenceError("sequence holds notes but no Tempo token")
    return notes, tempos, meters

  def save_vocab(self, path: str) -> str:
    """Writes `vocab.json` (config and token strings) into directory `path`, atomically."""
    os.makedirs(path, exist_ok=True)
    target = os.path.join(path, "vocab.json")
    payload = {"format": VOCAB_FORMAT, "config": dataclasses.asdict(self.config),
               "tokens": self.tokens}
    atomic.write_text(target, json.dumps(payload, indent=1))
    return target

  @classmethod
  def load(cls, path: str) -> "MidiTokenizer":
    """Tokenizer from a `vocab.json` file or a directory holding one."""
    file = os.path.join(path, "vocab.json") if os.path.isdir(path) else path
    try:
      with open(file) as f:
        payload = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{file}: cannot read tokenizer vocabulary: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != VOCAB_FORMAT:
      raise ValueError(f"{file}: not a {VOCAB_FORMAT} vocabulary")
    try:
      config = MidiTokenizerConfig(**payload["config"])
    except TypeError as e:
      raise ValueError(f"{file}: bad tokenizer config: {e}") from e
    tokenizer = cls(config)
    if tokenizer.tokens != payload["tokens"]:
      raise ValueError(f"{file}: token list differs from the one its config builds "
                       f"({len(payload['tokens'])} saved, {tokenizer.vocab_size} built)")
    return tokenizer
