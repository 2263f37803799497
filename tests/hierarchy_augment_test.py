"""The base's training windows: velocity and program augmentation, short pieces sharing a window."""

import dataclasses

import numpy as np
import pytest

from lora_jax.data import midi_tokenizer as mt
from lora_jax.hierarchy import augment, windows
import hierarchy_testlib

TOKENIZER = mt.MidiTokenizer(mt.MidiTokenizerConfig())
SETTINGS = augment.AugmentSettings(copies=2, seed=0, velocity_centre=(2, 14),
                                   velocity_spread=(0.5, 1.5), velocity_ramp=4.0,
                                   velocity_jitter=1.5, program_remap=1.0, concat_short=False)


def _names(row):
  return [TOKENIZER.tokens[t] for t in row]


@pytest.fixture
def packs(tmp_path):
  hierarchy_testlib.write_genre(str(tmp_path / "packs"), "folk", ["waltz", "march"])
  return tmp_path / "packs"


def test_copies_change_only_velocities_and_programs(packs, tmp_path):
  plain = windows.split_windows([str(packs / "folk")], "train", TOKENIZER, 64,
                                str(tmp_path / "cache"))
  aug = windows.split_windows([str(packs / "folk")], "train", TOKENIZER, 64,
                              str(tmp_path / "cache"), SETTINGS)
  assert aug.path != plain.path and aug.n_windows == 3 * plain.n_windows
  base, got = windows.load_arrays(plain), windows.load_arrays(aug)
  n = plain.n_windows
  np.testing.assert_array_equal(got["tokens"][:n], base["tokens"])  # the originals come first
  np.testing.assert_array_equal(got["mask"][n:2 * n], base["mask"])
  seen_velocities, seen_programs = set(), set()
  for copy in (got["tokens"][n:2 * n], got["tokens"][2 * n:]):
    for old, new in zip(base["tokens"], copy):
      before, after = _names(old), _names(new)
      for a, b in zip(before, after):
        if a != b:  # nothing but a velocity or a program changes, and into its own kind
          assert a.split("_")[0] == b.split("_")[0] in ("Velocity", "Program"), (a, b)
      seen_velocities |= {b for b in after if b.startswith("Velocity_")}
      seen_programs |= {b for b in after if b.startswith("Program_")}
      progs = [b for b in after if b.startswith("Program_")]
      assert len(set(progs)) == len(set(p for p in before if p.startswith("Program_")))
  assert "Velocity_0" not in seen_velocities and len(seen_velocities) >= 6
  assert len(seen_programs) >= 3  # the fixture writes one program; copies read others


def test_short_windows_share_a_row_and_keep_their_tokens():
  tokens = np.zeros((3, 8), np.int32)
  mask = np.zeros((3, 8), np.float32)
  for r, row in enumerate([[1, 5, 6, 2], [1, 7, 2], [1, 8, 9, 10, 11, 2]]):
    tokens[r, :len(row)], mask[r, :len(row)] = row, 1
  out, out_mask = augment.concat_short(tokens, mask)
  assert out.tolist() == [[1, 5, 6, 2, 1, 7, 2, 0], [1, 8, 9, 10, 11, 2, 0, 0]]
  assert out_mask.sum() == mask.sum()


def test_same_settings_same_windows_and_bad_settings_refused(packs, tmp_path):
  a = augment.augment_windows(*_arrays(packs, tmp_path), SETTINGS, TOKENIZER)
  b = augment.augment_windows(*_arrays(packs, tmp_path), SETTINGS, TOKENIZER)
  np.testing.assert_array_equal(a[0], b[0])
  with pytest.raises(ValueError, match="program_remap 1.5"):
    dataclasses.replace(SETTINGS, program_remap=1.5)


def _arrays(packs, tmp_path):
  w = windows.split_windows([str(packs / "folk")], "train", TOKENIZER, 64, str(tmp_path / "c"))
  arrays = windows.load_arrays(w)
  return arrays["tokens"], arrays["mask"]
