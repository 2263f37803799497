r"""python launch/train_duv.py --config=configs/duv/base.py --workdir=runs/duv_base

The universal DUV base: a PhraseTransformer trained in full on every track of the DUV manifest,
written as the bundle folder `duv.bundle` that the instrument adapters (configs/duv/<name>.py)
and `launch/humanize_midi.py` read. Build the data first:

  bash scripts/fetch_performances.sh .cache/performances
  python launch/build_duv_manifest.py --cache=.cache/performances --out=build/duv

Variants (`--config=configs/duv/base.py:<variant>`):
  (none)  a 2-layer, 64-wide model over 64-note phrases, trained on every piece.
  tiny    a 2-layer, 32-wide model over 16-note phrases, 2 epochs: seconds on a CPU (tests).
`lora_config(instrument, manifest, instrument_regex, variant)` is the shared body of the instrument
adapter configs (configs/duv/<instrument>.py read it with lora_jax.duv.config_files.sibling);
configs/duv/proof.py is the held-out evaluation (scripts/duv_proof.sh).

Sizes and inputs are the measured ones (bench/duv_ablation.py, scripts/duv_proof.sh): the first
4-layer, 128-wide model over 256-note phrases was slower and no better on held-out pieces, and the
features constant within a track (vel_norm, swing_hint, section_onehot) are left out: they carry
no note-level information and let a model recognise a piece instead of reading its notes.
"""

import ml_collections

SEED_TARGETS = ("attn.q_proj", "attn.v_proj", "attn.out_proj", "ff.in", "ff.out")
# duv_features.ALL_FEATURES without those constant per track.
NOTE_FEATURES = ("beat_pos", "beat_frac", "pitch", "dur_beats", "prev_ioi", "next_ioi",
                 "is_downbeat", "strum_dir_hint")


def _common(variant: str) -> ml_collections.ConfigDict:
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/duv: base or tiny")
  config = ml_collections.ConfigDict()
  config.family = "duv"  # lora_jax.families registry name
  config.name = "duv_base"  # recorded in exports

  config.model = ml_collections.ConfigDict()
  config.model.n_features = 8  # columns of duv.features (section_onehot would count 7)
  config.model.d_model = 64
  config.model.n_heads = 4
  config.model.n_layers = 2
  config.model.d_ff = 128
  config.model.max_len = 64  # positions
  config.model.dropout = 0.1  # the base model's own dropout while training
  config.model.seq_len = 64  # notes per training window
  config.model.vel_weight = 1.0  # loss = vel_weight * vel_loss + dur_weight * dur_loss
  config.model.dur_weight = 4.0  # L1 in beats; 4 balances it against velocity L1 / 127

  config.duv = ml_collections.ConfigDict()
  config.duv.manifest = "build/duv/duv_manifest_enriched.jsonl"  # launch/build_duv_manifest.py
  config.duv.instrument = ""  # regex over the rows' instrument; '' = every row
  config.duv.pieces = ""  # regex over the rows' piece_id; '' = every piece
  config.duv.heldout = ""  # regex over piece ids never trained or validated on; '' = none
  config.duv.features = NOTE_FEATURES  # model inputs; n_features counts their columns
  config.duv.valid_tail = 0.1  # the last 10% of each training track's notes validate
  config.duv.epochs = 6  # sets training.steps
  config.duv.stride = 32  # notes between window starts
  config.duv.bundle = "checkpoints/duv"  # bundle folder: written by a base run, read by adapters
  config.duv.adapter_name = ""  # adapters only: written to <bundle>/<adapter_name>.lora

  config.lora = ml_collections.ConfigDict()  # read by adapter runs (lora_config)
  config.lora.rank = 8
  config.lora.alpha = 16.0  # scale = alpha / rank
  config.lora.dropout = 0.05  # on the adapter's input
  config.lora.module_dropout = 0.0
  config.lora.target_modules = SEED_TARGETS  # the DUV seed's list; each must match a layer
  config.lora.include = ()
  config.lora.exclude = ()
  config.lora.rank_pattern = ()
  config.lora.alpha_pattern = ()
  config.lora.use_rslora = False
  config.lora.init = "zeros"
  config.lora.use_dora = False  # DoRA: also learn a per-output magnitude

  config.opt = ml_collections.ConfigDict()
  config.opt.learning_rate = 1e-3  # peak
  config.opt.warmup_steps = 30
  config.opt.decay = "cosine"
  config.opt.final_lr_fraction = 0.1
  config.opt.weight_decay = 0.01
  config.opt.b1 = 0.9
  config.opt.b2 = 0.999
  config.opt.eps = 1e-8
  config.opt.clip_norm = 1.0  # the seed's grad_clip_norm
  config.opt.grad_accum_steps = 1
  config.opt.lr_groups = ()

  config.data = ml_collections.ConfigDict()
  config.data.path = ""  # set by launch/train_duv*.py: train windows cut from duv.manifest
  config.data.val_path = ""  # set likewise: the held-out pieces' windows
  config.data.val_fraction = 0.0  # unused: validation is by note (duv.valid_tail)
  config.data.synthetic_examples = 0
  config.data.batch_size = 32
  config.data.eval_batch_size = 8  # small: the validation tails give few windows

  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.every_steps = 10**9  # only after each evaluation and at the end
  config.ckpt.keep_last = 2
  config.ckpt.keep_best = 1
  config.ckpt.export = "best"  # at the end: 'best' (lowest validation loss) or 'final' params

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.model = 1

  config.training = ml_collections.ConfigDict()
  config.training.type = "full"  # the base trains in full
  config.training.steps = 0  # set by launch/train_duv*.py: duv.epochs x batches per epoch
  config.training.seed = 42
  config.training.precision = "float32"  # 'bfloat16' on accelerators
  config.training.base_dtype = "float32"
  config.training.base_params = ""  # adapters: set to <duv.bundle>/model.safetensors
  config.training.parent_adapter = ""
  config.training.quantize = ""  # QLoRA: 'int8', 'int8_block' or 'nf4' base kernels; '' none
  config.training.eval_every = 10**9  # steps: evaluate at each epoch end only
  config.training.patience = 3  # evaluations without a better validation loss
  config.training.log_every = 50
  config.training.max_nonfinite_in_a_row = 20
  config.training.allow_changed_config = False  # resume a checkpoint written with other settings
  config.training.relora_every = 0  # ReLoRA: fold the adapter into the base every N steps; 0 off
  config.training.relora_warmup = 0  # ReLoRA: steps of learning-rate re-warm after each fold
  config.training.init_adapter = ""  # .lora the adapter starts from (same modules and ranks)

  if variant == "tiny":
    config.name = "duv_tiny"
    config.model.d_model = 32
    config.model.n_heads = 4
    config.model.n_layers = 2
    config.model.d_ff = 64
    config.model.max_len = 16
    config.model.dropout = 0.0
    config.model.seq_len = 16
    config.duv.valid_tail = 0.25
    config.duv.epochs = 2
    config.duv.stride = 8
    config.lora.rank = 4
    config.lora.alpha = 8.0
    config.lora.dropout = 0.0
    config.opt.learning_rate = 1e-2
    config.opt.warmup_steps = 2
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.ckpt.every_steps = 100
    config.training.eval_every = 100
    config.training.log_every = 5
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The base model's config; `arg` picks a variant."""
  return _common(arg or "base")


def lora_config(instrument: str, manifest: str, instrument_regex: str,
                arg: str | None = None) -> ml_collections.ConfigDict:
  """An instrument adapter on the base bundle, with the DUV seed's trainer settings.

  r 8, alpha 16, dropout 0.05 on attn.q_proj/v_proj/out_proj and ff.in/out; the rows of `manifest`
  whose instrument `instrument_regex` finds. Writes <duv.bundle>/<instrument>.lora; humanise with
    python launch/humanize_midi.py --model=checkpoints/duv/<instrument>.lora --input=in.mid \
      --output=out.mid
  """
  config = _common(arg or "base")
  config.name = f"duv_{instrument}_lora"
  config.duv.manifest = manifest
  config.duv.instrument = instrument_regex
  config.duv.adapter_name = instrument
  config.training.type = "lora"
  if (arg or "base") == "tiny":
    return config
  # The seed's guide, field for field: r, alpha, dropout, target_modules above, then
  config.duv.valid_tail = 0.1  # train_split 0.9, by note: each track's last 10% validates
  config.duv.epochs = 6  # epochs
  config.data.batch_size = 64  # batch_size
  config.opt.learning_rate = 2e-4  # lr
  config.opt.weight_decay = 0.01  # weight_decay
  config.opt.warmup_steps = 1000  # warmup_steps
  config.training.patience = 2  # early_stop_patience, in epochs:
  config.training.eval_every = 10**9  # so evaluate at epoch ends only
  config.opt.clip_norm = 1.0  # grad_clip_norm
  config.training.precision = "bfloat16"  # precision: bf16 ('float32' on a CPU)
  config.training.seed = 42  # seed
  return config
