"""Lyrics section tags and the per-token section ids of the lyrics conditioner."""

import numpy as np
import pytest

from lora_jax.data.song import sections as song_sections
from lora_jax.data.song import text as song_text


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


def test_byte_tokenizer_encodes_tags_and_sections():
  tokens, sections = song_text.encode_lyrics("[verse] hi [chorus] é", 16)
  n = 1 + 1 + 4 + 1 + 3  # start, [verse], " hi ", [chorus], " é" (é is 2 bytes)
  assert tokens[0] == song_text.START and tokens[1] == song_text.TAG0
  assert tokens[6] == song_text.TAG0 + 1
  assert (tokens[n:] == song_text.PAD).all() and (tokens[:n] != song_text.PAD).all()
  np.testing.assert_array_equal(sections[:n], [0, 1, 1, 1, 1, 1, 2, 2, 2, 2])
  assert (sections[n:] == 0).all()
  assert tokens.max() < song_text.VOCAB_SIZE
  with pytest.raises(ValueError, match="unknown section tag '\\[hook\\]'"):
    song_text.encode_lyrics("[hook] la", 16)
  with pytest.raises(ValueError, match="lyrics is 9 tokens, more than max_len 8"):
    song_text.encode_lyrics("[verse] hello ", 8)
  np.testing.assert_array_equal(song_text.encode_text("", 3), [song_text.START, 0, 0])
