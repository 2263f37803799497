"""`launch/generate_loraw.py`'s work (lora_jax/loraw/generation.py) writing audio: latents sampled
by the DiT, decoded by the model config's Oobleck pretransform with the user's autoencoder
weights, a WAV at the config's sample rate; same seed, same file; an adapter at multiplier 0 is
the base's file byte for byte; bad input is refused before anything is written."""

import copy
import json

import jax
import numpy as np
import pytest
import scipy.io.wavfile

from lora_jax import lora
from lora_jax.families import dit as dit_family
from lora_jax.interop import oobleck_convert
from lora_jax.loraw import base_weights, generation, model_config, weights
from lora_jax.models.oobleck import config as oobleck_config
from lora_jax.models.oobleck import model as oobleck

RATE, RATIO, FRAMES = 8000, 8, 6
AUTOENCODER = {
    "encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 4, "c_mults": [1, 2],
                                              "strides": [2, 4], "latent_dim": 8,
                                              "use_snake": True}},
    "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 4, "c_mults": [1, 2],
                                              "strides": [2, 4], "latent_dim": 4,
                                              "use_snake": True, "final_tanh": False}},
    "bottleneck": {"type": "vae"}, "latent_dim": 4, "downsampling_ratio": RATIO,
    "io_channels": 2}
MODEL_CONFIG = {
    "model_type": "diffusion_cond", "sample_rate": RATE, "audio_channels": 2,
    "model": {
        "pretransform": {"type": "autoencoder", "config": AUTOENCODER},
        "conditioning": {"configs": [
            {"id": "prompt", "type": "t5",
             "config": {"t5_model_name": "t5-base", "max_length": 16}},
            {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 16}},
            {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 16}}],
            "cond_dim": 32},
        "diffusion": {"type": "dit", "config": dict(
            io_channels=4, embed_dim=64, depth=1, num_heads=2, cond_token_dim=32,
            global_cond_dim=64, project_cond_tokens=False),
                      "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                      "global_cond_ids": ["seconds_start", "seconds_total"]},
        "io_channels": 4},
    "lora": {"component_whitelist": ["transformer"], "multiplier": 1.0, "rank": 2, "alpha": 2}}


def _random(abstract, seed, scale):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape) + (
      1.0 if len(s.shape) == 3 and s.shape[1:] == (1, 1) else 0.0)).astype(np.float32), abstract)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A random base (this project's Flax file), autoencoder weights in the original's layout, an
  adapter with non-zero factors."""
  tmp = tmp_path_factory.mktemp("loraw_generate")
  (tmp / "model.json").write_text(json.dumps(MODEL_CONFIG))
  mc = model_config.parse(copy.deepcopy(MODEL_CONFIG))
  config = mc.dit_config(FRAMES)
  family = dit_family.make(config, "float32")
  abstract = jax.eval_shape(lambda k: family.model.init(k, *family.init_args())["params"],
                            jax.random.key(0))
  base_weights.write_flax(_random(abstract, 0, 0.3), str(tmp / "base.safetensors"), "test",
                          config)
  ae_config = oobleck_config.config_from_original(MODEL_CONFIG["model"]["pretransform"], RATE)
  oobleck_convert.save(_random(oobleck.abstract_params(ae_config), 1, 0.5),
                       str(tmp / "ae.safetensors"))
  spec = lora.LoraSpec(rank=2, alpha=2.0, include=model_config.whitelist_rules(("transformer",)))
  adapter = lora.init_adapter(lora.resolve(spec, abstract), spec, jax.random.key(3))
  adapter = adapter.replace(params=jax.tree.map(lambda a: a + 0.2, adapter.params))
  weights.save_weights(lora.AdapterRecord(adapter, spec, "", "dit", "test"),
                       str(tmp / "adapter.lora"))
  return tmp, mc


def _generate(world, output, **changes):
  tmp, mc = world
  kwargs = dict(base_path=str(tmp / "base.safetensors"), lora_path="", multiplier=None,
                prompt="solo piano", seconds_start=0.0, seconds_total=1.0, latent_length=FRAMES,
                steps=2, cfg_scale=3.0, seed=7, output=str(tmp / output),
                autoencoder_path=str(tmp / "ae.safetensors"))
  kwargs.update(changes)
  return generation.run_command(mc, **kwargs)


def test_a_wav_decoded_at_the_configs_rate_and_the_same_seed_gives_the_same_file(world):
  tmp, _ = world
  line = _generate(world, "a.wav")
  assert line.startswith(f"wrote {tmp / 'a.wav'}: {FRAMES * RATIO / RATE:.2f} s of 2-channel audio "
                         f"at {RATE} Hz from latents [4, {FRAMES}]"), line
  _generate(world, "b.wav")
  assert (tmp / "a.wav").read_bytes() == (tmp / "b.wav").read_bytes()
  rate, audio = scipy.io.wavfile.read(tmp / "a.wav")
  assert rate == RATE and audio.dtype == np.float32 and audio.shape == (FRAMES * RATIO, 2)
  assert np.abs(audio).max() > 0
  # The WAV is the decoding of the latents the same request writes as .npy.
  _generate(world, "a.npy", autoencoder_path="")
  latents = np.load(tmp / "a.npy")
  decoder = generation.load_decoder(world[1], str(tmp / "ae.safetensors"))
  np.testing.assert_array_equal(generation.save_audio(latents, decoder, str(tmp / "c.wav")).T,
                                audio)
  _generate(world, "d.wav", seed=8)
  assert (tmp / "d.wav").read_bytes() != (tmp / "a.wav").read_bytes()


def test_an_adapter_at_multiplier_zero_writes_the_bases_file(world):
  tmp, _ = world
  _generate(world, "base.wav")
  _generate(world, "m0.wav", lora_path=str(tmp / "adapter.lora"), multiplier=0.0)
  line = _generate(world, "m1.wav", lora_path=str(tmp / "adapter.lora"), multiplier=1.0)
  assert line.endswith("adapter adapter.lora at multiplier 1")
  assert (tmp / "m0.wav").read_bytes() == (tmp / "base.wav").read_bytes()
  assert (tmp / "m1.wav").read_bytes() != (tmp / "base.wav").read_bytes()


@pytest.mark.parametrize("change, output, named", [
    ({"autoencoder_path": ""}, "x.wav", "needs --autoencoder-ckpt"),
    ({}, "x.npy", "give a .wav --output"),
    ({}, "x.mp3", "must end in .wav"),
    ({"autoencoder_path": "missing.safetensors"}, "x.wav", "missing.safetensors"),
])
def test_bad_output_requests_are_refused_before_writing(world, change, output, named):
  tmp, _ = world
  with pytest.raises(ValueError, match=named):
    _generate(world, output, **change)
  assert not (tmp / output).exists()


def test_a_config_without_pretransform_writes_latents_only(world):
  tmp, _ = world
  bare = copy.deepcopy(MODEL_CONFIG)
  del bare["model"]["pretransform"]
  with pytest.raises(ValueError, match="needs the model config's pretransform"):
    generation.run_command(model_config.parse(bare), **{
        **dict(base_path=str(tmp / "base.safetensors"), lora_path="", multiplier=None,
               prompt="x", seconds_start=0.0, seconds_total=1.0, latent_length=FRAMES, steps=2,
               cfg_scale=1.0, seed=0, output=str(tmp / "bare.wav"),
               autoencoder_path=str(tmp / "ae.safetensors"))})
  assert not (tmp / "bare.wav").exists()
