r"""python bench/duv_pop_variants.py [--bundle=checkpoints/duv_proof] [--variants=...] [--seed=42]

How the proof's pop adapter (configs/duv/proof.py:pop_<id>) was sized. On a trained proof base
(`bash scripts/duv_proof.sh` writes checkpoints/duv_proof), each variant below trains a pop LoRA
for every leave-one-song-out fold through the real training path (lora_jax.duv.training), and each
fold picks the variant with the lowest best validation loss: the tails of its own three training
songs, never a note of the song it leaves out. The held-out scores are printed after, as a record;
they choose nothing. About three minutes a variant on two CPU cores.

Measured on the seed-42 base (best validation loss per fold 008 / 010 / 022 / 191):
  seed_r8_e20     0.2924 0.3193 0.2994 0.2873   the first proof config: the seed's r 8, 5 targets
  r16_e40         0.2898 0.3173 0.2946 0.2573
  r32_e40         0.2882 0.3116 0.2997 0.2569
  r8_e40_heads    0.2890 0.3132 0.2979 0.2578
  r16_e40_heads   0.2881 0.3029 0.2858 0.2528   every fold's pick: configs/duv/proof.py's
"""

import csv
import os

from absl import app, flags

from lora_jax.duv import evaluate, training
from lora_jax.train import config as config_lib

PROOF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "duv",
                     "proof.py")
SEED_TARGETS = ("attn.q_proj", "attn.v_proj", "attn.out_proj", "ff.in", "ff.out")
# Overrides of the proof's pop config (rank 16, alpha 32, 40 epochs, patience 8, 7 targets).
VARIANTS = {
    "seed_r8_e20": {"lora.rank": 8, "lora.alpha": 16.0, "duv.epochs": 20,
                    "training.patience": 5, "lora.target_modules": SEED_TARGETS},
    "r16_e40": {"lora.target_modules": SEED_TARGETS},
    "r32_e40": {"lora.rank": 32, "lora.alpha": 64.0, "lora.target_modules": SEED_TARGETS},
    "r8_e40_heads": {"lora.rank": 8, "lora.alpha": 16.0},
    "r16_e40_heads": {},
}

_BUNDLE = flags.DEFINE_string("bundle", "checkpoints/duv_proof", "trained proof base bundle")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), "variants to train")
_FOLDS = flags.DEFINE_list("folds", ["008", "010", "022", "191"], "POP909 songs to leave out")
_SEED = flags.DEFINE_integer("seed", 42, "training.seed (scripts/duv_proof.sh's SEED)")
_WORKDIR = flags.DEFINE_string("workdir", "runs/duv_pop_variants", "one workdir per run below")


def _best_validation(workdir: str) -> tuple[float, int]:
  """The lowest validation loss after training began, and its step."""
  with open(os.path.join(workdir, "run", "metrics.csv")) as f:
    rows = [r for r in csv.DictReader(f) if r["val_loss"] and int(r["step"]) > 0]
  best = min(rows, key=lambda r: float(r["val_loss"]))
  return float(best["val_loss"]), int(best["step"])


def main(argv):
  del argv
  unknown = sorted(set(_VARIANTS.value) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
  val, heldout = {}, {}
  for name in _VARIANTS.value:
    for song in _FOLDS.value:
      adapter = f"variant_{name}_{song}"
      overrides = {"duv.bundle": _BUNDLE.value, "duv.adapter_name": adapter,
                   "training.seed": _SEED.value, **VARIANTS[name]}
      workdir = os.path.join(_WORKDIR.value, name, f"pop_{song}")
      training.train(config_lib.load_config_dict(PROOF, f"pop_{song}", overrides), workdir,
                     "lora")
      val[name, song] = _best_validation(workdir)
      heldout[name, song] = evaluate.evaluate_run(workdir).pooled
      os.remove(os.path.join(_BUNDLE.value, adapter + ".lora"))
  print("best validation loss (step), the training songs' tails; * = the fold's pick")
  picks = {song: min(_VARIANTS.value, key=lambda n: val[n, song][0]) for song in _FOLDS.value}
  print(f"{'variant':16s}" + "".join(f"{'fold ' + s:>16s}" for s in _FOLDS.value))
  for name in _VARIANTS.value:
    cells = [f"{val[name, s][0]:.4f} ({val[name, s][1]:3d}){'*' if picks[s] == name else ' '}"
             for s in _FOLDS.value]
    print(f"{name:16s}" + "".join(f"{c:>16s}" for c in cells))
  print("\nheld-out song, adapted model (chooses nothing): velocity MAE raw / level-matched, "
        "duration MAE (beats)")
  for name in _VARIANTS.value:
    scores = [heldout[name, song]["adapted"] for song in _FOLDS.value]
    cells = [f"{s.vel_raw:5.2f}/{s.vel_matched:5.2f}/{s.dur:.4f}" for s in scores]
    print(f"{name:16s}" + "".join(f"{c:>20s}" for c in cells))
  base = [heldout[_VARIANTS.value[0], song]["base"] for song in _FOLDS.value]
  cells = [f"{s.vel_raw:5.2f}/{s.vel_matched:5.2f}/{s.dur:.4f}" for s in base]
  print(f"{'(base)':16s}" + "".join(f"{c:>20s}" for c in cells))


if __name__ == "__main__":
  app.run(main)
