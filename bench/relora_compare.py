r"""python bench/relora_compare.py --workdir=runs/relora_compare [--arms=lora,relora,full]

ReLoRA against plain LoRA at the same rank and steps, and against full fine-tuning, on a real
music_lm run: the shipped base (assets/base_model/, which has never heard a fiddle tune) adapted
to the celtic_fiddle style pack (reels, jigs and hornpipes from the music21 corpus; built here
with `--max_pieces` pieces per sub-style unless `--packs_root` holds it), all three through the
one training loop with the same data order, schedule and evaluations. Prints the validation loss
(nats per token on the pack's validation windows, pooled Program tokens as the hierarchy scores
them) at the start, its best and at the end for each, and the steps and seconds each took.
Rerunning with the same workdir resumes or reuses finished runs. On 2 CPU cores shared with other
jobs each arm of the defaults took 12 to 19 minutes (docs/relora.md).
"""

import dataclasses
import os
import time

import jax
from absl import app, flags

from lora_jax.families import music_lm
from lora_jax.hierarchy import base_file, windows
from lora_jax.train import config as config_lib
from lora_jax.train import loop

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKDIR = flags.DEFINE_string("workdir", "runs/relora_compare", "Where runs and packs go.")
_PACKS = flags.DEFINE_string("packs_root", "", "Folder holding celtic_fiddle/; '' builds it.")
_PIECES = flags.DEFINE_integer("max_pieces", 40, "Pieces per sub-style when building the pack.")
_BASE = flags.DEFINE_string("base", os.path.join(_ROOT, "assets", "base_model",
                                                 "base_model.safetensors"), "Base model file.")
_RANK = flags.DEFINE_integer("rank", 2, "LoRA rank of both LoRA arms (alpha = 2 x rank).")
_STEPS = flags.DEFINE_integer("steps", 800, "Optimiser steps of every arm.")
_EVERY = flags.DEFINE_integer("relora_every", 200, "ReLoRA: steps between folds.")
_REWARM = flags.DEFINE_integer("relora_warmup", 20, "ReLoRA: re-warm steps after a fold.")
_LR = flags.DEFINE_float("lr", 3e-3, "Peak learning rate of the LoRA arms.")
_FULL_LR = flags.DEFINE_float("full_lr", 3e-4, "Peak learning rate of full fine-tuning.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Windows per step.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per window.")
_EVAL = flags.DEFINE_integer("eval_every", 50, "Steps between evaluations.")
_ARMS = flags.DEFINE_list("arms", ["lora", "relora", "full"],
                          "Which runs: lora, relora, full, and qlora, qrelora (the first two over "
                          "a base quantised as --quantize).")
_QUANT = flags.DEFINE_string("quantize", "nf4", "Base format of the qlora and qrelora arms.")

TARGETS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "ff.in", "ff.out",
           "head")


def _config(arm: str, model: music_lm.LmConfig, train: windows.Windows, val: windows.Windows,
            eval_batch: int) -> config_lib.TrainConfig:
  full, rank = arm == "full", _RANK.value
  relora = arm in ("relora", "qrelora")
  overrides = {
      "name": f"relora_compare_{arm}",
      "lora.rank": rank, "lora.alpha": 2.0 * rank, "lora.dropout": 0.0,
      "lora.target_modules": TARGETS,
      "opt.learning_rate": _FULL_LR.value if full else _LR.value,
      "opt.warmup_steps": max(1, _STEPS.value // 20), "opt.weight_decay": 0.0,
      "data.path": train.path, "data.val_path": val.path, "data.val_fraction": 0.0,
      "data.batch_size": _BATCH.value, "data.eval_batch_size": eval_batch,
      "ckpt.every_steps": _EVAL.value, "ckpt.export": "final",
      # Every checkpoint kept: bench/relora_requant_error.py reads the base after each fold.
      "ckpt.keep_last": _STEPS.value,
      "training.quantize": _QUANT.value if arm.startswith("q") else "",
      "training.type": "full" if full else "lora", "training.steps": _STEPS.value,
      "training.base_params": _BASE.value, "training.eval_every": _EVAL.value,
      "training.log_every": _EVAL.value,
      "training.relora_every": _EVERY.value if relora else 0,
      "training.relora_warmup": _REWARM.value if relora else 0}
  config = config_lib.load(os.path.join(_ROOT, "configs", "music_lm.py"), None, overrides)
  return dataclasses.replace(config, model=model)


def _val_losses(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "metrics.csv")) as f:
    header, *lines = [line.rstrip("\n").split(",") for line in f]
  col = header.index("val_loss")
  return [float(r[col]) for r in lines if r[col]]


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  packs_root = _PACKS.value or os.path.join(workdir, "style_packs")
  pack = os.path.join(packs_root, "celtic_fiddle")
  if not os.path.isdir(pack):
    from lora_jax.data.style_packs import corpus as style_corpus  # music21, only when the pack is built here
    style_corpus.build_style_packs(packs_root, ["celtic_fiddle"], _PIECES.value, 2)
  settings, _ = base_file.read_settings(_BASE.value)
  tokenizer = base_file.load_tokenizer(_BASE.value, settings)
  cache = os.path.join(workdir, "windows")
  train = windows.split_windows([pack], "train", tokenizer, _SEQ.value, cache)
  val = windows.split_windows([pack], "validation", tokenizer, _SEQ.value, cache)
  model = music_lm.LmConfig(**dict(dataclasses.asdict(settings), dropout=0.0),
                            seq_len=_SEQ.value, pooled_targets=base_file.pooled_targets(tokenizer))
  eval_batch = min(_BATCH.value, val.n_windows)
  print(f"celtic_fiddle: {train.n_windows} train windows ({train.n_tokens} tokens), "
        f"{val.n_windows} validation windows; {_STEPS.value} steps of {_BATCH.value}")
  rows = []
  for arm in _ARMS.value:
    config = _config(arm, model, train, val, eval_batch)
    run_dir = os.path.join(workdir, arm)
    start = time.time()
    result = loop.train(config, run_dir)
    seconds = time.time() - start
    losses = _val_losses(run_dir)
    trainable = sum(x.size for x in jax.tree.leaves(result.params))
    rows.append((arm, trainable, losses[0], min(losses), losses[-1], result.step, seconds))
  rank = _RANK.value
  names = {"lora": f"LoRA r={rank}",
           "relora": f"ReLoRA r={rank}, fold every {_EVERY.value}, re-warm {_REWARM.value}",
           "full": "full fine-tuning", "qlora": f"QLoRA r={rank} ({_QUANT.value} base)",
           "qrelora": f"ReLoRA r={rank} over a {_QUANT.value} base, fold every {_EVERY.value}, "
                      f"re-warm {_REWARM.value}"}
  print(f"\n| run | trainable params | val loss at step 0 | best val loss | final val loss | "
        f"steps | seconds |\n|---|---:|---:|---:|---:|---:|---:|")
  for arm, trainable, first, best, last, steps, seconds in rows:
    print(f"| {names[arm]} | {trainable:,} | {first:.4f} | {best:.4f} | {last:.4f} | {steps} | "
          f"{seconds:.0f} |")


if __name__ == "__main__":
  app.run(main)
