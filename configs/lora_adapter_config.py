r"""python launch/train_parent_adapter.py --parent=celtic_fiddle --pack=style_packs/celtic_fiddle --base-model=checkpoints/base_model/base_model.safetensors

Defaults of the hierarchical style adapters (the seed's `lora_adapter_config.yaml`), for both
launch/train_parent_adapter.py and launch/train_child_adapter.py. Precedence, lowest first:
these defaults < configs/genres/<parent>.py < configs/styles/<parent>/<child>.py (child group
only) < command-line flags (`--rank=16`, or any key as `--config.parent.learning_rate=1e-3`).
An override of a key that is not declared here is an error naming it.

Variants (`--config=configs/lora_adapter_config.py:<variant>`):
  (none)  the recipe of the demo's 128-wide base: a few epochs of a small pack in minutes on a CPU.
  tiny    tiny windows and two epochs, for tests.
Target names: attention -> attn.{q,k,v,out}_proj, feed_forward -> ff.in, ff.out,
output_projection -> head (`lora_jax.hierarchy.settings.TARGET_GROUPS`); other entries are module
suffixes as they are.
"""

import ml_collections


def _level(**values) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(values)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The adapter defaults; `arg` picks a variant."""
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/lora_adapter_config.py: base or tiny")
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  config.data.seq_len = 256  # tokens per training window (BOS included); <= the base's max_len
  config.data.cache_dir = ""  # token windows cached by content; "": <first pack>/.windows

  config.opt = ml_collections.ConfigDict()  # AdamW, shared by parent and child
  config.opt.decay = "cosine"  # after warm-up: 'cosine', 'linear' or 'constant'
  config.opt.final_lr_fraction = 0.1
  config.opt.b1 = 0.9
  config.opt.b2 = 0.999
  config.opt.eps = 1e-8
  config.opt.clip_norm = 1.0  # global-norm clipping; 0 turns it off

  config.run = ml_collections.ConfigDict()
  config.run.log_every = 10  # steps per metrics row
  config.run.keep_last = 2  # checkpoints kept, besides the best by validation loss
  config.run.max_nonfinite_in_a_row = 20
  # True resumes a checkpoint written with other settings (a changed learning rate or batch size
  # is refused by default, naming it); the differences are logged. The model and LoRA shape
  # never change on resume.
  config.run.allow_changed_config = False

  # Parent: the whole genre pack, higher rank and rate (the seed: rank 16, alpha 32).
  config.parent = _level(
      rank=16,
      alpha=32.0,  # scale = alpha / rank
      dropout=0.05,  # on the adapter's input
      target_modules=("attention", "feed_forward"),
      epochs=6,  # over the pack's training windows
      batch_size=16,
      learning_rate=2e-3,  # peak; LoRA factors need far more than a full fine-tune
      warmup_fraction=0.1,
      weight_decay=0.0,
      eval_every=0,  # steps; 0: at each epoch end
      ckpt_every=0,  # steps; 0: at each evaluation
      seed=0)
  # Child: the sub-style's pieces over the frozen parent; lower rank, rate and alpha.
  config.child = _level(
      rank=8,
      alpha=16.0,
      dropout=0.05,
      target_modules=("attention", "feed_forward"),
      epochs=8,
      batch_size=8,  # a sub-style has few windows: smaller batches, more steps
      learning_rate=1e-3,
      warmup_fraction=0.1,
      weight_decay=0.0,
      eval_every=0,
      ckpt_every=0,
      seed=1)

  if variant == "tiny":
    config.data.seq_len = 32
    config.run.log_every = 1
    config.parent.update(rank=4, alpha=8.0, dropout=0.0, epochs=2, batch_size=8,
                         learning_rate=1e-2)
    config.child.update(rank=2, alpha=4.0, dropout=0.0, epochs=2, batch_size=8,
                        learning_rate=1e-2)
  return config
