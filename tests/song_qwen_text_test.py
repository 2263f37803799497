"""Lyrics and style ids from a Qwen2 tokenizer.json, against transformers' Qwen2Tokenizer used
the way the original's conditioners use it (section tags added as special tokens, `<|im_start|>`
prefixed, `<|endoftext|>` padding, section id = tag id - id of `<|im_end|>`)."""

import json

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, trainers
import transformers

from lora_jax.data.song import qwen_text
from lora_jax.data.song import sections as song_sections

LYRICS = ["[verse] hello la la, the river runs [chorus] oh oh sing along",
          "[intro-short] [verse] in the morning light we dance é [outro-short]",
          "no tags at all"]


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
  """A tiny byte-level BPE saved by transformers' Qwen2Tokenizer, as a real Qwen2 folder is."""
  folder = tmp_path_factory.mktemp("qwen")
  bpe = tokenizers.Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.train_from_iterator(LYRICS * 10, trainers.BpeTrainer(
      vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  vocab = json.loads(bpe.to_str())["model"]["vocab"]
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            for m in json.loads(bpe.to_str())["model"]["merges"]]
  reference = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges)
  reference.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
  reference.save_pretrained(folder)
  return folder


def _original(folder):
  """What the original's QwTokenizerConditioner builds."""
  reference = transformers.Qwen2Tokenizer.from_pretrained(folder)
  reference.add_tokens(list(song_sections.SECTION_TAGS), special_tokens=True)
  return reference


def test_ids_and_sections_match_the_original_tokenizer(qwen_folder):
  ours = qwen_text.QwenText(str(qwen_folder / "tokenizer.json"))
  reference = _original(qwen_folder)
  end = reference.convert_tokens_to_ids("<|im_end|>")
  tag_ids = [reference.convert_tokens_to_ids(t) for t in song_sections.SECTION_TAGS]
  assert ours.vocab_size == len(reference.get_vocab())
  for lyrics in LYRICS:
    expected = reference("<|im_start|>" + lyrics)["input_ids"]
    tokens, sections = ours.encode_lyrics(lyrics, 64)
    n = len(expected)
    np.testing.assert_array_equal(tokens[:n], expected)
    assert (tokens[n:] == reference.pad_token_id).all()
    # The original's structure ids: from each tag to the next, tag id - <|im_end|>'s id.
    want, current = np.zeros(64, np.int32), 0
    for i, t in enumerate(expected):
      current = t - end if t in tag_ids else current
      want[i] = current
    np.testing.assert_array_equal(sections, want)
  style = ours.encode_text("folk, fiddle, female singer", 32)
  expected = reference("<|im_start|>folk, fiddle, female singer")["input_ids"]
  np.testing.assert_array_equal(style[:len(expected)], expected)


def test_refusals_name_the_problem(qwen_folder, tmp_path):
  ours = qwen_text.QwenText(str(qwen_folder / "tokenizer.json"))
  with pytest.raises(ValueError, match=r"unknown section tag '\[rap\]'"):
    ours.encode_lyrics("[rap] yo", 64)
  with pytest.raises(ValueError, match="more than max_len 4"):
    ours.encode_lyrics(LYRICS[0], 4)
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(ValueError, match="cannot read .*bad.json as a tokenizer.json"):
    qwen_text.QwenText(str(tmp_path / "bad.json"))


def test_prepared_windows_carry_the_tokenizer_ids(qwen_folder, tmp_path):
  import torch
  from lora_jax.families import song_lm as song_family
  from lora_jax.song import prepare
  folder = tmp_path / "prepared"
  folder.mkdir()
  rows = []
  for i in range(6):
    torch.save({"tokens": torch.randint(0, 32, (3, 40)), "lyrics": LYRICS[i % 3],
                "descriptions": "folk"}, folder / f"s{i}.pt")
    rows.append(json.dumps({"token_path": str(folder / f"s{i}.pt"), "idx": f"s{i}"}))
  (folder / "manifest.jsonl").write_text("\n".join(rows) + "\n")
  model = song_family.SongConfig(code_size=32, dim=16, intermediate_size=32, num_heads=2,
                                 num_layers=1, num_layers_sub=1, text_vocab_size=400, frames=16,
                                 lyrics_len=64, style_len=8)
  tokenizer = str(qwen_folder / "tokenizer.json")
  done = prepare.prepare(str(folder), model, str(tmp_path / "out"), val_fraction=0.3, overlap=2,
                         text_tokenizer=tokenizer)
  train = np.load(done.train_path)
  ours = qwen_text.QwenText(tokenizer)
  assert any((row == ours.encode_lyrics(lyrics, 64)[0]).all()
             for row in train["lyrics"] for lyrics in LYRICS)
  np.testing.assert_array_equal(train["style"][0], ours.encode_text("folk", 8))
  small = song_family.SongConfig(**{**model.__dict__, "text_vocab_size": 300})
  with pytest.raises(prepare.SongDataError, match="text_vocab_size 300 is below the tokenizer's"):
    prepare.prepare(str(folder), small, str(tmp_path / "out2"), val_fraction=0.3, overlap=2,
                    text_tokenizer=tokenizer)
