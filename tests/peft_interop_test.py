"""Parity with real PyTorch and real PEFT: merged exports and PEFT adapters, both directions."""

import dataclasses
import json

import jax
import numpy as np
import peft
import pytest
import torch

from lora_jax import lora
from lora_jax.interop import peft as peft_io
from lora_jax.interop import torch_convert
from third_party.music_transformer_torch import MusicTransformer as TorchMusicTransformer
import testlib

PARENT = lora.LoraSpec(rank=4, alpha=8, target_modules=("attn.q_proj", "attn.v_proj", "ff.in",
                                                         "ff.out"), rank_pattern={"ff": 2})
CHILD = lora.LoraSpec(rank=2, alpha=6, use_rslora=True, target_modules=("attn.q_proj",
                                                                         "attn.out_proj"))


def randomised_base():
  model, params = testlib.tiny_model()
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(11), len(leaves))
  params = jax.tree.unflatten(
      treedef, [x + 0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  return model, params


def torch_twin(params):
  twin = TorchMusicTransformer(testlib.TINY).eval()
  twin.load_state_dict(torch_convert.flax_to_state_dict(params), strict=True)
  return twin


def torch_logits(module, x):
  with torch.no_grad():
    return module(torch.as_tensor(np.asarray(x))).numpy()


def test_merged_export_matches_unmerged_adapters_in_torch(tmp_path):
  model, params = randomised_base()
  parent = testlib.random_adapter(params, PARENT, 1)
  child = testlib.random_adapter(params, CHILD, 2)
  weights = lora.blend_weights("additive", [1.0, 0.6])
  merged = lora.merge(params, [parent, child], weights)
  path = tmp_path / "merged.pt"
  torch_convert.save_torch_file(merged, str(path))
  twin = TorchMusicTransformer(testlib.TINY).eval()
  twin.load_state_dict(torch.load(path, weights_only=True), strict=True)
  x = testlib.tokens(2, 16)
  want = lora.apply(model, params, [lora.Active(parent, weights[0]), lora.Active(child, weights[1])],
                    x)
  diff = np.abs(torch_logits(twin, x) - np.asarray(want)).max()
  print(f"merged export vs unmerged JAX adapters: max abs diff {diff:.2e}")
  assert diff <= 1e-5


@pytest.mark.parametrize("spec", [PARENT, CHILD], ids=["parent", "rslora_child"])
def test_peft_export_loads_in_real_peft_and_matches(tmp_path, spec):
  model, params = randomised_base()
  adapter = testlib.random_adapter(params, spec, 3)
  record = lora.AdapterRecord(adapter, spec, lora.fingerprint(params), "music_lm", "pop")
  folder = str(tmp_path / "pop_peft")
  peft_io.export_peft(record, folder)
  peft_model = peft.PeftModel.from_pretrained(torch_twin(params), folder).eval()
  x = testlib.tokens(2, 16)
  want = lora.apply(model, params, [lora.Active(adapter)], x)
  diff = np.abs(torch_logits(peft_model, x) - np.asarray(want)).max()
  print(f"PEFT export ({spec.use_rslora=}) vs JAX: max abs diff {diff:.2e}")
  assert diff <= 1e-4
  # And back: our import of our export is the same adapter.
  back = peft_io.import_peft(folder, params, model_family="music_lm")
  for a, b in zip(jax.tree.leaves(lora.merge(params, [back.adapter])),
                  jax.tree.leaves(lora.merge(params, [adapter]))):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_adapter_trained_in_peft_imports_and_matches(tmp_path):
  model, params = randomised_base()
  config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "ff.in"],
                           rank_pattern={"ff.in": 2}, alpha_pattern={"q_proj": 3.0})
  peft_model = peft.get_peft_model(torch_twin(params), config)
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "lora_" in name:
        p.normal_(0.0, 0.3)  # B too: with B = 0 parity is trivial
  peft_model.save_pretrained(str(tmp_path / "from_peft"))
  record = peft_io.import_peft(str(tmp_path / "from_peft"), params, model_family="music_lm")
  assert record.targets()["blocks.0.ff.in"][2] == 2
  x = testlib.tokens(2, 16)
  want = torch_logits(peft_model.eval(), x)
  got = lora.apply(model, params, [lora.Active(record.adapter)], x)
  diff = np.abs(want - np.asarray(got)).max()
  print(f"PEFT-trained adapter imported into JAX: max abs diff {diff:.2e}")
  assert diff <= 1e-4


def test_peft_import_refuses_what_it_cannot_represent(tmp_path):
  _, params = testlib.tiny_model()
  record = lora.AdapterRecord(testlib.random_adapter(params, PARENT, 4), PARENT, "", "music_lm")
  folder = tmp_path / "a"
  peft_io.export_peft(record, str(folder))
  cfg = json.loads((folder / "adapter_config.json").read_text())
  (folder / "adapter_config.json").write_text(json.dumps(dict(cfg, use_dora=True)))
  with pytest.raises(peft_io.PeftFormatError, match="use_dora=True"):
    peft_io.import_peft(str(folder), params, model_family="music_lm")
  (folder / "adapter_config.json").write_text(json.dumps(cfg))
  _, narrow = testlib.tiny_model(dataclasses.replace(testlib.TINY, n_layers=1))
  with pytest.raises(peft_io.PeftFormatError, match="blocks.1.* does not exist in this base"):
    peft_io.import_peft(str(folder), narrow, model_family="music_lm")
  with pytest.raises(peft_io.PeftFormatError, match="does not exist"):
    peft_io.import_peft(str(tmp_path / "nowhere"), params, model_family="music_lm")
