"""Fits the key model on a training set of renders and scores it once on the evaluation set.

  python bench/audio_eval_set.py --out=.cache/audio_key_train_set --per_genre=80 \\
      --exclude_set=.cache/audio_eval_set                     (fitting set: other pieces, ~8 min)
  nice -n 5 python bench/audio_key_model.py --train_set=.cache/audio_key_train_set \\
      --eval_set=.cache/audio_eval_set --write_model

Every candidate (chroma summaries used, logistic regression or a tiny MLP, L2 strength) is scored
by 5-fold cross-validation on the training set alone; the best is refitted on the whole training
set and only then scored on the evaluation set, beside the profile correlation (`key.py`'s
default) on the same chroma. Chroma summaries are cached in each set's folder
(`key_chromas.npz`). --write_model writes lora_jax/audio/key_model.json.
"""
import collections
import os

from absl import flags
import numpy as np

from lora_jax import atomic, cli, progress
from lora_jax.audio import eval_set, key, key_fit, key_model, load, scoring

_TRAIN = flags.DEFINE_string("train_set", ".cache/audio_key_train_set", "Fitting set (renders of "
                             "pieces not in the evaluation set).")
_EVAL = flags.DEFINE_string("eval_set", ".cache/audio_eval_set", "Evaluation set.")
_FOLDS = flags.DEFINE_integer("folds", 5, "Cross-validation folds on the fitting set.",
                              lower_bound=2)
_WRITE = flags.DEFINE_bool("write_model", False, f"Write the chosen model to {key_model.MODEL}.")

CACHE = "key_chromas.npz"
CACHE_VERSION = f"key-chromas/2 edge={key_model.EDGE_SECONDS} hop={key.HOP}"
BLOCK_SETS = (("full",), ("full", "bass_end"), ("full", "end", "bass_end"),
              ("full", "start", "end", "bass_start", "bass_end"), key_model.BLOCKS)
CANDIDATES = [key_fit.Candidate(b, 0, l2) for b in BLOCK_SETS for l2 in (1e-4, 1e-3, 1e-2)]


def set_chromas(folder: str) -> tuple[list[eval_set.Entry], list[key_model.Chromas]]:
  entries = eval_set.read_manifest(folder)
  ids = [e.id for e in entries]
  path = os.path.join(folder, CACHE)
  if os.path.isfile(path):
    cached = np.load(path)
    if str(cached["version"]) == CACHE_VERSION and list(cached["ids"]) == ids:
      return entries, [key_model.Chromas(*(cached[b][i] for b in key_model.BLOCKS))
                       for i in range(len(ids))]
  out, bar = [], progress.Progress(len(entries), f"chroma of {folder}")
  for e in entries:
    audio = load.load(os.path.join(folder, e.wav))
    out.append(key_model.chromas(audio.samples, audio.sample_rate))
    bar.step()
  bar.close()
  with atomic.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, version=CACHE_VERSION, ids=np.array(ids),
               **{b: np.stack([getattr(c, b) for c in out]) for b in key_model.BLOCKS})
  return entries, out


def rows_by_blocks(chromas: list[key_model.Chromas]) -> dict[tuple[str, ...], np.ndarray]:
  return {b: np.stack([key_model.rotated(c, b) for c in chromas]) for b in BLOCK_SETS}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  train_entries, train_chromas = set_chromas(_TRAIN.value)
  eval_ids = {e.id for e in eval_set.read_manifest(_EVAL.value)}
  shared = eval_ids & {e.id for e in train_entries}
  if shared:
    raise ValueError(f"{len(shared)} pieces are in both sets (e.g. {sorted(shared)[0]}): build the "
                     f"fitting set with --exclude_set={_EVAL.value}")
  y = key_fit.labels(np.array([e.truth.tonic for e in train_entries]),
                     [e.truth.mode for e in train_entries])
  # A fixed random fold per piece: the manifest lists the genres one after another.
  folds = np.random.default_rng(0).permutation(np.arange(len(y)) % _FOLDS.value)
  rows = rows_by_blocks(train_chromas)
  baseline = [key.from_scores(key.scores(c.profile)) for c in train_chromas]
  baseline_mirex = key_fit.mirex(key_fit.labels(np.array([k.tonic for k in baseline]),
                                                [k.mode for k in baseline]), y).mean()
  print(f"fitting set: {len(y)} pieces ({_TRAIN.value}); profile correlation "
        f"({key.DEFAULT_PROFILE}) MIREX {baseline_mirex:.3f} there; {_FOLDS.value}-fold cross-validation:")
  chosen, results = key_fit.choose(rows, y, CANDIDATES, folds)
  model = key_fit.fit(rows[chosen.blocks], y, chosen)
  print(f"chosen: {chosen.name} (cross-validated MIREX {dict(results)[chosen]:.3f})")

  eval_entries, eval_chromas = set_chromas(_EVAL.value)
  groups = collections.defaultdict(lambda: collections.defaultdict(list))
  for e, c in zip(eval_entries, eval_chromas):
    estimates = {"profile correlation": key.from_scores(key.scores(c.profile)),
                 "model": key_model.estimate_from(c, model)}
    for group in (e.genre, "all"):
      for name, k in estimates.items():
        groups[group][f"{name} exact"].append(k.tonic == e.truth.tonic and k.mode == e.truth.mode)
        groups[group][f"{name} mirex"].append(
            scoring.mirex_key_score(k.tonic, k.mode, e.truth.tonic, e.truth.mode))
      groups[group]["confidence"].append(estimates["model"].confidence)
  print(f"evaluation set ({_EVAL.value}), scored once:")
  print("group | n | profile correlation exact / MIREX | model exact / MIREX | model confidence")
  for group in sorted(groups, key=lambda g: (g == "all", g)):
    r = groups[group]
    print(f"{group} | {len(r['confidence'])} | {np.mean(r['profile correlation exact']):.3f} / "
          f"{np.mean(r['profile correlation mirex']):.3f} | {np.mean(r['model exact']):.3f} / "
          f"{np.mean(r['model mirex']):.3f} | {np.mean(r['confidence']):.2f}")
  if _WRITE.value:
    all_rows = groups["all"]
    note = {"fitted_on": f"{len(y)} renders of {_TRAIN.value} (no evaluation-set piece)",
            "command": "python bench/audio_key_model.py --train_set=.cache/audio_key_train_set "
                       "--eval_set=.cache/audio_eval_set --write_model",
            "candidate": chosen.name, "cross_validated_mirex": round(dict(results)[chosen], 4),
            "evaluation_mirex": round(float(np.mean(all_rows["model mirex"])), 4)}
    atomic.write_text(key_model.MODEL, model.to_json(note) + "\n")
    print(f"wrote {key_model.MODEL}")


if __name__ == "__main__":
  cli.run(main, "audio_key_model")
