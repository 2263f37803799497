"""What the trainers refuse before any step runs: the wrong pack, the wrong parent, too little data."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax import lora
from lora_jax.data import midi_tokenizer as mt
from lora_jax.data.style_packs import pack as sp
from lora_jax.hierarchy import base_file, settings, training
from lora_jax.models.transformer import MusicTransformer
from lora_jax.train import config as config_lib
from lora_jax.train import resume
import hierarchy_testlib
import testlib

TOKENIZER = mt.MidiTokenizer(mt.MidiTokenizerConfig())
SIZE = settings.ModelSettings(vocab_size=TOKENIZER.vocab_size, d_model=16, n_heads=2, n_layers=1,
                              d_ff=32, max_len=64, dropout=0.0)


@pytest.fixture
def world(tmp_path):
  packs = tmp_path / "packs"
  hierarchy_testlib.write_genre(str(packs), "folk", ["waltz", "march"])
  defaults = hierarchy_testlib.write_configs(str(tmp_path / "configs"), "folk", ["waltz", "march"])
  tree = config_lib.load_config_dict(defaults, "tiny")
  tree.data.cache_dir = str(tmp_path / "cache")
  model = MusicTransformer(base_file.BaseModel("", SIZE, None, "", {}).transformer_config())
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  base = str(tmp_path / "base" / "base_model.safetensors")
  base_file.save_model(base, base_file.host(params), SIZE, {})
  TOKENIZER.save_vocab(str(tmp_path / "base"))
  return {"packs": packs, "defaults": defaults, "tree": tree, "base": base, "tmp": tmp_path}


def config(world, child=None, **flag_values):
  return settings.resolve(world["tree"], world["defaults"], "folk", child, flag_values)


def test_a_pack_of_another_style_is_refused(world):
  packs, out = world["packs"], str(world["tmp"] / "adapters")
  with pytest.raises(sp.StylePackError, match=r"waltz is the pack of 'folk/waltz', not of 'folk'"):
    training.train_parent(config(world), "folk", str(packs / "folk" / "waltz"), world["base"], out)
  with pytest.raises(sp.StylePackError, match=r"is the pack of 'folk', not of 'folk/waltz'"):
    training.train_child(config(world, "waltz"), "folk", "waltz", str(packs / "folk"), "x.lora",
                         world["base"], out)
  assert not os.path.exists(out)


def test_a_parent_of_another_genre_or_base_is_refused(world):
  base = base_file.load_model(world["base"])
  spec = lora.LoraSpec(rank=2, target_modules=("head",))
  adapter = testlib.random_adapter(base.params, spec, seed=1)
  record = lora.AdapterRecord(adapter, spec, base.fingerprint, "music_lm", "folk",
                              {"level": "parent"})
  training.check_parent(record, "p.lora", "folk", base)
  with pytest.raises(lora.IncompatibleAdapterError, match=r"p.lora is not the parent adapter of "
                                                          r"'rock' \(its name is 'folk'"):
    training.check_parent(record, "p.lora", "rock", base)
  child_like = dataclasses.replace(record, extra={"level": "child"})
  with pytest.raises(lora.IncompatibleAdapterError, match=r"its level 'child'"):
    training.check_parent(child_like, "p.lora", "folk", base)
  other = dataclasses.replace(record, base_fingerprint="0123456789abcdef")
  with pytest.raises(lora.IncompatibleAdapterError,
                     match=r"trained on base 0123456789abcdef, but .* is base \w+: train the "
                           r"parent on this base first"):
    training.check_parent(other, "p.lora", "folk", base)


def test_too_few_windows_for_a_batch_is_an_error_with_the_numbers(world):
  with pytest.raises(ValueError, match=r"train split of folk/waltz has \d+ windows of 32 tokens, "
                                       r"fewer than one batch of 512"):
    training.train_child(config(world, "waltz", **{"child.batch_size": 512}), "folk", "waltz",
                         str(world["packs"] / "folk" / "waltz"), _parent(world), world["base"],
                         str(world["tmp"] / "adapters"))


def _parent(world) -> str:
  base = base_file.load_model(world["base"])
  spec = lora.LoraSpec(rank=2, target_modules=("head",))
  path = str(world["tmp"] / "folk.lora")
  lora.save_adapter(path, lora.AdapterRecord(testlib.random_adapter(base.params, spec, seed=1),
                                             spec, base.fingerprint, "music_lm", "folk",
                                             {"level": "parent"}))
  return path


def test_a_resume_with_a_changed_learning_rate_needs_allow_changed_config(world):
  pack, out = str(world["packs"] / "folk"), str(world["tmp"] / "adapters")
  first = training.train_parent(config(world, **{"parent.epochs": 1}), "folk", pack,
                                world["base"], out)
  assert first.status == "finished"
  trained = lora.load_adapter(first.path).adapter.params
  changed = {"parent.epochs": 1, "parent.learning_rate": 0.05}
  with pytest.raises(resume.ChangedConfigError, match=r"opt.learning_rate 0.01 -> 0.05; .*"
                                                      r"allow_changed_config"):
    training.train_parent(config(world, **changed), "folk", pack, world["base"], out)
  again = training.train_parent(config(world, **changed, **{"run.allow_changed_config": True}),
                                "folk", pack, world["base"], out)
  assert again.status == "finished" and again.steps == first.steps
  # Resumed at the last step, so nothing more trained: a restart at 0.05 would differ.
  jax.tree.map(np.testing.assert_array_equal, lora.load_adapter(again.path).adapter.params,
               trained)
