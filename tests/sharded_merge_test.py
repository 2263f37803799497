"""The merge on a mesh-sharded base (each device folds its own blocks) and the sharded export."""

import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from transformers import trainer_utils

from lora_jax import lora, quant, tree_paths
from lora_jax.families import music_lm
from lora_jax.interop import flax_weights, sharded_safetensors, torch_convert
from lora_jax.lora import sharded_merge
from lora_jax.models import transformer
from lora_jax.train import mesh as mesh_lib
from lora_jax.train.config import MeshConfig
from third_party.music_transformer_torch import MusicTransformer as TorchMusicTransformer
import testlib

_ROOT = pathlib.Path(__file__).parents[1]
SPEC = lora.LoraSpec(rank=4, alpha=8, target_modules=("attn.q_proj", "attn.out_proj", "ff.in",
                                                      "head"))
SPEC_2 = lora.LoraSpec(rank=2, alpha=4, target_modules=("attn.q_proj", "ff.out"))
DORA = lora.LoraSpec(rank=4, alpha=8, target_modules=("attn.q_proj", "attn.out_proj", "ff.out"),
                     use_dora=True)
DORA_2 = lora.LoraSpec(rank=2, alpha=4, target_modules=("attn.q_proj",), use_dora=True)
_COLLECTIVE = re.compile(r"all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute")


@pytest.fixture(scope="module")
def params():
  return testlib.tiny_model()[1]


@pytest.fixture(scope="module")
def adapters(params):
  return [testlib.random_adapter(params, SPEC, 1), testlib.random_adapter(params, SPEC_2, 2)]


def _sharded_base(params):
  # fsdp 4 x model 2: kernels split on rows and columns (q/ff.in P(fsdp, model), out/ff.out
  # P(model, fsdp)), so each device's delta needs its own rows of A and columns of B.
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=4, model=2))
  shardings = mesh_lib.param_shardings(music_lm.PARTITION_RULES, params, mesh)
  # From host copies: a replicated leaf put from device 0 may share that buffer, which the
  # donating merge would then delete under the caller.
  return jax.device_put(jax.tree.map(np.asarray, params), shardings), shardings


def test_sharded_merge_equals_the_unsharded_merge_and_keeps_every_sharding(params, adapters):
  weights = lora.blend_weights("additive", [0.5, 2.0])
  want = lora.merge(jax.tree.map(np.array, params), adapters, weights, donate=True)
  base, shardings = _sharded_base(params)

  compiled = sharded_merge.jit_merge(shardings, adapters).lower(base, adapters, weights).compile()
  assert not _COLLECTIVE.findall(compiled.as_text())  # each device folds its own block alone
  merged = compiled(base, adapters, weights)  # what lora.merge_sharded runs

  kernel = ("blocks_0", "attn", "q_proj", "kernel")
  assert tree_paths.flatten(base)[kernel].is_deleted()  # donated: folded in its own buffers
  for (keys, got), expected, sharding in zip(tree_paths.flatten(merged).items(),
                                             tree_paths.flatten(want).values(),
                                             tree_paths.flatten(shardings).values()):
    assert got.sharding == sharding, keys
    got, expected = np.asarray(got), np.asarray(expected)
    targeted = keys[-1] == "kernel" and keys[-2] in ("q_proj", "out_proj", "in", "out", "head")
    if targeted:
      assert not np.array_equal(expected, np.asarray(tree_paths.flatten(params)[keys]))
      # The same products per row block; XLA's dot on a narrower block may round the rank-4
      # sum differently: equal within a few float32 ulps of the kernel's scale (measured <= 2).
      tolerance = 4 * np.finfo(np.float32).eps * np.abs(expected).max()
      assert np.abs(got - expected).max() <= tolerance, keys
    else:
      np.testing.assert_array_equal(got, expected, err_msg=str(keys))  # untouched, bit for bit


@pytest.mark.parametrize("fsdp,model,blend", [(8, 1, False), (1, 8, True), (4, 2, True)])
def test_sharded_dora_merge_equals_the_unsharded_merge_with_one_psum_of_column_norms(
    params, adapters, fsdp, model, blend):
  # fsdp 8: q_proj's rows split over 8 devices, out_proj's and ff.out's columns; model 8: the
  # reverse; fsdp 4 x model 2: rows and columns of every kernel. The blend puts two DoRA adapters
  # and a plain one on q_proj, DoRA and plain on ff.out, at weights other than 1.
  dora_adapters = [testlib.random_adapter(params, DORA, 3),
                   testlib.random_adapter(params, DORA_2, 4)]
  if blend:
    chosen = dora_adapters + [adapters[1]]
    weights = lora.blend_weights("additive", [0.8, 1.5, -0.7])
  else:
    chosen, weights = dora_adapters[:1], jax.numpy.ones(1)
  want = lora.merge(jax.tree.map(np.array, params), chosen, weights, donate=True)
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=fsdp, model=model))
  shardings = mesh_lib.param_shardings(music_lm.PARTITION_RULES, params, mesh)
  base = jax.device_put(jax.tree.map(np.asarray, params), shardings)

  compiled = sharded_merge.jit_merge(shardings, chosen).lower(base, chosen, weights).compile()
  hlo = compiled.as_text()
  # The only collective: per DoRA kernel whose rows are split, one all-reduce (XLA may combine
  # several into one tuple) of the column sums of squares, [DoRA adapters on it, block columns].
  expected = []
  for keys, sharding in tree_paths.flatten(shardings).items():
    n_dora = sum(keys[:-1] in a.magnitudes() for a in chosen) if keys[-1] == "kernel" else 0
    shape = tree_paths.flatten(params)[keys].shape
    block = sharding.shard_shape(shape)
    if n_dora and shape[0] > block[0]:  # rows split
      expected.append(f"f32[{n_dora},{block[1]}]")
  reduced = [shape for line in re.findall(r"= \(?([^=]*?)\)? all-reduce\(", hlo)
             for shape in re.findall(r"f32\[\d+,\d+\]", line)]
  assert sorted(reduced) == sorted(expected) and expected
  assert set(_COLLECTIVE.findall(hlo)) == {"all-reduce"}
  merged = compiled(base, chosen, weights)

  assert tree_paths.flatten(base)[("blocks_0", "attn", "q_proj", "kernel")].is_deleted()
  for (keys, got), expected, sharding in zip(tree_paths.flatten(merged).items(),
                                             tree_paths.flatten(want).values(),
                                             tree_paths.flatten(shardings).values()):
    assert got.sharding == sharding, keys
    got, expected = np.asarray(got), np.asarray(expected)
    if keys[-1] == "kernel" and any(keys[:-1] in a.modules() for a in chosen):
      assert not np.array_equal(expected, np.asarray(tree_paths.flatten(params)[keys]))
      # Norms summed per row shard, products over narrower blocks, the same terms regrouped
      # (W g + A (w c s B) for w ((W + s A B) c - W)): within 4 float32 ulps of the kernel's
      # scale (measured at most 1.8).
      tolerance = 4 * np.finfo(np.float32).eps * np.abs(expected).max()
      assert np.abs(got - expected).max() <= tolerance, keys
    else:
      np.testing.assert_array_equal(got, expected, err_msg=str(keys))  # untouched, bit for bit


def test_sharded_merge_refuses_a_quantised_or_host_base_and_a_misshapen_magnitude(params,
                                                                                 adapters):
  dora = testlib.random_adapter(params, DORA_2, 3)
  with pytest.raises(ValueError, match="a quantised base cannot be merged sharded"):
    lora.merge_sharded(quant.quantize_tree(params, "int8", "float32"), [dora])
  with pytest.raises(ValueError, match="jax.Arrays placed on a mesh; blocks.0.attn.k_proj.bias "
                                       "is a ndarray"):
    lora.merge_sharded(jax.tree.map(np.asarray, params), adapters)
  flat = tree_paths.flatten(dora.params)
  flat[("blocks_1", "attn", "q_proj", "lora_magnitude")] = jax.numpy.ones(31)
  base, _ = _sharded_base(params)
  with pytest.raises(ValueError, match=r"blocks.1.attn.q_proj: DoRA magnitude \(31,\) does not "
                                       r"match factor B \(2, 32\)"):
    lora.merge_sharded(base, [dora.replace(params=tree_paths.unflatten(flat))])


def _torch_module(state_dict):
  """A torch module whose state dict has these names and shapes (zeros)."""
  root = torch.nn.Module()
  for name, tensor in state_dict.items():
    module = root
    *path, leaf = name.split(".")
    for part in path:
      if not hasattr(module, part):
        module.add_module(part, torch.nn.Module())
      module = getattr(module, part)
    module.register_parameter(leaf, torch.nn.Parameter(torch.zeros_like(tensor)))
  return root


def test_sharded_export_writes_hugging_face_shards_that_load_back(tmp_path, params, adapters):
  base, _ = _sharded_base(params)
  merged = lora.merge_sharded(base, adapters[:1])
  want = torch_convert.flax_to_state_dict(jax.tree.map(np.asarray, merged))
  folder = tmp_path / "merged"
  written = torch_convert.save_sharded_safetensors(merged, str(folder), 16_000, metadata={"x": "1"})

  index = json.loads((folder / sharded_safetensors.INDEX).read_text())
  shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
  assert [pathlib.Path(p).name for p in written] == shards + [sharded_safetensors.INDEX]
  assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in want.values())
  assert set(index["weight_map"]) == set(want) and set(index["weight_map"].values()) == set(shards)
  for shard in shards:
    with safetensors.safe_open(str(folder / shard), "pt") as f:
      assert f.metadata() == {"format": "pt", "x": "1"}
      names = list(f.keys())
      size = sum(4 * int(np.prod(f.get_slice(n).get_shape())) for n in names)  # all float32
    assert size <= 16_000 or len(names) == 1, shard  # a larger tensor gets a file of its own

  got = {}
  for shard in shards:  # torch reads every file
    got.update(safetensors.torch.load_file(folder / shard))
  assert got.keys() == want.keys()
  for name, tensor in want.items():
    assert torch.equal(got[name], tensor), name
  module = _torch_module(want)  # and transformers' reader of sharded checkpoints, strictly
  trainer_utils.load_sharded_checkpoint(module, str(folder), strict=True)
  for name, tensor in module.state_dict().items():
    assert torch.equal(tensor, want[name]), name
  back = torch_convert.load_torch_params(str(folder), params)  # and the project's own reader
  for keys, leaf in tree_paths.flatten(back).items():
    np.testing.assert_array_equal(leaf, np.asarray(tree_paths.flatten(merged)[keys]))

  # A second export with larger shards replaces the first: stale shard files are removed.
  torch_convert.save_sharded_safetensors(merged, str(folder), 10**9)
  assert sorted(p.name for p in folder.iterdir()) == [
      "model-00001-of-00001.safetensors", sharded_safetensors.INDEX]


@pytest.mark.parametrize("text,size", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8),
                                       ("2GiB", 2 * 2**30), ("1234", 1234), ("1.5kb", 1500)])
def test_shard_sizes_parse(text, size):
  assert sharded_safetensors.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5XB", "-1GB", "0", "GB"])
def test_bad_shard_sizes_are_refused(text):
  with pytest.raises(Exception, match="is not a size like 5GB"):
    sharded_safetensors.parse_size(text)


def test_export_torch_max_shard_size_merges_on_every_device(tmp_path):
  config = transformer.TransformerConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=2,
                                         d_ff=64, max_len=32, dropout=0.0)
  params = testlib.tiny_model(config)[1]
  base_file = tmp_path / "base.safetensors"
  flax_weights.save_params(params, str(base_file))
  spec = lora.LoraSpec(rank=2, target_modules=("q_proj", "ff.out"))
  adapter = testlib.random_adapter(params, spec, 5)
  lora.save_adapter(str(tmp_path / "pop.lora"), lora.AdapterRecord(
      adapter, spec, lora.fingerprint(params), "music_lm", "pop"))
  out = tmp_path / "shards"
  result = subprocess.run(
      [sys.executable, str(_ROOT / "launch" / "export_torch.py"),
       f"--config={_ROOT / 'configs' / 'music_transformer.py'}:tiny", f"--input={base_file}",
       f"--adapters={tmp_path / 'pop.lora'}", "--weights=0.5", "--max_shard_size=40KB",
       f"--output={out}"], cwd=_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert len(list(out.glob("model-*.safetensors"))) > 1

  twin = TorchMusicTransformer(config).eval()  # the PyTorch model loads the folder, strictly
  trainer_utils.load_sharded_checkpoint(twin, str(out), strict=True)
  x = np.arange(12).reshape(1, 12) % config.vocab_size
  want = lora.apply(transformer.MusicTransformer(config), params, [lora.Active(adapter, 0.5)], x)
  with torch.no_grad():
    got = twin(torch.as_tensor(x)).numpy()
  assert np.abs(got - np.asarray(want)).max() < 1e-5
