"""QLoRA's quantised base: NF4 levels and packing as bitsandbytes defines them, round-trip bounds,
forward and gradients over a quantised base, sharding, merge, the safetensors file."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax import families, lora, quant, tree_paths
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.families import duv
from lora_jax.quant import kernels
from lora_jax.train import config as config_lib
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import state as state_lib
from tests import testlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# bitsandbytes/functional.py get_4bit_type("nf4"), bitsandbytes-foundation/bitsandbytes @ 95f9af3.
BNB_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
           -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
           0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
           0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def test_nf4_levels_are_bitsandbytes():
  assert kernels.NF4_LEVELS.dtype == np.float32
  np.testing.assert_array_equal(kernels.NF4_LEVELS, np.asarray(BNB_NF4, np.float32))
  # And as the QLoRA paper derives them: normal quantiles, 8 positive and 7 negative, plus 0.
  stats = pytest.importorskip("scipy.stats")
  pos = stats.norm.ppf(np.linspace(0.9677083, 0.5, 9)[:-1])
  neg = -stats.norm.ppf(np.linspace(0.9677083, 0.5, 8)[:-1])
  derived = np.sort(np.concatenate([pos, [0.0], neg]))
  np.testing.assert_allclose(kernels.NF4_LEVELS, derived / derived.max(), atol=1e-6)


def test_dynamic_map_is_bitsandbytes_signed_8bit_map():
  m = kernels.DYNAMIC_MAP
  assert m.shape == (256,) and np.all(np.diff(m) >= 0)
  assert m[0] == pytest.approx(-0.99296875) and m[-1] == 1.0 and 0.0 in m
  assert np.min(np.abs(m[m != 0])) == pytest.approx(1e-6 * 0.55, rel=1e-6)


def test_nf4_packing_and_block_layout():
  rng = np.random.default_rng(0)
  n_in, n_out = 128, 5
  codes = rng.integers(0, 16, (n_in, n_out)).astype(np.uint8)
  codes[::kernels.BLOCK] = 15  # every block's absmax is exactly 1: its levels come back exactly
  w = kernels.NF4_LEVELS[codes]
  q = kernels.quantize(w, "nf4")
  assert q.codes.shape == (n_in // 2, n_out) and q.codes.dtype == np.uint8
  np.testing.assert_array_equal(q.codes >> 4, codes[0::2])  # even row: high nibble (bnb)
  np.testing.assert_array_equal(q.codes & 0xF, codes[1::2])
  assert q.absmax_codes.shape == (n_in // kernels.BLOCK, n_out)
  np.testing.assert_array_equal(np.asarray(kernels.dequantize(q)), w)
  # A block is 64 values of one output column along the input axis: scaling one block scales
  # only those values.
  w2 = w.copy()
  w2[64:128, 3] *= 4.0
  d2 = np.asarray(kernels.dequantize(kernels.quantize(w2, "nf4")))
  np.testing.assert_array_equal(np.abs(d2[64:128, 3]).max(), 4.0)


def test_nf4_round_trip_within_half_the_largest_gap():
  w = np.random.default_rng(1).standard_normal((256, 320)).astype(np.float32) * 0.05
  w[:, 7] *= 30.0  # an outlier column: other blocks keep their own scale
  q = kernels.quantize(w, "nf4")
  d = np.asarray(kernels.dequantize(q))
  a = np.abs(w.reshape(4, 64, 320)).max(axis=1)  # true block absmax [4, 320]
  a_q = np.asarray(kernels.block_absmax(q))
  # Double quantisation: each absmax within half the 8-bit map's largest gap times its 256-block
  # scale; the output axis of 320 pads its second 256-block.
  scale2 = np.repeat(q.absmax_scale, 256, axis=1)[:, :320]
  assert q.absmax_scale.shape == (4, 2)
  assert np.all(np.abs(a - a_q) <= scale2 * np.diff(kernels.DYNAMIC_MAP).max() / 2 + 1e-7)
  half_gap = np.diff(kernels.NF4_LEVELS).max() / 2
  bound = np.repeat(a * half_gap + np.abs(a - a_q), 64, axis=0)
  err = np.abs(w - d)
  assert np.all(err <= bound * (1 + 1e-6) + 1e-7), (err - bound).max()
  assert err.mean() < 0.1 * np.abs(w).mean()  # and typically far below the bound


@pytest.mark.parametrize("kind", ["int8", "int8_block"])
def test_int8_round_trip_within_absmax_over_254(kind):
  w = np.random.default_rng(2).standard_normal((128, 96)).astype(np.float32)
  w[3, :] *= 50.0  # an outlier row: per-block scales confine it to its block
  d = np.asarray(kernels.dequantize(kernels.quantize(w, kind)))
  if kind == "int8":
    absmax = np.abs(w).max(axis=0, keepdims=True)
  else:
    absmax = np.repeat(np.abs(w.reshape(2, 64, 96)).max(axis=1), 64, axis=0)
  assert np.all(np.abs(w - d) <= absmax / 254 * (1 + 1e-5))


def test_bad_shapes_are_errors():
  with pytest.raises(ValueError, match="not divisible by the nf4 block of 64"):
    kernels.quantize(np.ones((96, 4), np.float32), "nf4", "ff.out.kernel")
  with pytest.raises(ValueError, match="only 2-D"):
    kernels.quantize(np.ones((64, 4, 2), np.float32), "int8")
  with pytest.raises(ValueError, match="must be one of"):
    kernels.quantize(np.ones((64, 4), np.float32), "int4")


MODEL = testlib.TINY.__class__(vocab_size=64, d_model=128, n_heads=4, n_layers=2, d_ff=256,
                               max_len=32, dropout=0.0)


def _logit_error(model, params, args, kind):
  q = quant.quantize_tree(params, kind, "float32")
  run = jax.jit(lambda p: model.apply({"params": p}, *args))
  ref, deq = run(params), run(quant.dequantize_tree(q))
  with quant.dequantized():
    got = jax.jit(lambda p: model.apply({"params": p}, *args))(q)
  return ref, deq, got


# Stated bounds: the root-mean-square logit error over the float base's logit standard
# deviation, at random initialisation, 2 layers d=128 (measured: int8 0.015, int8_block 0.015,
# nf4 0.26; the largest single logit error is 0.05, 0.06 and 0.97 standard deviations).
BOUNDS = {"int8": 0.03, "int8_block": 0.03, "nf4": 0.4}


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_music_lm_logits_of_a_quantised_base(kind):
  model, params = testlib.tiny_model(MODEL)
  tokens = testlib.tokens(2, 24, vocab=MODEL.vocab_size)
  ref, deq, got = _logit_error(model, params, (tokens,), kind)
  # On the fly equals dequantise-then-run (no other difference), and the base is within bound.
  np.testing.assert_allclose(got, deq, atol=1e-5, rtol=1e-5)
  rel = float(jnp.sqrt(jnp.mean((got - ref) ** 2)) / ref.std())
  assert 0 < rel < BOUNDS[kind], rel


@pytest.mark.parametrize("kind", ["nf4"])
def test_duv_outputs_of_a_quantised_base(kind):
  family = duv.make(duv.DuvConfig(n_features=17, d_model=64, n_heads=4, n_layers=2, d_ff=128,
                                  max_len=16, dropout=0.0, seq_len=16, vel_weight=1.0,
                                  dur_weight=1.0), "float32")
  abstract = state_lib.abstract_base(family)
  params = family.model.init(jax.random.key(0), *family.model_args(
      {k: jnp.zeros(v.shape, v.dtype) for k, v in family.abstract_batch(1).items()}),
      deterministic=True)["params"]
  assert "in_proj" in quant.describe(abstract, "nf4", "float32")  # 17 inputs: kept float
  batch = family.synthetic(4, 0)
  args = family.model_args({k: jnp.asarray(v) for k, v in batch.items()})
  run = lambda p: family.model.apply({"params": p}, *args, deterministic=True)
  q = quant.quantize_tree(params, kind, "float32")
  ref, deq = jax.jit(run)(params), jax.jit(run)(quant.dequantize_tree(q))
  with quant.dequantized():
    got = jax.jit(run)(q)
  for k in ref:
    np.testing.assert_allclose(got[k], deq[k], atol=1e-4, rtol=1e-5)
  # The same stated bound on the velocity output (measured: int8 0.011, int8_block 0.009, nf4
  # 0.19 standard deviations; the duration head starts at zero, so it has no error to show).
  vel_err, vel = got["velocity"] - ref["velocity"], ref["velocity"]
  rel = float(jnp.sqrt(jnp.mean(vel_err ** 2)) / vel.std())
  assert 0 < rel < BOUNDS[kind], rel


def test_gradients_reach_adapters_and_inputs_never_codes():
  model, params = testlib.tiny_model(MODEL)
  tokens = testlib.tokens(2, 16, vocab=MODEL.vocab_size)
  spec = lora.LoraSpec(rank=4, alpha=8.0, target_modules=("q_proj", "ff.in", "head"))
  adapter = testlib.random_adapter(params, spec, seed=3, std=0.05)
  q = quant.quantize_tree(params, "nf4", "float32")
  deq = quant.dequantize_tree(q)

  def loss(adapter_params, base):
    out = lora.apply(model, base, [lora.Active(adapter.replace(params=adapter_params))], tokens)
    return jnp.mean(out ** 2)

  g_q = jax.jit(jax.grad(loss))(adapter.params, q)
  g_f = jax.jit(jax.grad(loss))(adapter.params, deq)
  for a, b in zip(jax.tree.leaves(g_q), jax.tree.leaves(g_f)):
    assert float(jnp.abs(a).max()) > 0
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  g_base = jax.eval_shape(jax.grad(loss, argnums=1, allow_int=True), adapter.params, q)
  codes = g_base["blocks_0"]["attn"]["q_proj"]["kernel"].codes
  assert codes.dtype == jax.dtypes.float0  # integer codes: no gradient exists


def test_merge_of_a_quantised_base_is_dequantise_then_merge():
  model, params = testlib.tiny_model(MODEL)
  spec = lora.LoraSpec(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "ff.out"))
  adapter = testlib.random_adapter(params, spec, seed=5)
  q = quant.quantize_tree(params, "nf4", "bfloat16")
  merged = lora.merge(q, [adapter], [0.7])
  expected = lora.merge(quant.dequantize_tree(q, jnp.float32), [adapter], [0.7])
  a, b = tree_paths.flatten(merged), tree_paths.flatten(expected)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))
  kernel = a[("blocks_0", "attn", "q_proj", "kernel")]
  assert kernel.dtype == jnp.float32 and a[("tok_emb", "embedding")].dtype == jnp.bfloat16
  # And the merged model computes the base plus the adapter (the fold is the forward's sum).
  tokens = testlib.tokens(2, 12, vocab=MODEL.vocab_size)
  with_adapter = jax.jit(lambda b: lora.apply(model, b, [lora.Active(adapter, 0.7)], tokens))(q)
  folded = jax.jit(lambda b: model.apply({"params": b}, tokens))(merged)
  np.testing.assert_allclose(folded, with_adapter, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", quant.KINDS)
def test_quantised_base_file_round_trip(tmp_path, kind):
  _, params = testlib.tiny_model(MODEL)
  q = quant.quantize_tree(params, kind, "bfloat16")
  path = str(tmp_path / "base.nf4.safetensors")
  quant.save_base(q, path, kind, {"model_family": "music_lm"})
  loaded, meta = quant.load_base(path, jax.eval_shape(lambda: params))
  assert meta["quantize"] == kind and meta["model_family"] == "music_lm"
  assert meta["base_dtype"] == "bfloat16"
  assert jax.tree.structure(loaded) == jax.tree.structure(q)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(q)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  _, other = testlib.tiny_model(MODEL.__class__(**{**MODEL.__dict__, "d_ff": 512}))
  with pytest.raises(WeightFileError, match="shape mismatch"):
    quant.load_base(path, jax.eval_shape(lambda: other))


def test_nf4_shards_follow_the_kernel_and_indivisible_blocks_are_an_error():
  model, params = testlib.tiny_model(MODEL)
  abstract = jax.eval_shape(lambda: params)
  rules = families.music_lm.PARTITION_RULES
  mesh = mesh_lib.make_mesh(config_lib.MeshConfig(data=4, fsdp=2, model=1))
  sh = quant.shardings(abstract, mesh_lib.param_shardings(rules, abstract, mesh), "nf4")
  q = jax.device_put(quant.quantize_tree(params, "nf4", "float32"), sh)
  k = q["blocks_0"]["ff"]["in"]["kernel"]  # [128, 256], spec ('fsdp', 'model')
  assert k.codes.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
  assert k.codes.addressable_shards[0].data.shape == (32, 256)  # 64 of 128 input rows, packed
  assert k.absmax_codes.addressable_shards[0].data.shape == (1, 256)
  wide = mesh_lib.make_mesh(config_lib.MeshConfig(data=1, fsdp=8, model=1))
  with pytest.raises(quant.QuantShardingError, match="2 blocks of 64, not divisible by 8"):
    quant.shardings(abstract, mesh_lib.param_shardings(rules, abstract, wide), "nf4")


def test_config_refuses_a_quantised_base_for_full_fine_tuning():
  path = str(ROOT / "configs" / "music_lm.py")
  with pytest.raises(config_lib.ConfigError, match="trains the base itself"):
    config_lib.load(path, "tiny", {"training.quantize": "nf4", "training.type": "full"})
  with pytest.raises(config_lib.ConfigError, match="training.quantize must be"):
    config_lib.load(path, "tiny", {"training.quantize": "nf3"})


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_a_step_never_holds_every_dequantised_kernel(kind):
  # Eight quantised layers, forward and input gradient: XLA's planned temporaries stay well below
  # the float32 kernels' total (without the tie in quant.dense they held all of them, and more).
  n_layers, d = 8, 512
  rng = np.random.default_rng(0)
  qs = [kernels.quantize(rng.standard_normal((d, d)).astype(np.float32) * 0.05, kind)
        for _ in range(n_layers)]
  x = jnp.ones((64, d), jnp.float32)

  def loss(x, qs):
    for q in qs:
      x = jnp.tanh(quant.dense._product(x, q, jnp.dtype(jnp.float32), None))
    return x.sum()

  kernels_bytes = n_layers * d * d * 4
  for fn in (loss, jax.grad(loss)):
    temp = jax.jit(fn).lower(x, qs).compile().memory_analysis().temp_size_in_bytes
    assert temp < 0.6 * kernels_bytes, (fn, temp / kernels_bytes)


def test_dora_over_a_quantised_base_is_dora_over_its_dequantised_kernels():
  model, params = testlib.tiny_model(MODEL)
  q = quant.quantize_tree(params, "nf4", "float32")
  deq = quant.dequantize_tree(q)
  spec = lora.LoraSpec(rank=4, alpha=8.0, use_dora=True, target_modules=("q_proj", "ff.in"))
  adapter = testlib.random_adapter(deq, spec, seed=2, std=0.05)
  tokens = testlib.tokens(2, 12, vocab=MODEL.vocab_size)
  run = jax.jit(lambda b: lora.apply(model, b, [lora.Active(adapter, 0.8)], tokens))
  np.testing.assert_allclose(run(q), run(deq), atol=1e-5, rtol=1e-5)
  merged = lora.merge(q, [adapter], [0.8])
  np.testing.assert_allclose(jax.jit(lambda b: model.apply({"params": b}, tokens))(merged),
                             run(q), atol=1e-4, rtol=1e-4)


def test_quantize_base_launch_on_the_shipped_base(tmp_path):
  import subprocess
  import sys
  from lora_jax.hierarchy import base_file
  src = str(ROOT / "assets" / "base_model" / "base_model.safetensors")
  out = str(tmp_path / "base.nf4.safetensors")
  done = subprocess.run([sys.executable, str(ROOT / "launch" / "quantize_base.py"),
                         f"--input={src}", f"--output={out}", "--quantize=nf4"],
                        capture_output=True, text=True, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  model = base_file.load_model(src)
  loaded, meta = quant.load_base(out, base_file.abstract_params(model.settings))
  assert meta["source_file"] == "base_model.safetensors" and "model" in meta
  expected = quant.quantize_tree(model.params, "nf4", "bfloat16")
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  bad = subprocess.run([sys.executable, str(ROOT / "launch" / "quantize_base.py"),
                        f"--input={tmp_path / 'missing.safetensors'}", f"--output={out}"],
                       capture_output=True, text=True, cwd=tmp_path)
  assert bad.returncode == 1 and "no such weight file" in bad.stderr
