"""Stable Audio's model config JSON with LoRAW's `lora` section, and the pre_encoded data set:
read strictly, every refusal one line naming the key or file."""

import copy
import json

import jax
import numpy as np
import pytest

from lora_jax import lora
from lora_jax.data.dit import pre_encoded
from lora_jax.families import dit as dit_family
from lora_jax.loraw import model_config

# Stable Audio Open's model config as LoRAW's example gives it (its demo prompts shortened).
SAO = {
    "model_type": "diffusion_cond", "sample_size": 2097152, "sample_rate": 44100,
    "audio_channels": 2,
    "model": {
        "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
            "encoder": {"type": "oobleck", "config": {}}, "decoder": {"type": "oobleck",
                                                                        "config": {}},
            "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048,
            "io_channels": 2}},
        "conditioning": {"configs": [
            {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base",
                                                      "max_length": 128}},
            {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
            {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}}],
            "cond_dim": 768},
        "diffusion": {"cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                      "global_cond_ids": ["seconds_start", "seconds_total"], "type": "dit",
                      "config": {"io_channels": 64, "embed_dim": 1536, "depth": 24,
                                 "num_heads": 24, "cond_token_dim": 768, "global_cond_dim": 1536,
                                 "project_cond_tokens": False,
                                 "transformer_type": "continuous_transformer"}},
        "io_channels": 64},
    "training": {
        "use_ema": True, "log_loss_info": False,
        "optimizer_configs": {"diffusion": {
            "optimizer": {"type": "AdamW", "config": {"lr": 5e-5, "betas": [0.9, 0.999],
                                                      "weight_decay": 1e-3}},
            "scheduler": {"type": "InverseLR", "config": {"inv_gamma": 1000000, "power": 0.5,
                                                          "warmup": 0.99}}}},
        "demo": {"demo_every": 2000, "demo_steps": 250, "num_demos": 1,
                 "demo_cond": [{"prompt": "Amen break 174 BPM", "seconds_start": 0,
                                "seconds_total": 12}], "demo_cfg_scales": [3, 6, 9]}},
    "lora": {"component_whitelist": ["transformer"], "multiplier": 1.0, "rank": 16, "alpha": 16,
             "dropout": 0, "module_dropout": 0, "lr": 1e-4}}


def test_stable_audio_open_whitelist_finds_loraws_170_linears():
  """The whole conditioned model at full size (abstract): the `transformer` whitelist selects
  the 170 linear layers LoRAW reports on Stable Audio Open, and nothing in the conditioners."""
  mc = model_config.parse(copy.deepcopy(SAO))
  family = dit_family.make(mc.dit_config(latent_length=8), "float32")
  abstract = jax.eval_shape(lambda k: family.model.init(k, *family.init_args())["params"],
                            jax.random.key(0))
  o = mc.config_overrides()
  spec = lora.LoraSpec(rank=o["lora.rank"], alpha=o["lora.alpha"], include=o["lora.include"])
  targets = lora.resolve(spec, abstract)
  assert len(targets) == 170
  assert all(t.path.startswith("model.model.transformer.") for t in targets)
  assert mc.latent_frames(47.55) == 1024  # Stable Audio Open's 2097152 samples / 2048


def test_multiplier_scales_alpha_once():
  config = copy.deepcopy(SAO)
  config["lora"]["multiplier"] = 0.5
  assert model_config.parse(config).config_overrides()["lora.alpha"] == 8.0  # not 16 * 0.25


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["training"].update(arc={}), "training.arc is not supported"),
    (lambda c: c["training"].update(timestep_sampler="logit_normal"), "logit_normal"),
    (lambda c: c["training"].update(mask_padding=False), "training.mask_padding False"),
    (lambda c: c["training"]["optimizer_configs"]["diffusion"]["optimizer"].update(type="SGD"),
     "type 'SGD'"),
    (lambda c: c["model"]["conditioning"]["configs"][0]["config"].update(enable_grad=True),
     "enable_grad"),
    (lambda c: c["model"]["conditioning"]["configs"][0]["config"].update(t5_model_name="t5-x"),
     "'t5-x'"),
    (lambda c: c["lora"].update(bogus=1), "lora.bogus"),
    (lambda c: c["model"]["diffusion"]["config"].update(qk_norm="ln"), "qk_norm"),
    (lambda c: c["model"]["diffusion"].update(type="unet"), "'unet'"),
    (lambda c: c["model"]["conditioning"]["configs"][0].update(type="clap_text"), "clap_text"),
    (lambda c: c["model"]["pretransform"]["config"].update(latent_dim=32), "latent_dim 32"),
    (lambda c: c["lora"].update(rank=0), "lora.rank"),
    (lambda c: c["lora"].update(component_whitelist=[]), "component_whitelist"),
    (lambda c: c.update(model_type="diffusion_uncond"), "diffusion_uncond"),
])
def test_unsupported_options_are_refused_by_name(edit, named):
  config = copy.deepcopy(SAO)
  edit(config)
  with pytest.raises(model_config.ModelConfigError, match=named) as e:
    model_config.parse(config)
  assert "\n" not in str(e.value)


def test_training_section_as_loraw_reads_it_with_lora_and_as_the_original_without():
  from lora_jax.loraw import training_section
  mc = model_config.parse(copy.deepcopy(SAO))
  mapped, notes = training_section.overrides(mc.training, use_lora=True, lora_lr=1e-4)
  assert mapped == {}  # lora.lr is the rate; LoRAW's Adam replaces the optimizer configs
  assert [n.split(" ")[0] for n in notes] == [
      "training.demo", "training.log_loss_info", "training.optimizer_configs", "training.use_ema"]
  mapped, _ = training_section.overrides(
      training_section.parse({"learning_rate": 3e-4}), use_lora=True, lora_lr=None)
  assert mapped == {"opt.learning_rate": 3e-4}
  # Full fine-tuning, as stable-audio-tools: the EMA and InverseLR, per optimiser step.
  mapped, _ = training_section.overrides(mc.training, use_lora=False, lora_lr=None)
  assert mapped == {"opt.ema_beta": 0.9999, "opt.ema_power": 0.75, "opt.learning_rate": 5e-5,
                    "opt.b1": 0.9, "opt.b2": 0.999, "opt.eps": 1e-8, "opt.weight_decay": 1e-3,
                    "opt.decay": "inverse", "opt.warmup_steps": 0, "opt.inv_gamma": 1e6,
                    "opt.inv_power": 0.5, "opt.inv_warmup": 0.99, "opt.final_lr_fraction": 0.0}
  no_ema = dict(SAO["training"], use_ema=False, cfg_dropout_prob=0.2)
  step = copy.deepcopy(no_ema)
  step["optimizer_configs"]["diffusion"]["scheduler"] = {"type": "StepLR", "config": {}}
  with pytest.raises(training_section.TrainingSectionError, match="type .StepLR. is not supported"):
    training_section.parse(step)
  no_ema["optimizer_configs"] = {"diffusion": {"optimizer": no_ema["optimizer_configs"][
      "diffusion"]["optimizer"]}}
  mapped, _ = training_section.overrides(training_section.parse(no_ema), False, None)
  assert mapped == {"model.cfg_dropout": 0.2, "opt.learning_rate": 5e-5, "opt.b1": 0.9,
                    "opt.b2": 0.999, "opt.eps": 1e-8, "opt.weight_decay": 1e-3}
  adam = {"optimizer_configs": {"diffusion": {"optimizer": {"type": "Adam", "config": {
      "lr": 1e-4, "weight_decay": 0.1}}}}}
  with pytest.raises(training_section.TrainingSectionError, match="use AdamW"):
    training_section.parse(adam)


def _clip(folder, name, latents, **meta):
  np.save(folder / f"{name}.npy", latents)
  full = {"seconds_start": 0, "seconds_total": 2, "padding_mask": [1] * latents.shape[1],
          "prompt": "x", **meta}
  (folder / f"{name}.json").write_text(json.dumps(full))


def _dataset(tmp_path, **top):
  (tmp_path / "clips").mkdir(exist_ok=True)
  path = tmp_path / "dataset.json"
  path.write_text(json.dumps({"dataset_type": "pre_encoded",
                              "datasets": [{"id": "a", "path": "clips"}], **top}))
  return pre_encoded.read_dataset_config(str(path))


def test_clips_are_cropped_and_padded_to_the_model_length(tmp_path):
  spec = _dataset(tmp_path, latent_crop_length=6)
  _clip(tmp_path / "clips", "long", np.ones((3, 9), np.float32))
  _clip(tmp_path / "clips", "short", np.ones((3, 4), np.float32), padding_mask=[1, 1, 1, 0])
  arrays = pre_encoded.load_arrays(spec, channels=3, length=6, text_len=4)
  assert arrays["latents"].shape == (2, 3, 6)
  np.testing.assert_array_equal(arrays["padding_mask"], [[1] * 6, [1, 1, 1, 0, 0, 0]])


@pytest.mark.parametrize("make, named", [
    (lambda f: _clip(f, "c", np.ones((2, 6), np.float32)), r"c\.npy: latents are float32\[2, 6\]"),
    (lambda f: np.save(f / "c.npy", np.ones((3, 6), np.float32)), "c.json"),
    (lambda f: _clip(f, "c", np.ones((3, 6), np.float32), padding_mask=[1]), "padding_mask"),
    (lambda f: _clip(f, "c", np.ones((3, 6), np.float32), seconds_total="2"), "seconds_total"),
    (lambda f: _clip(f, "c", np.ones((3, 6), np.float32), prompt="far too long"), "max_len"),
])
def test_bad_clips_are_refused_naming_the_file(tmp_path, make, named):
  spec = _dataset(tmp_path)
  make(tmp_path / "clips")
  with pytest.raises(pre_encoded.DatasetError, match=named):
    pre_encoded.load_arrays(spec, channels=3, length=6, text_len=4)


@pytest.mark.parametrize("top, named", [
    ({"random_crop": True}, "random_crop"), ({"drop_last": True}, "drop_last"),
    ({"dataset_type": "audio_dir"}, "audio_dir")])
def test_bad_dataset_configs_are_refused_by_key(tmp_path, top, named):
  with pytest.raises(pre_encoded.DatasetError, match=named):
    _dataset(tmp_path, **top)


def test_a_config_override_that_contradicts_the_model_config_is_refused():
  from lora_jax.loraw import training
  from lora_jax.train import config as config_lib
  import ml_collections
  config = ml_collections.ConfigDict({"lora": {"rank": 8, "alpha": 16.0}})
  training.apply_overrides(config, {"lora.alpha": 16.0}, {"lora.rank": 4, "lora.alpha": 16.0})
  assert config.lora.rank == 4
  with pytest.raises(config_lib.ConfigError, match=r"--config.lora.rank=4 contradicts 16"):
    training.apply_overrides(config, {"lora.rank": 4}, {"lora.rank": 16})
