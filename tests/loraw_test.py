"""LoRAW checkpoints and ComfyUI names: bit-exact round trips, and the torch twin with a LoRAW file
applied by hand (LoRAW's own forward) against lora_jax's logits."""

import fractions

import jax
import numpy as np
import pytest
import safetensors.torch
import torch

from lora_jax import lora, tree_paths
from lora_jax.interop import comfyui, loraw
import peft_interop_test
import testlib

SPEC = lora.LoraSpec(rank=4, alpha=6, target_modules=("attn.q_proj", "attn.v_proj", "ff.in"))
DORA = lora.LoraSpec(rank=2, alpha=4, use_dora=True, target_modules=("attn.q_proj", "ff.out"))


def same_adapter(got: lora.Adapter, want: lora.Adapter):
  for tree_got, tree_want in ((got.params, want.params), (got.scales, want.scales)):
    got_flat, want_flat = tree_paths.flatten(tree_got), tree_paths.flatten(tree_want)
    assert got_flat.keys() == want_flat.keys()
    for k in want_flat:
      np.testing.assert_array_equal(got_flat[k], want_flat[k], err_msg=str(k))


def apply_by_hand(twin, state: dict, alpha: float, multiplier: float, prefix: str = ""):
  """LoRAW's LoRAModule.forward on the twin's layers, written out from its source."""
  modules = dict(twin.named_modules())
  stems = {k[len(prefix):].rsplit("/", 1)[0] for k in state}
  for stem in stems:
    down, up = state[f"{prefix}{stem}/lora_down.weight"], state[f"{prefix}{stem}/lora_up.weight"]
    mag = state.get(f"{prefix}{stem}/dora_mag.weight")
    layer = modules[stem.replace("/", ".")]
    scale = alpha / down.shape[0]

    def hook(module, inputs, out, down=down, up=up, mag=mag, scale=scale):
      lx = out + (inputs[0] @ down.T @ up.T) * scale * multiplier
      if mag is None:
        return lx
      v = module.weight + (up @ down) * scale
      return mag.view(-1) / torch.linalg.norm(v, dim=1) * lx

    layer.register_forward_hook(hook)
  return twin


def test_loraw_round_trip_is_bit_exact_and_matches_loraw_forward(tmp_path):
  model, params = peft_interop_test.randomised_base()
  adapter = testlib.random_adapter(params, SPEC, 3)
  record = lora.AdapterRecord(adapter, SPEC, lora.fingerprint(params), "music_lm", "pop")
  path = str(tmp_path / "pop.ckpt")
  alpha, rank = loraw.write(record, path)
  assert (alpha, rank) == (6.0, 4)
  state = torch.load(path, weights_only=True)
  assert state["blocks/1/ff/in/lora_down.weight"].shape == (4, 32)  # [r, in]
  assert state["blocks/1/ff/in/lora_up.weight"].shape == (48, 4)  # [out, r]
  assert all(v.dtype == torch.float32 for v in state.values())
  back = loraw.read(path, params, alpha=alpha, rank=rank)
  same_adapter(back.adapter, adapter)

  x = testlib.tokens(2, 16)
  half = loraw.read(path, params, alpha=alpha, multiplier=0.5)
  want = lora.apply(model, params, [lora.Active(half.adapter)], x)
  twin = apply_by_hand(peft_interop_test.torch_twin(params), state, alpha, 0.5)
  diff = np.abs(peft_interop_test.torch_logits(twin, x) - np.asarray(want)).max()
  print(f"LoRAW file applied by hand in torch vs JAX: max abs diff {diff:.2e}")
  assert diff <= 1e-4
  assert np.abs(np.asarray(want) - np.asarray(model.apply({"params": params}, x))).max() > 0.05


def test_prefix_and_refusals(tmp_path):
  _, params = testlib.tiny_model()
  adapter = testlib.random_adapter(params, SPEC, 3)
  record = lora.AdapterRecord(adapter, SPEC, "", "music_lm")
  path = str(tmp_path / "dit.ckpt")
  loraw.write(record, path, prefix=loraw.STABLE_AUDIO_PREFIX)
  assert "model/model/blocks/0/attn/q_proj/lora_up.weight" in torch.load(path, weights_only=True)
  same_adapter(loraw.read(path, params, alpha=6, prefix=loraw.STABLE_AUDIO_PREFIX).adapter,
               adapter)
  with pytest.raises(loraw.LorawFormatError, match="is no dense layer of this base"):
    loraw.read(path, params, alpha=6)
  uneven = lora.LoraSpec(rank=4, alpha=6, target_modules=("q_proj", "ff.in"),
                         rank_pattern={"ff": 2})
  uneven_adapter = testlib.random_adapter(params, uneven, 1)
  with pytest.raises(loraw.LorawFormatError, match="one alpha/rank for every module"):
    loraw.write(lora.AdapterRecord(uneven_adapter, uneven, "", "music_lm"), path)
  torch.save({"blocks/0/attn/q_proj/lora_down.weight": fractions.Fraction(1, 3)}, path)
  with pytest.raises(ValueError, match="this file needs pickle to load; lora_jax never unpickles"):
    loraw.read(path, params, alpha=6)
  state = {f"blocks/0/attn/q_proj/{k}": torch.zeros(s) for k, s in
           (("lora_down.weight", (4, 31)), ("lora_up.weight", (32, 4)))}
  torch.save(state, path)
  with pytest.raises(loraw.LorawFormatError, match="31x32 but the base kernel is 32x32"):
    loraw.read(path, params, alpha=6)


def test_dora_loraw_file_where_layers_have_no_bias(tmp_path):
  model, params = peft_interop_test.randomised_base()
  flat = tree_paths.flatten(params)
  targets = lora.resolve(DORA, params)
  for t in targets:  # LoRAW's DoRA scales the bias too; without one it is PEFT's DoRA exactly
    flat[t.keys + ("bias",)] = np.zeros_like(flat[t.keys + ("bias",)])
  params = tree_paths.unflatten(flat)
  adapter = peft_interop_test.random_dora_adapter(params, DORA, 7)
  record = lora.AdapterRecord(adapter, DORA, "", "music_lm")
  path = str(tmp_path / "dora.ckpt")
  with pytest.raises(loraw.LorawFormatError, match="needs the base"):
    loraw.write(record, path)
  alpha, rank = loraw.write(record, path, base_params=params)
  state = torch.load(path, weights_only=True)
  assert state["blocks/0/ff/out/dora_mag.weight"].shape == (32, 1)
  back = loraw.read(path, params, alpha=alpha, rank=rank)
  assert back.spec.use_dora
  same_adapter(back.adapter, adapter)
  x = testlib.tokens(2, 16)
  want = lora.apply(model, params, [lora.Active(back.adapter)], x)
  twin = apply_by_hand(peft_interop_test.torch_twin(params), state, alpha, 1.0)
  diff = np.abs(peft_interop_test.torch_logits(twin, x) - np.asarray(want)).max()
  print(f"LoRAW DoRA file applied by hand in torch vs JAX: max abs diff {diff:.2e}")
  assert diff <= 1e-4
  _, biased = peft_interop_test.randomised_base()
  with pytest.raises(loraw.LorawFormatError, match="has a bias: LoRAW's DoRA scales it"):
    loraw.read(path, biased, alpha=alpha)
  with pytest.raises(loraw.LorawFormatError, match="multiplier 0.5 scales the delta"):
    loraw.read(path, params, alpha=alpha, multiplier=0.5)


def test_comfyui_naming(tmp_path):
  _, params = testlib.tiny_model()
  adapter = testlib.random_adapter(params, SPEC, 3)
  path = str(tmp_path / "pop.safetensors")
  comfyui.write_comfyui(lora.AdapterRecord(adapter, SPEC, "", "music_lm"), path)
  tensors = safetensors.torch.load_file(path)
  a, b, scale = adapter.modules()[("blocks_1", "ff", "in")]
  stem = "lora_unet_blocks_1_ff_in"
  np.testing.assert_array_equal(tensors[f"{stem}.lora_down.weight"].numpy(), np.asarray(a).T)
  np.testing.assert_array_equal(tensors[f"{stem}.lora_up.weight"].numpy(), np.asarray(b).T)
  assert tensors[f"{stem}.alpha"].item() / a.shape[1] == pytest.approx(float(scale))
  assert len(tensors) == 3 * 6


def test_convert_adapter_launch_round_trips_on_the_shipped_base(tmp_path):
  import pathlib
  import subprocess
  import sys
  from lora_jax.hierarchy import base_file
  root = pathlib.Path(__file__).parents[1]
  shipped = root / "assets" / "base_model" / "base_model.safetensors"
  base = base_file.load_model(str(shipped))
  spec = lora.LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "v_proj"))
  adapter = testlib.random_adapter(base.params, spec, 2)
  lora.save_adapter(str(tmp_path / "pop.lora"),
                    lora.AdapterRecord(adapter, spec, base.fingerprint, "music_lm", "pop"))

  def run(*args):
    result = subprocess.run([sys.executable, str(root / "launch" / "convert_adapter.py"), *args],
                            cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stderr

  log = run("--to=loraw", f"--input={tmp_path / 'pop.lora'}", f"--output={tmp_path / 'pop.ckpt'}",
            f"--input_base={shipped}")
  assert "LoRAW config: rank 4, alpha 8, multiplier 1" in log
  run("--to=lora", f"--input={tmp_path / 'pop.ckpt'}", f"--output={tmp_path / 'back.lora'}",
      f"--input_base={shipped}", "--alpha=8")
  back = lora.load_adapter(str(tmp_path / "back.lora"), base.params)
  same_adapter(back.adapter, adapter)
  assert back.base_fingerprint == base.fingerprint
  run("--to=comfyui", f"--input={tmp_path / 'pop.lora'}",
      f"--output={tmp_path / 'pop_comfyui.safetensors'}")
  assert "lora_unet_blocks_3_attn_v_proj.alpha" in safetensors.torch.load_file(
      str(tmp_path / "pop_comfyui.safetensors"))


def test_duv_family_loraw_and_peft_dora(tmp_path):
  import peft
  from lora_jax.interop import peft as peft_io
  from lora_jax.interop import torch_convert
  from third_party import phrase_transformer_torch
  import phrase_transformer_test as ptt
  model, params = ptt._model()
  params = jax.tree.map(lambda p: p + 0.05 * np.sign(p), params)  # no zero biases
  twin = lambda: phrase_transformer_torch.PhraseTransformer(ptt.TINY).eval()
  x, mask, written = ptt._inputs()

  def torch_out(module):  # real notes only; velocity / 127, so both outputs are of order 1
    with torch.no_grad():
      out = module(*(torch.as_tensor(a) for a in (x, mask.astype(np.float32), written)))
    return np.stack([out["velocity"].numpy() / 127.0, out["dur_beats"].numpy()])[:, mask]

  def jax_out(adapter):
    out = lora.apply(model, params, [lora.Active(adapter)], x, mask, written)
    return np.stack([np.asarray(out["velocity"]) / 127.0, np.asarray(out["dur_beats"])])[:, mask]

  spec = lora.LoraSpec(rank=4, alpha=8, target_modules=("attn.q_proj", "attn.v_proj", "ff.in"))
  adapter = testlib.random_adapter(params, spec, 5)
  path = str(tmp_path / "duv.ckpt")
  alpha, rank = loraw.write(lora.AdapterRecord(adapter, spec, "", "duv"), path)
  same_adapter(loraw.read(path, params, alpha=alpha, rank=rank, model_family="duv").adapter,
               adapter)
  base_twin = twin()
  base_twin.load_state_dict(torch_convert.flax_to_state_dict(params), strict=True)
  by_hand = apply_by_hand(base_twin, torch.load(path, weights_only=True), alpha, 1.0)
  diff = np.abs(torch_out(by_hand) - jax_out(adapter)).max()
  print(f"duv: LoRAW file applied by hand in torch vs JAX: max abs diff {diff:.2e}")
  assert diff <= 1e-4

  dora_spec = lora.LoraSpec(rank=4, alpha=8, use_dora=True, target_modules=("q_proj", "ff.out"))
  dora_adapter = peft_interop_test.random_dora_adapter(params, dora_spec, 9)
  folder = str(tmp_path / "duv_peft")
  peft_io.export_peft(lora.AdapterRecord(dora_adapter, dora_spec, "", "duv"), folder)
  base_twin = twin()
  base_twin.load_state_dict(torch_convert.flax_to_state_dict(params), strict=True)
  peft_model = peft.PeftModel.from_pretrained(base_twin, folder).eval()
  want = jax_out(dora_adapter)
  assert np.abs(want - jax_out(testlib.random_adapter(params, spec, 5))).max() > 0.1
  diff = np.abs(torch_out(peft_model) - want).max()
  print(f"duv: DoRA PEFT export vs JAX: max abs diff {diff:.2e}")
  assert diff <= 1e-4


def test_loraw_dora_on_biased_layers_merges_as_loraw_computes(tmp_path):
  # LoRAW's DoRA scales the bias too, and its multiplier scales the delta but not the norm: no
  # adapter form here, but the merged model is LoRAW's forward exactly.
  model, params = peft_interop_test.randomised_base()  # every layer has a nonzero bias
  adapter = peft_interop_test.random_dora_adapter(params, DORA, 4)
  state = {}
  for keys, (a, b, _) in adapter.modules().items():
    stem = tree_paths.dotted(keys).replace(".", "/")
    state[f"{stem}/lora_down.weight"] = torch.from_numpy(np.asarray(a, np.float32).T.copy())
    state[f"{stem}/lora_up.weight"] = torch.from_numpy(np.asarray(b, np.float32).T.copy())
    m = np.asarray(adapter.magnitudes()[keys], np.float32)
    state[f"{stem}/dora_mag.weight"] = torch.from_numpy(m[:, None].copy())
    state[f"{stem}/dora_mag.bias"] = torch.zeros(m.shape[0])
  path = str(tmp_path / "biased.ckpt")
  torch.save(state, path)
  with pytest.raises(loraw.LorawFormatError, match="has a bias"):
    loraw.read(path, params, alpha=4)
  x = testlib.tokens(2, 16)
  for multiplier in (1.0, 0.6):
    merged = loraw.merged_params(path, params, alpha=4, multiplier=multiplier)
    twin = apply_by_hand(peft_interop_test.torch_twin(params), state, 4, multiplier)
    want = peft_interop_test.torch_logits(twin, x)
    got = np.asarray(model.apply({"params": merged}, x, deterministic=True))
    diff = np.abs(got - want).max()
    print(f"biased LoRAW DoRA, multiplier {multiplier}: merged vs LoRAW's forward {diff:.2e}")
    assert diff <= 1e-4
  # The bias moved (LoRAW's g * b), so this is not PEFT's DoRA on the same factors.
  peft_merged = tree_paths.flatten(lora.merge(params, [adapter]))
  flat = tree_paths.flatten(loraw.merged_params(path, params, alpha=4))
  np.testing.assert_allclose(flat[("blocks_0", "attn", "q_proj", "kernel")],
                             peft_merged[("blocks_0", "attn", "q_proj", "kernel")], rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(flat[("blocks_0", "attn", "q_proj", "bias")],
                         peft_merged[("blocks_0", "attn", "q_proj", "bias")])


def test_convert_adapter_to_merged_writes_a_sized_base_file(tmp_path):
  import pathlib
  from lora_jax.hierarchy import base_file
  from lora_jax.interop import export, flax_weights, model_size
  shipped = str(pathlib.Path(__file__).parents[1] / "assets" / "base_model" /
                "base_model.safetensors")
  base = base_file.load_model(shipped)
  spec = lora.LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "ff.in"))
  adapter = testlib.random_adapter(base.params, spec, 2)
  record = lora.AdapterRecord(adapter, spec, base.fingerprint, "music_lm", "pop")
  loraw.write(record, str(tmp_path / "pop.ckpt"))
  out = str(tmp_path / "merged.safetensors")
  export.convert_adapter(str(tmp_path / "pop.ckpt"), out, "merged", base_path=shipped, alpha=8)
  meta = flax_weights.read_metadata(out)
  assert model_size.recorded(meta, "merged") is not None and meta["source"] == "pop.ckpt"
  got = tree_paths.flatten(flax_weights.load_params(out, base.params))
  want = tree_paths.flatten(lora.merge(base.params, [adapter]))
  for k, v in want.items():
    np.testing.assert_allclose(got[k], np.asarray(v), rtol=1e-6, atol=1e-6, err_msg=str(k))
