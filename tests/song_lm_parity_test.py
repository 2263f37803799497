"""The Flax song LM against its PyTorch twin (SongGeneration's LmModel): logits of all three
streams both directions through the original's `model.pt` format, strict conversion, and the
delay pattern.

Parity bound: each float32 model is measured against a float64 run of the twin on the same
weights (logits up to about 5); the Flax model must be no further from it than twice the float32
twin's own distance, or 1e-5, whichever is larger: float32 rounding, summed in a different order
by XLA and torch, and nothing else. Measured (tiny config, weights N(0, 0.3), per stream): 0.8e-5 to
1.7e-5 for Flax, 0.8e-5 to 3.9e-5 for the float32 twin.
"""

import argparse
import functools
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lora_jax import tree_paths
from lora_jax.interop import song_lm_weights
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.models.song import delay_pattern
from lora_jax.models.song import lm as song_lm
from lora_jax.train import config as config_lib
from third_party import song_lm_torch

_SIZES = dict(code_depth=3, code_size=40, dim=32, intermediate_size=48, num_heads=4,
              num_layers=2, num_layers_sub=2, text_vocab_size=30)
_DELAYS = (0, 3, 3)
_T = 7  # code frames; the sequence holds T + 3 + 1 steps, after 4 + 4 + 4 prepended


@pytest.fixture(scope="module")
def config():
  return song_lm.SongLMConfig(**_SIZES)


@pytest.fixture(scope="module")
def torch_config():
  return song_lm_torch.SongLMConfig(**_SIZES)


@pytest.fixture(scope="module")
def abstract(config):
  return song_lm.abstract_params(config)


def _inputs(config, seed=3):
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, config.code_size + 1, (2, config.code_depth, _T))  # EOS included
  seq = np.asarray(delay_pattern.build(jnp.asarray(codes), _DELAYS, config.special_token))
  cond = {"description": (rng.integers(0, config.text_vocab_size, (2, 4)),
                          rng.integers(0, config.structure_vocab_size, (2, 4))),
          "type_info": rng.integers(0, config.text_vocab_size, (2, 4)),
          "prompt_audio": rng.integers(0, config.code_size + 2, (2, config.code_depth, 3))}
  return seq, cond


def _torch_cond(cond):
  t = lambda a: torch.from_numpy(np.asarray(a, np.int64))
  return {k: tuple(map(t, v)) if isinstance(v, tuple) else t(v) for k, v in cond.items()}


def _jax_cond(cond):
  t = lambda a: jnp.asarray(a, jnp.int32)
  return {k: tuple(map(t, v)) if isinstance(v, tuple) else t(v) for k, v in cond.items()}


def _twin_logits(model, seq, cond, dtype):
  model = model.to(dtype)
  with torch.no_grad():
    out = model(torch.from_numpy(seq.astype(np.int64)), _torch_cond(cond)).double().numpy()
  model.float()
  return out


@functools.lru_cache(maxsize=None)
def _apply(config):
  return jax.jit(lambda p, s, c: song_lm.SongLM(config).apply({"params": p}, s, c))


def _flax_logits(config, params, seq, cond):
  fn = _apply(config)
  return np.asarray(fn(params, jnp.asarray(seq, jnp.int32), _jax_cond(cond)), np.float64)


def _check_parity(config, twin, flax_params, label):
  seq, cond = _inputs(config)
  ref = _twin_logits(twin, seq, cond, torch.float64)
  twin32 = _twin_logits(twin, seq, cond, torch.float32)
  got = _flax_logits(config, flax_params, seq, cond)
  assert got.shape == ref.shape == (2, 3, seq.shape[-1], config.code_size + 1)
  scale = np.abs(ref).max()
  for q in range(config.code_depth):
    e_twin = float(np.abs(twin32[:, q] - ref[:, q]).max())
    e_flax = float(np.abs(got[:, q] - ref[:, q]).max())
    print(f"{label} stream {q}: |logits| max {scale:.3g}, float32 twin vs float64 "
          f"{e_twin:.3g}, flax vs float64 {e_flax:.3g}")
    assert e_flax <= max(2 * e_twin, 1e-5), (q, e_flax, e_twin)


def _random_params(abstract, seed):
  """N(0, 0.3) leaves; norm scales around 1, as trained ones are."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, l: (float(tree_paths.key_name(p[-1]) == "scale")
                    + 0.3 * rng.standard_normal(l.shape)).astype(np.float32), abstract)


def _randomised_twin(torch_config, seed=0):
  torch.manual_seed(seed)
  model = song_lm_torch.LmModel(torch_config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():  # norms and biases too: defaults would hide bugs
      if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      else:
        p.normal_(0.0, 0.3)
  return model


def test_keys_are_the_originals(abstract, torch_config):
  twin = song_lm_torch.LmModel(torch_config)
  ours = song_lm_weights.params_to_state_dict(
      jax.tree.map(lambda l: np.zeros(l.shape, l.dtype), abstract))
  want = {"audiolm." + k: tuple(v.shape) for k, v in twin.state_dict().items()}
  assert {k: tuple(v.shape) for k, v in ours.items()} == want
  assert "audiolm.transformer.model.layers.1.self_attn.q_proj.weight" in ours
  assert "audiolm.condition_provider.conditioners.prompt_audio.EOT_emb" in ours


def test_torch_to_flax_logits(config, torch_config, abstract, tmp_path):
  twin = _randomised_twin(torch_config)
  path = tmp_path / "model.pt"
  torch.save({"audiolm." + k: v for k, v in twin.state_dict().items()}, path)
  params = song_lm_weights.load_model_pt(str(path), abstract)
  _check_parity(config, twin, params, "torch->flax")


def test_flax_to_torch_logits(config, torch_config, abstract, tmp_path):
  params = _random_params(abstract, seed=1)
  path = tmp_path / "model.pt"
  song_lm_weights.save_model_pt(params, str(path))
  loaded = torch.load(path, weights_only=True)
  twin = song_lm_torch.LmModel(torch_config).eval()
  twin.load_state_dict({k[len("audiolm."):]: v for k, v in loaded.items()}, strict=True)
  _check_parity(config, twin, params, "flax->torch")
  back = song_lm_weights.load_model_pt(str(path), abstract)
  for k, v in tree_paths.flatten(params).items():
    assert np.array_equal(np.asarray(v), tree_paths.flatten(back)[k]), k


def test_conditions_and_streams_matter(config, abstract):
  """The prepended conditions reach all streams; stream 0 never sees streams 1-2."""
  params = _random_params(abstract, seed=2)
  seq, cond = _inputs(config)
  base = _flax_logits(config, params, seq, cond)
  other = dict(cond, type_info=(np.asarray(cond["type_info"]) + 1) % config.text_vocab_size)
  changed = _flax_logits(config, params, seq, other)
  assert np.abs(changed - base).max(axis=(0, 2, 3)).min() > 1e-3
  seq2 = seq.copy()
  seq2[:, 1:] = (seq2[:, 1:] + 1) % (config.code_size + 2)
  moved = _flax_logits(config, params, seq2, cond)
  np.testing.assert_array_equal(moved[:, 0], base[:, 0])
  assert np.abs(moved[:, 1:] - base[:, 1:]).max() > 1e-3


def _state_dict(torch_config):
  twin = song_lm_torch.LmModel(torch_config)
  return {"audiolm." + k: v for k, v in twin.state_dict().items()}


def test_missing_unknown_and_misshapen_keys_are_named(torch_config, abstract):
  sd = _state_dict(torch_config)
  del sd["audiolm.linears.1.weight"]
  with pytest.raises(WeightFileError, match=r"linears\.1\.weight"):
    song_lm_weights.state_dict_to_params(sd, abstract)
  sd = _state_dict(torch_config)
  sd["audiolm.out_norm.weight"] = torch.ones(32)
  with pytest.raises(WeightFileError, match=r"out_norm\.weight"):
    song_lm_weights.state_dict_to_params(sd, abstract)
  sd = _state_dict(torch_config)
  sd["audiolm.mlp.0.weight"] = torch.ones(32, 32)
  with pytest.raises(WeightFileError, match=r"mlp\.0\.weight"):
    song_lm_weights.state_dict_to_params(sd, abstract)
  sd = _state_dict(torch_config)
  sd["tokenizer.step"] = torch.ones(1)
  with pytest.raises(WeightFileError, match=r"tokenizer\.step"):
    song_lm_weights.state_dict_to_params(sd, abstract)
  assert song_lm_weights.state_dict_to_params(sd, abstract, ignore_other_keys=True)


def test_pickles_are_refused(tmp_path, abstract):
  path = tmp_path / "model.pt"
  torch.save({"audiolm.emb.0.weight": torch.ones(1), "cfg": argparse.Namespace(lr=1.0)}, path)
  with pytest.raises(WeightFileError, match="never unpickles"):
    song_lm_weights.load_model_pt(str(path), abstract)


def test_delay_pattern_round_trip_and_alignment():
  rng = np.random.default_rng(0)
  codes = jnp.asarray(rng.integers(0, 100, (2, 3, 6)))
  seq = delay_pattern.build(codes, _DELAYS, 101)
  assert seq.shape == (2, 3, 6 + 3 + 1)
  np.testing.assert_array_equal(delay_pattern.revert(seq, _DELAYS, 6), codes)
  mask = delay_pattern.valid_mask(_DELAYS, 6)
  assert (np.asarray(seq)[:, ~mask] == 101).all() and not (np.asarray(seq)[:, mask] == 101).any()
  # Logits at step s predict the sequence at s + 1: feeding the sequence itself as "logits" and
  # reverting must give each code from the step before it.
  shifted = jnp.concatenate([seq[:, :, 1:], seq[:, :, :1]], axis=2)[..., None]
  np.testing.assert_array_equal(delay_pattern.revert_logits(shifted, _DELAYS, 6)[..., 0], codes)
  assert delay_pattern.DELAYS == (0, 250, 250)
  with pytest.raises(ValueError, match="non-decreasing"):
    delay_pattern.build(codes, (3, 0, 0), 101)
  with pytest.raises(ValueError, match="2 delays"):
    delay_pattern.build(codes, (0, 1), 101)


def test_launch_converts_model_pt_both_ways(tmp_path):
  """launch/convert_song_lm.py: model.pt -> Flax safetensors (-> model.pt again, in-process), bit
  for bit, and a checkpoint of another size refused in one line before anything is written."""
  root = pathlib.Path(__file__).resolve().parents[1]
  cfg = f"--config={root / 'configs' / 'song_lm.py'}:tiny"
  model = config_lib.load(str(root / "configs" / "song_lm.py"), "tiny", {}).model
  twin = song_lm_torch.LmModel(song_lm_torch.SongLMConfig(
      code_size=model.code_size, dim=model.dim, intermediate_size=model.intermediate_size,
      num_heads=model.num_heads, num_layers=model.num_layers,
      num_layers_sub=model.num_layers_sub, text_vocab_size=model.text_vocab_size,
      prepend=model.prepend))
  original = {"audiolm." + k: v for k, v in twin.state_dict().items()}
  torch.save(original, tmp_path / "model.pt")
  run = lambda *a: subprocess.run([sys.executable, str(root / "launch" / "convert_song_lm.py"),
                                   cfg, *a], capture_output=True, text=True, cwd=tmp_path)
  done = run("--input=model.pt", "--output=base.safetensors")
  assert done.returncode == 0, done.stderr[-2000:]
  song_lm_weights.convert(str(tmp_path / "base.safetensors"), str(tmp_path / "back.pt"),
                          song_lm.abstract_params(model.lm_config("float32")))
  back = torch.load(tmp_path / "back.pt", weights_only=True)
  assert back.keys() == original.keys()
  assert all(torch.equal(back[k], original[k]) for k in original)
  done = run("--input=model.pt", "--output=wrong.safetensors", "--config.model.dim=64")
  assert done.returncode == 1 and not (tmp_path / "wrong.safetensors").exists()
  assert "convert_song_lm: error:" in done.stderr and "shape" in done.stderr
