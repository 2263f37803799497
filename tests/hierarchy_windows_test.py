"""Pack splits as the loop's .npz windows: shapes, a cache keyed by content, clear errors."""

import json
import os

import numpy as np
import pytest

from lora_jax import atomic
from lora_jax.data import midi_tokenizer as mt
from lora_jax.data.style_packs import pack as sp
from lora_jax.families import music_lm
from lora_jax.hierarchy import windows
import hierarchy_testlib

TOKENIZER = mt.MidiTokenizer(mt.MidiTokenizerConfig())


@pytest.fixture
def packs(tmp_path):
  hierarchy_testlib.write_genre(str(tmp_path / "packs"), "folk", ["waltz", "march"])
  hierarchy_testlib.write_genre(str(tmp_path / "packs"), "other", ["song"], program=53)
  return tmp_path / "packs"


def test_windows_are_what_the_music_lm_family_reads(packs, tmp_path):
  w = windows.split_windows([str(packs / "folk" / "waltz")], "train", TOKENIZER, 32,
                            str(tmp_path / "cache"))
  arrays = windows.load_arrays(w)
  family = music_lm.make(music_lm.LmConfig(TOKENIZER.vocab_size, 32, 4, 1, 64, 64, 0.0, 32),
                         "float32")
  family.check_arrays(arrays, w.path)
  assert w.styles == ("folk/waltz",) and w.n_pieces == 4 and w.n_windows == len(arrays["tokens"])
  assert w.n_tokens == int(arrays["mask"].sum()) and set(np.unique(arrays["mask"])) <= {0.0, 1.0}
  assert (arrays["tokens"][:, 0] == mt.BOS).all()
  both = windows.split_windows([str(packs / "folk"), str(packs / "other")], "test", TOKENIZER, 32,
                               str(tmp_path / "cache"))
  assert both.styles == ("folk", "other") and both.n_pieces == 3  # one test piece per sub-style


def test_cache_hits_until_the_content_changes(packs, tmp_path):
  cache = str(tmp_path / "cache")
  pack = str(packs / "folk" / "march")
  first = windows.split_windows([pack], "train", TOKENIZER, 32, cache)
  stamp = os.stat(first.path).st_mtime_ns
  again = windows.split_windows([pack], "train", TOKENIZER, 32, cache)
  assert again == first and os.stat(first.path).st_mtime_ns == stamp  # reused, not rewritten
  assert windows.split_windows([pack], "train", TOKENIZER, 64, cache).path != first.path
  assert windows.split_windows([pack], "validation", TOKENIZER, 32, cache).path != first.path
  other = mt.MidiTokenizer(mt.MidiTokenizerConfig(n_velocity_bins=8))
  assert windows.split_windows([pack], "train", other, 32, cache).path != first.path
  # Rewrite one training piece with other notes: a new key, new windows.
  manifest = json.loads(open(os.path.join(pack, sp.MANIFEST)).read())
  entry = next(e for e in manifest["pieces"] if e["split"] == "train")
  new_piece = hierarchy_testlib.piece("waltz", 3, seed=99, program=40)
  new_piece.write(os.path.join(pack, entry["path"]))
  with pytest.raises(sp.StylePackError, match="the manifest says n_notes"):
    windows.split_windows([pack], "train", TOKENIZER, 32, cache)  # the manifest is stale
  entry.update(n_notes=len(new_piece.instruments[0].notes), duration=new_piece.get_end_time())
  atomic.write_text(os.path.join(pack, sp.MANIFEST), json.dumps(manifest))
  changed = windows.split_windows([pack], "train", TOKENIZER, 32, cache)
  assert changed.path != first.path
  assert not np.array_equal(windows.load_arrays(changed)["tokens"],
                            windows.load_arrays(first)["tokens"])
  assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]


def test_errors_name_the_pack(packs, tmp_path):
  cache = str(tmp_path / "cache")
  with pytest.raises(sp.StylePackError, match=r"nowhere: style pack directory does not exist"):
    windows.split_windows([str(packs / "nowhere")], "train", TOKENIZER, 32, cache)
  with pytest.raises(sp.StylePackError, match=r"is in both .*folk.* and .*waltz"):
    windows.split_windows([str(packs / "folk"), str(packs / "folk" / "waltz")], "train",
                          TOKENIZER, 32, cache)
  with pytest.raises(ValueError, match="no style packs given"):
    windows.split_windows([], "train", TOKENIZER, 32, cache)
  pack = str(packs / "folk" / "waltz")
  manifest = json.loads(open(os.path.join(pack, sp.MANIFEST)).read())
  manifest["pieces"] = [e for e in manifest["pieces"] if e["split"] != "test"]
  atomic.write_text(os.path.join(pack, sp.MANIFEST), json.dumps(manifest))
  with pytest.raises(sp.StylePackError, match=r"waltz: split 'test' holds no pieces"):
    windows.split_windows([pack], "test", TOKENIZER, 32, cache)
