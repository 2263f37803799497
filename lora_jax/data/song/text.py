"""The offline default tokenizer of lyrics and style text for the song LM: bytes, plus the
section tags as single tokens.

Ids: 0 padding, 1 the start token (the original prefixes `<|im_start|>` to every text; a text of
just the start token is the unconditional input of classifier-free guidance), 2..257 the UTF-8
bytes, 258.. the section tags of `song_sections.SECTION_TAGS`. A text longer than `max_len`
tokens is an error naming both lengths (the original cuts it with a warning, which trains lyrics
against the wrong audio).
"""

import re

import numpy as np

from lora_jax.data.song import sections as song_sections

PAD, START, BYTE0 = 0, 1, 2
TAG0 = BYTE0 + 256
VOCAB_SIZE = TAG0 + len(song_sections.SECTION_TAGS)
TAG_SECTIONS = {TAG0 + i: i + 1 for i in range(len(song_sections.SECTION_TAGS))}

_SPLIT = re.compile(r"(\[[^\[\]]*\])")


def _padded(ids: list[int], max_len: int, what: str) -> np.ndarray:
  if len(ids) > max_len:
    raise ValueError(f"{what} is {len(ids)} tokens, more than max_len {max_len}")
  out = np.full(max_len, PAD, np.int32)
  out[:len(ids)] = ids
  return out


def encode_text(text: str, max_len: int) -> np.ndarray:
  """Style/description text: int32 [max_len], start token then bytes, padded."""
  return _padded([START] + [BYTE0 + b for b in text.encode("utf-8")], max_len, "text")


def encode_lyrics(lyrics: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(token ids, section ids), int32 [max_len] each; an unknown bracketed tag is an error."""
  unknown = song_sections.unknown_tags(lyrics)
  if unknown:
    raise ValueError(f"unknown section tag {unknown[0]!r} in the lyrics; known: "
                     f"{' '.join(song_sections.SECTION_TAGS)}")
  ids = [START]
  for part in _SPLIT.split(lyrics):
    if part in song_sections.SECTION_TAGS:
      ids.append(TAG0 + song_sections.SECTION_TAGS.index(part))
    else:
      ids.extend(BYTE0 + b for b in part.encode("utf-8"))
  tokens = _padded(ids, max_len, "lyrics")
  return tokens, song_sections.section_ids(tokens, TAG_SECTIONS, len(ids))


class ByteText:
  """This module's tokenizer behind the interface of `qwen_text.QwenText`."""

  vocab_size = VOCAB_SIZE
  start = START
  pad = PAD
  encode_text = staticmethod(encode_text)
  encode_lyrics = staticmethod(encode_lyrics)
