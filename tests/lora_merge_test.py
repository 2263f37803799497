"""Merges against the untouched base in float32: blends, weight 0, unmerge, concat and SVD."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax import lora, tree_paths
import testlib

PARENT = lora.LoraSpec(rank=4, alpha=8, target_modules=("attn.q_proj", "attn.v_proj", "ff.in"))
CHILD = lora.LoraSpec(rank=2, alpha=4, target_modules=("attn.q_proj", "attn.out_proj"))


def setup():
  model, params = testlib.tiny_model()
  return model, params, testlib.random_adapter(params, PARENT, 1), testlib.random_adapter(
      params, CHILD, 2)


def kernel(params, path):
  return tree_paths.flatten(params)[tuple(path.split("/"))]


def test_merge_is_the_exact_sum_of_scaled_deltas():
  _, params, parent, child = setup()
  merged = lora.merge(params, [parent, child], [0.5, 2.0])
  a_p, b_p, s_p = parent.modules()[("blocks_0", "attn", "q_proj")]
  a_c, b_c, s_c = child.modules()[("blocks_0", "attn", "q_proj")]
  w = kernel(params, "blocks_0/attn/q_proj/kernel")
  want = np.asarray(w, np.float64) + 0.5 * s_p * (np.asarray(a_p, np.float64) @ b_p) \
      + 2.0 * s_c * (np.asarray(a_c, np.float64) @ b_c)
  np.testing.assert_allclose(kernel(merged, "blocks_0/attn/q_proj/kernel"), want, atol=1e-5)
  # Untargeted leaves are untouched, bit for bit.
  np.testing.assert_array_equal(kernel(merged, "blocks_0/attn/k_proj/kernel"),
                                kernel(params, "blocks_0/attn/k_proj/kernel"))


def test_blend_modes():
  np.testing.assert_allclose(lora.blend_weights("additive", [1.0, 0.3]), [1.0, 0.3])
  np.testing.assert_allclose(lora.blend_weights("interpolative", [1.0, 3.0]), [0.25, 0.75])
  with pytest.raises(ValueError, match="do not sum to 0"):
    lora.blend_weights("interpolative", [0.0, 0.0])
  with pytest.raises(ValueError, match="unknown blend mode 'mix'"):
    lora.blend_weights("mix", [1.0])


@pytest.mark.parametrize("mode", lora.BLEND_MODES)
def test_child_weight_zero_is_bit_identical_to_parent_alone(mode):
  model, params, parent, child = setup()
  with_zero = lora.merge(params, [parent, child], lora.blend_weights(mode, [0.8, 0.0]))
  alone = lora.merge(params, [parent], lora.blend_weights(mode, [0.8]))
  for (k, a), b in zip(tree_paths.flatten(with_zero).items(), tree_paths.flatten(alone).values()):
    np.testing.assert_array_equal(a, b, err_msg=str(k))
  x = testlib.tokens()
  fwd = jax.jit(lambda p: model.apply({"params": p}, x))
  np.testing.assert_array_equal(fwd(with_zero), fwd(alone))


def test_merge_in_bf16_base_is_computed_in_f32():
  _, params, parent, _ = setup()
  base16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  merged = lora.merge(base16, [parent], [1.0])
  path = "blocks_0/ff/in/kernel"
  assert kernel(merged, path).dtype == jnp.bfloat16
  a, b, s = parent.modules()[("blocks_0", "ff", "in")]
  exact = np.asarray(kernel(base16, path), np.float32) + s * (np.asarray(a) @ np.asarray(b))
  np.testing.assert_array_equal(kernel(merged, path), exact.astype(jnp.bfloat16))


def test_unmerge_restores_and_donation_consumes_the_base():
  _, params, parent, child = setup()
  merged = lora.merge(params, [parent, child], [1.0, 0.5])
  restored = lora.unmerge(merged, [parent, child], [1.0, 0.5])
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  copy = jax.tree.map(jnp.copy, params)
  lora.merge(copy, [parent], donate=True)
  assert kernel(copy, "blocks_0/ff/in/kernel").is_deleted()


def _stack(rows, cols, kernels, rank, dtype=jnp.float32):
  rng = np.random.default_rng(0)
  base = {f"k{i}": {"kernel": jnp.asarray(rng.standard_normal((rows, cols)), dtype)}
          for i in range(kernels)}
  params = {f"k{i}": {"lora_A": jnp.asarray(rng.standard_normal((rows, rank)), jnp.float32),
                      "lora_B": jnp.asarray(rng.standard_normal((rank, cols)), jnp.float32)}
            for i in range(kernels)}
  scales = {f"k{i}": jnp.float32(0.5) for i in range(kernels)}
  return base, lora.Adapter(params, scales)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_donated_merge_folds_in_place_a_block_of_rows_at_a_time(dtype):
  # 1,000 rows of 520 fold in blocks of 252 rows plus a remainder of 244.
  base, adapter = _stack(1000, 520, 8, 3, dtype)
  _, child = _stack(1000, 520, 8, 2)
  want = lora.merge(base, [adapter, child], [1.0, -0.7])
  donated = jax.tree.map(jnp.copy, base)
  got = lora.merge(donated, [adapter, child], [1.0, -0.7], donate=True)
  assert all(v["kernel"].is_deleted() for v in donated.values())
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert x.dtype == dtype
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                               atol=1e-4 if dtype == jnp.float32 else 0.07)
  # XLA's plan: the undonated fold holds every kernel's float32 delta at once (the whole base's
  # size); the donated one its row blocks (and, for bfloat16, about one kernel's scratch), however
  # many kernels there are.
  merge_module = importlib.import_module("lora_jax.lora.merge")
  args = (base, (adapter, child), jnp.asarray([1.0, -0.7], jnp.float32), 1.0)
  kernel_bytes = 1000 * 520 * 4
  plain = merge_module._fold_jit.lower(*args).compile().memory_analysis().temp_size_in_bytes
  in_place = merge_module._fold_jit_donated.lower(*args).compile().memory_analysis()
  assert plain >= 8 * kernel_bytes
  assert in_place.temp_size_in_bytes < 2 * kernel_bytes
  assert in_place.alias_size_in_bytes == 8 * 1000 * 520 * jnp.dtype(dtype).itemsize


def test_concat_is_an_exact_low_rank_blend():
  model, params, parent, child = setup()
  weights = [0.7, 1.3]
  combined = lora.concat([parent, child], weights)
  q = combined.modules()[("blocks_0", "attn", "q_proj")]
  assert q[0].shape[1] == 6 and float(q[2]) == 1.0
  assert combined.modules()[("blocks_0", "ff", "in")][0].shape[1] == 4
  a = lora.merge(params, [combined])
  b = lora.merge(params, [parent, child], weights)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_svd_compress_exact_at_full_rank_and_best_below():
  _, params, parent, child = setup()
  combined = lora.concat([parent, child], [1.0, 1.0])
  full = lora.svd_compress(combined, rank=6)
  for x, y in zip(jax.tree.leaves(lora.merge(params, [full])),
                  jax.tree.leaves(lora.merge(params, [combined]))):
    np.testing.assert_allclose(x, y, atol=1e-4)
  low = lora.svd_compress(combined, rank=2)
  a, b, s = combined.modules()[("blocks_0", "attn", "q_proj")]
  delta = np.asarray(a * s) @ np.asarray(b)
  la, lb, ls = low.modules()[("blocks_0", "attn", "q_proj")]
  err = np.linalg.norm(delta - np.asarray(la) @ np.asarray(lb))
  sv = np.linalg.svd(delta, compute_uv=False)
  np.testing.assert_allclose(err, np.sqrt(np.sum(sv[2:] ** 2)), rtol=1e-3)  # Eckart-Young
