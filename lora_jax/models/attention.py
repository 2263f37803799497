"""Multi-head attention kernels shared by the models.

`attention` runs the implementation `attention_dispatch.choose` picks for the call (backend,
dtype, shapes, mask) and logs each distinct choice once:
- on CPU, causal unmasked self-attention: `compiled_causal_attention` (the C++ kernel of
  lora_jax/kernels through XLA's FFI, float32, when built, and bfloat16 upcast around it; what
  the music transformer trains with), else `causal_attention`, a blockwise jnp kernel with its own gradient (below). float16
  masked attention is spelled out (float16 matmuls, float32 softmax): jax.nn's gradient of it uses
  float32-accumulating float16 dots, which XLA:CPU does not implement.
- on NVIDIA GPUs, bfloat16/float16 with a head size cuDNN takes: cuDNN's fused flash attention
  (causal, unmasked, key lengths for cached decoding, or a boolean mask as a bias).
- on TPU, unmasked self-attention its blocks tile: the Pallas flash-attention kernel.
- otherwise: XLA's reference attention (`jax.nn.dot_product_attention(implementation='xla')`),
  which forms the [B, H, T, S] scores.

Why kernels of our own on CPU (measured by bench/lora_step_profile.py, 4 layers, d=256, T=512,
batch 8): differentiating the fused kernel, XLA:CPU saved the softmax probabilities for the
backward pass in a transposed copy written inside the softmax fusion, transposed the score gradient
the same way, and reduced dP * P over the [B, H, T, T] scores; those fusions took most of the
attention's 150-180 ms per layer, forward and backward (torch's SDPA: 56-70 ms). `causal_attention`
keeps only q, k, v, the output and the log-sum-exp (flash attention's residuals), recomputes the
probabilities in the backward pass, takes the softmax gradient from the cheaper sum(dO * O) over
the head dimension, and works in query blocks that skip the key blocks the causal mask hides (10
of 16 block pairs at T=512). Three further choices, together an in-process A/B in the train step
from 818 to 765 ms: normalising after the product with V, accumulating dK and dV transposed, and
cutting the batch into chunks of PAIRS_PER_CHUNK (row, head) pairs (`bench/lora_step_ab.py
--what=chunk` reruns that one; the README's bench section has the figures).
"""

import contextlib
import math
import os
from typing import Iterator, Sequence

from absl import logging
import jax
from jax.experimental.custom_partitioning import custom_partitioning
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
import numpy as np

from lora_jax import kernels
from lora_jax.models import attention_dispatch as dispatch

BLOCK = 128  # queries per block of the causal kernel
PAIRS_PER_CHUNK = 8  # (batch row, head) pairs per independent chunk of the causal kernel


def attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, *, mask=None, kv_lengths_B=None,
              is_causal: bool = False):
  """Scaled dot-product attention over [batch, time, heads, head_dim] arrays.

  `mask` is boolean, broadcastable to [B, H, T, S] (True attends); `kv_lengths_B` says that row
  b attends to its first kv_lengths_B[b] keys only (cached decoding), which fused kernels take
  without a mask tensor. The implementation is `attention_dispatch.choose`'s.
  """
  call = dispatch.Call(
      backend=jax.default_backend(), dtype=dispatch.dtype_name(q_BxTxHxK),
      q_len=q_BxTxHxK.shape[1], kv_len=k_BxSxHxK.shape[1], head_dim=q_BxTxHxK.shape[-1],
      causal=is_causal, mask=dispatch.mask_kind(mask, kv_lengths_B),
      cpu_kernel_built=_cpu_kernel_built(q_BxTxHxK), gpu_capability=_gpu_capability())
  path, why = dispatch.choose(call)
  _log_choice(path, why, call)
  if path == "cpu_compiled":
    up = lambda x: x.astype(jnp.float32)  # bfloat16 runs the float32 kernel (the dispatch's why)
    out = compiled_causal_attention(up(q_BxTxHxK), up(k_BxSxHxK), up(v_BxSxHxK))
    return out.astype(q_BxTxHxK.dtype)
  if path == "cpu_blockwise":
    return _per_device_rows(causal_attention, q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
  if path == "cudnn":
    return _cudnn(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask, kv_lengths_B, is_causal)
  if path == "pallas_tpu":
    return _pallas_tpu(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal)
  if kv_lengths_B is not None:
    mask = _length_mask(kv_lengths_B, k_BxSxHxK.shape[1])
  if path == "cpu_float16":
    return _float16_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask, is_causal)
  return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask,
                                      is_causal=is_causal, implementation="xla")


# (mesh, batch axes, batch size) while `batch_split` is active (at trace time), else None.
_BATCH_SPLIT: list = [None]


@contextlib.contextmanager
def batch_split(mesh: Mesh, axes: Sequence[str], batch_size: int,
                heads_axis: str | None = None) -> Iterator[None]:
  """Within this context (at trace time), the blockwise CPU kernel runs on each device's own rows
  of a `batch_size`-row batch split over `axes` of `mesh` (and its own heads, split over
  `heads_axis` where that axis divides them: tensor-parallel projections leave them so).

  Its chunks slice the batch; traced over the global batch on a batch-split mesh, a chunk's rows
  lay on other devices and XLA moved them (collective-permutes of q, k and v) to compute it.
  Under a shard_map over the batch axes every device chunks only the rows it holds.
  """
  previous = _BATCH_SPLIT[0]
  _BATCH_SPLIT[0] = (mesh, tuple(axes), batch_size, heads_axis)
  try:
    yield
  finally:
    _BATCH_SPLIT[0] = previous


def _per_device_rows(kernel, q_BxTxHxK, k_BxSxHxK, v_BxSxHxK):
  """`kernel` on each device's rows when a `batch_split` covers this batch, else on the whole."""
  split = _BATCH_SPLIT[0]
  if split is not None:
    mesh, axes, batch_size, heads_axis = split
    devices = math.prod(mesh.shape[a] for a in axes)
    if q_BxTxHxK.shape[0] == batch_size and batch_size % devices == 0 and devices > 1:
      heads = mesh.shape.get(heads_axis, 1)
      # Every head is computed alone, so heads split over a tensor-parallel axis stay split.
      on_heads = heads_axis if heads > 1 and q_BxTxHxK.shape[2] % heads == 0 else None
      blocks = PartitionSpec(axes, None, on_heads)
      return jax.shard_map(kernel, mesh=mesh, in_specs=(blocks,) * 3, out_specs=blocks)(
          q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
  return kernel(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)


_LOGGED: set = set()


def _log_choice(path: str, why: str, call: dispatch.Call) -> None:
  """One log line per distinct decision and process: on a GPU or TPU at INFO, on CPU only with
  --v=1 (the CPU paths are the long-standing ones, and a command's output stays as it was), and a
  warning wherever a faster path is missed."""
  if (path, why) in _LOGGED:
    return
  _LOGGED.add((path, why))
  level = logging.INFO if call.backend != "cpu" else logging.DEBUG
  if path == "cpu_blockwise" and "not built" in why:
    level, why = logging.WARNING, why + " (python -m lora_jax.kernels builds it; about 2x faster)"
  logging.log(level, "attention: %s for %s [%d queries x %d keys, head %d, mask %s]: %s", path,
              call.dtype, call.q_len, call.kv_len, call.head_dim, call.mask, why)


def _cpu_kernel_built(q_BxTxHxK) -> bool:
  # Only asked where it matters, so other backends and dtypes never try to load the library.
  return (USE_COMPILED_KERNEL and jax.default_backend() == "cpu"
          and q_BxTxHxK.dtype in (jnp.float32, jnp.bfloat16) and bool(kernels.load()))


def _gpu_capability() -> float | None:
  device = jax.devices()[0]
  capability = getattr(device, "compute_capability", None)
  try:
    return float(capability) if capability is not None else None
  except (TypeError, ValueError):
    return None


def _length_mask(kv_lengths_B, s: int):
  """[B, 1, 1, S] True for the keys each row attends to."""
  return (jnp.arange(s)[None, :] < kv_lengths_B[:, None])[:, None, None, :]


def _cudnn(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask, kv_lengths_B, is_causal):
  """cuDNN flash attention; a boolean mask goes in as a [B, 1, T, S] bias (cuDNN's layout)."""
  b, t, s = q_BxTxHxK.shape[0], q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
  if mask is not None:
    mask = jnp.broadcast_to(mask, (b, 1, t, s)) if mask.shape[1] == 1 else mask
  lengths = None if kv_lengths_B is None else kv_lengths_B.astype(jnp.int32)
  return jax.nn.dot_product_attention(
      q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask, is_causal=is_causal,
      key_value_seq_lengths=lengths,
      query_seq_lengths=None if lengths is None else jnp.full((b,), t, jnp.int32),
      implementation="cudnn")


def _pallas_tpu(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal):
  """The Pallas TPU flash-attention kernel (heads-first layout, blocks of 128)."""
  # Imported here: only a TPU (or a test in interpret mode) needs Pallas's TPU ops.
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
  n = dispatch.TPU_BLOCK
  blocks = tpu_flash.BlockSizes(block_q=n, block_k_major=n, block_k=n, block_b=1,
                                block_q_major_dkv=n, block_k_major_dkv=n, block_k_dkv=n,
                                block_q_dkv=n, block_k_major_dq=n, block_k_dq=n, block_q_dq=n)
  out_BxHxTxK = tpu_flash.flash_attention(
      *map(_heads_first, (q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)), causal=is_causal,
      sm_scale=1.0 / (q_BxTxHxK.shape[-1] ** 0.5), block_sizes=blocks)
  return _heads_first(out_BxHxTxK)


def _float16_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask, is_causal):
  """float16 matmuls with the softmax in float32, spelled out for XLA:CPU (see module doc)."""
  t, s = q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
  scale = jnp.float16(1.0 / (q_BxTxHxK.shape[-1] ** 0.5))
  logits_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK * scale, k_BxSxHxK)
  logits_BxHxTxS = logits_BxHxTxS.astype(jnp.float32)
  keep = jnp.ones((t, s), bool)
  if is_causal:
    keep = jnp.tril(keep)
  if mask is not None:
    keep = keep & mask
  logits_BxHxTxS = jnp.where(keep, logits_BxHxTxS, jnp.finfo(jnp.float32).min)
  probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1).astype(jnp.float16)
  return jnp.einsum("bhts,bshk->bthk", probs_BxHxTxS, v_BxSxHxK)


def _blocks(t: int) -> list[tuple[int, int]]:
  return [(s, min(s + BLOCK, t)) for s in range(0, t, BLOCK)]


def _heads_first(x_BxTxHxK):
  return jnp.swapaxes(x_BxTxHxK, 1, 2)


def _logits(q_BxHxQxK, k_BxHxSxK, start: int):
  """Scaled, causally masked float32 logits of queries start.. over keys 0..."""
  scale = 1.0 / (q_BxHxQxK.shape[-1] ** 0.5)
  n_q, n_k = q_BxHxQxK.shape[2], k_BxHxSxK.shape[2]
  logits_BxHxQxS = jnp.einsum("bhqk,bhsk->bhqs", q_BxHxQxK * jnp.asarray(scale, q_BxHxQxK.dtype),
                              k_BxHxSxK).astype(jnp.float32)
  keep_QxS = jnp.arange(n_k)[None, :] <= start + jnp.arange(n_q)[:, None]
  return jnp.where(keep_QxS, logits_BxHxQxS, -jnp.inf)


def _causal_fwd(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  q_BxHxTxK, k_BxHxTxK, v_BxHxTxK = map(_heads_first, (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK))
  outs, lses = [], []
  for start, stop in _blocks(q_BxHxTxK.shape[2]):
    logits_BxHxQxS = _logits(q_BxHxTxK[:, :, start:stop], k_BxHxTxK[:, :, :stop], start)
    max_BxHxQ = jnp.max(logits_BxHxQxS, axis=-1)  # finite: every query sees its own key
    exp_BxHxQxS = jnp.exp(logits_BxHxQxS - max_BxHxQ[..., None])
    sum_BxHxQ = jnp.sum(exp_BxHxQxS, axis=-1)
    # Normalised after the product with V, as torch's CPU kernel does: a [Q, K] division, not
    # [Q, S]. The probabilities themselves are never stored.
    unnormalised_BxHxQxK = jnp.einsum("bhqs,bhsk->bhqk", exp_BxHxQxS.astype(v_BxHxTxK.dtype),
                                      v_BxHxTxK[:, :, :stop])
    outs.append((unnormalised_BxHxQxK / sum_BxHxQ[..., None]).astype(v_BxHxTxK.dtype))
    lses.append(max_BxHxQ + jnp.log(sum_BxHxQ))
  out_BxHxTxK = jnp.concatenate(outs, axis=2)
  return _heads_first(out_BxHxTxK), (q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, out_BxHxTxK,
                                     jnp.concatenate(lses, axis=-1))


def _causal_bwd(residuals, dout_BxTxHxK):
  q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, out_BxHxTxK, lse_BxHxT = residuals
  dout_BxHxTxK = _heads_first(dout_BxTxHxK)
  dtype = q_BxHxTxK.dtype
  acc = None if dtype == jnp.float16 else jnp.float32  # XLA:CPU has no f16 x f16 -> f32 dot
  b, h, t, k = q_BxHxTxK.shape
  scale = 1.0 / (k ** 0.5)
  # sum_s dP * P over the keys equals sum_k dO * O over the head dimension: [B, H, T], not T x T.
  delta_BxHxT = jnp.sum(dout_BxHxTxK.astype(jnp.float32) * out_BxHxTxK.astype(jnp.float32), -1)
  dqs = []
  # dK and dV are accumulated transposed, [B, H, K, T]: dV^T = dO^T P contracts the queries of
  # two arrays whose queries lead, a product XLA:CPU runs up to 1.6x as fast as P^T dO.
  dk_BxHxKxT = jnp.zeros((b, h, k, t), jnp.float32)
  dv_BxHxKxT = jnp.zeros((b, h, k, t), jnp.float32)
  for start, stop in _blocks(t):
    q_BxHxQxK, dout_BxHxQxK = q_BxHxTxK[:, :, start:stop], dout_BxHxTxK[:, :, start:stop]
    k_BxHxSxK, v_BxHxSxK = k_BxHxTxK[:, :, :stop], v_BxHxTxK[:, :, :stop]
    probs_BxHxQxS = jnp.exp(_logits(q_BxHxQxK, k_BxHxSxK, start)
                            - lse_BxHxT[..., start:stop, None])
    dv_BxHxKxS = jnp.einsum("bhqk,bhqs->bhks", dout_BxHxQxK, probs_BxHxQxS.astype(dtype),
                            preferred_element_type=acc)
    dprobs_BxHxQxS = jnp.einsum("bhqk,bhsk->bhqs", dout_BxHxQxK, v_BxHxSxK,
                                preferred_element_type=acc).astype(jnp.float32)
    dlogits_BxHxQxS = (probs_BxHxQxS * (dprobs_BxHxQxS - delta_BxHxT[..., start:stop, None])
                       * scale).astype(dtype)
    dqs.append(jnp.einsum("bhqs,bhsk->bhqk", dlogits_BxHxQxS, k_BxHxSxK,
                          preferred_element_type=acc))
    dk_BxHxKxS = jnp.einsum("bhqk,bhqs->bhks", q_BxHxQxK, dlogits_BxHxQxS,
                            preferred_element_type=acc)
    dk_BxHxKxT = dk_BxHxKxT.at[..., :stop].add(dk_BxHxKxS)
    dv_BxHxKxT = dv_BxHxKxT.at[..., :stop].add(dv_BxHxKxS)
  dq_BxHxTxK = jnp.concatenate(dqs, axis=2)
  to_BxTxHxK = lambda x_BxHxKxT: jnp.transpose(x_BxHxKxT, (0, 3, 1, 2)).astype(dtype)
  return _heads_first(dq_BxHxTxK).astype(dtype), to_BxTxHxK(dk_BxHxKxT), to_BxTxHxK(dv_BxHxKxT)


def _chunks(b: int, h: int) -> list[tuple[int, int]]:
  rows = max(1, PAIRS_PER_CHUNK // h)
  return [(i, min(i + rows, b)) for i in range(0, b, rows)]


def _chunked_fwd(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  outs, residuals = [], []
  for lo, hi in _chunks(q_BxTxHxK.shape[0], q_BxTxHxK.shape[2]):
    out, res = _causal_fwd(q_BxTxHxK[lo:hi], k_BxTxHxK[lo:hi], v_BxTxHxK[lo:hi])
    outs.append(out)
    residuals.append(res)
  return jnp.concatenate(outs, axis=0), residuals


def _chunked_bwd(residuals, dout_BxTxHxK):
  grads = []
  for res, (lo, hi) in zip(residuals, _chunks(dout_BxTxHxK.shape[0], dout_BxTxHxK.shape[2])):
    grads.append(_causal_bwd(res, dout_BxTxHxK[lo:hi]))
  # Concatenated here, not padded and summed as the transpose of slicing would be.
  return tuple(jnp.concatenate(parts, axis=0) for parts in zip(*grads))


@jax.custom_vjp
def causal_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  """Causal self-attention, blockwise over queries, with a flash-style gradient (see above).

  The batch is cut into chunks of about PAIRS_PER_CHUNK (batch row, head) pairs, each computed
  on its own: smaller arrays that stay in cache, and independent work that XLA:CPU runs on its
  cores side by side.
  """
  return _chunked_fwd(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)[0]


causal_attention.defvjp(_chunked_fwd, _chunked_bwd)


# --- The compiled kernel (lora_jax/kernels/causal_attention.cc) ------------------------------------

# Off with LORA_JAX_CPU_KERNEL=0 (or by setting this before tracing), e.g. for an A/B in one process.
USE_COMPILED_KERNEL = os.environ.get("LORA_JAX_CPU_KERNEL", "1") != "0"
KERNEL_BLOCK = 64  # queries per block in the compiled kernel (32, 64, 96, 128 measured; 64 best)


def _per_shard(op, rule: str):
  """`op` under custom partitioning: each device runs it on its own (batch, head) shards.

  The kernel works on whole sequences of whole heads, so time and head_dim must not be split;
  batch and heads may be split any way the mesh likes. Without this, XLA would gather the whole
  batch onto every device around an opaque custom call.
  """
  wrapped = custom_partitioning(op)

  def partition(mesh, arg_shapes, result_shape):
    result_shardings = jax.tree.map(lambda r: r.sharding, result_shape)
    return mesh, op, result_shardings, tuple(a.sharding for a in arg_shapes)

  wrapped.def_partition(partition=partition, sharding_rule=rule,
                        need_replication_factors=("t", "d"))
  return wrapped


def _require_kernel():
  if not kernels.load():
    raise RuntimeError("the compiled CPU attention kernel is not built for this machine: run "
                       "python -m lora_jax.kernels")


def _kernel_fwd_call(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  _require_kernel()
  b, t, h, _ = q_BxTxHxK.shape
  return tuple(jax.ffi.ffi_call(
      "lora_jax_causal_attention_fwd",
      (jax.ShapeDtypeStruct(q_BxTxHxK.shape, jnp.float32),
       jax.ShapeDtypeStruct((b, h, t), jnp.float32)),
  )(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, block=np.int64(KERNEL_BLOCK)))


def _kernel_bwd_call(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, out_BxTxHxK, lse_BxHxT, dout_BxTxHxK):
  _require_kernel()
  grad = jax.ShapeDtypeStruct(q_BxTxHxK.shape, jnp.float32)
  return tuple(jax.ffi.ffi_call("lora_jax_causal_attention_bwd", (grad, grad, grad))(
      q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, out_BxTxHxK, lse_BxHxT, dout_BxTxHxK,
      block=np.int64(KERNEL_BLOCK)))


_kernel_fwd = _per_shard(_kernel_fwd_call, "b t h d, b t h d, b t h d -> b t h d, b h t")
_kernel_bwd = _per_shard(
    _kernel_bwd_call,
    "b t h d, b t h d, b t h d, b t h d, b h t, b t h d -> b t h d, b t h d, b t h d")


def _compiled_fwd(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  out_BxTxHxK, lse_BxHxT = _kernel_fwd(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)
  return out_BxTxHxK, (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, out_BxTxHxK, lse_BxHxT)


def _compiled_bwd(residuals, dout_BxTxHxK):
  return _kernel_bwd(*residuals, dout_BxTxHxK)


@jax.custom_vjp
def compiled_causal_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  """`causal_attention` in float32 by the compiled kernel: the same residuals and gradient.

  The C++ kernel reads and writes [batch, time, heads, head_dim] in place through strided views
  (no heads-first copies, no key-prefix slices), fuses the softmax around Eigen's matmuls in
  cache, and runs one (batch row, head) pair per task on XLA's intra-op thread pool. Measured by
  bench/lora_step_ab.py --what=kernel; the README's bench section has the figures.
  """
  return _compiled_fwd(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)[0]


compiled_causal_attention.defvjp(_compiled_fwd, _compiled_bwd)
