"""The phrase transformer: shapes, ranges, the pad mask, dropout, and parity with its torch twin."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lora_jax import tree_paths
from lora_jax.interop import torch_convert
from lora_jax.models.phrase_transformer import PhraseTransformer, PhraseTransformerConfig
from third_party import phrase_transformer_torch

TINY = PhraseTransformerConfig(n_features=17, d_model=32, n_heads=4, n_layers=2, d_ff=48,
                               max_len=24, dropout=0.0)


def _inputs(batch=3, length=20, seed=0, lengths=(20, 13, 1)):
  """Features, pad mask and written durations (beats, > 0) of a batch of phrases."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, length, TINY.n_features)).astype(np.float32)
  mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
  written = rng.choice([0.25, 0.5, 1.0, 2.0], size=(batch, length)).astype(np.float32)
  return x, mask, written


def _model(config=TINY, seed=0, trained_dur_head=True):
  """The model and its parameters; the zero-initialised duration head randomised unless asked."""
  model = PhraseTransformer(config)
  params = model.init(jax.random.key(seed), *_inputs())["params"]
  if trained_dur_head:
    head = params["dur_head"]
    params = {**params, "dur_head": {
        "kernel": 0.3 * jax.random.normal(jax.random.key(seed + 7), head["kernel"].shape),
        "bias": head["bias"] + 0.1}}
  return model, params


def _random_twin(config=TINY, seed=0):
  """A torch twin with every weight random (LayerNorm scales too), and its state dict."""
  torch.manual_seed(seed)
  twin = phrase_transformer_torch.PhraseTransformer(config).eval()
  state = {k: torch.randn_like(v) * 0.3 for k, v in twin.state_dict().items()}
  twin.load_state_dict(state, strict=True)
  return twin, state


class PhraseTransformerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_ranges(self):
    model, params = _model()
    x, mask, written = _inputs()
    out = self.variant(lambda a, m, w: model.apply({"params": params}, a, m, w))(x, mask, written)
    assert sorted(out) == ["dur_beats", "velocity"]
    for v in out.values():
      chex.assert_shape(v, (3, 20))
      assert v.dtype == jnp.float32
    assert np.all((out["velocity"] > 0) & (out["velocity"] < 127))
    assert np.all(out["dur_beats"] > 0)
    names = set(tree_paths.leaf_paths(params))
    for suffix in ("attn.q_proj.kernel", "attn.k_proj.kernel", "attn.v_proj.kernel",
                   "attn.out_proj.kernel", "ff.in.kernel", "ff.out.kernel"):
      assert f"blocks.0.{suffix}" in names and f"blocks.1.{suffix}" in names

  @chex.variants(with_jit=True, without_jit=True)
  def test_untrained_model_keeps_written_durations_exactly(self):
    model, params = _model(trained_dur_head=False)
    x, mask, written = _inputs()
    out = self.variant(lambda a, m, w: model.apply({"params": params}, a, m, w))(x, mask, written)
    np.testing.assert_array_equal(np.asarray(out["dur_beats"]), written)
    # Trained, the duration is a multiple of the written one: twice as long written, twice as long.
    model, params = _model()
    fwd = self.variant(lambda a, m, w: model.apply({"params": params}, a, m, w)["dur_beats"])
    np.testing.assert_allclose(fwd(x, mask, 2 * written), 2 * fwd(x, mask, written), rtol=1e-6)
    assert np.abs(np.asarray(fwd(x, mask, written)) - written)[mask].max() > 1e-3

  @chex.variants(with_jit=True, without_jit=True)
  def test_padding_does_not_change_real_outputs(self):
    model, params = _model()
    x, mask, written = _inputs()
    fwd = self.variant(lambda a, m, w: model.apply({"params": params}, a, m, w))
    out = fwd(x, mask, written)
    rng = np.random.default_rng(1)
    garbage = np.where(mask[..., None], x, 1e3 * rng.normal(size=x.shape)).astype(np.float32)
    junk_written = np.where(mask, written, 1e3 * rng.random(size=written.shape)).astype(np.float32)
    out_garbage = fwd(garbage, mask, junk_written)
    for k in out:
      np.testing.assert_array_equal(np.asarray(out[k])[mask], np.asarray(out_garbage[k])[mask])
    # The first 13 notes alone, unpadded, predict what they predict inside the padded phrase.
    alone = fwd(x[1:2, :13], mask[1:2, :13], written[1:2, :13])
    for k in out:
      np.testing.assert_allclose(alone[k][0], out[k][1, :13], rtol=1e-5, atol=1e-5)
    # Real notes do see each other in both directions: changing the last real note moves the first.
    bumped = x.copy()
    bumped[1, 12] += 3.0
    moved = fwd(bumped, mask, written)
    for k in ("velocity", "dur_beats"):
      assert abs(float(moved[k][1, 0]) - float(out[k][1, 0])) > 1e-6, k

  @chex.variants(with_jit=True, without_jit=True)
  def test_dropout_only_when_not_deterministic(self):
    model, params = _model(dataclasses.replace(TINY, dropout=0.3))
    x, mask, written = _inputs()
    fwd = self.variant(lambda k: model.apply({"params": params}, x, mask, written,
                                             deterministic=False, rngs={"dropout": k})["velocity"])
    assert np.abs(fwd(jax.random.key(0)) - fwd(jax.random.key(1))).max() > 1e-3
    det = self.variant(lambda: model.apply({"params": params}, x, mask, written)["velocity"])
    np.testing.assert_array_equal(det(), det())


def test_float16_compute_differentiates_on_cpu_and_tracks_float32():
  """float16 compute takes models/attention.py's spelled-out path: the fused kernel's float16
  gradient needs a float32-accumulating dot that XLA:CPU lacks. Masking holds in float16 too."""
  model, params = _model()
  half = PhraseTransformer(dataclasses.replace(TINY, dtype="float16"))
  x, mask, written = _inputs()
  loss = lambda m, p: jnp.sum(m.apply({"params": p}, x, mask, written)["velocity"] * mask)
  grads = jax.jit(jax.grad(lambda p: loss(half, p)))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  out16 = half.apply({"params": params}, x, mask, written)
  out32 = model.apply({"params": params}, x, mask, written)
  vel = np.abs(np.asarray(out16["velocity"]) - np.asarray(out32["velocity"]))[mask]
  assert vel.max() < 0.5, vel.max()  # MIDI units
  # The duration is written * exp(head): compare the head, exp's relative error.
  log_ratio = np.log(np.asarray(out16["dur_beats"]) / np.asarray(out32["dur_beats"]))[mask]
  assert np.abs(log_ratio).max() < 2e-2, np.abs(log_ratio).max()

def test_config_and_input_errors():
  with pytest.raises(ValueError, match="d_model 30 is not divisible by n_heads 4"):
    PhraseTransformerConfig(d_model=30, n_heads=4)
  model, params = _model()
  x, mask, written = _inputs()
  with pytest.raises(ValueError, match="inputs have 5 feature columns, the model takes 17"):
    model.apply({"params": params}, x[..., :5], mask, written)
  with pytest.raises(ValueError, match="phrase of 30 notes exceeds max_len 24"):
    model.apply({"params": params}, np.zeros((1, 30, 17), np.float32), np.ones((1, 30), bool),
                np.ones((1, 30), np.float32))
  with pytest.raises(ValueError, match=r"mask has shape \(3, 19\), inputs need \(3, 20\)"):
    model.apply({"params": params}, x, mask[:, :19], written)
  with pytest.raises(ValueError, match=r"written_dur has shape \(3, 19\), inputs need \(3, 20\)"):
    model.apply({"params": params}, x, mask, written[:, :19])


def _compare(flax_out, torch_out, mask):
  """Largest |difference| at real notes: velocity / 127 (its natural unit) and dur_beats."""
  vel = np.abs(np.asarray(flax_out["velocity"]) - torch_out["velocity"].numpy())[mask] / 127.0
  dur = np.abs(np.asarray(flax_out["dur_beats"]) - torch_out["dur_beats"].numpy())[mask]
  return float(vel.max()), float(dur.max())


def test_untrained_twins_agree_that_durations_stay_written():
  torch.manual_seed(0)
  twin = phrase_transformer_torch.PhraseTransformer(TINY).eval()
  x, mask, written = _inputs()
  with torch.no_grad():
    out = twin(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(written))
  np.testing.assert_array_equal(out["dur_beats"].numpy(), written)


def test_torch_parity_with_random_weights():
  twin, state = _random_twin()
  model, params = _model()
  flax_params = torch_convert.state_dict_to_flax(state, jax.eval_shape(lambda: params))
  x, mask, written = _inputs(lengths=(20, 13, 0))  # a phrase with no real note stays finite too
  out = model.apply({"params": flax_params}, x, mask, written)
  args = (torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(written))
  with torch.no_grad():
    ref = twin(*args)
  vel_diff, dur_diff = _compare(out, ref, mask)
  assert vel_diff <= 1e-5 and dur_diff <= 1e-5, (vel_diff, dur_diff)
  assert float(torch.abs(ref["dur_beats"] - torch.from_numpy(written))[mask].max()) > 1e-2
  assert all(np.isfinite(np.asarray(v)).all() for v in out.values())
  assert all(torch.isfinite(v).all() for v in ref.values())
  # And back: the Flax tree exported loads strictly into a fresh twin.
  back = phrase_transformer_torch.PhraseTransformer(TINY)
  back.load_state_dict(torch_convert.flax_to_state_dict(flax_params), strict=True)
  with torch.no_grad():
    again = back.eval()(*args)
  for k in ref:
    torch.testing.assert_close(again[k], ref[k], rtol=0, atol=0)


def test_lightning_checkpoint_loads_with_prefix(tmp_path):
  twin, state = _random_twin(seed=3)
  path = str(tmp_path / "duv_lora_best.ckpt")
  torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 5,
              "global_step": 1200, "hyper_parameters": {"d_model": TINY.d_model}}, path)
  model, params = _model()
  abstract = jax.eval_shape(lambda: params)
  flax_params = torch_convert.load_torch_params(path, abstract, prefix="model.")
  x, mask, written = _inputs()
  with torch.no_grad():
    ref = twin(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(written))
  vel_diff, dur_diff = _compare(model.apply({"params": flax_params}, x, mask, written), ref, mask)
  assert vel_diff <= 1e-5 and dur_diff <= 1e-5, (vel_diff, dur_diff)
  # Without the prefix the converter finds it; a wrong prefix is an error naming it.
  detected = torch_convert.load_torch_params(path, abstract)
  chex.assert_trees_all_equal(detected, flax_params)
  with pytest.raises(torch_convert.WeightFileError, match="prefix 'net.'"):
    torch_convert.load_torch_params(path, abstract, prefix="net.")
