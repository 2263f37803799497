"""The original's lyrics and style tokenization, from a user's Qwen2 `tokenizer.json`.

SongGeneration tokenizes with Hugging Face's Qwen2Tokenizer and adds the section tags of
`lora_jax.data.song.sections` as special tokens after it (so on Qwen2, `[verse]` is 151646). Every
text is `<|im_start|>` + the text; padding is `<|endoftext|>` (151643, the embedding's
padding_idx); a token's section id is the id of the last tag at or before it minus the id of
`<|im_end|>` (the original subtracts 151645), 0 before the first tag and on padding. The
`tokenizers` package reads the same file offline, so a released checkpoint sees the ids it was
trained on (`tests/song_qwen_text_test.py` checks them against transformers' Qwen2Tokenizer).
A text longer than `max_len` is an error (the original cuts it with a warning, which trains
lyrics against the wrong audio).
"""

import numpy as np
import tokenizers

from lora_jax.data.song import sections as song_sections

START, PAD, END = "<|im_start|>", "<|endoftext|>", "<|im_end|>"


class QwenText:
  """Encodes lyrics (with section ids) and style text as the original's conditioners do."""

  def __init__(self, path: str):
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own Exception type for unreadable files
      raise ValueError(f"cannot read {path} as a tokenizer.json: {str(e).splitlines()[0]}") from None
    ids = {t: self._tok.token_to_id(t) for t in (START, PAD, END)}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"{path} has no {', '.join(missing)}: not a Qwen2 tokenizer")
    self._tok.add_special_tokens([t for t in song_sections.SECTION_TAGS
                                  if self._tok.token_to_id(t) is None])
    self._tok.no_padding()
    self._tok.no_truncation()
    self.start = ids[START]
    self.pad = ids[PAD]
    self._end = ids[END]
    self._tags = {self._tok.token_to_id(t) for t in song_sections.SECTION_TAGS}
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

  def _ids(self, text: str, max_len: int, what: str) -> tuple[np.ndarray, int]:
    ids = self._tok.encode(START + text, add_special_tokens=False).ids
    if len(ids) > max_len:
      raise ValueError(f"{what} is {len(ids)} tokens, more than max_len {max_len}")
    out = np.full(max_len, self.pad, np.int32)
    out[:len(ids)] = ids
    return out, len(ids)

  def encode_text(self, text: str, max_len: int) -> np.ndarray:
    """Style text (`type_info`): int32 [max_len]."""
    return self._ids(text, max_len, "text")[0]

  def encode_lyrics(self, lyrics: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, section ids), int32 [max_len] each; an unknown bracketed tag is an error."""
    unknown = song_sections.unknown_tags(lyrics)
    if unknown:
      raise ValueError(f"unknown section tag {unknown[0]!r} in the lyrics; known: "
                       f"{' '.join(song_sections.SECTION_TAGS)}")
    tokens, length = self._ids(lyrics, max_len, "lyrics")
    sections = song_sections.section_ids(
        tokens, {t: t - self._end for t in self._tags}, length)
    return tokens, sections
