"""lora_jax.models.dit.model against the original stable-audio-tools 0.0.19 DiffusionTransformer.

The original is built at a tiny size with every weight randomised (the zero-initialised output
layers and 1x1 convolutions included, else they would hide half the model), converted, and both
are run on the same inputs: cross-attention tokens (fewer key/value heads than query heads, as in
Stable Audio Open), a global embedding, prepended conditioning tokens, partial rotary embeddings.
The reference is the original in float64; the Flax float32 output must sit as close to it as the
original's own float32 output does (times a small factor), which is float32 rounding.
"""

import inspect
import math

import jax
import numpy as np
import pytest
import torch

from lora_jax.interop import dit_convert
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.models.dit import guidance as dit_guidance
from lora_jax.models.dit import model as dit
from lora_jax.models.dit import objective as dit_objective
from stable_audio_tools.models.dit import DiffusionTransformer as TorchDiT

# embed 256 / 4 heads: head size 64 with 32 rotary features (Stable Audio Open's split); context
# width 128 without projection: 2 key/value heads serving 4 query heads.
_ORIGINAL = dict(io_channels=8, embed_dim=256, depth=2, num_heads=4, cond_token_dim=128,
                 project_cond_tokens=False, global_cond_dim=16, prepend_cond_dim=12,
                 transformer_type="continuous_transformer")
_B, _T, _S, _P = 2, 24, 5, 3
_STABLE_AUDIO_OPEN = dict(io_channels=64, embed_dim=1536, depth=24, num_heads=24,
                          cond_token_dim=768, global_cond_dim=1536, project_cond_tokens=False,
                          transformer_type="continuous_transformer")


def _torch_model():
  torch.manual_seed(0)
  model = TorchDiT(**_ORIGINAL).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("gamma"):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      else:  # about unit-variance activations through every layer
        fan_in = p.shape[1] * (p.shape[2] if p.ndim == 3 else 1) if p.ndim > 1 else 1
        p.copy_(torch.randn_like(p) / math.sqrt(fan_in))
  return model


def _inputs():
  g = torch.Generator().manual_seed(1)
  return dict(x=torch.randn(_B, 8, _T, generator=g), t=torch.rand(_B, generator=g),
              cross_attn_cond=torch.randn(_B, _S, 128, generator=g),
              global_embed=torch.randn(_B, 16, generator=g),
              prepend_cond=torch.randn(_B, _P, 12, generator=g))


def _run_torch(model, inputs, dtype):
  model = model.to(dtype)
  with torch.no_grad():
    # use_checkpointing=False: the original's default wraps each layer in activation
    # checkpointing, which changes nothing in eval but warns.
    # The original needs a prepend mask to concatenate to (it is not used further: the backbone
    # takes no masks).
    out = model(**{k: v.to(dtype) for k, v in inputs.items()}, use_checkpointing=False,
                prepend_cond_mask=torch.ones(_B, _P, dtype=torch.bool))
  return out.double().numpy()


@jax.jit
def _apply(params, x, t, kwargs):
  config = dit.config_from_original(_ORIGINAL)
  return dit.DiffusionTransformer(config).apply({"params": params}, x, t, **kwargs)


def _run_flax(params, inputs):
  kwargs = {k: jax.numpy.asarray(v.numpy()) for k, v in inputs.items()}
  x, t = kwargs.pop("x"), kwargs.pop("t")
  return np.asarray(_apply(params, x, t, kwargs), np.float64)


@pytest.fixture(scope="module")
def converted():
  model = _torch_model()
  config = dit.config_from_original(_ORIGINAL)
  return model, config, dit_convert.state_dict_to_params(model.state_dict(), config)


def test_forward_matches_the_original_within_float32_rounding(converted):
  model, _, params = converted
  inputs = _inputs()
  ref64 = _run_torch(model, inputs, torch.float64)
  torch32 = _run_torch(model, inputs, torch.float32)
  ours = _run_flax(params, inputs)
  scale = np.abs(ref64).max()
  torch_err = np.abs(torch32 - ref64).max() / scale
  our_err = np.abs(ours - ref64).max() / scale
  print(f"max |out - float64 original| / max |out|: torch float32 {torch_err:.2e}, "
        f"lora_jax float32 {our_err:.2e}")
  assert scale > 1.0  # the randomised branches really contribute
  assert torch_err < 1e-5
  assert our_err < max(4 * torch_err, 1e-6)


def test_conditioning_changes_the_output(converted):
  """Each conditioning input reaches the output, in both models alike."""
  model, _, params = converted
  inputs = _inputs()
  base = _run_flax(params, inputs)
  for name in ("cross_attn_cond", "global_embed", "prepend_cond"):
    changed = dict(inputs, **{name: inputs[name] + 1.0})
    ours, theirs = _run_flax(params, changed), _run_torch(model, changed, torch.float32)
    assert np.abs(ours - base).max() > 1e-2, name
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max(), err_msg=name)


def test_state_dict_round_trips_and_loads_strictly_into_the_original(converted, tmp_path):
  model, config, params = converted
  back = dit_convert.params_to_state_dict(params, config)
  fresh = TorchDiT(**_ORIGINAL)
  fresh.load_state_dict(back, strict=True)
  for key, value in model.state_dict().items():
    assert torch.equal(back[key].to(value.dtype), value), key
  for suffix in (".safetensors", ".ckpt"):
    path = str(tmp_path / f"dit{suffix}")
    dit_convert.save(params, config, path)
    again = dit_convert.load(path, config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_strict_loading_names_the_problem(converted):
  model, config, _ = converted
  sd = model.state_dict()
  missing = {k: v for k, v in sd.items() if k != "transformer.layers.1.cross_attn.to_kv.weight"}
  with pytest.raises(WeightFileError, match="transformer.layers.1.cross_attn.to_kv.weight"):
    dit_convert.state_dict_to_params(missing, config)
  with pytest.raises(WeightFileError, match="transformer.extra.weight"):
    dit_convert.state_dict_to_params(dict(sd, **{"transformer.extra.weight": sd[
        "transformer.project_in.weight"]}), config)
  beta = "transformer.layers.0.ff_norm.beta"
  with pytest.raises(WeightFileError, match=beta):
    dit_convert.state_dict_to_params(dict(sd, **{beta: sd[beta] + 1}), config)
  wrapped = {f"model.model.{k}": v for k, v in sd.items()}
  wrapped["conditioner.conditioners.prompt.proj.weight"] = sd["transformer.project_in.weight"]
  with pytest.raises(WeightFileError, match="'model.model.'"):
    dit_convert.state_dict_to_params(wrapped, config)
  params = dit_convert.state_dict_to_params(wrapped, config, prefix="model.model.")
  assert params["transformer"]["layers_1"]["self_attn"]["to_qkv"]["kernel"].shape == (256, 768)


def test_unsupported_options_are_refused():
  for key, value in (("global_cond_type", "adaLN"), ("input_concat_dim", 4),
                     ("timestep_cond_type", "input_concat")):
    with pytest.raises(ValueError, match=key):
      dit.config_from_original(dict(_ORIGINAL, **{key: value}))
  with pytest.raises(ValueError, match="qk_norm"):
    dit.config_from_original(dict(_ORIGINAL, attn_kwargs={"qk_norm": "ln"}, qk_norm="ln"))
  with pytest.raises(ValueError, match="rotary size 32"):
    dit.DiTConfig(embed_dim=64, num_heads=4)


def test_v_loss_matches_the_originals_training_objective(converted):
  """The training wrapper's v-objective (noised = x a + n s, target = n a - x s, MSE) on both."""
  model, config, params = converted
  inputs = _inputs()
  g = torch.Generator().manual_seed(2)
  x0, t, noise = inputs["x"], inputs["t"], torch.randn(inputs["x"].shape, generator=g)
  alpha, sigma = (f(t * math.pi / 2)[:, None, None] for f in (torch.cos, torch.sin))
  noised = dict(inputs, x=x0 * alpha + noise * sigma)
  want = np.mean((_run_torch(model, noised, torch.float64)
                  - (noise * alpha - x0 * sigma).double().numpy()) ** 2)
  cond = {k: jax.numpy.asarray(inputs[k].numpy())
          for k in ("cross_attn_cond", "global_embed", "prepend_cond")}
  model_fn = lambda x, t, **c: _apply(params, x, t, c)
  got = dit_objective.v_loss(model_fn, jax.numpy.asarray(x0.numpy()), jax.numpy.asarray(t.numpy()),
                             jax.numpy.asarray(noise.numpy()), cond)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # A padding mask restricts the mean to real positions (the original's masked MSE).
  mask = np.arange(_T)[None, :] < np.array([[_T], [_T // 2]])
  masked = dit_objective.v_loss(model_fn, jax.numpy.asarray(x0.numpy()),
                                jax.numpy.asarray(t.numpy()), jax.numpy.asarray(noise.numpy()),
                                cond, padding_mask_BxT=jax.numpy.asarray(mask))
  err = (_run_torch(model, noised, torch.float64) - (noise * alpha - x0 * sigma).double().numpy())
  want_masked = (err ** 2).transpose(0, 2, 1)[mask].mean()
  np.testing.assert_allclose(float(masked), want_masked, rtol=1e-5)


def test_stable_audio_open_state_dict_layout_is_the_converters():
  """At full size (built on the meta device, no memory): every key and shape the converter
  expects is the original's, buffers included."""
  with torch.device("meta"):
    # Stable Audio Open's model_config.json `model.diffusion.config`.
    original = TorchDiT(**_STABLE_AUDIO_OPEN)
  want = {k: tuple(v.shape) for k, v in original.state_dict().items()}
  assert dit_convert.expected_shapes(dit.config_from_original(_STABLE_AUDIO_OPEN)) == want
  assert dit.config_from_original(_STABLE_AUDIO_OPEN) == dit.DiTConfig()
  assert sum(p.numel() for p in original.parameters()) == 1_056_828_544


@pytest.mark.parametrize("scale_phi", [0.0, 0.7])
def test_classifier_free_guidance_matches_the_original(converted, scale_phi):
  model, _, params = converted
  inputs = _inputs()
  with torch.no_grad():
    want = model.to(torch.float32)(**inputs, cfg_scale=3.5, scale_phi=scale_phi,
                                    use_checkpointing=False,
                                    prepend_cond_mask=torch.ones(_B, _P, dtype=torch.bool)).numpy()
  cond = {k: jax.numpy.asarray(inputs[k].numpy())
          for k in ("cross_attn_cond", "global_embed", "prepend_cond")}
  got = dit_guidance.guided(lambda x, t, **c: _apply(params, x, t, c),
                            jax.numpy.asarray(inputs["x"].numpy()),
                            jax.numpy.asarray(inputs["t"].numpy()), cfg_scale=3.5,
                            scale_phi=scale_phi, **cond)
  unguided = _run_flax(params, inputs)
  assert np.abs(np.asarray(got) - unguided).max() > 1e-2  # guidance really moved the output
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_patches_and_no_cross_attention_match_the_original():
  """patch_size 2 (time steps folded into channels) with only the timestep and global embedding."""
  original = dict(io_channels=3, patch_size=2, embed_dim=64, depth=1, num_heads=2,
                  global_cond_dim=5, transformer_type="continuous_transformer")
  torch.manual_seed(3)
  model = TorchDiT(**original).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  config = dit.config_from_original(original)
  params = dit_convert.state_dict_to_params(model.state_dict(), config)
  g = torch.Generator().manual_seed(4)
  x, t, glob = torch.randn(2, 3, 8, generator=g), torch.rand(2, generator=g), torch.randn(
      2, 5, generator=g)
  with torch.no_grad():
    want = model(x, t, global_embed=glob, use_checkpointing=False).numpy()
  got = dit.DiffusionTransformer(config).apply(
      {"params": params}, jax.numpy.asarray(x.numpy()), jax.numpy.asarray(t.numpy()),
      global_embed=jax.numpy.asarray(glob.numpy()))
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_keys_a_config_leaves_out_take_the_originals_defaults():
  defaults = {k: v.default for k, v in inspect.signature(TorchDiT).parameters.items()
              if v.default is not inspect.Parameter.empty}
  config = dit.config_from_original({})
  for field in ("io_channels", "patch_size", "embed_dim", "cond_token_dim", "project_cond_tokens",
                "global_cond_dim", "project_global_cond", "prepend_cond_dim", "depth",
                "num_heads"):
    assert getattr(config, field) == defaults[field], field
