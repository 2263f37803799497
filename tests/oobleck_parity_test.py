"""lora_jax.models.oobleck against the original stable-audio-tools 0.0.19 `AudioAutoencoder`.

The original is built from its own JSON config at tiny sizes with every weight randomised (weight
norm's g and v, SnakeBeta's log alpha and beta, biases), converted, and both run on the same audio
and latents. The reference is the original in float64; the Flax float32 output must sit as close
to it as the original's own float32 output does (times a small factor), which is float32 rounding.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import original_stable_audio
from lora_jax import tree_paths
from lora_jax.interop import oobleck_convert
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.models.oobleck import config as oobleck_config
from lora_jax.models.oobleck import model as oobleck

original_stable_audio.k_diffusion()  # the autoencoder module imports the sampler package
_autoencoders = original_stable_audio.imported("stable_audio_tools.models.autoencoders")
_factory = original_stable_audio.imported("stable_audio_tools.models.factory")
_bottleneck = original_stable_audio.imported("stable_audio_tools.models.bottleneck")

# Snake activations, transposed-convolution upsampling, a VAE: Stable Audio Open's choices.
_SNAKE = {"encoder": {"type": "oobleck", "config": {
              "in_channels": 2, "channels": 4, "c_mults": [1, 2], "strides": [2, 4],
              "latent_dim": 6, "use_snake": True}},
          "decoder": {"type": "oobleck", "config": {
              "out_channels": 2, "channels": 4, "c_mults": [1, 2], "strides": [2, 4],
              "latent_dim": 3, "use_snake": True, "final_tanh": False}},
          "bottleneck": {"type": "vae"}, "latent_dim": 3, "downsampling_ratio": 8,
          "io_channels": 2}
# The other options: ELU, nearest-neighbour upsampling, an odd stride, tanh and soft clipping.
_ELU = {"encoder": {"type": "oobleck", "config": {
            "in_channels": 1, "channels": 3, "c_mults": [2, 3], "strides": [3, 2],
            "latent_dim": 4}},
        "decoder": {"type": "oobleck", "soft_clip": True, "config": {
            "out_channels": 1, "channels": 3, "c_mults": [2, 3], "strides": [3, 2],
            "latent_dim": 2, "use_nearest_upsample": True}},
        "bottleneck": {"type": "vae"}, "latent_dim": 2, "downsampling_ratio": 6, "io_channels": 1}
_RATE = 16000


def _torch_model(model_config, seed=0):
  torch.manual_seed(seed)
  model = _autoencoders.create_autoencoder_from_config(
      {"sample_rate": _RATE, "model": model_config}).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("weight_g"):  # row norms near 1: unit-variance activations
        p.copy_(0.6 + 0.8 * torch.rand_like(p))
      elif name.endswith(("alpha", "beta")):
        p.copy_(0.3 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * (0.1 if name.endswith("bias") else 1.0))
  return model


@functools.lru_cache
def _jitted(config):
  """(pre-bottleneck encoder output, to_latents with a key, from_latents), compiled."""
  ae = oobleck.AudioAutoencoder(config)
  encoder = jax.jit(lambda p, x: ae.apply({"params": p}, x, method=lambda m, a: m.encoder(a)))
  to_latents = jax.jit(functools.partial(oobleck.to_latents, config=config))
  from_latents = jax.jit(functools.partial(oobleck.from_latents, config=config))
  return encoder, to_latents, from_latents


@functools.lru_cache
def _converted(model_config_name):
  model_config = {"snake": _SNAKE, "elu": _ELU}[model_config_name]
  model = _torch_model(model_config)
  config = oobleck_config.config_from_original(model_config, _RATE)
  return model, config, oobleck_convert.state_dict_to_params(model.state_dict(), config)


@pytest.fixture(scope="module", params=["snake", "elu"])
def converted(request):
  return _converted(request.param)


def _relative_errors(run_torch, run_flax):
  ref64 = run_torch(torch.float64)
  torch32 = run_torch(torch.float32)
  ours = np.asarray(run_flax(), np.float64)
  scale = np.abs(ref64).max()
  return scale, np.abs(torch32 - ref64).max() / scale, np.abs(ours - ref64).max() / scale


def test_encode_matches_the_original_within_float32_rounding(converted):
  model, config, params = converted
  audio = torch.randn(2, config.encoder.in_channels, 12 * config.downsampling_ratio,
                      generator=torch.Generator().manual_seed(1))

  def run_torch(dtype):
    with torch.no_grad():  # before the bottleneck: the mean and the raw scale
      return model.to(dtype).encode(audio.to(dtype), skip_bottleneck=True).double().numpy()

  def run_flax():
    return _jitted(config)[0](params, jnp.asarray(audio.numpy()))

  scale, torch_err, our_err = _relative_errors(run_torch, run_flax)
  print(f"encode: max |out - float64 original| / max |out|: torch float32 {torch_err:.2e}, "
        f"lora_jax float32 {our_err:.2e}")
  assert run_flax().shape == (2, 2 * config.latent_dim, 12)
  assert scale > 1.0
  assert torch_err < 1e-5
  assert our_err < max(4 * torch_err, 1e-6)


def test_decode_matches_the_original_within_float32_rounding(converted):
  model, config, params = converted
  latents = torch.randn(2, config.latent_dim, 10, generator=torch.Generator().manual_seed(2))

  def run_torch(dtype):
    with torch.no_grad():
      return model.to(dtype).decode(latents.to(dtype)).double().numpy()

  def run_flax():
    return _jitted(config)[2](params, latents_BxLxT=jnp.asarray(latents.numpy()))

  scale, torch_err, our_err = _relative_errors(run_torch, run_flax)
  print(f"decode: max |out - float64 original| / max |out|: torch float32 {torch_err:.2e}, "
        f"lora_jax float32 {our_err:.2e}")
  assert run_flax().shape == (2, config.decoder.out_channels, 10 * config.downsampling_ratio)
  assert scale > 0.5
  assert torch_err < 1e-5
  assert our_err < max(4 * torch_err, 1e-6)


def test_vae_sample_and_kl_are_the_originals():
  """The bottleneck with the original's own noise: same draw, same KL."""
  h = torch.randn(2, 6, 9, generator=torch.Generator().manual_seed(3)) * 2
  torch.manual_seed(4)
  want, info = _bottleneck.VAEBottleneck().encode(h, return_info=True)
  torch.manual_seed(4)
  noise = torch.randn(2, 3, 9)
  mean, stdev = oobleck.vae.moments(jnp.asarray(h.numpy()))
  np.testing.assert_allclose(oobleck.vae.sample(mean, stdev, jnp.asarray(noise.numpy())),
                             want.numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(float(oobleck.vae.kl(mean, stdev)), float(info["kl"]), rtol=1e-5)


def test_encode_returns_the_mean_or_a_sample_drawn_with_the_key():
  model, config, params = _converted("snake")
  encoder, to_latents, from_latents = _jitted(config)
  audio = jnp.asarray(np.random.default_rng(5).normal(size=(1, 2, 64)), jnp.float32)
  mean, stdev = oobleck.vae.moments(encoder(params, audio))
  a = to_latents(params, audio_BxCxT=audio, key=jax.random.key(0))
  b = to_latents(params, audio_BxCxT=audio, key=jax.random.key(0))
  np.testing.assert_array_equal(a, b)
  z = (a - mean) / stdev  # the standardised draw: about N(0, 1)
  assert 0.5 < float(jnp.std(z)) < 1.5 and float(jnp.abs(a - mean).max()) > 0
  with torch.no_grad():  # what the original's decode gives from our mean encoding
    want = model.float().decode(torch.tensor(np.asarray(mean))).numpy()
  np.testing.assert_allclose(from_latents(params, latents_BxLxT=mean), want, rtol=0,
                             atol=1e-5 * np.abs(want).max())
  scaled = oobleck_config.config_from_original(
      {"type": "autoencoder", "scale": 2.5, "config": _SNAKE}, _RATE)
  assert scaled.scale == 2.5
  deterministic = jax.jit(functools.partial(oobleck.to_latents, config=scaled))
  np.testing.assert_allclose(deterministic(params, audio_BxCxT=audio), mean / 2.5, rtol=1e-5,
                             atol=1e-6)


def test_state_dict_round_trips_and_loads_strictly_into_the_original(tmp_path):
  model, config, params = _converted("elu")
  back = oobleck_convert.params_to_state_dict(params)
  fresh = _autoencoders.create_autoencoder_from_config({"sample_rate": _RATE, "model": _ELU})
  fresh.load_state_dict(back, strict=True)
  for key, value in model.state_dict().items():
    assert torch.equal(back[key].to(value.dtype), value), key
  for suffix in (".safetensors", ".ckpt", ".pt"):
    path = str(tmp_path / f"ae{suffix}")
    oobleck_convert.save(params, path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, oobleck_convert.load(path, config),
                           params)


def test_a_whole_stable_audio_checkpoint_is_read_under_its_pretransform_prefix(tmp_path):
  """The diffusion wrapper holds the autoencoder as `pretransform.model`; the rest is skipped."""
  _, config, params = _converted("snake")
  pretransforms = original_stable_audio.imported("stable_audio_tools.models.pretransforms")
  wrapper = torch.nn.Module()
  wrapper.pretransform = pretransforms.AutoencoderPretransform(_torch_model(_SNAKE))
  wrapper.model = torch.nn.Linear(3, 3)  # stands for the diffusion model's keys
  sd = wrapper.state_dict()
  assert any(k.startswith("pretransform.model.encoder.") for k in sd)
  path = str(tmp_path / "model.ckpt")
  torch.save({"state_dict": sd}, path)
  loaded = oobleck_convert.load(path, config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
  exported = oobleck_convert.params_to_state_dict(loaded, prefix="pretransform.model.")
  assert exported.keys() == {k for k in sd if k.startswith("pretransform.model.")}


def test_the_parametrizations_spelling_of_weight_norm_is_read():
  conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(2, 3, 5))
  assert set(conv.state_dict()) == {"bias", "parametrizations.weight.original0",
                                    "parametrizations.weight.original1"}
  model, config, params = _converted("snake")
  respelled = {k.replace("weight_g", "parametrizations.weight.original0").replace(
      "weight_v", "parametrizations.weight.original1"): v for k, v in model.state_dict().items()}
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         oobleck_convert.state_dict_to_params(respelled, config), params)


def test_strict_loading_names_the_problem():
  model, config, _ = _converted("snake")
  sd = model.state_dict()
  key = "decoder.layers.1.layers.1.weight_v"
  with pytest.raises(WeightFileError, match=f"missing keys.*{key}"):
    oobleck_convert.state_dict_to_params({k: v for k, v in sd.items() if k != key}, config)
  with pytest.raises(WeightFileError, match="unexpected keys.*encoder.extra.weight"):
    oobleck_convert.state_dict_to_params(dict(sd, **{"encoder.extra.weight": sd[key]}), config)
  with pytest.raises(WeightFileError, match="shape mismatch.*encoder.layers.0.bias"):
    oobleck_convert.state_dict_to_params(dict(sd, **{"encoder.layers.0.bias": torch.zeros(7)}),
                                         config)
  wrapped = {f"autoencoder.{k}": v for k, v in sd.items()}
  with pytest.raises(WeightFileError, match="'autoencoder.'"):
    oobleck_convert.state_dict_to_params(wrapped, config)
  oobleck_convert.state_dict_to_params(wrapped, config, prefix="autoencoder.")
  with pytest.raises(WeightFileError, match="prefix 'vae.'"):
    oobleck_convert.state_dict_to_params(wrapped, config, prefix="vae.")


def test_stable_audio_open_layout_is_the_converters():
  """At full size (the original built on the meta device): every key and shape."""
  sao = {"type": "autoencoder", "iterate_batch": True, "config": {
      "encoder": {"type": "oobleck", "config": {
          "in_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16],
          "strides": [2, 4, 4, 8, 8], "latent_dim": 128, "use_snake": True}},
      "decoder": {"type": "oobleck", "config": {
          "out_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16],
          "strides": [2, 4, 4, 8, 8], "latent_dim": 64, "use_snake": True, "final_tanh": False}},
      "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048,
      "io_channels": 2}}
  with torch.device("meta"):
    original = _factory.create_pretransform_from_config(sao, 44100)
  want = {k: tuple(v.shape) for k, v in original.model.state_dict().items()}
  config = oobleck_config.config_from_original(
      {"model_type": "diffusion_cond", "sample_rate": 44100, "model": {"pretransform": sao}})
  assert config == oobleck_config.AutoencoderConfig()
  assert oobleck_convert.expected_shapes(config) == want
  print(f"Stable Audio Open autoencoder: {sum(math.prod(s) for s in want.values()):,} weights")


def test_unsupported_options_are_refused():
  def with_encoder(**changes):
    return dict(_SNAKE, encoder={"type": "oobleck",
                                 "config": dict(_SNAKE["encoder"]["config"], **changes)})
  for bad, match in ((with_encoder(antialias_activation=True), "antialias_activation"),
                     (with_encoder(strides=[2, 2]), "multiply to 4"),
                     (with_encoder(latent_dim=3), "encoder latent_dim 3 should be 6"),
                     (dict(_SNAKE, bottleneck={"type": "rvq"}), "'rvq'"),
                     (dict(_SNAKE, encoder={"type": "dac", "config": {}}), "'dac'"),
                     (dict(_SNAKE, pretransform={"type": "pqmf"}), "pretransform")):
    with pytest.raises(ValueError, match=match):
      oobleck_config.config_from_original(bad, _RATE)
  with pytest.raises(ValueError, match="chunked"):
    oobleck_config.config_from_original({"type": "autoencoder", "chunked": True, "config": _SNAKE},
                                        _RATE)


def test_keys_a_config_leaves_out_take_the_originals_defaults():
  minimal = {"encoder": {"type": "oobleck", "config": {}},
             "decoder": {"type": "oobleck", "config": {"latent_dim": 16}},
             "bottleneck": {"type": "vae"}, "latent_dim": 16, "downsampling_ratio": 512,
             "io_channels": 2}
  with torch.device("meta"):
    original = _autoencoders.create_autoencoder_from_config({"sample_rate": _RATE,
                                                             "model": minimal})
  config = oobleck_config.config_from_original(minimal, _RATE)
  assert config.decoder.final_tanh and not config.encoder.use_snake
  assert oobleck_convert.expected_shapes(config) == {
      k: tuple(v.shape) for k, v in original.state_dict().items()}


def test_without_a_bottleneck_the_encoder_output_is_the_latent():
  plain = dict(_ELU, bottleneck=None, latent_dim=4,
               decoder=dict(_ELU["decoder"], config=dict(_ELU["decoder"]["config"], latent_dim=4)))
  del plain["bottleneck"]
  config = oobleck_config.config_from_original(plain, _RATE)
  assert config.bottleneck == "none"
  with torch.device("meta"):
    original = _autoencoders.create_autoencoder_from_config({"sample_rate": _RATE, "model": plain})
  assert original.bottleneck is None
  assert oobleck_convert.expected_shapes(config) == {
      k: tuple(v.shape) for k, v in original.state_dict().items()}
  audio = jax.ShapeDtypeStruct((1, 1, 24), jnp.float32)
  ae = oobleck.AudioAutoencoder(config)
  params = oobleck.abstract_params(config)
  mean, stdev = jax.eval_shape(lambda p, x: ae.apply({"params": p}, x, method=ae.moments),
                               params, audio)
  assert mean.shape == (1, 4, 4) and stdev is None
  recon, latents, kl = jax.eval_shape(lambda p, x: ae.apply({"params": p}, x, jax.random.key(0)),
                                      params, audio)
  assert recon.shape == (1, 1, 24) and latents.shape == (1, 4, 4) and kl.shape == ()


def test_the_training_pass_gives_every_weight_a_gradient():
  """Reconstruction plus KL through the VAE draw: each leaf (weight norm's g and v, SnakeBeta's
  alpha and beta) gets a finite, non-zero gradient."""
  _, config, params = _converted("snake")
  audio = jnp.asarray(np.random.default_rng(6).normal(size=(1, 2, 32)), jnp.float32)

  def loss(p):
    recon, _, kl = oobleck.AudioAutoencoder(config).apply({"params": p}, audio,
                                                          jax.random.key(1))
    return jnp.mean(jnp.square(recon - audio)) + 1e-4 * kl

  grads = jax.jit(jax.grad(loss))(params)
  for keys, leaf in tree_paths.flatten(grads).items():
    leaf = np.asarray(leaf)
    assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0, tree_paths.dotted(keys)
