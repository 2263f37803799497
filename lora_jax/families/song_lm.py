"""SongGeneration's LM as a training family: per-stream NLL of windows of songs with lyrics.

Batch (per example): `codes` int32 [K, T], a window of the song's codes (mixed, vocal,
accompaniment); `length` int32 [], the song's frames in the window (the rest is padding);
`song_end` int32 [], 1 where the window reaches the song's end (frame `length` becomes the
end-of-sequence target, so the caller leaves room: length < T); `lyrics` and `sections` int32
[L] (the `description` conditioner's token ids and section ids, 0 = none); `style` int32 [Ls]
(`type_info`'s token ids); with `prompt_audio` in the model's prepend list also `prompt` int32
[K, Lp]. Targets, the delay pattern and masks are `lora_jax.models.song.loss`'s: padding never
enters the loss, nor do targets whose context the window cut off.

The model (`SongWindows`) runs `lora_jax.models.song.lm.forward` inside itself, so parameter
paths are the original's (`transformer.model.layers.0.self_attn.q_proj`, ...), which is what
LoRA targets, checkpoints and PEFT exports name. Loss: mean NLL (nats) over all kept targets of
all streams; metrics: each stream's mean NLL.

Condition dropout (`prepare`, training only): classifier-free guidance subtracts the model's
prediction without conditions, so training must show it rows without them, as the original does
(`ClassifierFreeGuidanceDropout` then `AttributeDropout` in codeclm's `lm_levo.py`, probabilities
from its config.yaml: `classifier_free_guidance.training_dropout` 0.15 drops every condition of a
row; `attribute_dropout` drops one condition, 0.0 description, 0.5 type_info, 0.0 prompt_audio in
the released base). A dropped condition becomes exactly what generation's unconditional rows hold
(`lora_jax/song/generate.py`): a text of its start token alone padded with `text_pad_id` (the
tokenizer's ids, set by train_song), no section, a prompt of special tokens. The original draws
attribute dropout once per (per-GPU) batch; here every row draws its own, so the result does not
depend on how batches are split into micro-batches or devices. Evaluation sees every condition, as
the original's validation (`self.training` False) does.

Sharding: q/k/v, gate/up and the output heads split their output axis over 'model' and input
over 'fsdp', o_proj and down_proj the other way round; embeddings split their width over
'fsdp'; the fusing MLP's kernels split their input over 'fsdp'; norms and biases replicated.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lora_jax.data.song import text as song_text
from lora_jax.models.song import delay_pattern
from lora_jax.models.song import lm as song_lm
from lora_jax.models.song import loss as song_lm_loss
from lora_jax.train.family import Example, Family

NAME = "song_lm"

PARTITION_RULES = (
    (r"self_attn\.(q_proj|k_proj|v_proj)\.kernel$", P("fsdp", "model")),
    (r"self_attn\.o_proj\.kernel$", P("model", "fsdp")),
    (r"mlp\.(gate_proj|up_proj)\.kernel$", P("fsdp", "model")),
    (r"mlp\.down_proj\.kernel$", P("model", "fsdp")),
    (r"(lm_head|linears\.\d+)\.kernel$", P("fsdp", None)),  # code_size + 1 rows: odd
    (r"^mlp\.\d\.kernel$", P("fsdp", None)),
    (r"\.embedding$", P(None, "fsdp")),
    (r".*", P()),  # norms and biases
)


# Condition -> its SongConfig dropout field; "all" is classifier-free guidance's.
DROPOUTS = {"all": "cfg_dropout", "description": "description_dropout",
            "type_info": "type_info_dropout", "prompt_audio": "prompt_audio_dropout"}


@dataclasses.dataclass(frozen=True)
class SongConfig:
  """The `config.model` group of the song_lm family: the LM's sizes and the window shapes."""

  code_size: int
  dim: int
  intermediate_size: int
  num_heads: int
  num_layers: int
  num_layers_sub: int
  text_vocab_size: int
  frames: int  # T, code frames per training window
  lyrics_len: int  # L
  style_len: int  # Ls
  prompt_len: int = 0  # Lp, with prompt_audio in prepend
  delays: tuple[int, ...] = delay_pattern.DELAYS
  prepend: tuple[str, ...] = ("description", "type_info")
  code_depth: int = 3
  rope_theta: float = 100000.0
  rope_theta_sub: float = 500000.0
  # Condition dropout in training (module docstring); 0 = none. configs/song_lm.py sets the
  # released base's values; the YAML's classifier_free_guidance and attribute_dropout sections.
  cfg_dropout: float = 0.0  # a row loses every condition
  description_dropout: float = 0.0  # a row loses its lyrics
  type_info_dropout: float = 0.0  # a row loses its style text
  prompt_audio_dropout: float = 0.0  # a row loses its reference audio
  text_start_id: int = song_text.START  # the tokenizer's start token: a dropped text keeps it
  text_pad_id: int = song_text.PAD  # and is padded with this

  def __post_init__(self):
    object.__setattr__(self, "delays", tuple(int(d) for d in self.delays))
    object.__setattr__(self, "prepend", tuple(self.prepend))
    if len(self.delays) != self.code_depth:
      raise ValueError(f"model.delays {self.delays} has {len(self.delays)} entries for "
                       f"code_depth {self.code_depth}")
    if ("prompt_audio" in self.prepend) != (self.prompt_len > 0):
      raise ValueError(f"model.prompt_len {self.prompt_len} must be > 0 exactly when prepend "
                       f"{self.prepend} holds prompt_audio")
    for name in DROPOUTS.values():
      p = getattr(self, name)
      if not 0.0 <= p <= 1.0:
        raise ValueError(f"model.{name} must be in [0, 1], got {p}")

  def lm_config(self, compute_dtype: str) -> song_lm.SongLMConfig:
    return song_lm.SongLMConfig(
        code_depth=self.code_depth, code_size=self.code_size, dim=self.dim,
        intermediate_size=self.intermediate_size, num_heads=self.num_heads,
        num_layers=self.num_layers, num_layers_sub=self.num_layers_sub,
        rope_theta=self.rope_theta, rope_theta_sub=self.rope_theta_sub,
        text_vocab_size=self.text_vocab_size, prepend=self.prepend, dtype=compute_dtype)


class SongWindows(nn.Module):
  """Batch arrays -> {logits over the pattern, target codes, target mask}."""

  config: song_lm.SongLMConfig
  delays: tuple[int, ...]

  @nn.compact
  def __call__(self, codes_BxKxT, length_B, song_end_B, lyrics_BxL, sections_BxL, style_BxL,
               prompt_BxKxL=None, deterministic: bool = True):
    del deterministic  # the original has no dropout
    cfg = self.config
    codes, frames = song_lm_loss.targets(codes_BxKxT, length_B, song_end_B > 0,
                                         code_size=cfg.code_size)
    mask = song_lm_loss.target_mask(frames, song_end_B > 0, self.delays)
    sequence = delay_pattern.build(codes, self.delays, cfg.special_token)
    conditions = {"description": (lyrics_BxL, sections_BxL), "type_info": style_BxL,
                  "prompt_audio": prompt_BxKxL}
    logits = song_lm.forward(self, sequence, {n: conditions[n] for n in cfg.prepend})
    return {"logits": logits, "codes": codes, "mask": mask}


def null_text(length: int, config: SongConfig) -> jnp.ndarray:
  """A text that says nothing: the start token, then padding (int32 [length])."""
  return jnp.full((length,), config.text_pad_id, jnp.int32).at[0].set(config.text_start_id)


def prepare(batch, key, config: SongConfig):
  """The batch with each row's dropped conditions replaced by the unconditional ones."""
  rows = batch["codes"].shape[0]
  keys = dict(zip(DROPOUTS, jax.random.split(key, len(DROPOUTS))))
  draw = lambda name: jax.random.bernoulli(keys[name], getattr(config, DROPOUTS[name]), (rows,))
  every = draw("all")
  out = dict(batch)
  if "description" in config.prepend:
    drop = (every | draw("description"))[:, None]
    out["lyrics"] = jnp.where(drop, null_text(config.lyrics_len, config)[None], batch["lyrics"])
    out["sections"] = jnp.where(drop, 0, batch["sections"])
  if "type_info" in config.prepend:
    drop = (every | draw("type_info"))[:, None]
    out["style"] = jnp.where(drop, null_text(config.style_len, config)[None], batch["style"])
  if "prompt_audio" in config.prepend:
    drop = (every | draw("prompt_audio"))[:, None, None]
    out["prompt"] = jnp.where(drop, config.lm_config("float32").special_token, batch["prompt"])
  return out


def loss_fn(outputs, batch, delays: tuple[int, ...]):
  """Mean NLL (nats) over every kept target of every stream; each stream's mean as metrics."""
  del batch  # the targets come out of the model, built from the batch there
  nll_K, count_K = song_lm_loss.stream_nll(outputs["logits"], outputs["codes"], outputs["mask"],
                                           delays)
  # No guard against an empty mask: 0/0 is NaN, which the loop counts and skips.
  loss = jnp.sum(nll_K) / jnp.sum(count_K)
  return loss, {f"nll_stream{q}": nll_K[q] / count_K[q] for q in range(nll_K.shape[0])}


def loss_weight(batch, delays: tuple[int, ...]):
  frames = (jnp.arange(batch["codes"].shape[-1])[None, :]
            < (batch["length"] + (batch["song_end"] > 0))[:, None])
  return jnp.sum(song_lm_loss.target_mask(frames, batch["song_end"] > 0, delays))


def synthetic(config: SongConfig, n: int, seed: int) -> dict[str, np.ndarray]:
  """Learnable windows: stream 0 walks a sparse Markov chain over 64 codes, streams 1 and 2 are
  fixed functions of stream 0 at the same frame; a third of the windows end their song early."""
  rng = np.random.default_rng(seed)
  vocab = min(64, config.code_size)
  chain = np.random.default_rng(99).integers(0, vocab, (vocab, 2))
  t = config.frames
  codes = np.zeros((n, config.code_depth, t), np.int32)
  length = np.full((n,), t, np.int32)
  song_end = np.zeros((n,), np.int32)
  for i in range(n):
    c = rng.integers(0, vocab)
    for j in range(t):
      codes[i, 0, j] = c
      c = chain[c, 0 if rng.random() < 0.8 else 1]
    if i % 3 == 0:
      length[i], song_end[i] = rng.integers(t // 2, t), 1
  for q in range(1, config.code_depth):
    codes[:, q] = (codes[:, 0] * (2 * q + 1) + q) % config.code_size
  out = {"codes": codes, "length": length, "song_end": song_end,
         "lyrics": rng.integers(0, config.text_vocab_size, (n, config.lyrics_len), np.int32),
         "sections": rng.integers(0, 14, (n, config.lyrics_len), np.int32),
         "style": rng.integers(0, config.text_vocab_size, (n, config.style_len), np.int32)}
  if config.prompt_len:
    out["prompt"] = rng.integers(0, config.code_size, (n, config.code_depth, config.prompt_len),
                                 np.int32)
  return out


def make(config: SongConfig, compute_dtype: str) -> Family:
  """The song_lm family for a model size, window shape and compute dtype."""
  k, t = config.code_depth, config.frames
  spec = {"codes": Example((k, t), "int32"), "length": Example((), "int32"),
          "song_end": Example((), "int32"), "lyrics": Example((config.lyrics_len,), "int32"),
          "sections": Example((config.lyrics_len,), "int32"),
          "style": Example((config.style_len,), "int32")}
  inputs = ("codes", "length", "song_end", "lyrics", "sections", "style")
  if config.prompt_len:
    spec["prompt"] = Example((k, config.prompt_len), "int32")
    inputs += ("prompt",)
  return Family(
      name=NAME,
      model=SongWindows(config.lm_config(compute_dtype), config.delays),
      batch_spec=spec,
      inputs=inputs,
      loss_fn=functools.partial(loss_fn, delays=config.delays),
      partition_rules=PARTITION_RULES,
      synthetic=lambda n, seed: synthetic(config, n, seed),
      loss_weight=functools.partial(loss_weight, delays=config.delays),
      prepare=functools.partial(prepare, config=config),
      prepare_in_eval=False)
