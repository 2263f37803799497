"""Fits and measures the instrument-family guess; writes lora_jax/audio/instrument_model.json.

  python bench/audio_eval_set.py --out=.cache/audio_eval_set          (the pieces, first)
  nice -n 5 python bench/audio_instrument_eval.py --set=.cache/audio_instrument_set [--write_model]

Renders the instrument set (`instrument_set.build`, cached), computes the features (cached beside
it), fits on the fit pieces, calibrates on the validation pieces, and prints for the test pieces:
accuracy (on programs seen in fitting, and on each family's held-out program), the share answered
above the threshold and the accuracy there, calibration error before/after temperature, and the
confusion matrix (rows: true family, columns: guessed); then what it names on two-family
mixtures of the test pieces that have several parts.
"""
import os

from absl import flags
import numpy as np

from lora_jax import atomic, cli
from lora_jax.audio import calibrated, instrument_set, instruments, load

_SET = flags.DEFINE_string("set", ".cache/audio_instrument_set", "Folder of the instrument set.")
_SOURCE = flags.DEFINE_string("source", ".cache/audio_eval_set", "The evaluation set it replays.")
_PER_PIECE = flags.DEFINE_integer("per_piece", 3, "Renders of each piece.", lower_bound=1,
                                  upper_bound=len(instrument_set.FAMILIES))
_C = flags.DEFINE_float("c", 0.3, "Inverse L2 strength of the logistic regression.")
_TARGET = flags.DEFINE_float("target_accuracy", 0.9, "The threshold is the lowest confidence at "
                              "which validation guesses are right this often.")
_WRITE = flags.DEFINE_bool("write_model", False, "Write the fitted model to instruments.MODEL.")


def _features(renders: list[instrument_set.Render]) -> np.ndarray:
  cache = os.path.join(_SET.value, "instrument_features.npz")
  ids = [r.id for r in renders]
  if os.path.isfile(cache):
    saved = np.load(cache)
    if list(saved["ids"]) == ids and list(saved["features"]) == list(instruments.FEATURES):
      return saved["x"]
  rows = []
  for i, r in enumerate(renders):
    audio = load.load(os.path.join(_SET.value, r.wav))
    rows.append(instruments.features(audio.samples, audio.sample_rate))
    if i % 50 == 0:
      print(f"features {i}/{len(renders)}", flush=True)
  x = np.array(rows)
  with atomic.atomic_path(cache) as tmp:
    np.savez(tmp + ".npz", ids=np.array(ids), features=np.array(instruments.FEATURES), x=x)
    os.replace(tmp + ".npz", tmp)
  return x


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  renders = instrument_set.build(_SET.value, _SOURCE.value, _PER_PIECE.value)
  x = _features(renders)
  classes = tuple(instrument_set.FAMILIES)
  y = np.array([classes.index(r.family) for r in renders])
  split = np.array([r.split for r in renders])
  held = np.array([r.held_out_program for r in renders])
  fit, val, test = split == "fit", split == "validation", split == "test"
  raw, model = calibrated.fit(instruments.FEATURES, classes, x[fit], y[fit], x[val], y[val],
                              c=_C.value, target_accuracy=_TARGET.value)
  p, p_raw = model.probabilities(x[test]), raw.probabilities(x[test])
  right = p.argmax(1) == y[test]
  answered = p.max(1) >= model.threshold
  pieces = {s: len({r.piece for r, m in zip(renders, split == s) if m}) for s in
            ("fit", "validation", "test")}
  print(f"families {classes}; renders fit/validation/test {fit.sum()}/{val.sum()}/{test.sum()} "
        f"(pieces {pieces['fit']}/{pieces['validation']}/{pieces['test']})")
  print(f"test accuracy {right.mean():.3f} (chance {np.bincount(y[test]).max() / test.sum():.3f}); "
        f"programs seen in fitting {right[~held[test]].mean():.3f} of {(~held[test]).sum()}, "
        f"held-out programs {right[held[test]].mean():.3f} of {held[test].sum()}")
  print(f"threshold {model.threshold:.2f}: answered {answered.mean():.3f} of test renders, "
        f"accuracy on those {right[answered].mean():.3f}; held-out programs answered "
        f"{answered[held[test]].mean():.3f}, accuracy on those {right[answered & held[test]].mean():.3f}")
  print(f"ECE before/after temperature {model.temperature:.2f}: "
        f"{calibrated.expected_calibration_error(p_raw, y[test]):.3f} / "
        f"{calibrated.expected_calibration_error(p, y[test]):.3f}")
  confusion = np.zeros((len(classes), len(classes)), int)
  np.add.at(confusion, (y[test], p.argmax(1)), 1)
  print("confusion (rows true, columns guessed): " + " ".join(c[:5] for c in classes))
  for c, row in zip(classes, confusion):
    print(f"  {c:9s} " + " ".join(f"{n:5d}" for n in row) + f"   {row[classes.index(c)] / max(row.sum(), 1):.2f}")
  mixtures = instrument_set.build_mixtures(_SET.value, _SOURCE.value)
  if mixtures:
    pm = np.array([model.probabilities(instruments.features(a.samples, a.sample_rate)[None])[0]
                   for a in (load.load(os.path.join(_SET.value, m.wav)) for m in mixtures)])
    named = [classes[i] for i in pm.argmax(1)]
    upper = np.mean([n == m.upper for n, m in zip(named, mixtures)])
    lower = np.mean([n == m.lower for n, m in zip(named, mixtures)])
    print(f"{len(mixtures)} two-family mixtures (upper parts one family, bass another): named the "
          f"upper family {upper:.3f}, the bass's {lower:.3f}, neither {1 - upper - lower:.3f}; "
          f"\"unknown\" {np.mean(pm.max(1) < model.threshold):.3f}, mean confidence "
          f"{pm.max(1).mean():.3f}")
  if _WRITE.value:
    atomic.write_text(instruments.MODEL, model.to_json())
    print(f"wrote {instruments.MODEL}")


if __name__ == "__main__":
  cli.run(main, "audio_instrument_eval")
