"""Held-out denoising loss of a DiT (with or without an adapter): the v-objective's masked MSE
averaged over a fixed grid of diffusion times and fixed noise draws, so base, LoRA and ReLoRA
are scored on exactly the same problems (the loop's validation loss draws t at random, once).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import lora
from lora_jax.families import dit as dit_family
from lora_jax.models.dit import objective

TIMES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@functools.partial(jax.jit, static_argnums=(0,))
def _sum_sq(model, base, adapter, x0, t, noise, prompt, start, total, mask):
  x_t, v = objective.noised_and_target(x0, t, noise)
  actives = [] if adapter is None else [lora.Active(adapter, jnp.float32(1.0))]
  with lora.inject(actives):
    pred = model.apply({"params": base}, x_t, t, prompt, start, total,
                       jnp.zeros(x0.shape[:1], bool), deterministic=True)
  err = jnp.square(pred.astype(jnp.float32) - v) * mask[:, None, :]
  return jnp.sum(err)


def v_loss(config: dit_family.DitConfig, base, adapter: lora.Adapter | None,
           arrays: dict[str, np.ndarray], times: tuple[float, ...] = TIMES, draws: int = 2,
           seed: int = 0) -> dict[str, float]:
  """{'mean': v-MSE over every time, draw, real frame and channel; f't={t}': per time}."""
  model = dit_family.make(config, "float32").model
  x0 = jnp.asarray(arrays["latents"])
  mask = jnp.asarray(arrays["padding_mask"])
  count = float(np.sum(arrays["padding_mask"])) * x0.shape[1] * draws
  out = {}
  for i, t_value in enumerate(times):
    total = 0.0
    for d in range(draws):
      noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), i * draws + d), x0.shape)
      total += float(_sum_sq(model, base, adapter, x0, jnp.full(x0.shape[:1], t_value), noise,
                             jnp.asarray(arrays["prompt"]), jnp.asarray(arrays["seconds_start"]),
                             jnp.asarray(arrays["seconds_total"]), mask))
    out[f"t={t_value:g}"] = total / count
  out["mean"] = float(np.mean([out[f"t={t:g}"] for t in times]))
  return out
