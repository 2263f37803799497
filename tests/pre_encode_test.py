"""WAV folders to pre-encoded latents and back (lora_jax/data/dit, launch/*_latents.py).

A tiny random Oobleck autoencoder saved in the original's layout stands for Stable Audio's; the
checks are on what the data set holds (latents of each clip equal to encoding that clip, the
original's metadata), on resampling and channels, on resuming, and on bad input failing before
anything is written.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.io.wavfile

from lora_jax import errors
from lora_jax.data.dit import autoencoder, clips, decode, encode, wav
from lora_jax.interop import oobleck_convert
from lora_jax.models.oobleck import config as oobleck_config
from lora_jax.models.oobleck import model as oobleck

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RATE, _RATIO, _SIZE = 8000, 8, 64  # 8 latent frames per clip
_MODEL = {"model_type": "autoencoder", "sample_rate": _RATE, "sample_size": _SIZE, "model": {
    "encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 4, "c_mults": [1, 2],
                                              "strides": [2, 4], "latent_dim": 6,
                                              "use_snake": True}},
    "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 4, "c_mults": [1, 2],
                                              "strides": [2, 4], "latent_dim": 3,
                                              "use_snake": True, "final_tanh": False}},
    "bottleneck": {"type": "vae"}, "latent_dim": 3, "downsampling_ratio": _RATIO,
    "io_channels": 2}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("pre_encode")
  config = oobleck_config.config_from_original(_MODEL)
  # Random weights drawn in numpy from the abstract tree: compiling `oobleck.init` (a random
  # initialiser per layer) takes longer than this whole file's other work.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.5 * rng.standard_normal(s.shape) + (
      1.0 if len(s.shape) == 3 and s.shape[1:] == (1, 1) else 0.0)).astype(np.float32),
                        oobleck.abstract_params(config))
  oobleck_convert.save(params, str(root / "ae.safetensors"))
  with open(root / "model.json", "w") as f:
    json.dump(_MODEL, f)
  audio = root / "wavs"
  (audio / "sub").mkdir(parents=True)
  # mono 16-bit at twice the model's rate, 150 samples at 8 kHz after resampling: 3 clips
  scipy.io.wavfile.write(audio / "a.wav", 2 * _RATE,
                         (rng.uniform(-0.5, 0.5, 300) * 32767).astype(np.int16))
  (audio / "a.txt").write_text("solo piano\n")
  # stereo float at the model's rate, 2.5 s: 313 clips would be slow, so 40 samples: one clip
  scipy.io.wavfile.write(audio / "sub" / "b.wav", _RATE,
                         rng.uniform(-1.2, 1.2, (40, 2)).astype(np.float32))
  return root, config, params


def _settings(root, **changes):
  return encode.EncodeSettings(**{
      "model_config": str(root / "model.json"), "weights": str(root / "ae.safetensors"),
      "audio_dir": str(root / "wavs"), "out_dir": str(root / "latents"), "prompt": "drums",
      **changes})


def test_clips_carry_the_originals_metadata():
  audio = np.ones((2, 150), np.float32)
  got = clips.cut(audio, 100, 8, 64)
  assert [c.seconds_start for c in got] == [0, 0, 1] and {c.seconds_total for c in got} == {2}
  assert got[2].padding_mask == (1, 1, 1, 0, 0, 0, 0, 0)  # 22 real samples: 3 frames start in them
  assert got[2].audio[:, 22:].sum() == 0 and got[2].audio.shape == (2, 64)
  whole = clips.cut(audio, 100, 8, None)
  assert len(whole) == 1 and whole[0].audio.shape == (2, 152) and sum(whole[0].padding_mask) == 19
  with pytest.raises(ValueError, match="multiple"):
    clips.cut(audio, 100, 8, 60)


def test_a_folder_encodes_to_the_pre_encoded_format_and_resumes(world):
  root, config, params = world
  counts = encode.encode_folder(_settings(root))
  assert counts == {"files": 2, "clips": 4, "kept": 0}
  out = root / "latents"
  assert sorted(str(p.relative_to(out)) for p in out.rglob("*.npy")) == [
      "a.000.npy", "a.001.npy", "a.002.npy", "sub/b.000.npy"]
  meta = json.loads((out / "a.002.json").read_text())
  assert meta["prompt"] == "solo piano" and meta["path"] == "a.wav"
  assert (meta["seconds_start"], meta["seconds_total"]) == (0, 1)
  assert meta["padding_mask"] == [1, 1, 1, 0, 0, 0, 0, 0]  # 150 - 128 = 22 real samples
  assert json.loads((out / "sub" / "b.000.json").read_text())["prompt"] == "drums"
  # Each clip's latents are the autoencoder's mean encoding of that clip (resampled, stereo).
  a = wav.load(str(root / "wavs" / "a.wav"), _RATE, 2)
  assert a.shape == (2, 150) and np.array_equal(a[0], a[1])
  # (the compiled encoder the run used, shared through its cache: eager would take longer)
  want = autoencoder.encoder(config, False)(
      params, clips.cut(a, _RATE, _RATIO, _SIZE)[2].audio[None], None)[0]
  got = np.load(out / "a.002.npy")
  assert got.shape == (3, 8) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
  b = np.load(out / "sub" / "b.000.npy")
  assert np.abs(b).max() > 0
  # A second run keeps what is there; other settings re-encode.
  before = os.stat(out / "a.000.npy").st_mtime_ns
  assert encode.encode_folder(_settings(root))["kept"] == 4
  assert os.stat(out / "a.000.npy").st_mtime_ns == before
  sampled = encode.encode_folder(_settings(root, sample=True, seed=3,
                                            out_dir=str(root / "sampled")))
  assert sampled["kept"] == 0
  drawn = np.load(root / "sampled" / "a.002.npy")
  assert drawn.shape == got.shape and not np.allclose(drawn, got)


def test_decoding_writes_wavs_cut_to_the_real_frames(world):
  root, config, params = world
  encode.encode_folder(_settings(root))
  assert decode.decode_latents(decode.DecodeSettings(
      model_config=str(root / "model.json"), weights=str(root / "ae.safetensors"),
      latents=str(root / "latents"), out_dir=str(root / "decoded"))) == 4
  rate, audio = scipy.io.wavfile.read(root / "decoded" / "a.002.wav")
  assert rate == _RATE and audio.dtype == np.float32 and audio.shape == (3 * _RATIO, 2)
  z = np.load(root / "latents" / "a.002.npy")[:, :3]
  want = autoencoder.decoder(config)(params, z[None])[0]
  np.testing.assert_allclose(audio.T, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_bad_input_is_one_error_before_anything_is_written(world, tmp_path):
  root, _, _ = world
  bad = tmp_path / "wavs"
  bad.mkdir()
  scipy.io.wavfile.write(bad / "ok.wav", _RATE, np.zeros(80, np.int16))
  (bad / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
  with pytest.raises(wav.AudioFileError, match="broken.wav: not a readable WAV file"):
    encode.encode_folder(_settings(root, audio_dir=str(bad), out_dir=str(tmp_path / "out")))
  (bad / "broken.wav").unlink()
  with pytest.raises(errors.UserError, match="ok.wav has no prompt: no ok.txt"):
    encode.encode_folder(_settings(root, audio_dir=str(bad), out_dir=str(tmp_path / "out"),
                                   prompt=None))
  with pytest.raises(errors.UserError, match="sample_size 60 must be a positive multiple of"):
    encode.encode_folder(_settings(root, audio_dir=str(bad), out_dir=str(tmp_path / "out"),
                                   sample_size=60))
  assert not (tmp_path / "out").exists()
  # Through the launcher: one line, exit status 1, nothing written.
  (bad / "broken.wav").write_bytes(b"not audio at all")
  result = subprocess.run(
      [sys.executable, os.path.join(_ROOT, "launch", "encode_latents.py"),
       f"--model-config={root / 'model.json'}", f"--autoencoder-ckpt={root / 'ae.safetensors'}",
       f"--audio-dir={bad}", f"--out-dir={tmp_path / 'out'}", "--prompt=x"],
      capture_output=True, text=True, check=False)
  assert result.returncode == 1, result.stderr
  lines = [l for l in result.stderr.splitlines() if "error" in l]
  assert len(lines) == 1 and "broken.wav: not a readable WAV file" in lines[0], result.stderr
  assert not (tmp_path / "out").exists()


def test_channels_follow_the_original():
  stereo = np.stack([np.full(4, 0.2), np.full(4, 0.6), np.full(4, 1.0)]).astype(np.float32)
  assert np.allclose(wav.to_channels(stereo, 1), 0.6)
  assert wav.to_channels(stereo, 2).shape == (2, 4)  # the first two of three
  assert np.array_equal(wav.to_channels(stereo[:1], 2), np.repeat(stereo[:1], 2, axis=0))
