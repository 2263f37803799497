"""launch/analyze_audio.py: clips at beats within their length limits, the seed's table, bad files
named one per line while the rest are processed, nothing written when nothing could be analysed."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from lora_jax import errors
from lora_jax.audio import batch, clips, load, stems
from lora_jax.audio.separator import mask_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = load.SAMPLE_RATE


def _song(seconds: float, bpm: float) -> np.ndarray:
  """Plucked tones on every beat (a new pitch each beat), decaying before the next."""
  y = np.zeros(int(seconds * SR), np.float32)
  period = 60 / bpm
  decay = np.exp(-np.arange(int(period * SR)) / (0.15 * SR))
  for i, t in enumerate(np.arange(0, seconds - period, period)):
    f = 220 * 2 ** ((i * 5 % 12) / 12)
    n = len(decay)
    y[int(t * SR):int(t * SR) + n] += (0.3 * decay * np.sin(2 * np.pi * f * np.arange(n) / SR))
  return y


def test_clips_fall_on_beats_within_limits():
  song = _song(70.0, 100.0)
  got = clips.cut(song, SR, 100.0, clips.ClipSettings(10, 30, 20))
  assert got[0].start == 0 and got[-1].end == pytest.approx(70.0, abs=0.01)
  for a, b in zip(got, got[1:]):
    assert a.end == b.start
  for c in got:
    assert 10 <= c.end - c.start <= 30 and c.at_beat
  for c in got[:-1]:  # each cut is within 50 ms of a beat (every 0.6 s), before the tone starts
    offset = c.end % 0.6
    assert min(offset, 0.6 - offset) < 0.05, c
  assert clips.cut(song[:SR * 8], SR, 100.0) == [clips.Clip(0.0, 8.0, True)]
  with pytest.raises(errors.UserError, match="at least twice"):
    clips.ClipSettings(10, 15, 12)


def test_cli_writes_table_and_clips_and_names_bad_files(tmp_path):
  songs = tmp_path / "songs"
  songs.mkdir()
  soundfile.write(str(songs / "a.wav"), np.stack([_song(45.0, 90.0)] * 2, 1), SR)
  soundfile.write(str(songs / "b.flac"), _song(12.0, 120.0), SR)
  soundfile.write(str(songs / "quiet.wav"), np.zeros(SR * 2, np.float32), SR)
  (songs / "junk.mp3").write_bytes(b"\x00" * 100)
  out = tmp_path / "out"
  done = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "analyze_audio.py"),
                         f"--input={songs}", f"--out={out}", "--split_clips", "--stems"],
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  skipped = [line for line in done.stdout.splitlines() if line.startswith("skipped: ")]
  assert len(skipped) == 2
  assert any("quiet.wav: silent" in s for s in skipped)
  assert any("junk.mp3: not readable as audio" in s for s in skipped)
  with open(out / "metadata.csv") as f:
    table = list(csv.DictReader(f))
  assert list(table[0]) == list(batch.COLUMNS)
  rows = [json.loads(line) for line in open(out / "metadata.jsonl")]
  assert len(rows) == len(table) >= 3  # a: two clips or more; b: one
  report = json.loads((out / "report.json").read_text())
  assert report["stems"] == stems.separator()  # the trained separator where its weights are
  pair = (("vocal", "accompaniment") if report["stems"] == mask_model.DESCRIPTION
          else ("harmonic", "percussive"))
  for row in rows:
    clip = soundfile.info(str(out / row["File"]))
    assert clip.duration == pytest.approx(row["end"] - row["start"], abs=0.01)
    assert row["Mood"] in ("low", "medium", "high") and 0 < row["genre_confidence"] <= 1
    first, _ = soundfile.read(str(out / row[f"stem_{pair[0]}"]))
    second, _ = soundfile.read(str(out / row[f"stem_{pair[1]}"]))
    whole, _ = soundfile.read(str(out / row["File"]))
    np.testing.assert_allclose(first + second, whole, atol=2e-3)  # soft masks: they sum
  assert report["n_analysed"] == 2 and len(report["failures"]) == 2


def test_nothing_is_written_when_no_file_can_be_analysed(tmp_path):
  soundfile.write(str(tmp_path / "quiet.wav"), np.zeros(SR * 2, np.float32), SR)
  with pytest.raises(errors.UserError, match="none of the 1 files.*silent"):
    batch.run([str(tmp_path / "quiet.wav")], str(tmp_path / "out"), split_clips=True)
  assert not os.path.exists(tmp_path / "out")
