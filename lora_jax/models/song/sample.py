"""Sampling codes from the song LM over the delay pattern, with classifier-free guidance.

As the original's `LmModel.generate`: the patterned sequence starts as its empty step 0; at each
step s the model's logits at step s - 1 (conditional and unconditional rows, mixed as
uncond + cfg_coef * (cond - uncond)) give the codes of step s; positions the pattern leaves empty
get the special token, and a stream that has produced the end-of-sequence code produces only the
special token after it; sampling stops when every stream of every row has ended or the sequence
is full. Stream 0 samples from the top `top_k` at `temperature`; the delayed streams take the
argmax, as the original's top-k path does. Not kept: the original's repetition penalty on
recently sampled codes.

`sample` runs the whole fixed-length sequence through the model at every step (one compilation;
causal attention makes the later, not yet written steps irrelevant to step s): the reference.
`sample_cached` keeps keys and values in the model's `cache` collection and feeds one step per
call (the conditions only with the first), as the original's streaming does; it gives the same
codes.
"""

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.models.song import delay_pattern
from lora_jax.models.song import lm as song_lm


def _choose(logits_2BxKxV, sequence_BxKxS, ended_BxK, offset, key, *, config, top_k,
            temperature, cfg_coef, valid_KxS):
  """Write step `offset` from the logits of step offset - 1 (conditional rows, then null)."""
  b = sequence_BxKxS.shape[0]
  cond, uncond = logits_2BxKxV[:b], logits_2BxKxV[b:]
  mixed_BxKxV = uncond + (cond - uncond) * cfg_coef
  greedy_BxK = jnp.argmax(mixed_BxKxV, axis=-1)
  top_v, top_i = jax.lax.top_k(mixed_BxKxV[:, 0], top_k)
  pick = jax.random.categorical(key, top_v / jnp.maximum(temperature, 1e-6), axis=-1)
  sampled0 = jnp.take_along_axis(top_i, pick[:, None], axis=-1)[:, 0]
  first = jnp.where(temperature > 0, sampled0, greedy_BxK[:, 0])
  next_BxK = greedy_BxK.at[:, 0].set(first)
  valid_K = jax.lax.dynamic_index_in_dim(valid_KxS, offset, axis=1, keepdims=False)
  next_BxK = jnp.where(valid_K[None, :] & ~ended_BxK, next_BxK, config.special_token)
  ended_BxK = ended_BxK | (next_BxK == config.eos_token)
  sequence_BxKxS = jax.lax.dynamic_update_slice_in_dim(
      sequence_BxKxS, next_BxK[:, :, None].astype(sequence_BxKxS.dtype), offset, axis=2)
  return sequence_BxKxS, ended_BxK


def _both(conditions, null_conditions):
  return jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), conditions, null_conditions)


@functools.partial(jax.jit, static_argnames=("config", "top_k"))
def _step(params, sequence_BxKxS, ended_BxK, offset, key, conditions, null_conditions, *,
          config: song_lm.SongLMConfig, top_k: int, temperature, cfg_coef, valid_KxS):
  logits = song_lm.SongLM(config).apply(
      {"params": params}, jnp.concatenate([sequence_BxKxS, sequence_BxKxS], 0),
      _both(conditions, null_conditions))
  logits_2BxKxV = jax.lax.dynamic_index_in_dim(logits, offset - 1, axis=2, keepdims=False)
  return _choose(logits_2BxKxV, sequence_BxKxS, ended_BxK, offset, key, config=config,
                 top_k=top_k, temperature=temperature, cfg_coef=cfg_coef, valid_KxS=valid_KxS)


@functools.partial(jax.jit, static_argnames=("config", "top_k", "cache_len"))
def _cached_step(params, cache, sequence_BxKxS, ended_BxK, offset, key, conditions, *,
                 config: song_lm.SongLMConfig, top_k: int, cache_len: int, temperature,
                 cfg_coef, valid_KxS):
  """Feed step offset - 1 (after the conditions when given: the first call) and write step
  `offset`."""
  fed = jax.lax.dynamic_slice_in_dim(sequence_BxKxS, offset - 1, 1, axis=2)
  logits, variables = song_lm.SongLM(config, cache_len).apply(
      {"params": params, "cache": cache}, jnp.concatenate([fed, fed], 0), conditions,
      mutable=["cache"])
  sequence_BxKxS, ended_BxK = _choose(
      logits[:, :, -1], sequence_BxKxS, ended_BxK, offset, key, config=config, top_k=top_k,
      temperature=temperature, cfg_coef=cfg_coef, valid_KxS=valid_KxS)
  return variables["cache"], sequence_BxKxS, ended_BxK


def _prefix_len(config: song_lm.SongLMConfig, conditions) -> int:
  sizes = {"description": lambda c: c[0].shape[1], "type_info": lambda c: c.shape[1],
           "prompt_audio": lambda c: c.shape[2] + 1}
  return sum(sizes[n](conditions[n]) for n in config.prepend)


def sample(params, config: song_lm.SongLMConfig, conditions: Mapping[str, object],
           null_conditions: Mapping[str, object], *, frames: int, delays: Sequence[int],
           key: jax.Array, top_k: int = 50, temperature: float = 1.0, cfg_coef: float = 1.5):
  """Codes [B, K, frames]: sampled codes, end of sequence, then special tokens.

  `null_conditions` are the unconditional rows' inputs (the same shapes as `conditions`; the
  original's null text is the tokenizer's start token alone). The same key gives the same codes.
  """
  batch = jax.tree.leaves(conditions)[0].shape[0]
  k = config.code_depth
  delays = tuple(delays)
  s = delay_pattern.sequence_length(frames, delays)
  valid = jnp.asarray(delay_pattern.valid_mask(delays, frames))
  sequence = jnp.full((batch, k, s), config.special_token, jnp.int32)
  ended = jnp.zeros((batch, k), bool)
  top_k = min(top_k, config.code_size + 1)
  for offset in range(1, s):
    sequence, ended = _step(params, sequence, ended, jnp.int32(offset),
                            jax.random.fold_in(key, offset), conditions, null_conditions,
                            config=config, top_k=top_k, temperature=jnp.float32(temperature),
                            cfg_coef=jnp.float32(cfg_coef), valid_KxS=valid)
    if bool(np.asarray(ended).all()):
      break
  return delay_pattern.revert(sequence, delays, frames)


def sample_cached(params, config: song_lm.SongLMConfig, conditions: Mapping[str, object],
                  null_conditions: Mapping[str, object], *, frames: int,
                  delays: Sequence[int], key: jax.Array, top_k: int = 50,
                  temperature: float = 1.0, cfg_coef: float = 1.5):
  """`sample` with keys and values cached: one new step through the model per step. The same
  arguments give the same codes as `sample` (tested)."""
  batch = jax.tree.leaves(conditions)[0].shape[0]
  delays = tuple(delays)
  s = delay_pattern.sequence_length(frames, delays)
  valid = jnp.asarray(delay_pattern.valid_mask(delays, frames))
  sequence = jnp.full((batch, config.code_depth, s), config.special_token, jnp.int32)
  ended = jnp.zeros((batch, config.code_depth), bool)
  top_k = min(top_k, config.code_size + 1)
  both = _both(conditions, null_conditions)
  cache_len = _prefix_len(config, conditions) + s
  model = song_lm.SongLM(config, cache_len)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.concatenate([sequence, sequence], 0)[:, :, :1], both)["cache"]
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  for offset in range(1, s):
    cache, sequence, ended = _cached_step(
        params, cache, sequence, ended, jnp.int32(offset), jax.random.fold_in(key, offset),
        both if offset == 1 else None, config=config, top_k=top_k, cache_len=cache_len,
        temperature=jnp.float32(temperature), cfg_coef=jnp.float32(cfg_coef), valid_KxS=valid)
    if bool(np.asarray(ended).all()):
      break
  return delay_pattern.revert(sequence, delays, frames)
