"""ComfyUI's LoRA naming with DoRA: the `.dora_scale` a file holds, put through ComfyUI's own
merged-weight formula (comfy/weight_adapter/base.py weight_decompose, re-implemented here in
torch from its source), gives lora_jax's merged kernels; reading the file back gives the adapter."""

import numpy as np
import pytest
import safetensors.torch
import torch

from lora_jax import lora, tree_paths
from lora_jax.interop import comfyui
import peft_interop_test
import testlib

DORA = lora.LoraSpec(rank=2, alpha=4, use_dora=True, target_modules=("attn.q_proj", "ff.in"))


def comfy_merged(weight: torch.Tensor, up, down, alpha, dora_scale) -> torch.Tensor:
  """ComfyUI's LoRA patch of one [out, in] weight at strength 1 (LoRAAdapter.calculate_weight
  with weight_decompose), in float32."""
  diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(weight.shape)
  weight_calc = weight + diff * (alpha / down.shape[0])
  if dora_scale.shape[0] == weight_calc.shape[0]:  # wd_on_output_axis: the base weight's norm
    norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
  else:
    norm = weight_calc.transpose(0, 1).reshape(weight_calc.shape[1], -1).norm(
        dim=1, keepdim=True).transpose(0, 1)
  norm = norm + torch.finfo(weight.dtype).eps
  return weight_calc * (dora_scale / norm)


def test_comfyui_dora_file_merges_as_lora_jax_and_reads_back(tmp_path):
  _, params = peft_interop_test.randomised_base()  # biased layers: ComfyUI patches weights only
  adapter = peft_interop_test.random_dora_adapter(params, DORA, 5)
  record = lora.AdapterRecord(adapter, DORA, lora.fingerprint(params), "music_lm", "d")
  path = str(tmp_path / "dora.safetensors")
  with pytest.raises(comfyui.LorawFormatError, match="needs the base"):
    comfyui.write_comfyui(record, path)
  comfyui.write_comfyui(record, path, base_params=params)
  tensors = safetensors.torch.load_file(path)
  flat = tree_paths.flatten(params)
  merged = tree_paths.flatten(lora.merge(params, [adapter]))
  stems = {("blocks_0", "attn", "q_proj"): "lora_unet_blocks_0_attn_q_proj",
           ("blocks_1", "ff", "in"): "lora_unet_blocks_1_ff_in"}
  for keys, stem in stems.items():
    out_dim = flat[keys + ("kernel",)].shape[1]
    assert tensors[f"{stem}.dora_scale"].shape == (out_dim, 1)
    got = comfy_merged(torch.from_numpy(np.asarray(flat[keys + ("kernel",)]).T.copy()),
                       tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"],
                       tensors[f"{stem}.alpha"].item(), tensors[f"{stem}.dora_scale"])
    want = np.asarray(merged[keys + ("kernel",)]).T
    diff = np.abs(got.numpy() - want).max()
    print(f"{stem}: ComfyUI's merged weight vs lora_jax's merge, max abs diff {diff:.2e}")
    assert diff <= 1e-5
  # Read back: factors and scales exactly, the magnitude to float32 rounding; the same merge.
  back = comfyui.read_comfyui(path, params)
  assert back.spec.use_dora and back.adapter.modules().keys() == adapter.modules().keys()
  for keys, (a, b, s) in adapter.modules().items():
    a2, b2, s2 = back.adapter.modules()[keys]
    np.testing.assert_array_equal(np.asarray(a2), np.asarray(a))
    np.testing.assert_array_equal(np.asarray(b2), np.asarray(b))
    assert float(s2) == pytest.approx(float(s), rel=1e-7)
    np.testing.assert_allclose(np.asarray(back.adapter.magnitudes()[keys]),
                               np.asarray(adapter.magnitudes()[keys]), rtol=2e-6)
  again = tree_paths.flatten(lora.merge(params, [back.adapter]))
  for k in merged:
    np.testing.assert_allclose(np.asarray(again[k]), np.asarray(merged[k]), rtol=1e-5, atol=1e-6)


def test_comfyui_plain_lora_reads_back_bit_exactly_and_input_axis_dora_is_refused(tmp_path):
  _, params = testlib.tiny_model()
  spec = lora.LoraSpec(rank=4, alpha=6, target_modules=("attn.q_proj", "ff.in"))
  adapter = testlib.random_adapter(params, spec, 3)
  path = str(tmp_path / "pop.safetensors")
  comfyui.write_comfyui(lora.AdapterRecord(adapter, spec, "", "music_lm"), path)
  back = comfyui.read_comfyui(path, params)
  assert not back.spec.use_dora
  for keys, (a, b, s) in adapter.modules().items():
    a2, b2, s2 = back.adapter.modules()[keys]
    np.testing.assert_array_equal(np.asarray(a2), np.asarray(a))
    np.testing.assert_array_equal(np.asarray(b2), np.asarray(b))
    assert float(s2) == float(s)
  tensors = safetensors.torch.load_file(path)
  stem = "lora_unet_blocks_0_ff_in"
  tensors[f"{stem}.dora_scale"] = torch.ones(1, tensors[f"{stem}.lora_down.weight"].shape[1])
  safetensors.torch.save_file(tensors, path)
  with pytest.raises(comfyui.LorawFormatError, match="only the output-axis form"):
    comfyui.read_comfyui(path, params)
  tensors.pop(f"{stem}.dora_scale")
  tensors["lora_unet_blocks_9_ff_in.alpha"] = torch.tensor(1.0)
  safetensors.torch.save_file(tensors, path)
  with pytest.raises(comfyui.LorawFormatError, match="lora_unet_blocks_9_ff_in is no dense layer"):
    comfyui.read_comfyui(path, params)
