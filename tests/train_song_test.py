"""launch/train_song.py: the fork's train_config.yaml and prepared token files, end to end.

A tiny random base written as the original's model.pt, songs as the fork's `{idx}.pt` token
files (one missing, one duplicate, one with an unknown section tag: reported, the rest trains),
LoRA through the launcher, a resume that does nothing more, and the adapter exported as PEFT
writes it for the original model.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import yaml

from lora_jax.families import song_lm as song_family
from lora_jax.interop import song_lm_weights
from lora_jax.models.song import lm as song_lm
from lora_jax.song import yaml_config
from lora_jax.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# With prompt_audio, as the released model.pt has it (the fork trains it with an empty prompt).
MODEL = dict(code_size=64, dim=32, intermediate_size=64, num_heads=4, num_layers=1,
             num_layers_sub=1, text_vocab_size=272, frames=16, lyrics_len=40, style_len=16,
             delays=[0, 2, 2], prompt_len=3, prepend=["description", "prompt_audio", "type_info"])


def _yaml(tmp_path, **training):
  config = {
      "paths": {"base_model_path": str(tmp_path / "base"),
                "prepared_data_dir": str(tmp_path / "prepared"),
                "output_dir": str(tmp_path / "out")},
      "data": {"val_fraction": 0.3},
      "training": {"type": "lora", "epochs": 2, "batch_size": 8, "validation_batch_size": 8,
                   "learning_rate": 1e-2, "warmup_steps": 1, "log_interval": 1,
                   "save_interval": 1, "gradient_accumulation_steps": 1, "use_fp16": False,
                   "seed": 0, **training},
      "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
               "target_modules": ["q_proj", "v_proj", "k_proj", "o_proj"]},
      "model": {**MODEL, "use_flash_attn_2": True},
  }
  path = tmp_path / "train_config.yaml"
  path.write_text(yaml.safe_dump(config))
  return path


def _songs(tmp_path, n=7):
  folder = tmp_path / "prepared"
  folder.mkdir()
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    codes = rng.integers(0, MODEL["code_size"], (3, int(rng.integers(80, 120))))
    torch.save({"tokens": torch.from_numpy(codes), "lyrics": "[verse] la la [chorus] oh",
                "descriptions": "folk, fiddle"}, folder / f"song{i}.pt")
    rows.append({"audio_path": f"wavs/song{i}.wav", "token_path": str(folder / f"song{i}.pt"),
                 "idx": f"song{i}"})
  torch.save({"tokens": torch.zeros(3, 20, dtype=torch.long), "lyrics": "[rap] yo",
              "descriptions": "x"}, folder / "badtag.pt")
  rows += [{"token_path": str(folder / "gone.pt"), "idx": "gone"},
           {"token_path": str(folder / "song0.pt"), "idx": "song0"},
           {"token_path": str(folder / "badtag.pt"), "idx": "badtag"}]
  (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _base(tmp_path):
  config = song_family.SongConfig(**MODEL).lm_config("float32")
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda l: (0.2 * rng.standard_normal(l.shape)).astype(np.float32),
                        song_lm.abstract_params(config))
  (tmp_path / "base").mkdir()
  song_lm_weights.save_model_pt(params, str(tmp_path / "base" / "model.pt"))


def _launch(yaml_path, cwd):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "train_song.py"),
                         f"--config={yaml_path}",
                         f"--defaults={os.path.join(ROOT, 'configs', 'song_lm.py')}"],
                        cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_yaml_maps_onto_the_config_and_counts_optimiser_steps(tmp_path):
  defaults = config_lib.load_config_dict(os.path.join(ROOT, "configs", "song_lm.py"))
  run = yaml_config.read(str(_yaml(tmp_path, batch_size=2, gradient_accumulation_steps=4,
                                   use_fp16=True, epochs=3)), defaults)
  assert run.config.data.batch_size == 8 and run.config.opt.grad_accum_steps == 4
  assert run.config.training.precision == "float16"
  assert run.config.lora.rank == 4 and run.config.opt.b2 == 0.95
  assert run.config.model.delays == (0, 2, 2)
  # 50 windows, 8 per optimiser step (2 x 4 micro-batches): 6 steps an epoch, not 25.
  assert yaml_config.steps_for(run, 50) == (18, 6)
  run.config.data.path = "train.npz"
  config_lib.from_config_dict(run.config)  # every field declared and valid


@pytest.mark.parametrize("edit, message", [
    ({"training": {"lerning_rate": 1.0}}, "unknown key training.lerning_rate"),
    ({"extra": {}}, "unknown section 'extra'"),
    ({"training": {"type": "qlora"}}, "training.type must be 'lora' or 'full'"),
])
def test_bad_yaml_is_one_line(tmp_path, edit, message):
  path = _yaml(tmp_path)
  raw = yaml.safe_load(path.read_text())
  for section, values in edit.items():
    raw.setdefault(section, {}).update(values)
  path.write_text(yaml.safe_dump(raw))
  done = _launch(path, tmp_path)
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert message in done.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "out").exists()


def test_lora_from_the_fork_yaml_trains_resumes_and_exports_peft(tmp_path):
  _songs(tmp_path)
  _base(tmp_path)
  path = _yaml(tmp_path)
  done = _launch(path, tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  for name in ("gone", "duplicate idx 'song0'", "unknown section tag '[rap]'"):
    assert name in done.stderr, done.stderr[-3000:]
  out = tmp_path / "out"
  rows = (out / "metrics.csv").read_text().splitlines()
  header = rows[0].split(",")
  val = [float(r.split(",")[header.index("val_loss")]) for r in rows[1:]
         if r.split(",")[header.index("val_loss")]]
  assert len(val) >= 2 and np.isfinite(val).all()
  # Where the seed's `tensorboard --logdir training_output/logs` looks.
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "logs"))
  adapter = out / "checkpoints" / "adapter"
  tensors = safetensors.numpy.load_file(str(adapter / "adapter_model.safetensors"))
  assert ("base_model.model.transformer.model.layers.0.self_attn.q_proj.lora_A.weight"
          in tensors)
  assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
  before = (adapter / "adapter_model.safetensors").read_bytes()
  again = _launch(path, tmp_path)  # finished: resumes at the end and exports the same adapter
  assert again.returncode == 0, again.stderr[-3000:]
  assert (adapter / "adapter_model.safetensors").read_bytes() == before
