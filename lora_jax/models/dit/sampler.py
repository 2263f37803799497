"""Sampling the v-objective DiT with DPM-Solver++(2M) SDE, Stable Audio's default sampler.

As stable-audio-tools' `sample_k(sampler_type="dpmpp-2m-sde")` does through k-diffusion: the
v-model becomes a denoiser of x = x0 + sigma noise (k-diffusion's VDenoiser: t = 2 atan(sigma) / pi,
input scaled by 1 / sqrt(sigma^2 + 1)); the noise levels follow a polyexponential schedule from
sigma_max down to sigma_min, then 0; the initial latent is noise * sigma_max. The SDE's fresh noise
is one standard normal draw per step, which is what k-diffusion's Brownian-tree sampler yields in
distribution (increments over disjoint intervals, normalised); `noises` lets a caller (a parity
test) fix them.
"""

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def sigmas_polyexponential(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0
                           ) -> np.ndarray:
  """`steps` noise levels polynomial in log sigma from sigma_max to sigma_min, then 0."""
  ramp = np.linspace(1.0, 0.0, steps) ** rho
  sigmas = np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
  return np.append(sigmas, 0.0).astype(np.float32)


def v_denoiser(apply_fn: Callable[..., Any]) -> Callable[..., Any]:
  """A denoiser D(x, sigma) from a v-model apply_fn(x_t, t, **cond) (sigma_data = 1)."""

  def denoise(x, sigma_B, **cond):
    s = sigma_B[:, None, None]
    c_skip, c_out, c_in = 1 / (s ** 2 + 1), -s / jnp.sqrt(s ** 2 + 1), 1 / jnp.sqrt(s ** 2 + 1)
    t_B = jnp.arctan(sigma_B) / math.pi * 2
    return apply_fn(x * c_in, t_B, **cond) * c_out + x * c_skip

  return denoise


def dpmpp_2m_sde(denoise: Callable[..., Any], x, sigmas: np.ndarray, *, key=None,
                 noises: Sequence[Any] | None = None, eta: float = 1.0, s_noise: float = 1.0,
                 **cond):
  """DPM-Solver++(2M) SDE (midpoint) from x at sigmas[0] down the schedule `sigmas`."""
  if eta and noises is None and key is None:
    raise ValueError("dpmpp_2m_sde with eta > 0 needs a key (or explicit noises)")
  steps = len(sigmas) - 1
  if noises is not None and len(noises) < steps - 1:
    raise ValueError(f"{len(noises)} noises given for {steps - 1} stochastic steps")
  ones = jnp.ones((x.shape[0],), x.dtype)
  old_denoised, h_last = None, None
  for i in range(steps):
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    denoised = denoise(x, sigma * ones, **cond)
    if sigma_next == 0:
      return denoised
    h = math.log(sigma) - math.log(sigma_next)
    eta_h = eta * h
    x = sigma_next / sigma * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
    if old_denoised is not None:
      r = h_last / h
      x = x + 0.5 * -math.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
    if eta:
      noise = (noises[i] if noises is not None
               else jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype))
      x = x + noise * sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
    old_denoised, h_last = denoised, h
  return x


def sample(apply_fn: Callable[..., Any], noise, key, *, steps: int = 100,
           sigma_min: float = 0.01, sigma_max: float = 100.0, rho: float = 1.0, **cond):
  """Latents from unit noise [B, C, T], as `sample_k`'s defaults (dpmpp-2m-sde, 100 steps)."""
  sigmas = sigmas_polyexponential(steps, sigma_min, sigma_max, rho)
  return dpmpp_2m_sde(v_denoiser(apply_fn), noise * sigmas[0], sigmas, key=key, **cond)
