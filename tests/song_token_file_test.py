"""Reading the SongGeneration fork's `{idx}.pt` token files: weights-only, checked."""

import argparse

import numpy as np
import pytest
import torch

from lora_jax.data.song import token_file as song_token_file
from lora_jax.interop.flax_weights import WeightFileError


def _save(path, **data):
  torch.save(data, path)
  return str(path)


def test_reads_what_the_fork_writes(tmp_path):
  tokens = torch.randint(0, 16384, (3, 50))
  got = song_token_file.read(_save(tmp_path / "a.pt", tokens=tokens, lyrics="[verse] hi",
                                   descriptions="pop, female"))
  np.testing.assert_array_equal(got.codes, tokens.numpy())
  assert got.codes.dtype == np.int32
  assert got.lyrics == "[verse] hi" and got.descriptions == "pop, female"


@pytest.mark.parametrize("data, message", [
    ({"tokens": torch.zeros(2, 5, dtype=torch.long), "lyrics": "", "descriptions": ""},
     r"shape \[2, 5\], expected \[3, T > 0\]"),
    ({"tokens": torch.full((3, 5), 16384), "lyrics": "", "descriptions": ""},
     r"codes range 16384..16384, expected 0..16383"),
    ({"tokens": torch.zeros(3, 5), "lyrics": "", "descriptions": ""}, "integer tensor"),
    ({"tokens": torch.zeros(3, 5, dtype=torch.long), "lyrics": ""}, "lacks descriptions"),
])
def test_bad_files_are_named(tmp_path, data, message):
  with pytest.raises(WeightFileError, match=message):
    song_token_file.read(_save(tmp_path / "bad.pt", **data))


def test_pickles_are_refused(tmp_path):
  path = _save(tmp_path / "p.pt", tokens=torch.zeros(3, 5, dtype=torch.long), lyrics="",
               descriptions=argparse.Namespace(x=1))
  with pytest.raises(WeightFileError, match="never unpickles"):
    song_token_file.read(path)
