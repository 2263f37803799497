"""The .lora file and the checks before a merge: round trip, refusals, wrong-base errors."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from lora_jax import lora, stable_safetensors
import testlib

SPEC = lora.LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "ff.out"),
                     rank_pattern={r"blocks\.1": 2})


def record(params, name="pop"):
  adapter = testlib.random_adapter(params, SPEC, seed=3)
  return lora.AdapterRecord(adapter, SPEC, lora.fingerprint(params), "music_lm", name,
                            {"parent": None})


def test_round_trip_keeps_everything(tmp_path):
  _, params = testlib.tiny_model()
  rec = record(params)
  path = str(tmp_path / "pop.lora")
  lora.save_adapter(path, rec)
  back = lora.load_adapter(path, params)
  assert back.spec == SPEC and back.name == "pop" and back.model_family == "music_lm"
  assert back.base_fingerprint == rec.base_fingerprint and back.extra == {"parent": None}
  for a, b in zip(jax.tree.leaves(back.adapter), jax.tree.leaves(rec.adapter)):
    np.testing.assert_array_equal(a, b)
  assert back.targets()["blocks.1.attn.q_proj"] == (32, 32, 2)
  assert sorted(safetensors.numpy.load_file(path))[0] == "blocks.0.attn.q_proj.lora_A"


def test_unit_scale_spec_describes_a_saved_blend(tmp_path):
  _, params = testlib.tiny_model()
  rec = record(params)
  other = testlib.random_adapter(params, lora.LoraSpec(rank=3, target_modules=("q_proj",)), 9)
  blend = lora.concat([rec.adapter, other], [1.0, 0.5])
  path = str(tmp_path / "blend.lora")
  lora.save_adapter(path, lora.AdapterRecord(blend, lora.unit_scale_spec(blend),
                                             rec.base_fingerprint, "music_lm", "blend"))
  back = lora.load_adapter(path, params)
  for a, b in zip(jax.tree.leaves(lora.merge(params, [back.adapter])),
                  jax.tree.leaves(lora.merge(params, [blend]))):
    np.testing.assert_array_equal(a, b)


def test_pickles_and_foreign_files_are_refused(tmp_path):
  pkl = tmp_path / "old.lora"
  pkl.write_bytes(pickle.dumps({"lora_A": np.ones(3)}))
  with pytest.raises(lora.AdapterFileError,
                     match="old.lora: this file needs pickle to load; lora_jax never unpickles"):
    lora.load_adapter(str(pkl))
  foreign = tmp_path / "x.safetensors"
  safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, str(foreign))
  with pytest.raises(lora.AdapterFileError, match="not a lora_jax adapter"):
    lora.load_adapter(str(foreign))
  with pytest.raises(lora.AdapterFileError, match="does not exist"):
    lora.load_adapter(str(tmp_path / "missing.lora"))


def test_save_is_atomic(tmp_path, monkeypatch):
  _, params = testlib.tiny_model()
  path = tmp_path / "a.lora"
  path.write_bytes(b"previous")

  def crash(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(stable_safetensors, "canonical", crash)  # with the temporary file open
  with pytest.raises(OSError):
    lora.save_adapter(str(path), record(params))
  assert path.read_bytes() == b"previous"
  assert [p.name for p in tmp_path.iterdir()] == ["a.lora"]


def test_wrong_base_is_a_clear_error(tmp_path):
  _, params = testlib.tiny_model()
  rec = record(params)
  lora.check_adapter(params, rec, base_fingerprint=lora.fingerprint(params), model_family="music_lm")
  _, other = testlib.tiny_model(seed=1)
  with pytest.raises(lora.IncompatibleAdapterError,
                     match=r"trained on base \w+, this is \w+ \(wrong base\?\)$"):
    lora.check_adapter(other, rec, base_fingerprint=lora.fingerprint(other))
  with pytest.raises(lora.IncompatibleAdapterError, match=r"this is \w+; pass --allow_it to use "):
    lora.check_adapter(other, rec, base_fingerprint=lora.fingerprint(other),
                       override_flag="--allow_it")
  lora.check_adapter(other, rec, base_fingerprint=lora.fingerprint(other), allow_other_base=True)
  import dataclasses
  from lora_jax.models.transformer import TransformerConfig
  _, wider = testlib.tiny_model(dataclasses.replace(testlib.TINY, d_model=16, d_ff=24))
  with pytest.raises(lora.IncompatibleAdapterError, match=r"32x32 but the base kernel is 16x16"):
    lora.check_adapter(wider, rec)
  with pytest.raises(lora.IncompatibleAdapterError, match="model family 'music_lm', this base is 'duv'"):
    lora.check_adapter(params, rec, model_family="duv")
  path = str(tmp_path / "a.lora")
  lora.save_adapter(path, rec)
  with pytest.raises(lora.AdapterFileError, match="does not exist in the base model"):
    lora.load_adapter(path, {"head": params["head"]})


def test_check_stack():
  _, params = testlib.tiny_model()
  parent = record(params, "pop")
  child_spec = lora.LoraSpec(rank=2, target_modules=("q_proj",))
  child = lora.AdapterRecord(testlib.random_adapter(params, child_spec, 4), child_spec,
                             parent.base_fingerprint, "music_lm", "dance_pop")
  notes = lora.check_stack([parent, child])
  assert "pop adapts 4 modules, dance_pop 2" in notes[0]
  stranger = lora.AdapterRecord(child.adapter, child_spec, "0" * 16, "music_lm", "x")
  with pytest.raises(lora.IncompatibleAdapterError, match="trained on base 0000"):
    lora.check_stack([parent, stranger])


def test_fingerprint_sees_values_not_just_shapes():
  _, params = testlib.tiny_model()
  changed = jax.tree.map(lambda x: x, params)
  changed["head"]["bias"] = changed["head"]["bias"].at[0].add(1e-3)
  assert lora.fingerprint(params) != lora.fingerprint(changed)
  assert lora.fingerprint(params) == lora.fingerprint(jax.tree.map(np.asarray, params))
