"""A base DiT file records the text encoder it was trained with (the byte-token embedding, or T5
of a width), and a run or a generation with the other one is refused in one line naming both,
before anything is written; files from before the record are read by their prompt keys."""

import json

import jax
import numpy as np
import pytest

from lora_jax.families import dit as dit_family
from lora_jax.interop import flax_weights
from lora_jax.loraw import base_weights, generation, model_config, training
from lora_jax.train import config as config_lib

FRAMES = 4
MODEL_CONFIG = {
    "model_type": "diffusion_cond", "sample_rate": 8000, "audio_channels": 1,
    "model": {
        "conditioning": {"configs": [
            {"id": "prompt", "type": "t5",
             "config": {"t5_model_name": "t5-base", "max_length": 8}},
            {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 16}},
            {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 16}}],
            "cond_dim": 32},
        "diffusion": {"type": "dit", "config": dict(
            io_channels=2, embed_dim=64, depth=1, num_heads=2, cond_token_dim=32,
            global_cond_dim=64, project_cond_tokens=False),
                      "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                      "global_cond_ids": ["seconds_start", "seconds_total"]},
        "io_channels": 2}}


def _base(path, config, record=True):
  family = dit_family.make(config, "float32")
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda k: family.model.init(k, *family.init_args())["params"], jax.random.key(0)))
  if record:
    base_weights.write_flax(params, str(path), "test", config)
  else:  # as files were written before the record existed
    flax_weights.save_params(params, str(path), {"model_family": dit_family.NAME})
  return str(path)


@pytest.fixture(scope="module")
def configs():
  mc = model_config.parse(json.loads(json.dumps(MODEL_CONFIG)))
  return mc.dit_config(FRAMES), mc.dit_config(FRAMES, t5_width=24)


def test_the_export_records_the_text_encoder(configs):
  embedding, t5 = configs
  assert dit_family.make(embedding, "float32").weights_metadata == {"text_encoder": "embedding"}
  assert dit_family.make(t5, "float32").weights_metadata == {"text_encoder": "t5",
                                                             "t5_width": "24"}


@pytest.mark.parametrize("record", [True, False])
def test_a_base_of_the_other_text_encoder_is_one_line_naming_both(tmp_path, configs, record):
  embedding, t5 = configs
  path = _base(tmp_path / "base.safetensors", embedding, record)
  base_weights.check_text_encoder(path, embedding)  # its own: fine
  with pytest.raises(flax_weights.WeightFileError) as e:
    generation.load_base(path, t5, 0)
  message = str(e.value)
  assert "\n" not in message
  assert "'embedding' (the trainable byte-token embedding" in message
  assert "this run uses 't5' (the frozen T5 of --t5-dir, width 24)" in message


def test_a_t5_base_of_another_width_is_refused(tmp_path, configs):
  _, t5 = configs
  path = _base(tmp_path / "base.safetensors", t5)
  wider = model_config.parse(json.loads(json.dumps(MODEL_CONFIG))).dit_config(FRAMES, 32)
  with pytest.raises(flax_weights.WeightFileError, match=r"width 24\), this run uses 't5' "
                     r"\(the frozen T5 of --t5-dir, width 32\)"):
    base_weights.check_text_encoder(path, wider)


def test_training_refuses_it_before_writing_anything(tmp_path, configs):
  _, t5 = configs
  base = _base(tmp_path / "t5_base.safetensors", t5)
  (tmp_path / "model_config.json").write_text(json.dumps(MODEL_CONFIG))
  (tmp_path / "clips").mkdir()
  for i in range(2):
    np.save(tmp_path / "clips" / f"c{i}.npy", np.zeros((2, FRAMES), np.float32))
    (tmp_path / "clips" / f"c{i}.json").write_text(json.dumps(
        {"seconds_start": 0, "seconds_total": 1, "padding_mask": [1] * FRAMES,
         "prompt": "x"}))
  (tmp_path / "dataset.json").write_text(json.dumps(
      {"dataset_type": "pre_encoded", "datasets": [{"id": "a", "path": "clips"}]}))
  config_dict = config_lib.load_config_dict(
      str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "dit.py"),
      None, {"model.latent_length": FRAMES})
  run = tmp_path / "run"
  with pytest.raises(flax_weights.WeightFileError, match="trained with text encoder 't5'.*this "
                     "run uses 'embedding'"):
    training.run(config_dict, {}, training.Flags(
        model_config=str(tmp_path / "model_config.json"),
        dataset_config=str(tmp_path / "dataset.json"), save_dir=str(run),
        pretrained_ckpt_path=base, use_lora=False, lora_ckpt_path="", t5_dir="",
        relora_every=None, quantize="", batch_size=2, accum_batches=None,
        checkpoint_every=None, gradient_clip_val=None, seed=None, max_steps=1, name=None))
  assert not run.exists()
