"""PyTorch <-> Flax base-weight conversion: parity with the torch twin, round trips, strictness."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch

from lora_jax import tree_paths
from lora_jax.interop import flax_weights, torch_convert
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.models import transformer
from lora_jax.models.transformer import MusicTransformer
from lora_jax.train import config as config_lib
from third_party.music_transformer_torch import MusicTransformer as TorchMusicTransformer

_CONFIG_FILE = pathlib.Path(__file__).parents[1] / "configs" / "music_transformer.py"


def _tiny_config():
  spec = importlib.util.spec_from_file_location("music_transformer_config", _CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_lib.from_mapping(transformer.TransformerConfig, module.get_config("tiny").model,
                                 "config.model")


@pytest.fixture(scope="module")
def config():
  return _tiny_config()


@pytest.fixture(scope="module")
def abstract(config):
  return transformer.abstract_params(config)


@pytest.fixture()
def torch_model(config):
  torch.manual_seed(0)
  model = TorchMusicTransformer(config).eval()
  with torch.no_grad():
    for p in model.parameters():  # biases and LayerNorm weights too: defaults would hide bugs
      p.normal_(0.0, 0.5)
  return model


def _random_flax_params(abstract, dtype=jnp.float32):
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(
      treedef, [0.5 * jax.random.normal(k, l.shape, dtype) for k, l in zip(keys, leaves)])


def _assert_trees_identical(a, b):
  fa, fb = tree_paths.flatten(a), tree_paths.flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.dtype == y.dtype, k
    assert x.shape == y.shape, k
    assert x.tobytes() == y.tobytes(), k


def test_state_dict_keys_follow_flax_paths(torch_model, abstract):
  names = torch_convert.torch_names(abstract)
  assert names["blocks.0.attn.q_proj.kernel"] == "blocks.0.attn.q_proj.weight"
  assert names["blocks.1.ff.in.kernel"] == "blocks.1.ff.in.weight"
  assert names["ln_f.scale"] == "ln_f.weight"
  assert names["tok_emb.embedding"] == "tok_emb.weight"
  assert set(names.values()) == set(torch_model.state_dict())


def test_torch_and_flax_logits_match(config, abstract, torch_model):
  params = torch_convert.state_dict_to_flax(torch_model.state_dict(), abstract)
  tokens = torch.randint(0, config.vocab_size, (2, config.max_len), generator=torch.Generator()
                         .manual_seed(2))
  with torch.no_grad():
    want = torch_model(tokens).numpy()
  apply = lambda p, t: MusicTransformer(config).apply({"params": p}, t, deterministic=True)
  for fn in (apply, jax.jit(apply)):
    got = np.asarray(fn(params, jnp.asarray(tokens.numpy())))
    diff = float(np.abs(got - want).max())
    print(f"max abs logit diff torch vs flax: {diff:.3g}")
    assert got.dtype == np.float32
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_flax_torch_flax_round_trip_is_bit_identical(abstract, dtype):
  params = _random_flax_params(abstract, dtype)
  state_dict = torch_convert.flax_to_state_dict(params)
  assert state_dict["blocks.0.attn.q_proj.weight"].dtype == (
      torch.bfloat16 if dtype == jnp.bfloat16 else torch.float32)
  _assert_trees_identical(params, torch_convert.state_dict_to_flax(state_dict, abstract))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_file_round_trip(tmp_path, abstract, suffix, dtype):
  params = _random_flax_params(abstract, dtype)
  path = str(tmp_path / f"base{suffix}")
  torch_convert.save_torch_file(params, path)
  assert [p.name for p in tmp_path.iterdir()] == [f"base{suffix}"]  # no temp file left behind
  _assert_trees_identical(params, torch_convert.load_torch_params(path, abstract))


def test_flax_native_file_round_trip(tmp_path, abstract):
  params = _random_flax_params(abstract, jnp.bfloat16)
  path = str(tmp_path / "base.safetensors")
  flax_weights.save_params(params, path, {"source": "test"})
  with safetensors.safe_open(path, framework="np") as f:
    assert "blocks.0.attn.q_proj.kernel" in f.keys()
  assert flax_weights.read_metadata(path) == {"source": "test"}
  loaded = flax_weights.load_params(path, abstract)
  assert np.asarray(loaded["blocks_0"]["attn"]["q_proj"]["kernel"]).dtype == ml_dtypes.bfloat16
  _assert_trees_identical(params, loaded)


def test_lightning_ckpt_with_model_prefix(tmp_path, abstract, torch_model):
  want = torch_convert.state_dict_to_flax(torch_model.state_dict(), abstract)
  ckpt = {"state_dict": {f"model.{k}": v for k, v in torch_model.state_dict().items()},
          "epoch": 3, "global_step": 100}
  path = str(tmp_path / "last.ckpt")
  torch.save(ckpt, path)
  _assert_trees_identical(want, torch_convert.load_torch_params(path, abstract))
  _assert_trees_identical(want, torch_convert.load_torch_params(path, abstract, prefix="model."))


def test_ckpt_with_prefix_and_missing_key_names_the_stripped_key(tmp_path, abstract, torch_model):
  sd = {f"model.{k}": v for k, v in torch_model.state_dict().items() if k != "ln_f.bias"}
  path = str(tmp_path / "last.ckpt")
  torch.save({"state_dict": sd}, path)
  with pytest.raises(WeightFileError, match=r"^missing keys in last.ckpt: ln_f.bias$"):
    torch_convert.load_torch_params(path, abstract)


def test_two_full_copies_under_different_prefixes_is_ambiguous(tmp_path, abstract, torch_model):
  sd = torch_model.state_dict()
  ckpt = {"state_dict": {**{f"model.{k}": v for k, v in sd.items()},
                         **{f"ema.{k}": v for k, v in sd.items()}}}
  path = str(tmp_path / "ema.ckpt")
  torch.save(ckpt, path)
  with pytest.raises(WeightFileError, match="ambiguous key prefix.*'ema.', 'model.'"):
    torch_convert.load_torch_params(path, abstract)
  want = torch_convert.state_dict_to_flax(sd, abstract)
  _assert_trees_identical(want, torch_convert.load_torch_params(path, abstract, prefix="ema."))


def test_detected_prefix_with_keys_outside_it_is_an_error(tmp_path, abstract, torch_model):
  sd = {f"model.{k}": v for k, v in torch_model.state_dict().items()}
  sd["loss.weight"] = torch.ones(3)
  path = str(tmp_path / "last.ckpt")
  torch.save({"state_dict": sd}, path)
  with pytest.raises(WeightFileError, match=r"under prefix 'model.' and also keys outside it: "
                     r"loss.weight; pass the prefix"):
    torch_convert.load_torch_params(path, abstract)
  torch_convert.load_torch_params(path, abstract, prefix="model.")


def _error_for(tmp_path, abstract, state_dict) -> str:
  path = str(tmp_path / "base.pt")
  torch.save(state_dict, path)
  with pytest.raises(WeightFileError) as info:
    torch_convert.load_torch_params(path, abstract)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_missing_key_is_named(tmp_path, abstract, torch_model):
  sd = torch_model.state_dict()
  del sd["blocks.1.attn.q_proj.weight"]
  assert _error_for(tmp_path, abstract, sd) == (
      "missing keys in base.pt: blocks.1.attn.q_proj.weight")


def test_extra_key_is_named(tmp_path, abstract, torch_model):
  sd = torch_model.state_dict()
  sd["blocks.2.ln1.weight"] = torch.ones(32)
  assert _error_for(tmp_path, abstract, sd) == "unexpected keys in base.pt: blocks.2.ln1.weight"


def test_wrong_shape_is_named(tmp_path, abstract, torch_model):
  sd = torch_model.state_dict()
  sd["head.weight"] = torch.zeros(65, 32)
  assert _error_for(tmp_path, abstract, sd) == (
      "shape mismatch in base.pt: head.weight is (65, 32), expected (64, 32)")


def test_several_missing_keys_are_counted(tmp_path, abstract, torch_model):
  sd = {k: v for k, v in torch_model.state_dict().items() if not k.startswith("blocks.1.")}
  message = _error_for(tmp_path, abstract, sd)
  assert message.startswith("missing keys in base.pt: blocks.1.")
  assert message.endswith("(+15 more)")  # 16 leaves per block


def test_flax_native_file_is_checked(tmp_path, abstract):
  params = _random_flax_params(abstract)
  del params["ln_f"]["bias"]
  path = str(tmp_path / "base.safetensors")
  flax_weights.save_params(params, path)
  with pytest.raises(WeightFileError, match=r"^missing keys in base.safetensors: ln_f.bias$"):
    flax_weights.load_params(path, abstract)


class _NotATensor:
  """An arbitrary object: unpickling it would run code a checkpoint may not carry."""


def test_pickled_object_is_refused(tmp_path, abstract):
  path = str(tmp_path / "evil.pt")
  torch.save({"weights": _NotATensor()}, path)
  with pytest.raises(WeightFileError,
                     match=r"evil.pt: this file needs pickle to load; lora_jax never unpickles; "
                           r"re-save it as safetensors or a weights-only state dict \(.*_NotATensor"):
    torch_convert.load_torch_params(path, abstract)


def test_non_tensor_entries_are_refused(tmp_path, abstract, torch_model):
  sd = torch_model.state_dict()
  sd["epoch"] = 3
  assert _error_for(tmp_path, abstract, sd) == (
      "base.pt holds non-tensor entries: epoch is int")
