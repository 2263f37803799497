r"""python launch/train_duv.py --config=configs/duv/proof.py:base --workdir=runs/duv_proof/base

The held-out proof that DUV training learns (scripts/duv_proof.sh runs all of it): a base trained
on the classical performances and tested on MAESTRO pieces it never saw, then pop LoRA adapters
on that base, each trained on three POP909 songs and tested on the fourth:

  python launch/train_duv_lora.py --config=configs/duv/proof.py:pop_191 \
    --workdir=runs/duv_proof/pop_191

Variants (`--config=configs/duv/proof.py:<variant>`):
  base       MAESTRO + Mozart; Maestro_6 and Maestro_7 held out (the two pieces the manifest's
             hash split holds out: 39k of the 102k MAESTRO notes). Writes checkpoints/duv_proof.
  pop_<id>   a LoRA on that base, POP909 songs only, song <id> (008, 010, 022 or 191) held out.
             Writes checkpoints/duv_proof/pop_<id>.lora.
Every run validates on the last 10% of its training tracks (duv.valid_tail) and keeps the best
epoch: no held-out note ever chooses a checkpoint.

The pop adapter's size (rank 16, 40 epochs, LoRA on the two output heads besides the seed's five
targets) was chosen fold by fold on validation alone: bench/duv_pop_variants.py trained five
variants on the seed-42 base, and each of the four folds, looking only at the tails of its own three
training songs, picked this one (mean best validation loss 0.282, against 0.300 for the seed's
rank 8 on its five targets for 20 epochs). Then
  python launch/eval_duv.py --runs=runs/duv_proof/base,runs/duv_proof/pop_008,...
"""

from lora_jax.duv import config_files

base = config_files.sibling(__file__, "base")

POP_SONGS = ("008", "010", "022", "191")  # the POP909 songs scripts/fetch_performances.sh fetches
POP_HEADS = ("vel_head", "dur_head")  # the pop adapter's targets beyond the seed's five


def get_config(arg: str | None = None):
  """The proof's base (`base`) or one leave-one-song-out pop adapter (`pop_<id>`)."""
  if arg == "base":
    config = base.get_config("base")
    config.name = "duv_proof_base"
    config.duv.pieces = r"^(maestro|mozart)/"  # the classical performances
    config.duv.heldout = r"^maestro/Maestro_(6|7)$"
    config.duv.bundle = "checkpoints/duv_proof"
    config.duv.epochs = 12  # validation loss 0.317 after 6 epochs, 0.306 after 12, then flat
    return config
  song = (arg or "").removeprefix("pop_")
  if not (arg or "").startswith("pop_") or song not in POP_SONGS:
    raise ValueError(f"unknown variant {arg!r} of configs/duv/proof.py: base or pop_<id>, "
                     f"<id> in {POP_SONGS}")
  config = base.lora_config(f"pop_{song}", "build/duv/duv_manifest_enriched.jsonl", "", "base")
  config.name = f"duv_proof_pop_{song}"
  config.duv.pieces = r"^pop909/"
  config.duv.heldout = rf"^pop909/POP909_{song}$"
  config.duv.bundle = "checkpoints/duv_proof"
  config.duv.stride = 16  # three songs give few windows: start one every 16 notes
  config.duv.epochs = 40  # about 300 steps
  config.data.batch_size = 32
  config.lora.rank = 16
  config.lora.alpha = 32.0  # scale 2, as the seed's 16 / 8
  config.lora.dropout = 0.0
  # The heads read the final LayerNorm's output: adapting only the blocks, a new velocity level or
  # duration habit has to be made through that normalisation.
  config.lora.target_modules = base.SEED_TARGETS + POP_HEADS
  config.opt.learning_rate = 2e-3  # a small LoRA on a small base takes a large step
  config.opt.warmup_steps = 10
  config.training.patience = 8  # epochs without a better validation loss
  config.training.precision = "float32"  # a CPU run
  return config
