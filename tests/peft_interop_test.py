"""Parity with real PyTorch and real PEFT: merged exports and PEFT adapters, both directions."""

import dataclasses
import fractions
import json

import jax
import numpy as np
import peft
import pytest
import safetensors.numpy
import torch

from lora_jax import lora, tree_paths
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
  with pytest.raises(peft_io.PeftFormatError, match="DoRA magnitude.*use_dora=True"):
    peft_io.import_peft(str(folder), params, model_family="music_lm")
  (folder / "adapter_config.json").write_text(json.dumps(cfg))
  _, narrow = testlib.tiny_model(dataclasses.replace(testlib.TINY, n_layers=1))
  with pytest.raises(peft_io.PeftFormatError, match="blocks.1.* does not exist in this base"):
    peft_io.import_peft(str(folder), narrow, model_family="music_lm")
  with pytest.raises(peft_io.PeftFormatError, match="does not exist"):
    peft_io.import_peft(str(tmp_path / "nowhere"), params, model_family="music_lm")


DORA = lora.LoraSpec(rank=4, alpha=8, use_dora=True, target_modules=("attn.q_proj", "ff.in"),
                     rank_pattern={"ff": 2})


def random_dora_adapter(params, spec, seed):
  adapter = testlib.random_adapter(params, spec, seed)  # random A, B (and magnitude, replaced)
  targets = lora.resolve(spec, params)
  fresh = lora.init_adapter(targets, spec, jax.random.key(seed), base_params=params)
  flat = tree_paths.flatten(adapter.params)
  for keys, m in fresh.magnitudes().items():
    noise = jax.random.normal(jax.random.key(seed + len(keys)), m.shape)
    flat[keys + ("lora_magnitude",)] = m * (1.0 + 0.3 * noise)
  return adapter.replace(params=tree_paths.unflatten(flat))


def test_dora_export_loads_in_real_peft_and_matches(tmp_path):
  model, params = randomised_base()
  adapter = random_dora_adapter(params, DORA, 5)
  record = lora.AdapterRecord(adapter, DORA, lora.fingerprint(params), "music_lm", "dora")
  folder = str(tmp_path / "dora_peft")
  peft_io.export_peft(record, folder, base_model_name="base.safetensors")
  config = json.loads((tmp_path / "dora_peft" / "adapter_config.json").read_text())
  assert config["use_dora"] and config["base_model_name_or_path"] == "base.safetensors"
  peft_model = peft.PeftModel.from_pretrained(torch_twin(params), folder).eval()
  x = testlib.tokens(2, 16)
  want = lora.apply(model, params, [lora.Active(adapter)], x)
  base = model.apply({"params": params}, x)
  assert np.abs(np.asarray(want) - np.asarray(base)).max() > 0.1  # DoRA changed the logits
  diff = np.abs(torch_logits(peft_model, x) - np.asarray(want)).max()
  print(f"DoRA PEFT export vs JAX: max abs diff {diff:.2e}")
  assert diff <= 1e-4
  back = peft_io.import_peft(folder, params, model_family="music_lm")
  for (k, a), b in zip(tree_paths.flatten(back.adapter.params).items(),
                       tree_paths.flatten(adapter.params).values()):
    np.testing.assert_array_equal(a, b, err_msg=str(k))


def test_dora_adapter_made_in_peft_imports_and_matches(tmp_path):
  model, params = randomised_base()
  config = peft.LoraConfig(r=4, lora_alpha=12, use_dora=True, target_modules=["q_proj", "ff.out"],
                           rank_pattern={"ff.out": 2})
  peft_model = peft.get_peft_model(torch_twin(params), config)
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "lora_magnitude_vector" in name:
        p.mul_(1.0 + 0.3 * torch.randn_like(p))
      elif "lora_" in name:
        p.normal_(0.0, 0.3)
  peft_model.save_pretrained(str(tmp_path / "from_peft"))
  record = peft_io.import_peft(str(tmp_path / "from_peft"), params, model_family="music_lm")
  assert record.spec.use_dora and len(record.adapter.magnitudes()) == 4
  x = testlib.tokens(2, 16)
  want = torch_logits(peft_model.eval(), x)
  got = lora.apply(model, params, [lora.Active(record.adapter)], x)
  diff = np.abs(want - np.asarray(got)).max()
  print(f"PEFT-made DoRA adapter imported into JAX: max abs diff {diff:.2e}")
  assert diff <= 1e-4
  merged = model.apply({"params": lora.merge(params, [record.adapter])}, x)
  assert np.abs(want - np.asarray(merged)).max() <= 1e-4


def test_peft_import_honours_target_modules_and_checks_shapes(tmp_path):
  _, params = testlib.tiny_model()
  spec = lora.LoraSpec(rank=2, alpha=4, target_modules=("q_proj", "v_proj"))
  record = lora.AdapterRecord(testlib.random_adapter(params, spec, 4), spec, "", "music_lm")
  folder = tmp_path / "a"
  peft_io.export_peft(record, str(folder))
  cfg = json.loads((folder / "adapter_config.json").read_text())
  write = lambda **kw: (folder / "adapter_config.json").write_text(json.dumps(dict(cfg, **kw)))
  write(target_modules=["query_key_value"])
  with pytest.raises(peft_io.PeftFormatError, match="match no module of this base"):
    peft_io.import_peft(str(folder), params, model_family="music_lm")
  write(target_modules=["q_proj"])  # v_proj's factors are in the file but PEFT would not load them
  with pytest.raises(peft_io.PeftFormatError, match="blocks.0.attn.v_proj .*do not name"):
    peft_io.import_peft(str(folder), params, model_family="music_lm")
  write(target_modules=r".*\.(q|v|k)_proj")  # a regex: k_proj is named but has no factors
  with pytest.raises(peft_io.PeftFormatError, match="k_proj .*holds no factors"):
    peft_io.import_peft(str(folder), params, model_family="music_lm")
  write(target_modules=r".*\.(q|v|k)_proj", exclude_modules=["k_proj"])
  assert len(peft_io.import_peft(str(folder), params, model_family="music_lm").targets()) == 4
  write()
  tensors = safetensors.numpy.load_file(str(folder / "adapter_model.safetensors"))
  key = "base_model.model.blocks.0.attn.q_proj.lora_A.weight"
  tensors[key] = np.zeros((2, 31), np.float32)  # in = 31, the base has 32
  safetensors.numpy.save_file(tensors, str(folder / "adapter_model.safetensors"))
  with pytest.raises(peft_io.PeftFormatError, match="q_proj is 31x32 but the base kernel is 32x32"):
    peft_io.import_peft(str(folder), params, model_family="music_lm")


def test_pickled_peft_weights_are_refused_in_plain_words(tmp_path):
  _, params = testlib.tiny_model()
  record = lora.AdapterRecord(testlib.random_adapter(params, PARENT, 4), PARENT, "", "music_lm")
  folder = tmp_path / "a"
  peft_io.export_peft(record, str(folder))
  (folder / "adapter_model.safetensors").unlink()
  torch.save({"x": fractions.Fraction(1, 3)}, folder / "adapter_model.bin")  # a foreign global
  with pytest.raises(ValueError, match="this file needs pickle to load; lora_jax never unpickles"):
    peft_io.import_peft(str(folder), params, model_family="music_lm")
