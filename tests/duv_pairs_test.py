"""Deadpan pairs from MIDI and .match files, on files written here with known answers."""

import numpy as np
import pretty_midi
import pytest

from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import match_file
from lora_jax.data.duv import pairs as duv_pairs

MATCH = """info(matchFileVersion,5.0).
info(midiClockUnits,480).
info(midiClockRate,500000).
info(keySignature,[C Maj/A min]).
info(timeSignature,[2/4]).
meta(timeSignature,2/4,1,0.0).
snote(n1,[C,n],4,1:1,0,1/4,0.0,1.0,[])-note(n1,[C,n],4,480,864,864,70).
snote(n2,[E,n],4,1:1,0,1/4,0.0,1.0,[])-note(n2,[E,n],4,485,869,900,60).
snote(n3,[G,n],4,1:2,0,1/8,1.0,1.5,[])-note(n3,[G,n],4,960,1152,1152,80).
snote(n4,[F,#],4,1:2,1/8,1/8,1.5,2.0,[])-note(n4,[F,#],4,1200,1392,1392,50).
snote(n5,[C,n],5,2:1,0,1/4,2.0,3.0,[])-note(n5,[C,n],5,1440,1824,1824,90).
snote(n6,[B,b],4,2:2,1/16,1/16,3.25,3.5,[])-note(n6,[B,b],4,2040,2136,2136,40).
insertion-note(n7,[D,n],5,1500,1600,1600,30).
snote(n8,[A,n],4,2:2,0,1/16,3.0,3.25,[])-deletion.
sustain(0,0).
"""


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_read_match(tmp_path):
  perf = match_file.read_match(_write(tmp_path / "x.match", MATCH))
  assert perf.pitch.tolist() == [60, 64, 67, 66, 72, 70]
  np.testing.assert_allclose(perf.score_onset_beats, [0, 0, 1, 1.5, 2, 3.25])
  np.testing.assert_allclose(perf.score_dur_beats, [1, 1, 0.5, 0.5, 1, 0.25])
  np.testing.assert_allclose(perf.perf_onset_sec[[0, 2]], [0.5, 1.0])  # 480 ticks = 0.5 s
  assert perf.velocity.tolist() == [70, 60, 80, 50, 90, 40]
  np.testing.assert_allclose(perf.bar_start_beats, [0, 2])
  assert (perf.beats_per_bar, perf.n_insertions, perf.n_deletions) == (2.0, 1, 1)


def test_match_pair_targets_are_played_durations_in_score_beats(tmp_path):
  pair = duv_pairs.pairs_from_file(_write(tmp_path / "x.match", MATCH), "mozart/x.match",
                                   "mozart")[0]
  assert (pair.piece_id, pair.grid_source, pair.grid_is_real) == ("mozart/x", "score", True)
  np.testing.assert_allclose(pair.notes.onset_beats, [0, 0, 1, 1.5, 2, 3.25])
  np.testing.assert_allclose(pair.notes.dur_beats, [1, 1, 0.5, 0.5, 1, 0.25])
  np.testing.assert_allclose(pair.notes.downbeat_beats, [0, 2, 4])
  assert pair.notes.velocity.tolist() == [64] * 6
  assert pair.target_velocity.tolist() == [70, 60, 80, 50, 90, 40]
  # Every note is held for 80% of its written length at one beat per 0.5 s.
  np.testing.assert_allclose(pair.target_dur_beats, 0.8 * pair.notes.dur_beats, atol=0.01)
  np.testing.assert_allclose(pair.target_dur_beats[2:], [0.4, 0.4, 0.8, 0.2], atol=1e-9)


@pytest.mark.parametrize("old, new, message", [
    ("matchFileVersion,5.0", "matchFileVersion,1.0", "version 5"),
    ("1:2,0,1/8,1.0,1.5", "1:2,0,1/8,one,1.5", r"x.match:9: cannot read"),
    ("[G,n],4,960", "[A,n],4,960", "differ in score and performed pitch"),
    ("meta(timeSignature,2/4,1,0.0).", "meta(timeSignature,3/4,1,0.0).", "one time signature"),
])
def test_bad_match_files(tmp_path, old, new, message):
  assert old in MATCH
  path = _write(tmp_path / "x.match", MATCH.replace(old, new))
  with pytest.raises(match_file.MatchFormatError, match=message):
    match_file.read_match(path)


def _write_midi(path, onset_beats, dur_sec, velocity, tempo=100.0, shift_sec=0.0):
  pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
  inst = pretty_midi.Instrument(program=0)
  spb = 60.0 / tempo
  for i, (b, d, v) in enumerate(zip(onset_beats, dur_sec, velocity)):
    start = b * spb + shift_sec
    inst.notes.append(pretty_midi.Note(int(v), 60 + i % 12, start, start + d))
  pm.instruments.append(inst)
  pm.write(str(path))
  return str(path)


def _grid_distance(beats):
  """Distance to the nearest sixteenth or eighth-note triplet."""
  return np.minimum(np.abs(beats * 4 - np.round(beats * 4)),
                    np.abs(beats * 3 - np.round(beats * 3)))


def test_tempo_map_pair_snaps_to_the_files_grid(tmp_path):
  rng = np.random.default_rng(0)
  onsets = np.cumsum(rng.choice([0.25, 0.5, 1.0], size=80)) - 0.25
  onsets[::3] = np.round(onsets[::3])  # most onsets on beats
  onsets = np.unique(onsets)
  durs = rng.uniform(0.1, 0.5, size=len(onsets))
  vels = rng.integers(30, 110, size=len(onsets))
  # The file's grid starts a sixteenth plus 10 ms before the music: the phase removes both.
  path = _write_midi(tmp_path / "p.mid", onsets + 0.25, durs, vels, shift_sec=0.01)
  pair, = duv_pairs.pairs_from_file(path, "pop909/p.mid", "pop909")
  assert (pair.grid_source, pair.grid_is_real, pair.instrument) == ("tempo_map", True, "piano")
  assert pair.grid_fit > 0.99
  np.testing.assert_allclose(pair.notes.onset_beats, onsets, atol=1e-9)
  assert pair.notes.velocity.tolist() == [64] * len(onsets)
  assert pair.target_velocity.tolist() == vels.tolist()
  np.testing.assert_allclose(pair.target_dur_beats, durs / 0.6, atol=0.01)  # 0.6 s a beat
  np.testing.assert_allclose(_grid_distance(pair.notes.dur_beats), 0, atol=1e-9)
  assert pair.notes.dur_beats.min() >= 0.25


def test_deadpan_midi_reads_back_as_the_pairs_input(tmp_path):
  rng = np.random.default_rng(2)
  onsets = np.unique(np.cumsum(rng.choice([0.25, 0.5, 1.0], size=40)))
  path = _write_midi(tmp_path / "p.mid", onsets + 0.25, rng.uniform(0.1, 0.5, size=len(onsets)),
                     rng.integers(30, 110, size=len(onsets)), shift_sec=0.01)
  pm = pretty_midi.PrettyMIDI(path)
  pm.instruments[0].control_changes.append(pretty_midi.ControlChange(64, 127, 0.5))
  pair, = duv_pairs.pairs_from_file(path, "pop909/p.mid", "pop909")
  deadpan = duv_pairs.deadpan_midi(pm)
  inst, = deadpan.instruments
  written = duv_features.written_notes_from_instrument(deadpan, inst)
  np.testing.assert_allclose(written.onset_beats, pair.notes.onset_beats, atol=1e-9)
  np.testing.assert_allclose(written.dur_beats, pair.notes.dur_beats, atol=1e-9)
  assert written.pitch.tolist() == pair.notes.pitch.tolist()
  assert {n.velocity for n in inst.notes} == {64} and not inst.control_changes
  assert len(pm.instruments[0].control_changes) == 1  # the input is left alone
  assert len({n.velocity for n in pm.instruments[0].notes}) > 1


def test_tempo_estimate_pair_is_marked_not_real(tmp_path):
  rng = np.random.default_rng(1)
  onsets_sec = np.cumsum(rng.uniform(0.2, 0.4, size=70))
  path = _write_midi(tmp_path / "m.mid", onsets_sec / 0.6, np.full(70, 0.3),
                     rng.integers(20, 120, size=70))
  pair, = duv_pairs.pairs_from_file(path, "maestro/m.mid", "maestro")
  assert (pair.grid_source, pair.grid_is_real) == ("tempo_estimate", False)
  np.testing.assert_allclose(_grid_distance(pair.notes.onset_beats), 0, atol=1e-9)
  assert np.all(np.diff(pair.notes.downbeat_beats) == 4)


def test_snap_beats_to_sixteenths_and_triplets():
  np.testing.assert_allclose(
      duv_pairs.snap_beats(np.array([0.1, 0.28, 0.3, 0.35, 0.7, 0.74, 1.01, -0.2])),
      [0.0, 0.25, 1 / 3, 1 / 3, 2 / 3, 0.75, 1.0, -0.25])


def test_grid_phase_of_shifted_grid():
  onsets = np.arange(64) / 4 + 0.03
  phase, fit = duv_pairs.grid_phase(onsets)
  assert phase == pytest.approx(0.03) and fit == pytest.approx(1.0)


def test_corrupt_midi_names_the_file(tmp_path):
  path = tmp_path / "bad.mid"
  path.write_bytes(b"MThd this is not midi")
  with pytest.raises(duv_pairs.CorruptMidiError, match="bad.mid"):
    duv_pairs.pairs_from_file(str(path), "pop909/bad.mid", "pop909")


def test_unknown_source():
  with pytest.raises(ValueError, match="'lakh'"):
    duv_pairs.pairs_from_file("x.mid", "lakh/x.mid", "lakh")
