"""Lyrics section tags and the per-token section ids of the lyrics conditioner."""

import numpy as np
import pytest

from lora_jax.data import song_sections


def test_section_numbers_follow_the_original_vocabulary():
  assert song_sections.section_number("[verse]") == 1
  assert song_sections.section_number("[silence]") == 13
  with pytest.raises(ValueError, match=r"unknown section tag '\[hook\]'"):
    song_sections.section_number("[hook]")
  assert song_sections.unknown_tags("[verse] a [hook] b [chorus] [Verse]") == ["[hook]", "[Verse]"]


def test_section_ids_cover_from_each_tag_to_the_next():
  # Token ids: 100 = [verse], 101 = [chorus]; 7 is a word; padding from position 7.
  tags = {100: 1, 101: 2}
  ids = song_sections.section_ids([5, 100, 7, 7, 101, 7, 7, 0, 0], tags, length=7)
  np.testing.assert_array_equal(ids, [0, 1, 1, 1, 2, 2, 2, 0, 0])
