"""lora_jax.models.t5 against transformers' `T5EncoderModel` at tiny random sizes.

Both feed-forward forms (t5-base's ReLU, T5 v1.1's gated GELU), every weight random (layer norm
scales included), a padded batch, and sequences long enough to reach the logarithmic and the
clamped relative-position buckets. Reference: the original in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import tokenizers
import torch
import transformers

from lora_jax.data.t5 import tokenizer
from lora_jax.interop import t5_convert
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.models.t5 import conditioner
from lora_jax.models.t5 import encoder as t5

_SIZES = dict(vocab_size=60, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
              relative_attention_num_buckets=16, relative_attention_max_distance=12)
_B, _S = 2, 20


def _hf(feed_forward_proj):
  torch.manual_seed(0)
  config = transformers.T5Config(**_SIZES, feed_forward_proj=feed_forward_proj, dropout_rate=0.0)
  model = transformers.T5EncoderModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      fan_in = p.shape[1] if p.ndim == 2 and "embed" not in name and "shared" not in name else 1
      p.copy_(1 + 0.2 * torch.randn_like(p) if "layer_norm" in name
              else torch.randn_like(p) / np.sqrt(fan_in))
  return model, config


def _inputs():
  g = torch.Generator().manual_seed(1)
  ids = torch.randint(0, _SIZES["vocab_size"], (_B, _S), generator=g)
  mask = torch.ones(_B, _S, dtype=torch.long)
  mask[1, 13:] = 0
  return ids, mask


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_encoder_matches_the_original_within_float32_rounding(feed_forward_proj):
  model, hf_config = _hf(feed_forward_proj)
  config = t5.config_from_hf(hf_config.to_dict())
  params, left_out = t5_convert.state_dict_to_params(model.state_dict(), config)
  assert left_out == 0
  ids, mask = _inputs()
  with torch.no_grad():
    ref64 = model.double()(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    torch32 = model.float()(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
  ours = np.asarray(jax.jit(t5.T5Encoder(config).apply)(
      {"params": params}, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy())), np.float64)
  real = mask.numpy().astype(bool)  # padded positions are not part of the contract
  scale = np.abs(ref64[real]).max()
  torch_err = np.abs(torch32 - ref64)[real].max() / scale
  our_err = np.abs(ours - ref64)[real].max() / scale
  print(f"T5 {feed_forward_proj}: max |out - float64 original| / max |out|: torch float32 "
        f"{torch_err:.2e}, lora_jax float32 {our_err:.2e}")
  assert torch_err < 1e-5
  assert our_err < max(4 * torch_err, 1e-6)
  # The padding is masked: changing a padded token changes no real position.
  ids2 = ids.clone()
  ids2[1, 15] = (ids2[1, 15] + 1) % _SIZES["vocab_size"]
  again = np.asarray(jax.jit(t5.T5Encoder(config).apply)(
      {"params": params}, jnp.asarray(ids2.numpy()), jnp.asarray(mask.numpy())))
  np.testing.assert_array_equal(again[1, :13], ours[1, :13].astype(np.float32))


def test_buckets_are_the_originals():
  rel = torch.arange(-40, 41)[None, :]
  want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      rel, bidirectional=True, num_buckets=32, max_distance=128).numpy()
  got = t5.relative_position_bucket(jnp.asarray(rel.numpy()), 32, 128)
  np.testing.assert_array_equal(got, want)


def test_a_seq2seq_checkpoint_file_loads_its_encoder_strictly(tmp_path):
  model, hf_config = _hf("relu")
  config = t5.config_from_hf(hf_config.to_dict())
  whole = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**_SIZES, feed_forward_proj="relu"))
  sd = {k: v.clone() for k, v in whole.state_dict().items()}
  sd.update({k: v.clone() for k, v in model.state_dict().items()})
  sd.pop("encoder.embed_tokens.weight")  # as a saved file keeps the tied weight once
  for key in [k for k in sd if k.startswith("decoder.embed_tokens") or k == "lm_head.weight"]:
    sd.pop(key)
  path = str(tmp_path / "model.safetensors")
  safetensors.torch.save_file(sd, path)
  params = t5_convert.load(path, config)
  back = t5_convert.params_to_state_dict(params)
  fresh = transformers.T5EncoderModel(hf_config)
  fresh.load_state_dict(back, strict=True)
  for key, value in model.state_dict().items():
    assert torch.equal(back[key], value.float()), key
  with pytest.raises(WeightFileError, match="unexpected keys.*encoder.block.0.extra.weight"):
    t5_convert.state_dict_to_params(dict(sd, **{"encoder.block.0.extra.weight": sd[
        "shared.weight"]}), config)
  with pytest.raises(WeightFileError, match="missing keys.*SelfAttention.relative_attention_bias"):
    t5_convert.state_dict_to_params({k: v for k, v in sd.items() if "relative" not in k}, config)
  with pytest.raises(WeightFileError, match="differ"):
    t5_convert.state_dict_to_params(dict(sd, **{"encoder.embed_tokens.weight": sd[
        "shared.weight"] + 1}), config)


def test_t5_base_layout_is_the_converters():
  """t5-base's config.json sizes (transformers' own T5Config defaults are t5-small's)."""
  t5_base = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                 feed_forward_proj="relu")
  with torch.device("meta"):
    original = transformers.T5EncoderModel(transformers.T5Config(**t5_base))
  want = {k: tuple(v.shape) for k, v in original.state_dict().items()
          if k != "encoder.embed_tokens.weight"}
  config = t5.config_from_hf(t5_base)
  assert config == t5.T5Config()
  abstract = t5.abstract_params(config)
  names = t5_convert.torch_convert.torch_names(abstract, t5_convert.RENAMES)
  shapes = {path: tuple(leaf.shape) for path, leaf in
            t5_convert.torch_convert.dotted_leaves(abstract).items()}
  got = {names[p]: tuple(reversed(s)) if p.endswith(".kernel") else s for p, s in shapes.items()}
  assert got == want


def test_the_conditioner_tokenizes_and_masks_as_the_original(tmp_path):
  """A user's tokenizer.json, called as the original calls its tokenizer (truncated, padded to
  max_length), and the encoder's output zeroed at padding."""
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(
      "a solo piano in c major with drums at 120 bpm".split())}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="$A </s>", special_tokens=[("</s>", 1)])
  path = str(tmp_path / "tokenizer.json")
  tok.save(path)
  texts = ["a solo piano in c major", "drums at 120 bpm with a solo piano in c major and more"]
  ids, mask = tokenizer.Tokenizer(path, max_length=8)(texts)
  hf = transformers.PreTrainedTokenizerFast(tokenizer_file=path, pad_token="<pad>")(
      texts, truncation=True, max_length=8, padding="max_length", return_tensors="np")
  np.testing.assert_array_equal(ids, hf["input_ids"])
  np.testing.assert_array_equal(mask, hf["attention_mask"].astype(bool))
  assert mask[0].sum() == 7 and mask[1].all()

  model, hf_config = _hf("relu")
  config = t5.config_from_hf(hf_config.to_dict())
  params, _ = t5_convert.state_dict_to_params(model.state_dict(), config)
  ids = np.minimum(ids, _SIZES["vocab_size"] - 1)
  cond = conditioner.T5Conditioner(config, output_dim=_SIZES["d_model"])
  tokens, out_mask = cond.apply({"params": {"model": params}}, ids, mask)
  with torch.no_grad():
    want = model.float()(input_ids=torch.from_numpy(ids).long(),
                         attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
  np.testing.assert_allclose(tokens, want * mask[..., None], rtol=0,
                             atol=1e-5 * np.abs(want).max())
  assert np.all(np.asarray(tokens)[0, 7:] == 0) and np.array_equal(out_mask, mask)
  projected = conditioner.T5Conditioner(config, output_dim=12)
  shapes = jax.eval_shape(projected.init, jax.random.key(0), ids, mask)["params"]
  assert shapes["proj_out"]["kernel"].shape == (_SIZES["d_model"], 12)
