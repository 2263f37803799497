"""The autoencoder family through `launch/train_autoencoder.py`: tiny config on WAV tones, trained,
interrupted and resumed, its validation loss lowered, its weights read back by the pre-encoding
code; the multi-resolution STFT loss against torch.stft."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.io.wavfile
import torch

from lora_jax.audio import stft_loss
from lora_jax.data.dit import autoencoder
from lora_jax.interop import flax_weights
from lora_jax.models.oobleck import model as oobleck

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _train(tmp_path, workdir, audio_dir, *extra):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, str(ROOT / "launch" / "train_autoencoder.py"),
         "--config=" + str(ROOT / "configs" / "autoencoder.py") + ":tiny",
         f"--audio-dir={audio_dir}", f"--workdir={workdir}", *extra]
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _val_losses(workdir):
  rows = (workdir / "metrics.csv").read_text().splitlines()
  header = rows[0].split(",")
  col = header.index("val_loss")
  return {int(r.split(",")[header.index("step")]): float(r.split(",")[col])
          for r in rows[1:] if r.split(",")[col]}


def test_train_resume_and_weights_for_encoding(tmp_path):
  wavs = tmp_path / "wavs"
  wavs.mkdir()
  t = np.arange(8000) / 8000.0
  for i, f in enumerate((220.0, 330.0, 440.0)):  # 1 s tones at the tiny config's 8 kHz
    tone = 0.4 * np.sin(2 * np.pi * f * t) * np.exp(-2 * (t % 0.25))
    scipy.io.wavfile.write(wavs / f"tone{i}.wav", 8000, (tone * 32767).astype(np.int16))
  run = tmp_path / "run"
  first = _train(tmp_path, run, wavs, "--config.training.steps=4")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "45 segments of 512 samples from 3 files" in first.stderr
  second = _train(tmp_path, run, wavs, "--config.training.steps=12")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed from step 4" in second.stderr
  assert json.loads((run / "status.json").read_text())["step"] == 12
  val = _val_losses(run)
  assert val[12] < val[0] * 0.97, val  # the held-out reconstruction loss went down

  # The exported weights are the original's state dict and model config: what encode reads.
  raw, config, params = autoencoder.load(str(run / "model_config.json"),
                                         str(run / "autoencoder.safetensors"), None)
  assert raw["model_type"] == "autoencoder" and config.latent_dim == 4
  exported = flax_weights.load_params(str(run / "params.safetensors"),
                                      oobleck.abstract_params(config))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(exported)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  audio = np.zeros((1, 1, 512), np.float32)
  latents = autoencoder.encoder(config, False)(params, audio, None)
  assert latents.shape == (1, 4, 32)
  assert autoencoder.decoder(config)(params, latents).shape == (1, 1, 512)


def test_no_audio_is_one_error_line_and_writes_nothing(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  out = _train(tmp_path, tmp_path / "never", empty)
  assert out.returncode == 1
  lines = [l for l in out.stderr.splitlines() if "error" in l]
  assert len(lines) == 1 and "holds no .wav files" in lines[0], out.stderr[-2000:]
  assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("n_fft", [64, 256])
def test_stft_loss_matches_torch(n_fft):
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, 3, 1000)).astype(np.float32)
  ours = float(stft_loss.multi_resolution(x, y, (n_fft,)))
  spec = lambda a: torch.stft(torch.from_numpy(a), n_fft, n_fft // 4, window=torch.hann_window(
      n_fft), center=False, return_complex=True).abs().clamp_min(1e-5)
  sx, sy = spec(x), spec(y)
  want = float(torch.linalg.norm(sy - sx) / torch.linalg.norm(sy)
               + (sy.log() - sx.log()).abs().mean())
  assert ours == pytest.approx(want, rel=1e-4)
  assert float(stft_loss.multi_resolution(y, y, (n_fft,))) == 0.0
