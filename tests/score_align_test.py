"""A performance MIDI beside its score MIDI: note alignment, its accuracy on real data, DUV rows."""

import os
import pathlib
import subprocess
import sys

import mido
import numpy as np
import pytest

from lora_jax.data.duv import align, match_to_midi, pairs, score_pair
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.duv import takes
import own_music_testlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOZART = own_music_testlib.PERFORMANCES / "mozart" / "mozart_k265_var1.match"
needs_mozart = pytest.mark.skipif(
    not MOZART.is_file(), reason="real performances not fetched: run "
    "`bash scripts/fetch_performances.sh`")


def write_notes(path, notes, tpq=480, tempo=500_000, meta=()):
  """One-track format-1 MIDI of (start tick, end tick, pitch, velocity) notes."""
  events = []
  for start, end, pitch, velocity in notes:
    events += [(start, 1, mido.Message("note_on", note=pitch, velocity=velocity)),
               (end, 0, mido.Message("note_off", note=pitch))]
  track, last = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=tempo), *meta]), 0
  for tick, _, msg in sorted(events, key=lambda e: e[:2]):
    track.append(msg.copy(time=tick - last))
    last = tick
  midi = mido.MidiFile(type=1, ticks_per_beat=tpq)
  midi.tracks.append(track)
  midi.save(path)


def synthetic_pair(folder, name="take", seed=0):
  """A score (eighth-note melody on 5 pitches, repeated ones included, and a chord every two
  beats) and a performance of it with rubato, rolled chords, one note left out, a wrong note and
  a grace note. Returns the true (score index, performance index) pairs, in file order."""
  rng = np.random.default_rng(seed)
  score = [(i * 240, i * 240 + 240, 60 + (i * 3) % 5 * 2, 64) for i in range(64)]
  score += [(b * 960, b * 960 + 900, p, 64) for b in range(8) for p in (48, 52, 55)]
  score.sort()
  write_notes(folder / f"{name}.score.mid", score,
              meta=[mido.MetaMessage("time_signature", numerator=4, denominator=4)])
  # seconds per beat swells from 0.5 to 0.8 and back: about +-25% rubato
  beat_sec = lambda b: 0.5 * b + 0.15 * (b - 32 / (2 * np.pi) * np.sin(2 * np.pi * b / 32))
  perf, truth = [], set()
  for i, (start, end, pitch, _) in enumerate(score):
    if i == 20:
      continue  # left out
    roll = 0.015 * (pitch < 56) * (pitch - 48) / 4  # chords rolled upwards
    onset = round((beat_sec(start / 480) + roll + rng.normal(0, 0.01)) * 960)
    truth.add(((pitch, start), (pitch, onset)))
    legato = 0.9 * (beat_sec(end / 480) - beat_sec(start / 480))
    perf.append((onset, onset + round(legato * 960), pitch,
                 int(rng.integers(40, 100))))
  extra = [(round((beat_sec(5.0) + 0.02) * 960), round(beat_sec(5.4) * 960), 61, 50),  # wrong
           (round((beat_sec(9.0) - 0.08) * 960), round((beat_sec(9.0) - 0.04) * 960), 67, 40)]
  write_notes(folder / f"{name}.mid", perf + extra)
  left_out = (score[20][2], score[20][0])
  return truth, left_out, {(p, a) for a, _, p, _ in extra}


def keys(notes, ticks_per_unit):
  """Notes named by (pitch, onset tick): pretty_midi orders notes its own way."""
  return [(int(p), round(t * ticks_per_unit)) for p, t in zip(notes.pitch, notes.onset)]


def test_synthetic_pair_known_answer(tmp_path):
  truth, left_out, added = synthetic_pair(tmp_path)
  score, _, _ = score_pair.read_score(str(tmp_path / "take.score.mid"))
  perf = score_pair.read_performance(str(tmp_path / "take.mid"))
  assert (len(score.onset), len(perf.onset)) == (88, 89)  # 87 played, 2 added
  score_key, perf_key = keys(score, 480), keys(perf, 960)
  found = align.align(score.onset, score.pitch, perf.onset, perf.pitch)
  assert {(score_key[s], perf_key[p]) for s, p in zip(found.score_index, found.perf_index)} == truth
  assert [score_key[i] for i in found.unmatched_score] == [left_out]
  assert {perf_key[i] for i in found.unmatched_perf} == added


def test_unrelated_files_are_refused(tmp_path):
  synthetic_pair(tmp_path)
  score, downbeats, sections = score_pair.read_score(str(tmp_path / "take.score.mid"))
  other = score_pair.read_performance(str(tmp_path / "take.mid"))
  other = score_pair.SideNotes(other.onset, other.offset, other.pitch + 1, other.velocity)
  with pytest.raises(align.AlignError, match=r"written and 89 performed .* are they one piece"):
    score_pair.aligned_pair(score, downbeats, sections, other, "x.mid", "own", "own/x", 64)


@needs_mozart
def test_mozart_match_as_two_midi_files(tmp_path):
  """Real ground truth: the .match file's own note pairs, found again from two MIDI files."""
  perf_path, score_path = match_to_midi.write_match_as_midi(str(MOZART), str(tmp_path), "k265")
  accuracy = match_to_midi.alignment_accuracy(str(MOZART), perf_path, score_path)
  assert accuracy.true_pairs == 218
  assert accuracy.recall >= 0.99 and accuracy.precision >= 0.99  # measured 218 of 218
  pair, counts = score_pair.midi_score_pair(perf_path, score_path, "k265.mid", "own", "own/k265")
  assert (counts.score_notes, counts.perf_notes, counts.matched) == (218, 219, 218)
  truth = pairs.match_pair(str(MOZART), "k265.match", "own", "own/k265")
  np.testing.assert_allclose(pair.notes.onset_beats, truth.notes.onset_beats)
  np.testing.assert_array_equal(pair.notes.pitch, truth.notes.pitch)
  np.testing.assert_array_equal(pair.target_velocity, truth.target_velocity)
  np.testing.assert_allclose(pair.target_dur_beats, truth.target_dur_beats, atol=0.01)
  np.testing.assert_allclose(pair.notes.downbeat_beats[:3], [0.0, 2.0, 4.0])


def test_folder_of_pairs_one_line_per_file(tmp_path):
  folder = tmp_path / "takes"
  os.makedirs(folder / "etude")
  synthetic_pair(folder / "etude", "take1")
  synthetic_pair(folder, "alone")
  os.remove(folder / "alone.mid")
  synthetic_pair(folder, "bad")
  (folder / "bad.score.mid").write_bytes(b"MThd\x00\x00")
  rows, _, lines = takes.takes_rows(str(folder), "piano", "tempo_map",
                                    duv_manifest.Filters(min_notes=8), 0.2)
  text = {line.file: line.text() for line in lines}
  assert set(text) == {"etude/take1.mid", "alone.score.mid", "bad.mid"}
  assert text["etude/take1.mid"] == (
      "etude/take1.mid: 1 track, 87 notes, grid fit 1.00; aligned to take1.score.mid: 87 of 89 "
      "performed notes matched, 2 unmatched (ornaments, wrong notes) and 1 written notes not "
      "played, all left out")
  assert text["alone.score.mid"] == ("alone.score.mid: dropped: a score with no performance "
                                     "beside it (expected alone.mid or another MIDI suffix)")
  assert text["bad.mid"].startswith("bad.mid: dropped: bad.score.mid: not a readable MIDI file")
  (row,) = rows
  assert row["piece_id"] == "own/etude/take1" and row["instrument"] == "piano"
  assert row["n_notes"] == 87 and len(set(row["targets"]["velocity"])) > 20


def test_launcher_reports_pairs_and_refuses_a_folder_of_lone_scores(tmp_path):
  folder = tmp_path / "takes"
  os.makedirs(folder)
  synthetic_pair(folder, "take1")
  (folder / "take1.match").write_text("not a match file\n")  # a .match is not a performance MIDI
  run = lambda *flags: subprocess.run(
      [sys.executable, str(ROOT / "launch" / "build_duv_manifest.py"), f"--from_dir={folder}",
       "--instrument=piano", "--min_notes=8", *flags], capture_output=True, text=True,
      timeout=300)
  done = run(f"--out={tmp_path / 'out'}")
  assert done.returncode == 0, done.stderr[-2000:]
  assert ("take1.mid: 1 track, 87 notes, grid fit 1.00; aligned to take1.score.mid: 87 of 89 "
          "performed notes matched") in done.stdout
  assert "take1.match: dropped: matchFileVersion None" in done.stdout
  os.remove(folder / "take1.mid")
  done = run(f"--out={tmp_path / 'out2'}")
  assert done.returncode == 1 and not (tmp_path / "out2").exists()
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("build_duv_manifest: error: no track of") and \
      "take1.score.mid: dropped: a score with no performance beside it" in last
