"""The training loop end to end in-process: learning, exact resume, outputs, compilations,
non-finite failure and early stopping."""

import csv
import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lora_jax import lora, tree_paths
from lora_jax.families import music_lm
from lora_jax.interop import flax_weights
from lora_jax.train import checkpoint
from lora_jax.train import config as config_lib
from lora_jax.train import loop

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")


def tiny(**overrides) -> config_lib.TrainConfig:
  return config_lib.load(CONFIG, "tiny", {"model.n_layers": 1, **overrides})


def rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.csv"), newline="") as f:
    return list(csv.DictReader(f))


def status(workdir) -> dict:
  with open(os.path.join(workdir, "status.json")) as f:
    return json.load(f)


def flat(tree) -> dict:
  return {tree_paths.dotted(k): np.asarray(v) for k, v in tree_paths.flatten(tree).items()}


# Sharded over (data 4, fsdp 2), so the resume restores into sharded arrays.
RUN = {"training.steps": 12, "training.eval_every": 4, "ckpt.every_steps": 4,
       "training.log_every": 2, "mesh.data": 4, "mesh.fsdp": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One uninterrupted run, and the same run stopped after 5 steps then resumed."""
  config = tiny(**RUN)
  whole = str(tmp_path_factory.mktemp("whole"))
  parts = str(tmp_path_factory.mktemp("parts"))
  return {"config": config,
          "whole": (whole, loop.train(config, whole)),
          "stopped": (parts, loop.train(config, parts, stop_after=5)),
          "resumed": (parts, loop.train(config, parts))}


def test_lora_run_lowers_validation_loss(runs):
  workdir, result = runs["whole"]
  table = rows(workdir)
  initial = float(table[0]["val_loss"])
  assert table[0]["step"] == "0" and table[0]["train_loss"] == ""
  assert result.status == "finished" and result.step == 12
  assert result.val_loss < 0.75 * initial, (result.val_loss, initial)


def test_resume_is_bit_exact(runs):
  _, whole = runs["whole"]
  parts, stopped = runs["stopped"]
  _, resumed = runs["resumed"]
  assert stopped.status == "stopped" and stopped.step == 5 and stopped.export_path == ""
  assert resumed.status == "finished" and resumed.step == 12
  a, b = flat(whole.params), flat(resumed.params)
  assert a.keys() == b.keys()
  for k in a:
    assert np.array_equal(a[k], b[k]), k
  assert resumed.val_loss == whole.val_loss
  # The metrics file reads as one run: every logged step once, in order.
  steps = [int(r["step"]) for r in rows(parts)]
  assert steps == sorted(set(steps)) and steps == [int(r["step"]) for r in rows(runs["whole"][0])]


def test_no_recompilation_after_the_first_step(runs):
  for name in ("whole", "resumed"):
    assert runs[name][1].compiles == {"train_step": 1, "eval_step": 1}, name


def test_outputs_checkpoints_and_status(runs):
  workdir, result = runs["whole"]
  config = runs["config"]
  header = list(rows(workdir)[0].keys())
  assert header[:5] == ["step", "epoch", "train_loss", "val_loss", "lr"]
  assert "train_bits_per_token" in header and "val_bits_per_token" in header
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(
      os.path.join(workdir, "tensorboard")))
  st = status(workdir)
  assert st["state"] == "finished" and st["step"] == 12 and st["total_steps"] == 12
  assert st["best_val_loss"] == result.best_val_loss and st["export_path"] == result.export_path
  # The exported adapter is the trained one, for this base.
  record = lora.load_adapter(result.export_path)
  assert record.spec == config.lora and record.model_family == "music_lm"
  saved = {tree_paths.dotted(k): np.asarray(v) for k, v in
           tree_paths.flatten(record.adapter.params).items()}
  for k, v in flat(result.params).items():
    assert np.array_equal(saved[k], v), k
  # Checkpoints: the last two and the best by validation loss, with their metadata.
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.ckpt)
  try:
    assert ckpts.manager.all_steps() == [8, 12]
    assert ckpts.best_step() == 12
    meta = ckpts.metadata(12)
    assert meta["base_fingerprint"] == record.base_fingerprint
    assert lora.LoraSpec.from_json(meta["lora_spec"]) == config.lora
    assert json.loads(meta["config"])["training"]["steps"] == 12
  finally:
    ckpts.close()


def test_too_many_non_finite_steps_fail_without_a_checkpoint(tmp_path):
  family_data = {"tokens": np.zeros((128, 16), np.int32), "mask": np.zeros((128, 16), np.float32)}
  path = str(tmp_path / "empty.npz")
  np.savez(path, **family_data)
  config = config_lib.load(CONFIG, "tiny", {
      "model.n_layers": 1, "training.max_nonfinite_in_a_row": 3, "training.eval_every": 50,
      "ckpt.every_steps": 50, "data.path": path, "data.synthetic_examples": 0})
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.NonFiniteError, match=r"3 steps in a row up to step 3"):
    loop.train(config, workdir, devices=jax.devices()[:1])
  assert status(workdir)["state"] == "failed"
  assert "NonFiniteError" in status(workdir)["message"]
  assert [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()] == []


def test_early_stopping_and_full_model_export(tmp_path):
  # A zero learning rate never improves on the untrained baseline evaluated at step 0.
  config = tiny(**{"opt.learning_rate": 0.0, "training.eval_every": 1, "training.patience": 2,
                   "training.steps": 50, "training.type": "full"})
  result = loop.train(config, str(tmp_path), devices=jax.devices()[:1])
  assert result.status == "early_stopped" and result.step == 2
  assert status(str(tmp_path))["state"] == "early_stopped"
  # Full fine-tuning exports the whole model as a Flax safetensors base file.
  assert result.export_path.endswith("params.safetensors")
  meta = flax_weights.read_metadata(result.export_path)
  assert meta["model_family"] == "music_lm"
  exported = flax_weights.load_params(result.export_path, result.params)
  for k, v in flat(exported).items():
    assert np.array_equal(v, flat(result.params)[k]), k


def test_exports_the_best_checkpoint_not_the_last_step(tmp_path):
  # Train on the learnable chain, validate on uniform noise: the sharper the model gets, the worse
  # it scores noise, so the best validation loss is an early evaluation, not the last step.
  config = tiny()
  rng = np.random.default_rng(0)
  noise = {"tokens": rng.integers(0, config.model.vocab_size, (32, 16)).astype(np.int32),
           "mask": np.ones((32, 16), np.float32)}
  np.savez(tmp_path / "noise.npz", **noise)
  np.savez(tmp_path / "chain.npz", **music_lm.synthetic(config.model, 256, 0))
  results = {}
  for export in ("best", "final"):
    config = tiny(**{"data.path": str(tmp_path / "chain.npz"),
                     "data.val_path": str(tmp_path / "noise.npz"), "data.synthetic_examples": 0,
                     "data.val_fraction": 0.0, "training.steps": 8, "training.eval_every": 2,
                     "ckpt.every_steps": 2, "ckpt.export": export})
    workdir = str(tmp_path / export)
    results[export] = (workdir, config, loop.train(config, workdir, devices=jax.devices()[:1]))
  workdir, config, best = results["best"]
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.ckpt)
  try:
    best_step = ckpts.best_step()
    saved = ckpts.manager.restore(best_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state["params"]
  finally:
    ckpts.close()
  assert best.step == 8 and best.export_step == best_step < 8
  exported = flat(lora.load_adapter(best.export_path).adapter.params)
  assert lora.load_adapter(best.export_path).extra["export_step"] == best_step
  for k, v in flat(saved).items():
    assert np.array_equal(exported[k], v), k
  assert any(not np.array_equal(exported[k], v) for k, v in flat(best.params).items())
  _, _, final = results["final"]
  assert final.export_step == 8
  for k, v in flat(lora.load_adapter(final.export_path).adapter.params).items():
    assert np.array_equal(v, flat(final.params)[k]), k


def test_export_best_needs_a_kept_best_checkpoint():
  with pytest.raises(config_lib.ConfigError, match="keep_best >= 1"):
    tiny(**{"ckpt.keep_best": 0})
  with pytest.raises(config_lib.ConfigError, match="'best' or 'final'"):
    tiny(**{"ckpt.export": "last"})
