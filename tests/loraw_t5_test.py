"""The dit family on the user's T5 against stable-audio-tools' own conditioned model: its
`T5Conditioner` (tokenizer, T5 encoder, `proj_out`, padding zeroed) feeding the DiT's
cross-attention, with the number conditioners, built whole by the original's factory from a
model config JSON at a tiny random size.

Nothing is downloaded: the original's hub loads (`T5EncoderModel.from_pretrained`,
`AutoTokenizer.from_pretrained`) return a tiny random T5 and a word-level tokenizer.json, the
same files this project reads from the user's T5 folder; both sides register that T5 as
't5-base' at its tiny width, so `proj_out` exists (48 -> 32) as it does whenever T5's width is
not cond_dim. The reference is the original in float64 (it runs T5 in float16; that figure is
printed too).
"""

import copy
import math

import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers

import original_stable_audio
from lora_jax import lora
from lora_jax.data.t5 import prompts as t5_prompts
from lora_jax.loraw import base_weights, generation, model_config
from lora_jax.models.dit import conditioned

conditioners_lib = original_stable_audio.imported("stable_audio_tools.models.conditioners")
factory = original_stable_audio.imported("stable_audio_tools.models.factory")
# The factory imports its builders when called; these import torchaudio (the stand-in) on load.
original_stable_audio.k_diffusion()
original_stable_audio.imported("stable_audio_tools.models.diffusion")

T5_SIZES = dict(vocab_size=40, d_model=48, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                relative_attention_num_buckets=16, relative_attention_max_distance=12)
WORDS = "a solo piano in c major with drums at 120 bpm violin slow fast".split()
MAX_LENGTH = 10
FRAMES = 12
MODEL_CONFIG = {
    "model_type": "diffusion_cond", "sample_rate": 44100, "sample_size": 65536,
    "audio_channels": 2,
    "model": {
        "conditioning": {"configs": [
            {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base",
                                                      "max_length": MAX_LENGTH}},
            {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 16}},
            {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 16}}],
            "cond_dim": 32},
        "diffusion": {"type": "dit", "config": dict(
            io_channels=4, embed_dim=64, depth=2, num_heads=2, cond_token_dim=32,
            global_cond_dim=64, project_cond_tokens=False,
            transformer_type="continuous_transformer"),
                      "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                      "global_cond_ids": ["seconds_start", "seconds_total"]},
        "io_channels": 4}}


def write_t5_folder(folder):
  """A tiny random T5 as a Hugging Face snapshot: config.json, model.safetensors,
  tokenizer.json. Returns the model (float32)."""
  torch.manual_seed(0)
  model = transformers.T5EncoderModel(transformers.T5Config(
      **T5_SIZES, feed_forward_proj="relu", dropout_rate=0.0)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      fan_in = p.shape[1] if p.ndim == 2 and "shared" not in name else 1
      p.copy_(1 + 0.2 * torch.randn_like(p) if "layer_norm" in name
              else torch.randn_like(p) / math.sqrt(fan_in))
  model.save_pretrained(folder, safe_serialization=True)
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="$A </s>", special_tokens=[("</s>", 1)])
  tok.save(str(folder / "tokenizer.json"))
  return model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The original conditioned model with every weight random, its checkpoint, the T5 folder."""
  tmp = tmp_path_factory.mktemp("loraw_t5")
  t5_model = write_t5_folder(tmp / "t5")
  saved = {k: v.clone() for k, v in t5_model.state_dict().items()}
  patches = pytest.MonkeyPatch()
  patches.setitem(conditioners_lib.T5Conditioner.T5_MODEL_DIMS, "t5-base", T5_SIZES["d_model"])
  patches.setattr(transformers.T5EncoderModel, "from_pretrained",
                  classmethod(lambda cls, name, **kw: t5_model))
  patches.setattr(transformers.AutoTokenizer, "from_pretrained",
                  classmethod(lambda cls, name, **kw: transformers.PreTrainedTokenizerFast(
                      tokenizer_file=str(tmp / "t5" / "tokenizer.json"), pad_token="<pad>")))
  try:
    original = factory.create_model_from_config(copy.deepcopy(MODEL_CONFIG)).eval()
  finally:
    patches.undo()
  t5_model.float().load_state_dict(saved)  # the original cast it to float16 in place
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in original.named_parameters():
      if name.endswith("gamma"):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      else:  # zero-initialised layers too: every path carries signal
        p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1] if p.ndim > 1 else 8))
  torch.save({"state_dict": original.state_dict()}, tmp / "model.ckpt")
  return tmp, original, t5_model


PROMPTS = ["solo piano in c major", "drums at 120 bpm with a fast violin and slow piano"]


def _original(original, t5_model, dtype, t5_dtype, x, t):
  t5_cond = original.conditioner.conditioners["prompt"]
  t5_cond.__dict__["model"] = t5_model.to(t5_dtype)  # kept out of its state dict, as it is
  original.to(dtype)
  meta = [{"prompt": p, "seconds_start": s, "seconds_total": s + 5.0}
          for p, s in zip(PROMPTS, (0.0, 3.0))]
  with torch.no_grad():
    cond = original.conditioner(meta, "cpu")
    out = original(torch.from_numpy(x).to(dtype), torch.from_numpy(t).to(dtype), cond)
  return out.double().numpy(), cond["prompt"]


def test_t5_conditioned_dit_matches_the_original_conditioned_model(world, monkeypatch):
  """Also: T5 stays out of the trained tree, and proj_out is read strictly."""
  tmp, original, t5_model = world
  sd = original.state_dict()
  assert "conditioner.conditioners.prompt.proj_out.weight" in sd
  assert not any(".model.encoder." in k or "shared" in k for k in sd)  # T5 is not in it

  monkeypatch.setitem(t5_prompts.MODEL_DIMS, "t5-base", T5_SIZES["d_model"])
  mc = model_config.parse(copy.deepcopy(MODEL_CONFIG))
  t5 = t5_prompts.T5Prompts(str(tmp / "t5"), MAX_LENGTH, mc.text_encoder_name)
  config = mc.dit_config(FRAMES, t5.width)
  base = generation.load_base(str(tmp / "model.ckpt"), config, seed=0)
  assert set(base["conditioner"]["conditioners"]["prompt"]) == {"proj_out"}

  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 4, FRAMES)).astype(np.float32)
  t = np.asarray([0.3, 0.8], np.float32)
  arrays = t5(PROMPTS)
  prompt, prompt_mask = generation.prompt_inputs(config, PROMPTS[1], t5)  # what sampling feeds
  np.testing.assert_array_equal(prompt, arrays["prompt"][1:])
  np.testing.assert_array_equal(prompt_mask, arrays["prompt_mask"][1:])
  model = conditioned.ConditionedDiT(config.conditioned())
  ours = np.asarray(jax.jit(model.apply)(
      {"params": base}, x, t, arrays["prompt"], np.asarray([0.0, 3.0], np.float32),
      np.asarray([5.0, 8.0], np.float32), None, arrays["prompt_mask"]), np.float64)

  ref64, (tokens64, mask) = _original(original, t5_model, torch.float64, torch.float64, x, t)
  ref32, _ = _original(original, t5_model, torch.float32, torch.float32, x, t)
  ref16, _ = _original(original, t5_model, torch.float32, torch.float16, x, t)
  np.testing.assert_array_equal(arrays["prompt_mask"], mask.numpy().astype(np.float32))
  assert arrays["prompt_mask"][0].sum() == 6 and arrays["prompt_mask"][1].all()  # truncated
  scale = np.abs(ref64).max()
  errors = {name: np.abs(out - ref64).max() / scale
            for name, out in (("torch float32", ref32), ("lora_jax float32", ours),
                              ("torch with its float16 T5", ref16))}
  print("T5-conditioned DiT: max |out - float64 original| / max |out|: "
        + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
  assert errors["torch float32"] < 1e-5
  assert errors["lora_jax float32"] < max(4 * errors["torch float32"], 1e-6)

  # The conditioner's tokens themselves: T5 -> proj_out -> zeros at padding.
  cross, _ = model.apply({"params": base}, arrays["prompt"], np.zeros(2, np.float32),
                         np.zeros(2, np.float32), arrays["prompt_mask"],
                         method=conditioned.ConditionedDiT.conditioning)
  np.testing.assert_allclose(np.asarray(cross)[:, :MAX_LENGTH], tokens64.numpy(),
                             atol=1e-5 * np.abs(tokens64.numpy()).max())
  assert np.all(np.asarray(cross)[0, 6:MAX_LENGTH] == 0)

  # T5 is not in the tree: a whitelist naming `conditioner` reaches proj_out and the numbers.
  targets = lora.resolve(lora.LoraSpec(rank=2, alpha=2.0, include=model_config.whitelist_rules(
      ("conditioner",))), base)
  assert sorted(t.path for t in targets) == [
      "conditioner.conditioners.prompt.proj_out",
      "conditioner.conditioners.seconds_start.embedder.embedding.1",
      "conditioner.conditioners.seconds_total.embedder.embedding.1"]
  # A checkpoint without the proj_out the config's conditioner has is refused, by name.
  prefix = "conditioner.conditioners.prompt."
  with pytest.raises(ValueError, match="T5 conditioner keys none; .* has proj_out"):
    base_weights._t5_projection({k: v for k, v in sd.items() if not k.startswith(prefix)},
                                prefix, config, {"prompt": {}}, "model.ckpt")


def test_a_t5_folder_of_another_width_is_refused(world):
  tmp, _, _ = world
  with pytest.raises(ValueError, match=r"width 48; the model config's t5_model_name 't5-base' "
                                       r"is 768 wide"):
    t5_prompts.T5Prompts(str(tmp / "t5"), MAX_LENGTH, "t5-base")


def test_train_loraw_trains_a_lora_on_t5_outputs(world, monkeypatch, tmp_path):
  """`training.run` (launch/train_loraw.py's work) with the T5 folder: the data set's prompts
  encoded once each, the base's proj_out read, a LoRA trained and exported; the T5 outputs sit in
  the run's arrays."""
  import json
  import pathlib
  from lora_jax.loraw import training
  from lora_jax.train import config as config_lib
  tmp, _, _ = world
  monkeypatch.setitem(t5_prompts.MODEL_DIMS, "t5-base", T5_SIZES["d_model"])
  config = copy.deepcopy(MODEL_CONFIG)
  config["lora"] = {"component_whitelist": ["transformer"], "multiplier": 1.0, "rank": 2,
                    "alpha": 2, "lr": 1e-2}
  (tmp_path / "model_config.json").write_text(json.dumps(config))
  (tmp_path / "clips").mkdir()
  rng = np.random.default_rng(0)
  for i in range(16):
    np.save(tmp_path / "clips" / f"c{i}.npy", rng.normal(size=(4, FRAMES)).astype(np.float32))
    (tmp_path / "clips" / f"c{i}.json").write_text(json.dumps(
        {"seconds_start": 0, "seconds_total": 3, "padding_mask": [1] * FRAMES,
         "prompt": PROMPTS[i % 2]}))
  (tmp_path / "dataset.json").write_text(json.dumps(
      {"dataset_type": "pre_encoded", "datasets": [{"id": "a", "path": "clips"}]}))
  config_dict = config_lib.load_config_dict(
      str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dit.py"), None,
      {"model.latent_length": FRAMES, "data.val_fraction": 0.5, "opt.warmup_steps": 1,
       "training.eval_every": 2, "training.log_every": 1})
  run = tmp_path / "run"
  result = training.run(config_dict, {}, training.Flags(
      model_config=str(tmp_path / "model_config.json"),
      dataset_config=str(tmp_path / "dataset.json"), save_dir=str(run),
      pretrained_ckpt_path=str(tmp / "model.ckpt"), use_lora=True, lora_ckpt_path="",
      t5_dir=str(tmp / "t5"), relora_every=None, quantize="", batch_size=8, accum_batches=None,
      checkpoint_every=None, gradient_clip_val=None, seed=None, max_steps=2, name=None))
  assert result.export_path.endswith("adapter.lora")
  arrays = np.load(run / training.LATENTS)
  assert arrays["prompt"].shape == (16, MAX_LENGTH, T5_SIZES["d_model"])
  want = t5_prompts.T5Prompts(str(tmp / "t5"), MAX_LENGTH, "t5-base")(PROMPTS)
  np.testing.assert_array_equal(arrays["prompt"][:2], want["prompt"])
  np.testing.assert_array_equal(arrays["prompt_mask"][:2], want["prompt_mask"])
  rows = (run / "metrics.csv").read_text().splitlines()
  val = rows[0].split(",").index("val_loss")
  losses = [float(r.split(",")[val]) for r in rows[1:] if r.split(",")[val]]
  assert len(losses) >= 2 and all(np.isfinite(losses)) and losses[-1] < losses[0]
