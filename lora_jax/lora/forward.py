"""The factorised LoRA forward: y = x W + b + sum_i w_i s_i (x A_i) B_i, never W + BA.

Adapters are injected into an unmodified Flax model by intercepting `nn.Dense.__call__`: models know
nothing of LoRA, and any dense layer of any family can be targeted. The delta's [in, out] product is
never formed (a tested invariant): the rank-r intermediate is scaled, then projected by B. On CPU
a widening layer with one adapter computes the same sum as one product, [x, (x A) s] [W; B]
(`_foldable`).

Several adapters stack, each with a weight that is array data (a blend weight or a strength), so
changing it does not recompile. A weight that is a concrete 0 (a
Python number or a host array, not a traced value: LoRAW's multiplier 0) is a bit-exact bypass:
the adapter is left out of the forward altogether, so the traced program is the base model's and
so are its outputs, bit for bit, jitted or not. A traced 0 makes the delta zero, but in a
program of its own: a folded widening layer sums its base product in another order, and XLA may
fuse the rest differently (one float32 ulp on the DiT). Module dropout
skips a whole module's delta in training: a dropped module computes the base product alone
(`_base_product`, a runtime branch), also where the widening fold would otherwise sum the base
product in another order. Every module an adapter names must be reached by the forward, or the
context raises: an adapter that silently adapts nothing is the defect this project exists to
avoid (an adapter bypassed at weight 0 is not checked: it is deliberately not applied).
"""

import contextlib
import dataclasses
import zlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import errors
from lora_jax.lora import dora
from lora_jax.lora.adapter import Adapter
from lora_jax.models import bf16_dense
from lora_jax.models import bf16_matmul
from lora_jax.quant import dense as quant_dense

FOLD_WIDENING = True  # see `_foldable`; a switch for bench/lora_step_ab.py


class UnusedAdapterError(errors.UserError, RuntimeError):
  """An adapter names modules that the forward never called."""


@dataclasses.dataclass(frozen=True)
class Active:
  """One adapter in a forward: its weight (data) and its train-time dropouts (static)."""

  adapter: Adapter
  weight: Any = 1.0
  dropout: float = 0.0  # dropout on the adapter's input
  module_dropout: float = 0.0  # probability of skipping this adapter in a whole module


def _base_product(x, kernel, bias):
  """nn.Dense's own computation for a foldable layer (float32, a bias, default precision)."""
  y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
  return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def is_static_zero(weight: Any) -> bool:
  """Whether an adapter weight is a concrete 0 (see the module docstring), not a traced value."""
  if isinstance(weight, jax.core.Tracer):
    return False
  return bool(np.all(np.asarray(weight) == 0))


def _path_seed(keys: tuple[str, ...]) -> int:
  return zlib.crc32("/".join(keys).encode()) & 0x7FFFFFFF


def _delta(x, a, b, scale, weight):
  return _low_rank(x, a.astype(x.dtype), b.astype(x.dtype), (scale * weight).astype(x.dtype))


def _dora_delta(module: nn.Dense, x, h, y_base, a, b, magnitude, scale, weight):
  """A DoRA adapter's delta to the dense layer's output `y_base` (see `lora_jax.lora.dora`).

  Without dropout (h is x) the base product is the layer's own output less its bias, as in PEFT;
  with dropout it is recomputed on the dropped input.
  """
  kernel = quant_dense.effective_kernel(module, jnp.float32)  # dequantised if stored quantised
  if h is x:
    base = y_base
    if module.use_bias:
      base = base - module.get_variable("params", "bias").astype(y_base.dtype)
  else:
    base = jnp.dot(h, kernel.astype(h.dtype))
  # The norm is a constant in the backward (the paper's section 4.3, and PEFT's detach()).
  norm = jax.lax.stop_gradient(dora.column_norm(kernel, a, b, scale))
  g = (magnitude.astype(jnp.float32) / norm).astype(base.dtype)
  low_rank = _delta(h, a, b, scale, jnp.float32(1.0)).astype(base.dtype)
  return weight.astype(base.dtype) * ((g - 1) * base + g * low_rank)


def _onednn(*arrays) -> bool:
  """Whether these products run oneDNN: bfloat16 where `bf16_dense` chooses it (XLA:CPU would
  compute them in float32; on the bench's LoRA shapes, forward and gradients at rank 16 and 4,096
  tokens, 2.4-7x faster)."""
  return (all(x.dtype == jnp.bfloat16 for x in arrays)
          and bf16_dense.path_for(jnp.bfloat16) == "onednn_bf16")


def _matmul(p, q, trans_p: bool = False, trans_q: bool = False):
  """op(p) op(q) of two matrices, op a transpose where its flag is set."""
  if _onednn(p, q):
    return bf16_matmul.product(p, q, trans_p, trans_q)
  return (p.T if trans_p else p) @ (q.T if trans_q else q)


@jax.custom_vjp
def _low_rank(x, a, b, s):
  """((x a) s) b over the last axis of x."""
  return _low_rank_fwd(x, a, b, s)[0]


def _low_rank_fwd(x, a, b, s):
  if not _onednn(x, a, b):
    h = x @ a
    return (h * s) @ b, (x, a, b, s, h)
  h_NxR = bf16_matmul.product(x.reshape(-1, x.shape[-1]), a)
  y_NxO = bf16_matmul.product(h_NxR * s, b)
  h = h_NxR.reshape(*x.shape[:-1], -1)
  return y_NxO.reshape(*x.shape[:-1], -1), (x, a, b, s, h)


def _low_rank_grads(x, a, b, s, h, g):
  """Cotangents of x, a, b and s in ((x a) s) b, given h = x a and the output's cotangent g."""
  x_NxI = x.reshape(-1, x.shape[-1])
  h_NxR = h.reshape(-1, h.shape[-1])
  g_NxO = g.reshape(-1, g.shape[-1])
  dhs_NxR = _matmul(g_NxO, b, trans_q=True)
  db = _matmul(h_NxR * s, g_NxO, trans_p=True)
  dh_NxR = dhs_NxR * s
  if _onednn(x_NxI, dh_NxR):
    da = bf16_matmul.product(x_NxI, dh_NxR, trans_a=True)
  else:
    da = _rows_contracted(x_NxI, dh_NxR)
  dx = _matmul(dh_NxR, a, trans_q=True).reshape(x.shape)
  ds = jnp.sum(dhs_NxR * h_NxR).astype(s.dtype).reshape(s.shape)
  return dx, da, db, ds


def _low_rank_bwd(residuals, g):
  return _low_rank_grads(*residuals, g)


_low_rank.defvjp(_low_rank_fwd, _low_rank_bwd)


@jax.custom_vjp
def _folded(x, w, bias, h, a, b, s):
  """x w + bias + ((h a) s) b, the adapter's B folded into the base product (see `_foldable`)."""
  return x @ w + bias + ((h @ a) * s) @ b


def _folded_fwd(x, w, bias, h, a, b, s):
  # symbolic_zeros=True: each argument comes with `.perturbed`, whether it is differentiated. The
  # frozen base is not, and then its gradient (an [in, out] array) is never written at all.
  base_differentiated = w.perturbed or bias.perturbed
  x, w, bias, h, a, b, s = (arg.value for arg in (x, w, bias, h, a, b, s))
  z = h @ a
  y = jnp.concatenate([x, z * s], axis=-1) @ jnp.concatenate([w, b], axis=0) + bias
  return y, (x, w, h, a, b, s, z, base_differentiated)


def _folded_bwd(residuals, g):
  x, w, h, a, b, s, z, base_differentiated = residuals
  x_NxI = x.reshape(-1, x.shape[-1])
  g_NxO = g.reshape(-1, g.shape[-1])
  dx = jnp.einsum("...o,io->...i", g, w)  # not g @ w.T: no transposed copy of the kernel
  dw = dbias = None  # a symbolic zero: the base is frozen
  if base_differentiated:
    dw, dbias = x_NxI.T @ g_NxO, jnp.sum(g_NxO, axis=0)
  dh, da, db, ds = _low_rank_grads(h, a, b, s, z, g)
  return dx, dw, dbias, dh, da, db, ds


_folded.defvjp(_folded_fwd, _folded_bwd, symbolic_zeros=True)


def _foldable(module: nn.Dense, x) -> bool:
  """Whether this dense layer's product may take one adapter's B folded in: [x, (h A) s] [W; B].

  On XLA:CPU the unfolded delta of a widening layer (ff.in: 256 -> 1024) is a separate [N, out]
  array that every consumer of the layer's output reads again; folding trades it for per-step
  copies of the input and the kernel, [x, .] and [W; B]: worth it only while the delta is the
  larger, so with many tokens. On the bench model's feed-forward alone (4,096 tokens, 256 ->
  1024), forward and gradient: 81.5 -> 71.5 ms per layer; in the whole train step 1-3%
  (`bench/lora_step_ab.py --what=fold`). Folding the square layers too was slower. Only plain
  float32 layers with a bias are folded, so the result is the same function as nn.Dense plus the
  delta.
  """
  if jax.default_backend() != "cpu" or not FOLD_WIDENING:
    return False
  if not (module.use_bias and module.precision is None and module.dot_general is None
          and module.dot_general_cls is None and module.has_variable("params", "kernel")):
    return False
  if quant_dense.kernels.is_quantized(quant_dense.kernel_of(module)):
    return False  # a quantised kernel is dequantised per product by lora_jax.quant.dense
  kernel = module.get_variable("params", "kernel")
  bias = module.get_variable("params", "bias")
  dtypes = {x.dtype, kernel.dtype, bias.dtype, jnp.dtype(module.dtype or jnp.float32)}
  tokens = x.size // x.shape[-1]
  (n_in, n_out), copied = kernel.shape, tokens * kernel.shape[0] + kernel.size
  return dtypes == {jnp.dtype(jnp.float32)} and n_out > n_in and tokens * n_out > copied


def _rows_contracted(x_NxI, d_NxR):
  """x^T d, [I, R]: the LoRA A gradient, a product over the N rows (tokens).

  On XLA:CPU the plain `x.T @ d` is a dot that contracts the LHS's leading dimension, which runs
  on a slow path when the other side is as narrow as a LoRA rank: 9.3 ms at N=4096, I=1024, R=16,
  against 1.0 ms for the same product as two row halves in one batched dot, summed (torch: 2.5).
  bench/lora_step_ab.py --what=lora_da measures it in the train step.
  """
  n = x_NxI.shape[0]
  if jax.default_backend() != "cpu" or n % 2:
    return x_NxI.T @ d_NxR
  d_2xMxR = d_NxR.reshape(2, n // 2, d_NxR.shape[-1])
  x_2xMxI = x_NxI.reshape(2, n // 2, x_NxI.shape[-1])
  return jnp.einsum("cmr,cmi->cri", d_2xMxR, x_2xMxI).sum(0).T


@contextlib.contextmanager
def inject(actives: Sequence[Active], rng: jax.Array | None = None):
  """Within this context, Flax dense layers add the active adapters' deltas.

  `rng` drives the adapters' dropout and module dropout; without it both are off (evaluation).
  """
  actives = [a for a in actives if not is_static_zero(a.weight)]  # bypassed: not traced at all
  tables = [a.adapter.modules() for a in actives]
  magnitudes = [a.adapter.magnitudes() for a in actives]
  used: set[tuple[str, ...]] = set()

  def interceptor(next_fn, args, kwargs, context):
    if not (isinstance(context.module, nn.Dense) and context.method_name == "__call__"):
      return next_fn(*args, **kwargs)
    keys = tuple(context.module.path)
    x = args[0]
    hits = [i for i, table in enumerate(tables) if keys in table]
    if not hits:
      return next_fn(*args, **kwargs)
    used.add(keys)
    fold = (len(hits) == 1 and keys not in magnitudes[hits[0]] and not kwargs and len(args) == 1
            and _foldable(context.module, x))
    y = None if fold else next_fn(*args, **kwargs)
    y_base = y
    for i in hits:
      active = actives[i]
      a, b, scale = tables[i][keys]
      h = x
      weight = jnp.asarray(active.weight, jnp.float32)
      kept = None  # module dropout's draw, in training only
      if rng is not None and (active.dropout > 0 or active.module_dropout > 0):
        key = jax.random.fold_in(jax.random.fold_in(rng, i), _path_seed(keys))
        drop_key, module_key = jax.random.split(key)
        if active.dropout > 0:
          keep = jax.random.bernoulli(drop_key, 1.0 - active.dropout, h.shape)
          h = jnp.where(keep, h / (1.0 - active.dropout), 0).astype(h.dtype)
        if active.module_dropout > 0:
          kept = jax.random.bernoulli(module_key, 1.0 - active.module_dropout)
          weight = weight * kept
      if fold:
        kernel = context.module.get_variable("params", "kernel")
        bias = context.module.get_variable("params", "bias")
        folded = lambda: _folded(x, kernel, bias, h, a.astype(x.dtype), b.astype(x.dtype),
                                 (scale * weight).astype(x.dtype))
        if kept is None:
          return folded()
        # A runtime branch, not a select: a dropped module runs the base product alone.
        return jax.lax.cond(kept, folded, lambda: _base_product(x, kernel, bias))
      if keys in magnitudes[i]:
        delta = _dora_delta(context.module, x, h, y_base, a, b, magnitudes[i][keys], scale,
                            weight)
      else:
        delta = _delta(h, a, b, scale, weight)
      y_adapted = y + delta.astype(y.dtype)
      y = y_adapted if kept is None else jnp.where(kept, y_adapted, y)
    return y

  # The quantised-kernel interceptor is inside this one: every `next_fn` above reaches it; the
  # oneDNN one innermost, for the plain float kernels it leaves.
  with nn.intercept_methods(interceptor), quant_dense.dequantized(), bf16_dense.use_onednn():
    yield
  missing = sorted(set().union(*map(set, tables)) - used) if tables else []
  if missing:
    names = ", ".join(".".join(k) for k in missing[:6])
    raise UnusedAdapterError(
        f"{len(missing)} adapted modules were never called by the forward: {names}")


def apply(model: nn.Module, base_params: Any, actives: Sequence[Active], *args,
          rng: jax.Array | None = None, **kwargs):
  """`model.apply({'params': base_params}, *args, **kwargs)` with the adapters injected."""
  with inject(actives, rng):
    return model.apply({"params": base_params}, *args, **kwargs)
