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
"""

import re
from typing import Any

import jax
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
  return tx, sched
