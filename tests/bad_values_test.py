"""Bad values refused where they enter, as UserErrors with the value in the message (the same
checks the launch scripts' subprocess table in bad_input_test.py reaches through the CLI)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax import atomic, errors, finite
from lora_jax.families import music_lm
from lora_jax.hierarchy import merging
from lora_jax.models import decode
from lora_jax.train import batches
from lora_jax.train import config as config_lib

LM = music_lm.LmConfig(vocab_size=50, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=8,
                       dropout=0.0, seq_len=8)


def _windows(path, tokens):
  np.savez(path, tokens=np.asarray(tokens, np.int32), mask=np.ones((len(tokens), 8), np.float32))
  return str(path)


@pytest.mark.parametrize("bad, where", [(50, "[1, 3]"), (-1, "[1, 3]"), (10**6, "[1, 3]")])
def test_token_ids_outside_the_vocabulary_are_refused_when_loaded(tmp_path, bad, where):
  family = music_lm.make(LM, "float32")
  tokens = np.zeros((4, 8), np.int32)
  tokens[1, 3] = bad
  data = config_lib.DataConfig(path=_windows(tmp_path / "train.npz", tokens),
                               val_path=_windows(tmp_path / "val.npz", np.zeros((2, 8))),
                               val_fraction=0.0, synthetic_examples=0, batch_size=2,
                               eval_batch_size=2)
  with pytest.raises(errors.UserError) as e:
    batches.load(data, family, seed=0)
  assert str(e.value) == (f"{tmp_path / 'train.npz'}: array 'tokens' holds {bad} at {where} (1 of 32 "
                          f"values out of range); its values must lie in [0, 50) (token ids "
                          f"below vocab_size 50)")
  tokens[1, 3] = 49  # the largest id is fine
  _windows(tmp_path / "train.npz", tokens)
  assert batches.load(data, family, seed=0)[0]["tokens"].max() == 49


@pytest.mark.parametrize("temperature, top_k, top_p, message", [
    (-1.0, 0, 1.0, "temperature -1 must be >= 0"),
    (float("nan"), 0, 1.0, "temperature nan is not a finite number"),
    (float("inf"), 0, 1.0, "temperature inf is not a finite number"),
    (1.0, 0, -0.5, "top_p -0.5 must be > 0"),
    (1.0, 0, 0.0, "top_p 0 must be > 0"),
    (1.0, 0, 1.5, "top_p 1.5 must be <= 1"),
    (1.0, 0, float("nan"), "top_p nan is not a finite number"),
    (1.0, -2, 1.0, "top_k -2 must be an integer >= 0"),
    (1.0, 51, 1.0, "top_k 51 exceeds the vocabulary of 50 tokens"),
])
def test_sampling_settings_are_refused_up_front(temperature, top_k, top_p, message):
  with pytest.raises(errors.UserError, match=message):
    decode.check_sampling(temperature, top_k, top_p, vocab_size=50)
  decode.check_sampling(0.0, 50, 1.0, vocab_size=50)  # greedy, every token: fine


@pytest.mark.parametrize("config, message", [
    ("not json", "cannot read inference config"),
    ([], "holds a JSON list, not an object"),
    ({"model": "m.safetensors"}, "is not a lora_jax.hierarchy.inference/1 inference config"),
    ({"format": merging.CONFIG_FORMAT}, "has no field 'model'"),
    ({"format": merging.CONFIG_FORMAT, "model": 3}, "field 'model' must be a JSON string, got "
                                                    "int 3"),
    ({"format": merging.CONFIG_FORMAT, "model": "m.safetensors", "vocab": ["v"]},
     "field 'vocab' must be a JSON string"),
    ({"format": merging.CONFIG_FORMAT, "model": "../m.safetensors"}, "must be a file name"),
    ({"format": merging.CONFIG_FORMAT, "model": "m.safetensors", "modle": "x"},
     r"unknown fields \['modle'\]"),
])
def test_inference_config_is_read_as_a_schema(tmp_path, config, message):
  path = tmp_path / "m.json"
  path.write_text(config if isinstance(config, str) else json.dumps(config))
  with pytest.raises(errors.UserError, match=message):
    merging.read_inference_config(str(path))


def test_inference_config_names_the_model_beside_it(tmp_path):
  path = tmp_path / "m.json"
  path.write_text(json.dumps({"format": merging.CONFIG_FORMAT, "model": "m.safetensors"}))
  assert merging.read_inference_config(str(path)) == str(tmp_path / "m.safetensors")


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".hidden", "", "x" * 101, "é", "a b",
                                  "a.lora", None, 3])
def test_names_that_become_paths_are_plain(name):
  with pytest.raises(errors.UserError, match="must be a plain name"):
    errors.check_name(name, "adapter name")


def test_plain_names_pass():
  for name in ("guitar", "celtic_fiddle", "pop-909", "A1"):
    assert errors.check_name(name, "name") == name


def test_check_finite_names_the_value():
  with pytest.raises(errors.UserError, match="--parent-weight nan is not a finite number"):
    errors.check_finite(float("nan"), "--parent-weight")
  with pytest.raises(errors.UserError, match="rate -1 must be >= 0"):
    errors.check_finite(-1, "rate", low=0)
  assert errors.check_finite(2, "rate", low=0, high=2) == 2.0


def test_finite_tree_names_the_tensor():
  tree = {"blocks_0": {"attn": {"kernel": np.ones((2, 2), np.float32)}},
          "head": {"kernel": jnp.asarray([[1.0, np.nan], [np.inf, 2.0]], jnp.bfloat16)}}
  with pytest.raises(errors.UserError, match=r"x.lora: tensor head.kernel holds non-finite "
                                             r"values \(2 of 4, NaN/inf\)"):
    finite.check_tree(tree, "x.lora")
  finite.check_tree({"ids": np.arange(3), "w": np.ones(2)}, "fine")


def test_atomic_paths_write_all_outputs_or_none(tmp_path):
  a, b = tmp_path / "out" / "a.mid", tmp_path / "out" / "b.png"
  with pytest.raises(RuntimeError, match="boom"):
    with atomic.atomic_paths(str(a), str(b)) as (ta, tb):
      pathlib_write(ta, "a")
      raise RuntimeError("boom")  # the second output never came
  assert os.listdir(tmp_path / "out") == []  # the folder was made (the rule), nothing in it
  with atomic.atomic_paths(str(a), str(b)) as (ta, tb):
    assert ta.endswith("a.mid") and tb.endswith("b.png")  # writers see the real suffix
    pathlib_write(ta, "a")
    pathlib_write(tb, "b")
  assert sorted(os.listdir(tmp_path / "out")) == ["a.mid", "b.png"]
  with pytest.raises(errors.UserError, match="two outputs name the same file"):
    with atomic.atomic_paths(str(a), str(tmp_path / "out" / ".." / "out" / "a.mid")):
      pass


def pathlib_write(path, text):
  with open(path, "w") as f:
    f.write(text)


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch PWNED",))


def test_a_pickled_peft_adapter_bin_is_refused_with_the_one_wording(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from lora_jax.interop import peft  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "peft"
  folder.mkdir()
  (folder / peft.CONFIG_NAME).write_text(json.dumps(
      {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
  torch.save({"base_model.model.x.lora_A.weight": torch.ones(2, 2), "evil": _Evil()},
             folder / "adapter_model.bin")
  with pytest.raises(peft.PeftFormatError,
                     match="adapter_model.bin: this file needs pickle to load; lora_jax never "
                           "unpickles; re-save it as safetensors or a weights-only state dict"):
    peft.import_peft(str(folder), {}, model_family="music_lm")
  assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")
