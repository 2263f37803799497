"""Cached sampling from a decoder: one token per step, keys and values kept in the `cache` collection.

The loop is one jitted `fori_loop`; adapters are injected inside it, with their weights as data, so
sampling with another blend weight does not recompile. An optional constraint (a `Constraint`,
e.g. `lora_jax.data.token_grammar`) rewrites the logits before any filtering, greedy included
(-inf for tokens it does not allow); its state starts from the prompt and advances with each sampled
token. The constraint is a pytree argument, so its arrays are data too.
"""

import functools
from typing import Any, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import errors
from lora_jax.lora import forward as lora_forward


class Constraint(Protocol):
  """Which tokens may come next: a pytree of arrays with pure functions of one sequence."""

  def init(self, prompt_P: jax.Array) -> Any:
    """State after a prompt row."""

  def allowed(self, state: Any) -> jax.Array:
    """bool[V] mask of the tokens that may come next."""

  def logits(self, state: Any, logits_V: jax.Array) -> jax.Array:
    """The logits to sample from: -inf at least where `allowed` is False."""

  def advance(self, state: Any, token: jax.Array) -> Any:
    """State after one more token."""


def init_cache(model: nn.Module, batch_size: int) -> Any:
  """Zeroed key/value cache for `batch_size` sequences."""
  tokens = jnp.zeros((batch_size, 1), jnp.int32)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), tokens, decode=True))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def filter_logits(logits_BxV: jax.Array, temperature, top_k: int, top_p) -> jax.Array:
  """Temperature, then top-k (0 = off), then nucleus top-p (1 = off) on last-axis logits."""
  logits_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)
  if top_k:
    kth = jax.lax.top_k(logits_BxV, top_k)[0][..., -1:]
    logits_BxV = jnp.where(logits_BxV < kth, -jnp.inf, logits_BxV)
  sorted_desc = -jnp.sort(-logits_BxV, axis=-1)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
  before = jnp.cumsum(probs, axis=-1) - probs
  cutoff = jnp.min(jnp.where(before < top_p, sorted_desc, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BxV < cutoff, -jnp.inf, logits_BxV)


@functools.partial(jax.jit, static_argnames=("model", "length", "top_k", "greedy"))
def _sample(model, base_params, adapters, weights, prompt_BxP, rng, temperature, top_p, constraint,
            *, length, top_k, greedy):
  b, p = prompt_BxP.shape
  total = p + length
  tokens = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt_BxP)
  actives = [lora_forward.Active(a, w) for a, w in zip(adapters, weights)]

  def body(i, carry):
    tokens, cache, state_B = carry
    with lora_forward.inject(actives):
      logits, mutated = model.apply({"params": base_params, "cache": cache},
                                    jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1),
                                    decode=True, mutable=["cache"])
    logits_BxV = logits[:, 0, :]
    if constraint is not None:  # state_B follows the prompt, then each sampled token
      logits_BxV = jax.vmap(constraint.logits)(state_B, logits_BxV)
    if greedy:
      nxt = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    else:
      nxt = jax.random.categorical(
          jax.random.fold_in(rng, i), filter_logits(logits_BxV, temperature, top_k, top_p)
      ).astype(jnp.int32)
    keep_prompt = i + 1 < p
    column = jnp.where(keep_prompt, jax.lax.dynamic_slice_in_dim(tokens, i + 1, 1, 1)[:, 0], nxt)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, column[:, None], i + 1, axis=1)
    if constraint is not None:
      advanced_B = jax.vmap(constraint.advance)(state_B, nxt)
      state_B = jax.tree.map(lambda old, new: jnp.where(keep_prompt, old, new), state_B,
                             advanced_B)
    return tokens, mutated["cache"], state_B

  cache = init_cache(model, b)
  state_B = None if constraint is None else jax.vmap(constraint.init)(prompt_BxP)
  tokens, _, _ = jax.lax.fori_loop(0, total - 1, body, (tokens, cache, state_B))
  return tokens


@jax.jit
def _allowed_after_prompt(constraint, prompt_BxP):
  return jax.vmap(lambda row: constraint.allowed(constraint.init(row)))(prompt_BxP)


def check_sampling(temperature: float, top_k: int, top_p: float,
                   vocab_size: int | None = None) -> None:
  """Sampling settings checked up front: a negative or NaN temperature and a top-p outside (0, 1]
  otherwise sample silently from a distorted (or empty) distribution."""
  errors.check_finite(temperature, "temperature", low=0.0)  # 0 decodes greedily
  errors.check_finite(top_p, "top_p", low=0.0, high=1.0, low_open=True)
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
    raise errors.UserError(f"top_k {top_k!r} must be an integer >= 0 (0 keeps every token)")
  if vocab_size is not None and top_k > vocab_size:
    raise errors.UserError(f"top_k {top_k} exceeds the vocabulary of {vocab_size} tokens")


def sample(model: nn.Module, base_params: Any, prompt_BxP: jax.Array, length: int, *,
           adapters: Sequence = (), weights: Sequence[float] = (), rng: jax.Array | None = None,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           constraint: Constraint | None = None) -> jax.Array:
  """`length` new tokens after each prompt row; temperature 0 decodes greedily.

  With a constraint, only tokens it allows are sampled; None samples from all (as before it).
  """
  check_sampling(temperature, top_k, top_p, model.config.vocab_size)
  if len(weights) != len(adapters):
    raise ValueError(f"{len(adapters)} adapters but {len(weights)} weights")
  max_len = model.config.max_len
  if prompt_BxP.shape[1] + length > max_len:
    raise ValueError(f"prompt {prompt_BxP.shape[1]} + length {length} exceeds max_len {max_len}")
  prompt_BxP = jnp.asarray(prompt_BxP, jnp.int32)
  if constraint is not None:
    allowed_BxV = np.asarray(_allowed_after_prompt(constraint, prompt_BxP))
    if allowed_BxV.shape[1] != model.config.vocab_size:
      raise ValueError(f"the constraint masks {allowed_BxV.shape[1]} tokens but the model has a "
                       f"vocabulary of {model.config.vocab_size}")
    stuck = np.flatnonzero(~allowed_BxV.any(axis=1))
    if stuck.size:
      raise ValueError(f"the constraint allows no token after prompt rows {stuck.tolist()}: "
                       f"the prompt breaks it")
  greedy = temperature == 0
  return _sample(model, base_params, tuple(adapters), jnp.asarray(weights, jnp.float32).reshape(-1),
                 prompt_BxP, rng if rng is not None else jax.random.key(0),
                 jnp.float32(temperature), jnp.float32(top_p), constraint, length=length,
                 top_k=top_k, greedy=greedy)
