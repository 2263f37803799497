"""AdamW with warm-up and decay, global-norm clipping and per-group learning rates.

The schedule is a function of the optimiser's own update count, and gradient accumulation
happens inside the train step (one call is one optimiser step), so the schedule advances once per
optimiser step however many micro-batches make it up. A skipped (non-finite) step leaves the
optimiser state, and so the count, untouched.

Learning-rate groups are (regex, multiplier) rules over the trainable tree's dotted paths
(`blocks.0.attn.q_proj.lora_A`, or `...kernel` in full fine-tuning); the first rule that searches
a path wins, the rest train at the base rate, and a rule that matches nothing is an error.
Weight decay applies to parameters of two or more dimensions (kernels, embeddings, LoRA factors),
never to biases and norm scales.

`opt.decay = 'inverse'` is stable-audio-tools' InverseLR (`training/utils.py`): at optimiser
step k, (1 - inv_warmup^(k + 1)) * max(final, peak * (1 + k / inv_gamma)^-inv_power), its own
exponential warm-up instead of the linear one, `final` = final_lr_fraction * peak (the original's
`final_lr`, default 0).

`opt.ema_beta > 0` keeps an exponential moving average of the trained weights in the optimiser
state (so it is checkpointed, resumed and skipped with it), as stable-audio-tools' training
wrapper does with ema_pytorch 0.2.3's `EMA(beta, power, update_every=1, update_after_step=1)`:
after optimiser step k (counted from 0) the average is the weights themselves while
k <= update_after_step + 1, then average += (1 - d_k) (weights - average) with
d_k = min(beta, 1 - (1 + k - update_after_step)^-power). `ema_of` reads it back.
"""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lora_jax import tree_paths
from lora_jax.train.config import OptConfig

DEFAULT_GROUP = "default"


def schedule(config: OptConfig, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak rate, then the configured decay until `total_steps`."""
  if not 0 <= config.warmup_steps <= total_steps:
    raise ValueError(f"opt.warmup_steps {config.warmup_steps} must lie in [0, {total_steps}] "
                     f"(training.steps)")
  peak = config.learning_rate
  if config.decay == "inverse":
    return inverse_lr(peak, config.inv_gamma, config.inv_power, config.inv_warmup,
                      config.final_lr_fraction * peak)
  decay_steps = max(total_steps - config.warmup_steps, 1)
  if config.decay == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.final_lr_fraction)
  elif config.decay == "linear":
    decay = optax.linear_schedule(peak, peak * config.final_lr_fraction, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if config.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
  return optax.join_schedules([warmup, decay], [config.warmup_steps])


def inverse_lr(peak: float, inv_gamma: float, power: float, warmup: float,
               final_lr: float) -> optax.Schedule:
  """stable-audio-tools' InverseLR as a function of the optimiser step k (its `last_epoch`)."""
  def sched(count):
    k = jnp.asarray(count, jnp.float32)
    ramp = 1.0 - warmup ** (k + 1.0)
    return ramp * jnp.maximum(final_lr, peak * (1.0 + k / inv_gamma) ** -power)
  return sched


EMA_UPDATE_AFTER_STEP = 1  # stable-audio-tools' EMA(update_after_step=1)


class EmaState(NamedTuple):
  """The weights' moving average and the number of optimiser steps it has seen."""

  count: jax.Array  # int32
  ema: Any  # like the trainable tree


def ema_decay(k, beta: float, power: float):
  """ema_pytorch's `get_current_decay` after optimiser step k (0 while it copies)."""
  epoch = jnp.asarray(k, jnp.float32) - EMA_UPDATE_AFTER_STEP
  return jnp.where(epoch <= 1.0, 0.0, jnp.minimum(beta, 1.0 - (1.0 + epoch) ** -power))


def ema_weights(beta: float, power: float) -> optax.GradientTransformation:
  """Last in the chain: it sees the final updates and the weights before them, keeps the average
  of the weights after them, and passes the updates on unchanged."""
  def init(params):
    return EmaState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.copy, params))

  def update(updates, state, params):
    new = optax.apply_updates(params, updates)
    decay = ema_decay(state.count, beta, power)
    ema = jax.tree.map(lambda e, w: (e + (1.0 - decay) * (w - e)).astype(e.dtype), state.ema,
                       new)
    return updates, EmaState(state.count + 1, ema)

  return optax.GradientTransformation(init, update)


def ema_of(opt_state: Any) -> Any:
  """The EMA weights inside an optimiser state built with `opt.ema_beta > 0`."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, EmaState))
           if isinstance(s, EmaState)]
  if len(found) != 1:
    raise ValueError(f"the optimiser state holds {len(found)} EMAs of the weights, not 1")
  return found[0].ema


def group_labels(config: OptConfig, abstract_params: Any) -> Any:
  """The learning-rate group of every trainable leaf: 'group<i>' of the first matching rule."""
  compiled = [(re.compile(pattern), f"group{i}") for i, (pattern, _) in
              enumerate(config.lr_groups)]
  used = set()

  def label(keys):
    path = tree_paths.dotted(keys)
    for pattern, name in compiled:
      if pattern.search(path):
        used.add(name)
        return name
    return DEFAULT_GROUP

  flat = {keys: label(keys) for keys in tree_paths.flatten(abstract_params)}
  unused = [p for (p, _), (_, name) in zip(config.lr_groups, compiled) if name not in used]
  if unused:
    examples = ", ".join(tree_paths.dotted(k) for k in list(flat)[:4])
    raise ValueError(f"opt.lr_groups rules {unused} match no trainable parameter; "
                     f"trainable paths are e.g. {examples}")
  return tree_paths.unflatten(flat)


def _decay_mask(params: Any) -> Any:
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def optimizer(config: OptConfig, total_steps: int,
              abstract_params: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The run's optimiser over the trainable tree, and its base learning-rate schedule."""
  sched = schedule(config, total_steps)
  labels = group_labels(config, abstract_params)
  multipliers = {f"group{i}": m for i, (_, m) in enumerate(config.lr_groups)}
  multipliers[DEFAULT_GROUP] = 1.0

  def adamw(multiplier: float) -> optax.GradientTransformation:
    return optax.adamw(lambda count: sched(count) * multiplier, b1=config.b1, b2=config.b2,
                       eps=config.eps, weight_decay=config.weight_decay, mask=_decay_mask)

  present = sorted(set(jax.tree.leaves(labels)))
  tx = optax.multi_transform({name: adamw(multipliers[name]) for name in present}, labels)
  if config.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  if config.ema_beta > 0:
    tx = optax.chain(tx, ema_weights(config.ema_beta, config.ema_power))
  return tx, sched
