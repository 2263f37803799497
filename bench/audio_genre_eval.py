"""Fits and measures the genre guess on the genre set; writes lora_jax/audio/genre_model.json.

  python bench/audio_eval_set.py --out=.cache/audio_genre_set --shared_instruments
  nice -n 5 python bench/audio_genre_eval.py --set=.cache/audio_genre_set [--write_model]

Pieces split by a hash of their id: 60% fit, 20% validation (temperature and threshold), 20% test.
Prints test accuracy, the share answered (not "unknown") and the accuracy on those, and the
expected calibration error (10 bins) before and after temperature scaling.
"""
import hashlib
import os

from absl import flags
import numpy as np

from lora_jax import atomic, cli
from lora_jax.audio import calibrated, energy, eval_set, genre, key, load, tempo

_SET = flags.DEFINE_string("set", ".cache/audio_genre_set", "Folder built with "
                           "--shared_instruments.")
_WRITE = flags.DEFINE_bool("write_model", False, "Write the fitted model to genre.MODEL.")


def _split(piece_id: str) -> str:
  h = int(hashlib.sha256(f"genre-split:{piece_id}".encode()).hexdigest()[:8], 16) % 10
  return "fit" if h < 6 else "validation" if h < 8 else "test"


def _features(entries) -> np.ndarray:
  cache = os.path.join(_SET.value, "genre_features.npz")
  ids = [e.id for e in entries]
  if os.path.isfile(cache):
    saved = np.load(cache)
    if list(saved["ids"]) == ids and saved["x"].shape[1] == len(genre.FEATURES):
      return saved["x"]
  rows = []
  for i, e in enumerate(entries):
    audio = load.load(os.path.join(_SET.value, e.wav))
    t = tempo.estimate(audio.samples, audio.sample_rate)
    profile = key.chroma_profile(audio.samples, audio.sample_rate)
    k = key.from_scores(key.scores(profile))
    rows.append(genre.features(profile, k, t, energy.measure(audio.samples, audio.sample_rate)))
    if i % 20 == 0:
      print(f"features {i}/{len(entries)}", flush=True)
  x = np.array(rows)
  with atomic.atomic_path(cache) as tmp:
    np.savez(tmp + ".npz", ids=np.array(ids), x=x)
    os.replace(tmp + ".npz", tmp)
  return x


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  entries = eval_set.read_manifest(_SET.value)
  x = _features(entries)
  classes = tuple(sorted({e.genre for e in entries}))
  y = np.array([classes.index(e.genre) for e in entries])
  split = np.array([_split(e.id) for e in entries])
  fit, val, test = (split == "fit"), (split == "validation"), (split == "test")
  model, final = calibrated.fit(genre.FEATURES, classes, x[fit], y[fit], x[val], y[val], c=1.0,
                                target_accuracy=0.8)
  threshold, temperature = final.threshold, final.temperature
  pt, praw = final.probabilities(x[test]), model.probabilities(x[test])
  right = pt.argmax(1) == y[test]
  answered = pt.max(1) >= threshold
  print(f"genres {classes}; pieces fit/validation/test {fit.sum()}/{val.sum()}/{test.sum()}")
  print(f"test accuracy {right.mean():.3f} (chance {np.bincount(y[test]).max() / test.sum():.3f})")
  print(f"threshold {threshold:.2f}: answered {answered.mean():.3f} of test pieces, "
        f"accuracy on those {right[answered].mean():.3f}")
  ece = calibrated.expected_calibration_error
  print(f"ECE before/after temperature {temperature:.2f}: {ece(praw, y[test]):.3f} / "
        f"{ece(pt, y[test]):.3f}")
  for i, c in enumerate(classes):
    mask = y[test] == i
    print(f"  {c}: {right[mask].mean():.3f} of {mask.sum()}")
  if _WRITE.value:
    atomic.write_text(genre.MODEL, final.to_json())
    print(f"wrote {genre.MODEL}")


if __name__ == "__main__":
  cli.run(main, "audio_genre_eval")
