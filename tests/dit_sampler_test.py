"""The DPM-Solver++(2M) SDE sampler against k-diffusion's, on the converted original DiT."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from lora_jax.interop import dit_convert
from lora_jax.models.dit import model as dit
from lora_jax.models.dit import sampler as dit_sampler
import original_stable_audio  # tests/: stand-ins for torchaudio, torchvision

from stable_audio_tools.models.dit import DiffusionTransformer as TorchDiT

_CONFIG = dict(io_channels=4, embed_dim=64, depth=2, num_heads=2, cond_token_dim=32,
               project_cond_tokens=False, global_cond_dim=8,
               transformer_type="continuous_transformer")


def test_schedule_and_sampling_match_k_diffusion():
  sampling, external = original_stable_audio.k_diffusion()
  torch.manual_seed(0)
  model = TorchDiT(**_CONFIG).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.1)
  config = dit.config_from_original(_CONFIG)
  params = dit_convert.state_dict_to_params(model.state_dict(), config)

  steps, b, t = 6, 2, 10
  want_sigmas = sampling.get_sigmas_polyexponential(steps, 0.01, 100.0, 1.0).numpy()
  sigmas = dit_sampler.sigmas_polyexponential(steps, 0.01, 100.0, 1.0)
  np.testing.assert_allclose(sigmas, want_sigmas, rtol=1e-6)

  g = torch.Generator().manual_seed(1)
  noise = torch.randn(b, 4, t, generator=g)
  cond = dict(cross_attn_cond=torch.randn(b, 3, 32, generator=g),
              global_embed=torch.randn(b, 8, generator=g))
  step_noises = [torch.randn(b, 4, t, generator=g) for _ in range(steps)]
  queue = list(step_noises)
  with torch.no_grad():
    want = sampling.sample_dpmpp_2m_sde(
        external.VDenoiser(lambda x, t, **c: model(x, t, use_checkpointing=False, **c)),
        noise * want_sigmas[0], torch.from_numpy(want_sigmas), disable=True, extra_args=cond,
        noise_sampler=lambda s, s_next: queue.pop(0)).numpy()

  jcond = {k: jnp.asarray(v.numpy()) for k, v in cond.items()}
  apply = jax.jit(lambda x, t, c: dit.DiffusionTransformer(config).apply({"params": params},
                                                                           x, t, **c))
  got = dit_sampler.dpmpp_2m_sde(
      dit_sampler.v_denoiser(lambda x, t, **c: apply(x, t, c)),
      jnp.asarray(noise.numpy()) * sigmas[0], sigmas,
      noises=[jnp.asarray(n.numpy()) for n in step_noises], **jcond)
  assert np.abs(want).max() > 0.1
  print(f"sampler: max |lora_jax - k-diffusion| / max |out| = "
        f"{np.abs(np.asarray(got) - want).max() / np.abs(want).max():.2e}")
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-4 * np.abs(want).max())
  # With its own noise (a key), sampling is deterministic per key and differs across keys.
  run = lambda k: dit_sampler.sample(lambda x, t, **c: apply(x, t, c), jnp.asarray(noise.numpy()),
                                     jax.random.key(k), steps=steps, **jcond)
  np.testing.assert_array_equal(np.asarray(run(0)), np.asarray(run(0)))
  assert np.abs(np.asarray(run(0)) - np.asarray(run(1))).max() > 1e-3
