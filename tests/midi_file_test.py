"""Reading users' MIDI: music21's long fine-grained files, format 0 and 1, tempo and meter changes,
drums, the real performances; limits that hold, with messages naming them."""

import collections
import os

import mido
import numpy as np
import pretty_midi
import pytest

from lora_jax.data import midi_file
import own_music_testlib

needs_performances = pytest.mark.skipif(
    not os.path.isdir(own_music_testlib.PERFORMANCES / "pop909"),
    reason="real performances not fetched: run `bash scripts/fetch_performances.sh`")


def test_music21_640_seconds_at_10080_ticks_per_quarter(tmp_path):
  path = str(tmp_path / "long.mid")
  own_music_testlib.long_piece(path, seconds=640)
  assert mido.MidiFile(path).ticks_per_beat == 10080
  with pytest.raises(ValueError, match="likely corrupt"):
    pretty_midi.PrettyMIDI(path)  # the heuristic this reader works around
  pm, info = midi_file.read_midi_with_info(path)
  assert info.retimed == "exact" and info.file_resolution == 10080 and info.resolution >= 480
  notes = [n for i in pm.instruments for n in i.notes]
  assert len(notes) == 1280 and pm.get_end_time() == pytest.approx(640.0)
  assert [n.start for n in notes[:3]] == pytest.approx([0.0, 0.5, 1.0])
  with pytest.raises(midi_file.MidiReadError, match=r"long.mid: 640 s long, more than the limit "
                                                    r"of 600 s \(max_duration_sec\)"):
    midi_file.read_midi(path, midi_file.Limits(max_duration_sec=600))
  with pytest.raises(midi_file.MidiReadError, match=r"1,280 notes, more than the limit of 1,000 "
                                                    r"\(max_notes\)"):
    midi_file.read_midi(path, midi_file.Limits(max_notes=1000))


def test_ticks_without_a_common_factor_are_rounded(tmp_path):
  tpq = 10007  # prime: no exact re-timing
  track = mido.MidiTrack()
  for i in range(600):
    track.append(mido.Message("note_on", note=60, velocity=90, time=0 if i == 0 else 17003))
    track.append(mido.Message("note_off", note=60, time=tpq))
  midi = mido.MidiFile(type=0, ticks_per_beat=tpq)
  midi.tracks.append(track)
  path = str(tmp_path / "odd.mid")
  midi.save(path)
  pm, info = midi_file.read_midi_with_info(path)
  assert info.retimed == "rounded" and info.resolution < tpq
  starts = np.array([n.start for n in pm.instruments[0].notes])
  want = np.arange(600) * (17003 + tpq) / tpq * 0.5  # 120 bpm
  assert len(starts) == 600 and np.abs(starts - want).max() < 2e-3  # within a tick of the file's


def test_format_0_and_1_read_alike(tmp_path):
  one, zero = str(tmp_path / "one.mid"), str(tmp_path / "zero.mid")
  import music21  # pylint: disable=import-outside-toplevel; the corpus is slow to import
  music21.corpus.parse("bach/bwv66.6").write("midi", fp=one)
  own_music_testlib.format0(one, zero)
  assert (mido.MidiFile(one).type, mido.MidiFile(zero).type) == (1, 0)
  a, b = midi_file.read_midi(one), midi_file.read_midi(zero)
  onsets = lambda pm: collections.Counter((round(n.start, 6), n.pitch)
                                          for i in pm.instruments for n in i.notes)
  assert len(a.instruments) == 4 and sum(onsets(a).values()) > 100
  # music21 writes every voice on channel 0: one track makes them one instrument, and where two
  # voices sing one pitch at once their note-ons collapse into one note. Nothing else is lost.
  assert len(b.instruments) == 1
  assert not onsets(b) - onsets(a) and sum((onsets(a) - onsets(b)).values()) <= 2


def test_tempo_and_meter_changes_and_drums(tmp_path):
  path = str(tmp_path / "drums.mid")
  own_music_testlib.drum_track(path)
  pm = midi_file.read_midi(path)
  assert [(ts.numerator, ts.denominator) for ts in pm.time_signature_changes] == [
      (4, 4), (3, 4), (7, 8)]
  assert pm.get_tempo_changes()[1] == pytest.approx([100.0, 140.0], rel=1e-5)  # microseconds
  drums = [i for i in pm.instruments if i.is_drum]
  assert len(drums) == 1 and len(drums[0].notes) == 42
  assert [i.program for i in pm.instruments if not i.is_drum] == [33]


def test_broken_files_name_the_reason(tmp_path):
  cases = {"missing.mid": None, "garbage.mid": b"not midi at all",
           "cut.mid": b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x10\x00\x90"}
  for name, data in cases.items():
    if data is not None:
      (tmp_path / name).write_bytes(data)
  with pytest.raises(midi_file.MidiReadError, match="missing.mid: no such file"):
    midi_file.read_midi(str(tmp_path / "missing.mid"))
  with pytest.raises(midi_file.MidiReadError, match="garbage.mid: not a readable MIDI file"):
    midi_file.read_midi(str(tmp_path / "garbage.mid"))
  with pytest.raises(midi_file.MidiReadError, match="cut.mid: not a readable MIDI file \\(it ends "
                                                    "inside a track\\)"):
    midi_file.read_midi(str(tmp_path / "cut.mid"))


@needs_performances
def test_real_performances_read_as_pretty_midi_reads_them():
  files = sorted((own_music_testlib.PERFORMANCES / "pop909").glob("*.mid"))
  files += sorted((own_music_testlib.PERFORMANCES / "maestro").glob("*.mid"))[:2]
  assert len(files) >= 6
  for f in files:
    ours, theirs = midi_file.read_midi(str(f)), pretty_midi.PrettyMIDI(str(f))
    assert [len(i.notes) for i in ours.instruments] == [len(i.notes) for i in theirs.instruments]
    assert ours.get_end_time() == theirs.get_end_time()
