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
from sklearn import linear_model

from lora_jax import atomic, cli
from lora_jax.audio import energy, eval_set, genre, key, load, tempo

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


def _ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
  confidence, correct = p.max(1), p.argmax(1) == y
  edges = np.linspace(0, 1, bins + 1)
  total = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    inside = (confidence > lo) & (confidence <= hi)
    if inside.any():
      total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
  return total


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  entries = eval_set.read_manifest(_SET.value)
  x = _features(entries)
  classes = tuple(sorted({e.genre for e in entries}))
  y = np.array([classes.index(e.genre) for e in entries])
  split = np.array([_split(e.id) for e in entries])
  fit, val, test = (split == "fit"), (split == "validation"), (split == "test")
  mean, scale = x[fit].mean(0), x[fit].std(0) + 1e-9
  clf = linear_model.LogisticRegression(C=1.0, max_iter=2000).fit((x[fit] - mean) / scale, y[fit])
  model = genre.Model(classes, mean, scale, clf.coef_, clf.intercept_, 1.0, 0.0)
  temps = np.exp(np.linspace(np.log(0.25), np.log(4), 41))

  def nll(t):
    p = genre.Model(classes, mean, scale, clf.coef_, clf.intercept_, t, 0.0).probabilities(x[val])
    return -np.mean(np.log(p[np.arange(val.sum()), y[val]] + 1e-12))

  temperature = float(min(temps, key=nll))
  calibrated = genre.Model(classes, mean, scale, clf.coef_, clf.intercept_, temperature, 0.0)
  # threshold: the lowest confidence at which validation guesses are right at least 80% of the time
  pv = calibrated.probabilities(x[val])
  threshold = 0.0
  for t in np.linspace(0, 0.95, 20):
    answered = pv.max(1) >= t
    if answered.any() and (pv.argmax(1) == y[val])[answered].mean() >= 0.8:
      threshold = float(t)
      break
  final = genre.Model(classes, mean, scale, clf.coef_, clf.intercept_, temperature, threshold)
  pt, praw = final.probabilities(x[test]), model.probabilities(x[test])
  right = pt.argmax(1) == y[test]
  answered = pt.max(1) >= threshold
  print(f"genres {classes}; pieces fit/validation/test {fit.sum()}/{val.sum()}/{test.sum()}")
  print(f"test accuracy {right.mean():.3f} (chance {np.bincount(y[test]).max() / test.sum():.3f})")
  print(f"threshold {threshold:.2f}: answered {answered.mean():.3f} of test pieces, "
        f"accuracy on those {right[answered].mean():.3f}")
  print(f"ECE before/after temperature {temperature:.2f}: {_ece(praw, y[test]):.3f} / "
        f"{_ece(pt, y[test]):.3f}")
  for i, c in enumerate(classes):
    mask = y[test] == i
    print(f"  {c}: {right[mask].mean():.3f} of {mask.sum()}")
  if _WRITE.value:
    atomic.write_text(genre.MODEL, final.to_json())
    print(f"wrote {genre.MODEL}")


if __name__ == "__main__":
  cli.run(main, "audio_genre_eval")
