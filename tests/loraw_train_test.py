"""LoRAW end to end through `launch/train_loraw.py`: a tiny DiT built and saved by
stable-audio-tools, a folder of pre-encoded latent clips, a LoRA trained, interrupted and resumed,
saved as a LoRAW file, read back, continued from that file by a new run, and sampled with
multiplier 0 (the base model bit for bit) and 1."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import original_stable_audio
from lora_jax import lora
from lora_jax.loraw import generation, model_config, weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
TorchDiT = original_stable_audio.imported("stable_audio_tools.models.dit").DiffusionTransformer
TorchNumber = original_stable_audio.imported(
    "stable_audio_tools.models.conditioners").NumberConditioner

DIT = dict(io_channels=4, embed_dim=64, depth=2, num_heads=2, cond_token_dim=32,
           global_cond_dim=64, project_cond_tokens=False, transformer_type="continuous_transformer")
MODEL_CONFIG = {
    "model_type": "diffusion_cond", "sample_rate": 44100, "audio_channels": 2,
    "model": {
        "conditioning": {"configs": [
            {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 12}},
            {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 16}},
            {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 16}}],
            "cond_dim": 32},
        "diffusion": {"type": "dit", "config": DIT,
                      "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                      "global_cond_ids": ["seconds_start", "seconds_total"]},
        "io_channels": 4},
    "lora": {"component_whitelist": ["transformer"], "multiplier": 1.0, "rank": 4, "alpha": 4,
             "dropout": 0, "module_dropout": 0, "lr": 1e-2}}
FRAMES = 16


def _checkpoint(path):
  """The original's conditioned model's keys: the DiT under model.model., the numbers under
  conditioner.conditioners., an autoencoder key the DiT run does not read."""
  torch.manual_seed(0)
  dit = TorchDiT(**DIT)
  with torch.no_grad():
    for name, p in dit.named_parameters():
      if not name.endswith("gamma"):  # zero-initialised outputs too: a base that does something
        p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1] if p.ndim > 1 else 8))
  sd = {f"model.model.{k}": v for k, v in dit.state_dict().items()}
  for name in ("seconds_start", "seconds_total"):
    number = TorchNumber(output_dim=32, min_val=0, max_val=16)
    sd.update({f"conditioner.conditioners.{name}.{k}": v for k, v in number.state_dict().items()})
  sd["pretransform.model.scale"] = torch.ones(1)
  torch.save({"state_dict": sd}, path)


def _clips(folder, n=24):
  """Latent clips in stable-audio-tools' pre_encoded layout; lengths around FRAMES (cropped and
  padded)."""
  rng = np.random.default_rng(0)
  os.makedirs(folder)
  for i in range(n):
    frames = FRAMES + (4 if i % 3 == 0 else -3 if i % 3 == 1 else 0)
    t = np.arange(frames)[None, :]
    latents = np.sin(2 * np.pi * (1 + i % 2) * t / FRAMES + rng.uniform(0, 6, (4, 1)))
    np.save(folder / f"clip{i:02d}.npy", latents.astype(np.float32))
    meta = {"seconds_start": 0, "seconds_total": 1 + i % 5, "padding_mask": [1] * frames,
            "prompt": "low" if i % 2 == 0 else "high"}
    (folder / f"clip{i:02d}.json").write_text(json.dumps(meta))


def _train(tmp_path, save_dir, *extra):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, str(ROOT / "launch" / "train_loraw.py"),
         f"--model-config={tmp_path / 'model_config.json'}",
         f"--dataset-config={tmp_path / 'dataset.json'}",
         f"--pretrained-ckpt-path={tmp_path / 'model.ckpt'}", "--use-lora",
         f"--save-dir={save_dir}", "--batch-size=8", f"--config.model.latent_length={FRAMES}",
         "--config.data.val_fraction=0.34", "--config.opt.warmup_steps=1",
         "--config.training.eval_every=2", "--config.training.log_every=1", *extra]
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("loraw")
  (tmp / "model_config.json").write_text(json.dumps(MODEL_CONFIG))
  _clips(tmp / "latents")
  (tmp / "dataset.json").write_text(json.dumps(
      {"dataset_type": "pre_encoded", "datasets": [{"id": "tiny", "path": "latents"}],
       "latent_crop_length": FRAMES}))
  _checkpoint(tmp / "model.ckpt")
  return tmp


def test_train_resume_save_load_continue_and_bypass(world):
  run = world / "run"
  first = _train(world, run, "--max-steps=2")
  assert first.returncode == 0, first.stderr[-3000:]
  second = _train(world, run, "--max-steps=4")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed from step 2" in second.stderr
  assert "LoRA adapts 16 modules" in first.stderr  # the whitelist: 2 x 7 + project_in/out
  status = json.loads((run / "status.json").read_text())
  assert status["state"] == "finished" and status["step"] == 4, status

  # The LoRAW file holds the exported adapter's factors under the original's module names.
  mc = model_config.load(str(world / "model_config.json"))
  config = mc.dit_config(FRAMES)
  exported = lora.load_adapter(str(run / "adapter.lora"))
  state = torch.load(run / "lora.ckpt", weights_only=True)
  assert "model/model/transformer/layers/0/self_attn/to_qkv/lora_up.weight" in state
  loaded = generation.load_adapter(str(run / "lora.ckpt"), config, mc.lora.alpha)
  for (k, (a, b, s)), (k2, (a2, b2, s2)) in zip(sorted(exported.adapter.modules().items()),
                                                 sorted(loaded.modules().items())):
    assert k == k2 and float(s) == float(s2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(b2))
  assert max(float(np.abs(np.asarray(b)).max()) for _, b, _ in loaded.modules().values()) > 0

  # A new run continues from the LoRAW file (LoRAW's --lora-ckpt-path): its untrained
  # evaluation (row 0, same held-out clips, same fixed times and noise) is the exported
  # adapter's, not a fresh adapter's.
  cont = _train(world, world / "cont", f"--lora-ckpt-path={run / 'lora.ckpt'}", "--max-steps=1")
  assert cont.returncode == 0, cont.stderr[-3000:]
  rows = (run / "metrics.csv").read_text().splitlines()
  header = rows[0].split(",")
  by_step = {r.split(",")[header.index("step")]: r.split(",") for r in rows[1:]}
  val = header.index("val_loss")
  exported_step = str(exported.extra["export_step"])
  cont_rows = (world / "cont" / "metrics.csv").read_text().splitlines()
  assert float(cont_rows[1].split(",")[val]) == pytest.approx(
      float(by_step[exported_step][val]), rel=1e-5)
  assert float(cont_rows[1].split(",")[val]) != pytest.approx(float(by_step["0"][val]), rel=1e-4)

  # Sampling: multiplier 0 is the base model bit for bit, multiplier 1 moves the latents.
  base = generation.load_base(str(world / "model.ckpt"), config, seed=0)
  request = generation.Request("low", 0.0, 3.0, FRAMES, steps=4, cfg_scale=3.0, seed=1,
                               multiplier=0.0)
  plain = generation.generate(config, base, None, request)
  bypass = generation.generate(config, base, loaded, request)
  adapted = generation.generate(config, base, loaded, request.__class__(
      **{**request.__dict__, "multiplier": 1.0}))
  assert plain.tobytes() == bypass.tobytes()
  assert np.abs(adapted - plain).max() > 1e-3


def test_merge_weights_adds_the_deltas():
  rng = np.random.default_rng(0)
  mk = lambda s: lora.Adapter({"m": {"lora_A": rng.normal(size=(6, 2)).astype(np.float32),
                                     "lora_B": rng.normal(size=(2, 5)).astype(np.float32)}},
                              {"m": np.float32(s)})
  first, second = mk(0.5), mk(2.0)
  record = lora.AdapterRecord(first, lora.LoraSpec(rank=2, alpha=1.0, include=("m",)), "fp",
                              "dit", "first")
  other = lora.AdapterRecord(second, record.spec, "fp", "dit", "second")
  merged = weights.merge_weights(record, other, 0.25)
  delta = lambda ad: sum(float(s) * np.asarray(a) @ np.asarray(b)
                         for a, b, s in ad.modules().values())
  np.testing.assert_allclose(delta(merged.adapter), delta(first) + 0.25 * delta(second),
                             rtol=1e-5)


def test_bad_model_config_is_one_error_line_and_writes_nothing(world, tmp_path):
  bad = json.loads((world / "model_config.json").read_text())
  bad["model"]["diffusion"]["config"]["qk_norm"] = "ln"
  (world / "bad_config.json").write_text(json.dumps(bad))
  save_dir = tmp_path / "never"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "train_loraw.py"),
       f"--model-config={world / 'bad_config.json'}",
       f"--dataset-config={world / 'dataset.json'}", "--use-lora", f"--save-dir={save_dir}"],
      env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  lines = [l for l in out.stderr.splitlines() if "error" in l]
  assert len(lines) == 1 and lines[0].startswith("train_loraw: error:") and "qk_norm" in lines[0]
  assert "Traceback" not in out.stderr
  assert not save_dir.exists()
