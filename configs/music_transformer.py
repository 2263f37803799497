"""python launch/convert_torch.py --config=configs/music_transformer.py --input=base.pt --output=base.safetensors

Size of the symbolic music transformer (`lora_jax.models.transformer.TransformerConfig`).
Variants: `configs/music_transformer.py` (the dataclass defaults) and
`configs/music_transformer.py:tiny` (for tests). Single values: `--config.model.n_layers=6`.
"""

import ml_collections

from lora_jax.models.transformer import TransformerConfig


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The model config; `arg` picks a variant: None/'' for the defaults, 'tiny' for tests."""
  if arg not in (None, "", "tiny"):
    raise ValueError(f"unknown music_transformer variant {arg!r}; expected '' or 'tiny'")
  default = TransformerConfig()  # one source of truth for the default sizes
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = default.vocab_size  # MIDI event vocabulary, including special tokens
  config.model.d_model = default.d_model  # width of the residual stream
  config.model.n_heads = default.n_heads  # attention heads; must divide d_model
  config.model.n_layers = default.n_layers  # pre-LN transformer blocks
  config.model.d_ff = default.d_ff  # hidden width of the feed-forward `ff.in`/`ff.out`
  config.model.max_len = default.max_len  # longest sequence; size of the position embedding
  config.model.dropout = default.dropout  # embedding, attention-output, residual and ff dropout
  config.model.dtype = default.dtype  # compute dtype: 'float32' or 'bfloat16'
  config.model.positions = default.positions  # "learned" (a pos_emb table) or "rotary" (no table)
  if arg == "tiny":
    config.model.update(vocab_size=64, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=32)
  return config
