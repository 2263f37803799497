"""Held-out negative log-likelihood, in bits per token, of a model with or without adapters.

Scored as the training loss is (`families.music_lm.loss_fn`): position t predicts token t + 1
where mask[t + 1] = 1, so BOS is context, never a target, and a Program target is scored as the
class of all pitched Program tokens (`base_file.pooled_targets`: where a note starts, not the
instrument; `Program_drums` is a class of its own). Unlike the loop's validation (a mean of
per-batch means over full batches), this is the exact token-weighted mean over every window of the
split: the last batch is padded with rows of mask 0, which add nothing. Adapter weights are data,
so every level reuses one compiled function per adapter count.
"""

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import lora
from lora_jax.families import music_lm
from lora_jax.data import midi_tokenizer
from lora_jax.hierarchy import base_file, merging, windows

EVAL_BATCH = 16


@dataclasses.dataclass(frozen=True)
class Nll:
  """Negative log-likelihood over a set of windows."""

  bits_per_token: float
  n_tokens: int  # scored target tokens


@functools.partial(jax.jit, static_argnames=("model", "pooled"))
def _target_ce(model: nn.Module, params: Any, adapters: tuple, weights: jax.Array, tokens_BxT,
               mask_BxT, pooled: tuple[int, ...]) -> jax.Array:
  """Cross entropy (nats) of each target token [B, T - 1]; 0 where the target is masked."""
  actives = [lora.Active(a, w) for a, w in zip(adapters, weights)]
  logits_BxTxV = lora.apply(model, params, actives, tokens_BxT, deterministic=True)
  ce_BxT = music_lm.next_token_ce(logits_BxTxV, tokens_BxT, pooled)
  return ce_BxT * mask_BxT[:, 1:].astype(jnp.float32)


def target_ce(model: nn.Module, params: Any, arrays: dict[str, np.ndarray],
              adapters: Sequence[lora.Adapter] = (), weights: Sequence[float] = (),
              pooled: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
  """(cross entropy in nats [N, T - 1], target mask [N, T - 1]) over all windows, on the host."""
  if len(adapters) != len(weights):
    raise ValueError(f"{len(adapters)} adapters but {len(weights)} weights")
  tokens, mask = np.asarray(arrays["tokens"], np.int32), np.asarray(arrays["mask"], np.float32)
  if tokens.shape[0] == 0 or mask[:, 1:].sum() == 0:
    raise ValueError("no target tokens to score: the windows are empty")
  n = len(tokens)
  pad = -n % EVAL_BATCH
  tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), np.int32)])
  mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), np.float32)])
  w = jnp.asarray(weights, jnp.float32).reshape(-1)
  outs = [_target_ce(model, params, tuple(adapters), w, tokens[i:i + EVAL_BATCH],
                     mask[i:i + EVAL_BATCH], tuple(pooled)) for i in range(0, len(tokens), EVAL_BATCH)]
  ce = np.concatenate([np.asarray(o, np.float64) for o in jax.device_get(outs)])[:n]
  return ce, mask[:n, 1:]


def nll(model: nn.Module, params: Any, arrays: dict[str, np.ndarray],
        adapters: Sequence[lora.Adapter] = (), weights: Sequence[float] = (),
        pooled: Sequence[int] = ()) -> Nll:
  """Bits per target token of `model` (with adapters at `weights`) on `tokens`/`mask` windows;
  targets among the `pooled` ids are scored as their class (`base_file.pooled_targets`)."""
  ce, mask = target_ce(model, params, arrays, adapters, weights, pooled)
  return Nll(float(ce.sum() / mask.sum() / math.log(2.0)), int(mask.sum()))


def nll_by_kind(model: nn.Module, params: Any, arrays: dict[str, np.ndarray],
                tokenizer: midi_tokenizer.MidiTokenizer, adapters: Sequence[lora.Adapter] = (),
                weights: Sequence[float] = ()) -> dict[str, Nll]:
  """`nll` per kind of target token ('Pitch', 'Program', 'Duration', ...): where the bits go.

  Program targets are scored as the hierarchy scores them, the pitched ones as a class (`nll`
  with the pooled ids); `Program_drums`, a class of its own, is a kind of its own too.
  """
  ce, mask = target_ce(model, params, arrays, adapters, weights,
                       base_file.pooled_targets(tokenizer))
  kinds = np.asarray([name if name in base_file.UNPOOLED else name.split("_")[0]
                      for name in tokenizer.tokens])[np.asarray(arrays["tokens"])[:, 1:]]
  out = {}
  for kind in sorted(set(kinds[mask > 0])):
    sel = (mask > 0) & (kinds == kind)
    out[kind] = Nll(float(ce[sel].sum() / sel.sum() / math.log(2.0)), int(sel.sum()))
  return out


@dataclasses.dataclass(frozen=True)
class Table:
  """Bits per token of each level (rows) on the test windows of each pack (columns)."""

  columns: tuple[str, ...]
  rows: tuple[tuple[str, tuple[Nll, ...]], ...]

  def value(self, row: str, column: int = 0) -> float:
    return dict(self.rows)[row][column].bits_per_token

  def format(self) -> str:
    """A plain-text table, one line per level."""
    width = max(len(r) for r, _ in self.rows)
    cols = [max(len(c), 8) for c in self.columns]
    lines = [" " * width + "  " + "  ".join(c.rjust(n) for c, n in zip(self.columns, cols))]
    for row, values in self.rows:
      lines.append(row.ljust(width) + "  " + "  ".join(
          f"{v.bits_per_token:.4f}".rjust(n) for v, n in zip(values, cols)))
    lines.append("(bits per token; " + ", ".join(
        f"{c}: {v.n_tokens} tokens" for c, v in zip(self.columns, self.rows[0][1])) + ")")
    return "\n".join(lines)


def heading(split: str) -> str:
  """The line above every levels table (the demo's and evaluate_nll's)."""
  return f"Held-out NLL on {split} pieces (bits per token; lower is better):"


def trained_seq_len(base_path: str, parent_path: str, child_path: str | None) -> int:
  """The window length the adapters (the child's first) or else the base were trained on."""
  for path in (child_path, parent_path):
    if path:
      seq_len = lora.load_adapter(path).extra.get("seq_len")
      if seq_len is not None:
        return int(seq_len)
  seq_len = base_file.read_settings(base_path)[1].get("seq_len")
  if seq_len is None:
    raise ValueError(f"neither the adapters nor {base_path} record the window length they were "
                     f"trained on: give --seq_len")
  return int(seq_len)


def level_table(base_path: str, parent_path: str, child_path: str | None, merged_path: str | None,
                pack_dirs: Sequence[str], split: str, seq_len: int, cache_dir: str) -> Table:
  """NLL of base, base + parent, base + parent + child and the merged model on each pack's split.

  Adapters are applied at weight 1 (the additive merge of weight 1 that `merged_path` holds, if
  given). The adapters are checked against the base as a merge checks them.
  """
  base, adapters = merging.load_stack(base_path, parent_path, child_path)
  merging.check(base, adapters)
  tokenizer = base_file.load_tokenizer(base.path, base.settings)
  splits = [windows.split_windows([d], split, tokenizer, seq_len, cache_dir) for d in pack_dirs]
  data = [windows.load_arrays(w) for w in splits]
  columns = tuple(f"{w.styles[0]} {split}" for w in splits)
  model = base.model()
  parent = [a.record.adapter for a in adapters if a.role == "parent"]
  child = [a.record.adapter for a in adapters if a.role == "child"]
  levels = [("base", base.params, []), ("base + parent", base.params, parent)]
  if child:
    levels.append(("base + parent + child", base.params, parent + child))
  if merged_path:
    merged = base_file.load_model(merged_path)
    if merged.settings != base.settings:
      raise ValueError(f"merged model {merged_path} has size {merged.settings}, the base "
                       f"{base.settings}")
    levels.append(("merged", merged.params, []))
  pooled = base_file.pooled_targets(tokenizer)
  rows = tuple((label, tuple(nll(model, params, arrays, acts, [1.0] * len(acts), pooled)
                             for arrays in data)) for label, params, acts in levels)
  return Table(columns, rows)
