"""MIDI exported by MuseScore, read by the MIDI reader, the style-pack builder and the DUV builder.

`musescore_export` writes a file in the shape MuseScore 3's `ExportMidi::write` and `writeHeader`
(mscore/exportmidi.cpp) give it:
  - format 1, 480 ticks per quarter (MScore::division), one track per staff and no separate
    conductor track: the time signatures and tempos go into the first staff's track;
  - in every track: the part's name as track name, a port meta event and a key signature at 0
    (C major when the score has none at 0);
  - in the top staff's track of each part only: reset-all-controllers, the program change, volume,
    pan, reverb and chorus at 0. A part of two staves (here an organ) plays both staves on one
    channel, so its lower staff's track has no program change of its own;
  - drums on channel 10 (9 from zero), with program 0;
  - notes ended by note_on with velocity 0;
  - a pickup measure as an irregular measure: its actual length as the time signature at 0
    (1/4), the nominal one (4/4) where the next measure starts;
  - here also a tempo change (100 -> 80 bpm, a ritardando) and a meter change (4/4 -> 3/4).
Format-0 files, and format-1 files with several tempo and meter changes written by other tools,
are covered by tests/own_music_test.py and tests/folder_packs_test.py (own_music_testlib).
"""

import os

import mido
import numpy as np
import pytest

from lora_jax.data import midi_file
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.data.duv import score_pair
from lora_jax.data.style_packs import folder as folder_packs
from lora_jax.data.style_packs import pack as style_pack
from lora_jax.duv import takes

TPQ = 480
PICKUP = 480  # one quarter
BARS_44 = [PICKUP + i * 4 * TPQ for i in range(4)]  # 4 bars of 4/4
BARS_34 = [BARS_44[-1] + 4 * TPQ + i * 3 * TPQ for i in range(2)]  # then 2 bars of 3/4
END = BARS_34[-1] + 3 * TPQ
RIT = BARS_44[3]  # the ritardando starts with the fourth full bar
ORGAN, VIOLIN = 19, 40


def seconds(tick: int) -> float:
  """Time of a tick under the file's tempo map: 100 bpm, then 80 bpm from RIT."""
  return min(tick, RIT) / TPQ * 0.6 + max(tick - RIT, 0) / TPQ * 0.75


def _notes(channel, notes):
  """(tick, message) of note_on / note_on-velocity-0 pairs, as MuseScore ends notes."""
  out = []
  for start, length, pitch, velocity in notes:
    out += [(start + length, 0, mido.Message("note_on", channel=channel, note=pitch, velocity=0)),
            (start, 1, mido.Message("note_on", channel=channel, note=pitch, velocity=velocity))]
  return out


def _part_head(channel, program):
  """What the top staff of a part gets at tick 0."""
  return [mido.Message("control_change", channel=channel, control=121, value=0),
          mido.Message("program_change", channel=channel, program=program),
          mido.Message("control_change", channel=channel, control=7, value=100),
          mido.Message("control_change", channel=channel, control=10, value=64),
          mido.Message("control_change", channel=channel, control=91, value=0),
          mido.Message("control_change", channel=channel, control=93, value=0)]


def staves(transpose: int = 0):
  """(name, channel, program of the top staff or None, notes) per staff."""
  right = [(i * TPQ, TPQ, 67 + transpose + (i * 2) % 7, 80) for i in range(END // TPQ)]
  left = [(t, 2 * TPQ, 48 + transpose + (i * 5) % 12, 80)
          for i, t in enumerate(range(PICKUP, END, 2 * TPQ))]
  violin = [(t, TPQ // 2, 72 + transpose + (i * 3) % 8, 80)
            for i, t in enumerate(range(PICKUP, BARS_44[2], TPQ // 2))]
  drums = [(t, TPQ // 4, 36 if (t // TPQ) % 2 else 38, 90) for t in range(PICKUP, END, TPQ)]
  drums += [(t, TPQ // 4, 42, 70) for t in range(PICKUP, END, TPQ // 2)]
  return [("Organ", 0, ORGAN, right), ("Organ", 0, None, left),
          ("Violin", 1, VIOLIN, violin), ("Drumset", 9, 0, drums)]


def musescore_export(path: str, transpose: int = 0) -> None:
  """A score exported the way MuseScore exports it (see the module docstring)."""
  midi = mido.MidiFile(type=1, ticks_per_beat=TPQ)
  for index, (name, channel, program, notes) in enumerate(staves(transpose)):
    events = [(0, -3, mido.MetaMessage("track_name", name=name)),
              (0, -2, mido.MetaMessage("midi_port", port=0)),
              (0, -2, mido.MetaMessage("key_signature", key="C"))]
    if program is not None:
      events += [(0, -1, msg) for msg in _part_head(channel, program)]
    if index == 0:
      events += [(0, -2, mido.MetaMessage("time_signature", numerator=1, denominator=4)),
                 (PICKUP, -2, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
                 (BARS_34[0], -2, mido.MetaMessage("time_signature", numerator=3,
                                                   denominator=4)),
                 (0, -2, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100))),
                 (RIT, -2, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(80)))]
    events += _notes(channel, notes)
    track, last = mido.MidiTrack(), 0
    for tick, _, msg in sorted(events, key=lambda e: e[:2]):
      track.append(msg.copy(time=tick - last))
      last = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    midi.tracks.append(track)
  midi.save(path)


def test_reader_sees_what_musescore_wrote(tmp_path):
  path = str(tmp_path / "score.mid")
  musescore_export(path)
  pm, info = midi_file.read_midi_with_info(path)
  assert (info.midi_format, info.file_resolution, info.retimed) == (1, 480, "")
  assert info.programs_carried == 1  # the organ's lower staff
  assert info.meta_moved == 0  # the other staves' key signatures repeat the first's
  got = [(i.name, i.program, i.is_drum, len(i.notes)) for i in pm.instruments]
  expected = [(name, ORGAN if channel == 0 else program, channel == 9, len(notes))
              for name, channel, program, notes in staves()]
  assert got == expected
  for inst, (_, _, _, notes) in zip(pm.instruments, staves()):
    starts, ends = zip(*sorted((n.start, n.end) for n in inst.notes))
    np.testing.assert_allclose(starts, sorted(seconds(t) for t, _, _, _ in notes), atol=1e-9)
    np.testing.assert_allclose(ends, [seconds(t + n) for t, n, _, _ in sorted(notes)], atol=1e-9)
  assert pm.get_end_time() == pytest.approx(seconds(END))
  bars = [0] + BARS_44 + BARS_34
  np.testing.assert_allclose(pm.get_downbeats(), [seconds(t) for t in bars], atol=1e-9)


def test_style_pack_from_musescore_exports(tmp_path):
  files = []
  for transpose in range(3):
    files.append(str(tmp_path / f"hymn{transpose}.mid"))
    musescore_export(files[-1], transpose)
  report = folder_packs.build_from_files(files, "church/hymn", str(tmp_path / "packs"))
  assert not report.failures and report.styles[-1].packed, report.lines()
  pack = style_pack.load_style_pack(str(tmp_path / "packs" / "church" / "hymn"))
  n_notes = sum(len(notes) for _, _, _, notes in staves())
  assert [(p.n_notes, p.duration) for p in pack.pieces] == [(n_notes, round(seconds(END), 3))] * 3


def test_duv_builder_reads_musescore_parts(tmp_path):
  folder = tmp_path / "takes"
  os.makedirs(folder)
  musescore_export(str(folder / "hymn.mid"))
  filters = duv_manifest.Filters(min_notes=8)
  organ, _, (line,) = takes.takes_rows(str(folder), "organ", "tempo_map", filters, 0.2)
  assert [(r["track"], r["n_notes"]) for r in organ] == [(0, 23), (1, 11)]
  assert line.text() == "hymn.mid: 2 tracks, 34 notes, grid fit 1.00; 2 other tracks left out"
  drums, _, _ = takes.takes_rows(str(folder), "drums", "tempo_map", filters, 0.2)
  assert [(r["instrument"], r["n_notes"]) for r in drums] == [("drums", len(staves()[3][3]))]


def test_musescore_score_beside_a_performance(tmp_path):
  """The export as the score of a performance: the pickup, the meter and the tempo change read
  in beats; a performance at its own tempo aligns to every note."""
  musescore_export(str(tmp_path / "hymn.score.mid"))
  score, downbeats, _ = score_pair.read_score(str(tmp_path / "hymn.score.mid"))
  np.testing.assert_allclose(downbeats, [b / TPQ for b in [0] + BARS_44 + BARS_34])
  performed = mido.MidiFile(type=0, ticks_per_beat=TPQ)
  events = [(0, -1, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90)))]
  for k, (_, channel, _, notes) in enumerate(staves()):
    events += _notes(channel, [(t + 7 * k, n, p, 50 + k * 10) for t, n, p, _ in notes])
  track, last = mido.MidiTrack(), 0
  for tick, _, msg in sorted(events, key=lambda e: e[:2]):
    track.append(msg.copy(time=tick - last))
    last = tick
  performed.tracks.append(track)
  performed.save(str(tmp_path / "hymn.mid"))
  pair, counts = score_pair.midi_score_pair(str(tmp_path / "hymn.mid"),
                                            str(tmp_path / "hymn.score.mid"), "hymn.mid", "own",
                                            "own/hymn")
  n_notes = sum(len(notes) for _, _, _, notes in staves())
  assert (counts.score_notes, counts.perf_notes, counts.matched) == (n_notes, n_notes, n_notes)
  assert sorted(set(pair.target_velocity)) == [50, 60, 70, 80]


def test_tempo_map_in_a_later_track_is_the_files(tmp_path):
  """pretty_midi reads tempos and meters from the first track only; a file keeping them in
  another track (and repeating one) is read with its own tempo map."""
  notes = mido.MidiTrack([mido.Message("program_change", program=VIOLIN)])
  for pitch in range(60, 66):
    notes += [mido.Message("note_on", note=pitch, velocity=80, time=0),
              mido.Message("note_on", note=pitch, velocity=0, time=TPQ)]
  conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(60)),
                              mido.MetaMessage("time_signature", numerator=3, denominator=4),
                              mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(120),
                                               time=3 * TPQ)])
  midi = mido.MidiFile(type=1, ticks_per_beat=TPQ)
  midi.tracks += [notes, conductor]
  midi.save(tmp_path / "x.mid")
  pm, info = midi_file.read_midi_with_info(str(tmp_path / "x.mid"))
  assert info.meta_moved == 3
  np.testing.assert_allclose([n.start for n in pm.instruments[0].notes],
                             [0, 1, 2, 3, 3.5, 4])  # 3 beats at 60 bpm, then 120 bpm
  assert [(t.numerator, t.denominator) for t in pm.time_signature_changes] == [(3, 4)]
