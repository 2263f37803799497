"""lora_jax.models.dit.model on its own: Stable Audio Open's size, LoRA through it, bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.lora import adapter as adapter_lib
from lora_jax.lora import forward, spec as spec_lib
from lora_jax import tree_paths
from lora_jax.models.dit import guidance as dit_guidance
from lora_jax.models.dit import model as dit

_TINY = dit.DiTConfig(io_channels=4, embed_dim=64, depth=2, num_heads=2, cond_token_dim=32,
                      project_cond_tokens=False, global_cond_dim=8)


def _random_params(config, scale=0.1):
  """Parameters drawn in numpy (fast; Flax's init compiles its random number generator for
  seconds), zero-initialised layers included."""
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.normal(size=a.shape) * scale, a.dtype),
      dit.abstract_params(config))


def _dotted(params):
  return {tree_paths.dotted(k): v for k, v in tree_paths.flatten(params).items()}


def _inputs(b=2, t=6, s=3):
  ks = jax.random.split(jax.random.key(1), 4)
  return (jax.random.normal(ks[0], (b, 4, t)), jax.random.uniform(ks[1], (b,)),
          dict(cross_attn_cond=jax.random.normal(ks[2], (b, s, 32)),
               global_embed=jax.random.normal(ks[3], (b, 8))))


def test_stable_audio_open_size_has_loraws_170_transformer_linears():
  """The defaults are Stable Audio Open's DiT; LoRAW's `transformer` whitelist finds 170 layers."""
  params = dit.abstract_params(dit.DiTConfig())
  under_transformer = [p for p in spec_lib.dense_modules(params) if p.startswith("transformer.")]
  assert len(under_transformer) == 24 * 7 + 2 == 170
  n = sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(params))
  # The original at this config counts the same (dit_parity_test builds it on the meta device).
  assert n == 1_056_828_544, n


def test_lora_reaches_every_transformer_linear_and_zero_b_changes_nothing():
  params = _random_params(_TINY)
  targets = spec_lib.resolve(spec_lib.LoraSpec(rank=2, include=(r"^transformer\.",)), params)
  assert len(targets) == 2 * 7 + 2
  lora = adapter_lib.init_adapter(targets, spec_lib.LoraSpec(rank=2, include=("x",)),
                                  jax.random.key(2))
  x, t, cond = _inputs()
  model = dit.DiffusionTransformer(_TINY)
  base = jax.jit(model.apply)({"params": params}, x, t, **cond)
  adapted = jax.jit(lambda a: forward.apply(model, params, [forward.Active(a)], x, t, **cond))
  # B = 0: the adapted forward is the base one (to rounding: widening layers fold the adapter into
  # one product); every adapted layer was called (else the context raises).
  np.testing.assert_allclose(np.asarray(adapted(lora)), np.asarray(base), rtol=0,
                             atol=1e-6 * np.abs(np.asarray(base)).max())
  moved = adapted(adapter_lib.Adapter(jax.tree_util.tree_map(lambda a: a + 0.1, lora.params),
                                      lora.scales))
  assert np.abs(np.asarray(moved) - np.asarray(base)).max() > 1e-3


def test_bfloat16_compute_stays_close_to_float32():
  params = _random_params(_TINY)
  x, t, cond = _inputs()
  full = jax.jit(dit.DiffusionTransformer(_TINY).apply)({"params": params}, x, t, **cond)
  bf16 = dit.DiffusionTransformer(dit.DiTConfig(**{**_TINY.__dict__, "dtype": "bfloat16"}))
  low = jax.jit(bf16.apply)({"params": params}, x, t, **cond)
  assert low.dtype == jnp.bfloat16
  rel = np.abs(np.asarray(low, np.float32) - np.asarray(full)).max() / np.abs(full).max()
  assert 0 < rel < 0.05, rel


def test_inputs_the_model_was_not_built_for_are_refused():
  params = _random_params(_TINY)
  x, t, cond = _inputs()
  with pytest.raises(ValueError, match="prepend_cond given to a model built without it"):
    dit.DiffusionTransformer(_TINY).apply({"params": params}, x, t,
                                          prepend_cond=jnp.ones((2, 1, 4)), **cond)
  with pytest.raises(ValueError, match="input has 5 channels, the model 4"):
    dit.DiffusionTransformer(_TINY).apply({"params": params}, jnp.ones((2, 5, 6)), t, **cond)


def test_init_zeroes_the_layers_the_original_zeroes():
  config = dit.DiTConfig(io_channels=2, embed_dim=32, depth=1, num_heads=1, cond_token_dim=32,
                         project_cond_tokens=False, global_cond_dim=4)
  params = dit.init(config, jax.random.key(0), seq_len=4, cond_len=2)
  zeros = {p for p, leaf in _dotted(params).items() if not np.any(np.asarray(leaf))}
  layer = "transformer.layers.0."
  # The original zeroes these weights (the branch outputs and 1x1 convolutions, so a fresh model
  # is the identity plus the skip paths); Flax also starts every bias at zero, torch's Linear
  # uniformly (only an initialisation difference: converted weights are the same).
  assert {p for p in zeros if p.endswith(".kernel")} == {
      "preprocess_conv.kernel", "postprocess_conv.kernel", layer + "self_attn.to_out.kernel",
      layer + "cross_attn.to_out.kernel", layer + "ff.ff.2.kernel"}
  assert layer + "ff.ff.2.bias" in zeros


def test_cfg_dropout_drops_whole_rows():
  cross = jnp.ones((64, 3, 4))
  kept, prepend = dit_guidance.cfg_dropout(jax.random.key(0), 0.0, cross)
  assert kept is cross and prepend is None
  dropped, _ = dit_guidance.cfg_dropout(jax.random.key(0), 0.5, cross)
  per_row = np.asarray(dropped).reshape(64, -1)
  assert set(per_row.min(1)) == {0.0, 1.0} and np.all(per_row.min(1) == per_row.max(1))
  assert 10 < int(per_row[:, 0].sum()) < 54
  with pytest.raises(ValueError, match="got 1.0"):
    dit_guidance.cfg_dropout(jax.random.key(0), 1.0, cross)
