"""Stable Audio's number conditioning against the original NumberConditioner, and `assemble`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lora_jax.interop import dit_convert
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.models.dit import conditioning as dit_conditioning

import original_stable_audio

# Its module imports torchaudio for code this test never runs (tests/original_stable_audio.py).
TorchNumberConditioner = original_stable_audio.imported(
    "stable_audio_tools.models.conditioners").NumberConditioner


def test_number_conditioner_matches_the_original():
  torch.manual_seed(0)
  original = TorchNumberConditioner(output_dim=32, min_val=0, max_val=512).eval()
  seconds = [-3.0, 0.0, 1.5, 47.0, 511.9, 600.0]  # out-of-range values are clamped by both
  with torch.no_grad():
    want, want_mask = original(seconds)
  params = dit_convert.number_conditioner_to_params(original.state_dict())
  got, got_mask = dit_conditioning.NumberConditioner(32, 0.0, 512.0).apply(
      {"params": params}, jnp.asarray(seconds))
  assert got.shape == (6, 1, 32) and got_mask.shape == (6, 1)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=0, atol=2e-5)
  np.testing.assert_array_equal(np.asarray(got_mask), want_mask.numpy())
  back = dit_convert.number_conditioner_to_state_dict(params, "x.")
  fresh = TorchNumberConditioner(output_dim=32, min_val=0, max_val=512)
  fresh.load_state_dict({k[2:]: v for k, v in back.items()}, strict=True)
  for key, value in original.state_dict().items():
    assert torch.equal(back["x." + key], value), key


def test_number_conditioner_keys_are_checked():
  sd = TorchNumberConditioner(output_dim=8).state_dict()
  prefixed = {f"conditioner.conditioners.seconds_total.{k}": v for k, v in sd.items()}
  params = dit_convert.number_conditioner_to_params(
      prefixed, "conditioner.conditioners.seconds_total.")
  assert params["embedder"]["embedding_1"]["kernel"].shape == (257, 8)
  del prefixed["conditioner.conditioners.seconds_total.embedder.embedding.1.bias"]
  with pytest.raises(WeightFileError, match="missing .*embedding.1.bias"):
    dit_convert.number_conditioner_to_params(prefixed, "conditioner.conditioners.seconds_total.")


def test_assemble_concatenates_as_stable_audio_open():
  b = 2
  prompt = jnp.ones((b, 7, 16))
  start, total = jnp.full((b, 1, 16), 2.0), jnp.full((b, 1, 16), 3.0)
  cross, glob = dit_conditioning.assemble(
      {"prompt": prompt, "seconds_start": start, "seconds_total": total},
      ["prompt", "seconds_start", "seconds_total"], ["seconds_start", "seconds_total"])
  assert cross.shape == (b, 9, 16) and glob.shape == (b, 32)
  np.testing.assert_array_equal(np.asarray(cross[:, 7:, 0]), [[2, 3], [2, 3]])
  np.testing.assert_array_equal(np.asarray(glob[0, 15:17]), [2, 3])
  with pytest.raises(KeyError, match="seconds_total"):
    dit_conditioning.assemble({"prompt": prompt}, ["prompt", "seconds_total"], [])
