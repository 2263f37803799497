"""The DUV split: held-out pieces whole and unseen, every other track cut into head and tail, and
the record evaluation reads back."""

import numpy as np
import pytest

from lora_jax.duv import splits


def _row(piece, n, instrument="piano", velocity=60):
  notes = {"onset_beats": list(np.arange(n) * 0.5), "dur_beats": [0.5] * n,
           "pitch": [60] * n, "velocity": [64] * n}
  return {"file": f"{piece}.mid", "piece_id": piece, "instrument": instrument, "n_notes": n,
          "notes": notes, "features": {"pitch": [60.0] * n},
          "targets": {"velocity": list(np.full(n, velocity)), "dur_beats": [0.4] * n}}


ROWS = [_row("pop909/a", 10, velocity=100), _row("pop909/b", 20, velocity=70),
        _row("maestro/c", 40, velocity=50), _row("pop909/d", 8, "guitar")]


def test_heldout_pieces_are_whole_and_the_rest_split_head_and_tail():
  rows = splits.select(ROWS, "piano", "^pop909/")
  assert [r["piece_id"] for r in rows] == ["pop909/a", "pop909/b"]
  parts = splits.split(rows, "b$", 0.2)
  assert [r["piece_id"] for r in parts.heldout] == ["pop909/b"]
  assert parts.heldout[0] is rows[1]  # untouched
  (head,), (tail,) = parts.train, parts.valid
  assert head["n_notes"] == 8 and tail["n_notes"] == 2
  for group in ("notes", "features", "targets"):
    for name, values in rows[0][group].items():
      assert list(head[group][name]) + list(tail[group][name]) == list(values)
  assert tail["notes"]["onset_beats"][0] == 4.0  # the tail is the track's end
  rec = splits.record("lora", "m.lora", 7, "m", "x.jsonl", "piano", "^pop909/", "b$", 0.2,
                      parts)
  assert rec.train_pieces == ("pop909/a",) and rec.heldout_pieces == ("pop909/b",)
  assert rec.train_notes == 10 and rec.train_velocity_mean == 100.0


def test_record_round_trip(tmp_path):
  parts = splits.split(ROWS[:3], "", 0.5)
  assert parts.heldout == [] and len(parts.train) == 3
  rec = splits.record("full", "m", 9, "m", "x.jsonl", "", "", "", 0.5, parts)
  path = str(tmp_path / splits.RECORD_FILE)
  splits.write_record(path, rec)
  assert splits.read_record(path) == rec
  with pytest.raises(splits.SplitError, match="no split record"):
    splits.read_record(str(tmp_path / "none.json"))


def test_errors_name_the_values():
  with pytest.raises(splits.SplitError, match=r"duv.instrument 'bass' matches no row; the "
                                              r"instruments are \['guitar', 'piano'\]"):
    splits.select(ROWS, "bass", "")
  with pytest.raises(splits.SplitError, match=r"bad pieces regex '\('"):
    splits.select(ROWS, "", "(")
  with pytest.raises(splits.SplitError, match="holds out every piece"):
    splits.split(ROWS[:1], "a", 0.1)
  with pytest.raises(splits.SplitError, match=r"duv.valid_tail must be in \(0, 1\)"):
    splits.split(ROWS, "", 0.0)
  with pytest.raises(splits.SplitError, match="leaves 1 to train on and 0 to validate"):
    splits.split([_row("x", 1)], "", 0.1)
