"""Section tags of lyrics ([verse], [chorus], ...) and the per-token section ids the lyrics
conditioner's `structure_emb` reads.

The tags are the original's `conf/vocab.yaml`, in its order; the original adds them to its Qwen2
tokenizer as special tokens right after `<|im_end|>` (151645) and takes a token's section id as
(the id of the last tag at or before it) - 151645, so tag i of SECTION_TAGS has section id i + 1
and tokens before the first tag, and padding, have 0.
"""

import re
from typing import Mapping, Sequence

import numpy as np

SECTION_TAGS = ("[verse]", "[chorus]", "[bridge]", "[intro-short]", "[intro-medium]",
                "[intro-long]", "[outro-short]", "[outro-medium]", "[outro-long]", "[inst-short]",
                "[inst-medium]", "[inst-long]", "[silence]")

_TAG = re.compile(r"\[[^\[\]]*\]")


def section_number(tag: str) -> int:
  """The structure_emb row of a tag: 1 for [verse], ..., 13 for [silence]."""
  if tag not in SECTION_TAGS:
    raise ValueError(f"unknown section tag {tag!r}; known: {' '.join(SECTION_TAGS)}")
  return SECTION_TAGS.index(tag) + 1


def unknown_tags(lyrics: str) -> list[str]:
  """Bracketed tags in `lyrics` that are not section tags, in order of appearance."""
  return [t for t in _TAG.findall(lyrics) if t not in SECTION_TAGS]


def section_ids(token_ids: Sequence[int], tag_sections: Mapping[int, int],
                length: int | None = None) -> np.ndarray:
  """int32 [len(token_ids)]: each token's section (`tag_sections` maps a tag's token id to its
  section number), from a tag up to the next one; 0 before the first tag and from `length` on."""
  out = np.zeros(len(token_ids), np.int32)
  length = len(token_ids) if length is None else length
  current = 0
  for i, token in enumerate(token_ids[:length]):
    current = tag_sections.get(int(token), current)
    out[i] = current
  return out
