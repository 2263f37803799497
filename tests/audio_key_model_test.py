"""The key model (transposition-equivariant, fitted, shipped as JSON) and the real-recordings truth.

No renders: synthetic chroma and a sine-tone cadence. The accuracy on renders and recordings is
bench/audio_key_model.py's and bench/audio_analysis_eval.py's job.
"""
import numpy as np
import pytest

from lora_jax.audio import key, key_fit, key_model, load, real_set

SR = load.SAMPLE_RATE


def _chromas(rng, tonic: int, mode: str) -> key_model.Chromas:
  """Chroma summaries drawn around a published profile of the key, a bit noisy."""
  base = np.roll(np.asarray(key.PROFILES["albrecht"][mode == "minor"]), tonic)
  blocks = [np.abs(base + rng.normal(0, 0.03, 12)) for _ in key_model.BLOCKS]
  return key_model.Chromas(*(b / b.sum() for b in blocks))


def test_model_is_transposition_equivariant():
  rng = np.random.default_rng(0)
  blocks = key_model.BLOCKS
  model = key_model.Model(blocks, 8, {"u": rng.normal(size=(12 * len(blocks), 8)), "a": rng.normal(size=8),
                                      "v": rng.normal(size=(8, 2)), "b": rng.normal(size=2)})
  c = key_model.Chromas(*(rng.random(12) for _ in blocks))
  p = np.array(key_model.estimate_from(c, model).scores)
  for shift in (1, 5, 7):
    moved = key_model.Chromas(*(np.roll(getattr(c, b), shift) for b in blocks))
    q = np.array(key_model.estimate_from(moved, model).scores)
    for mode in (0, 1):  # every key's probability moves with the tonic, within its mode
      np.testing.assert_allclose(q[12 * mode:12 * mode + 12],
                                 np.roll(p[12 * mode:12 * mode + 12], shift), atol=2e-4)


def test_fit_learns_keys_and_the_json_round_trips():
  rng = np.random.default_rng(1)
  truth = [(int(rng.integers(12)), ("major", "minor")[int(rng.integers(2))]) for _ in range(160)]
  chromas = [_chromas(rng, t, m) for t, m in truth]
  y = key_fit.labels(np.array([t for t, _ in truth]), [m for _, m in truth])
  candidate = key_fit.Candidate(("full", "bass"), 0, 1e-3)
  x = np.stack([key_model.rotated(c, candidate.blocks) for c in chromas])
  model = key_fit.fit(x[:120], y[:120], candidate)
  assert key_fit.mirex(key_fit.predict(model, x[120:]), y[120:]).mean() >= 0.9
  again = key_model.Model.from_json(model.to_json({"command": "test"}))
  np.testing.assert_array_equal(key_fit.predict(again, x), key_fit.predict(model, x))
  with pytest.raises(ValueError, match="treble"):
    key_model.Model.from_json('{"blocks": ["full", "treble"], "hidden": 0, "params": {}}')


def test_shipped_model_hears_a_minor_cadence():
  chords = [(57, 60, 64), (57, 62, 65), (56, 59, 64), (57, 60, 64), (45, 57, 60, 64)]
  time = np.arange(SR) / SR
  y = np.concatenate([sum(np.sin(2 * np.pi * 440 * 2 ** ((p - 69) / 12) * time) for p in c)
                      for c in chords]).astype(np.float32) * 0.2
  k = key_model.estimate(y, SR)
  assert k.name == "A minor", (k.name, k.runner_up)
  assert 0 < k.confidence <= 1 and k.runner_up != k.name and len(k.scores) == 24


def test_measure_annotations_give_the_tempo(tmp_path):
  # 2/4 at 2 s a measure is 60 quarter notes a minute; a pickup (0.75) and the end (4.5) are
  # partial measures and do not count, nor does one slow measure against the median.
  path = tmp_path / "song.csv"
  path.write_text("start;measure\n0.5;0.75\n1.0;1\n3.0;2\n5.0;3\n7.5;4\n9.5;4.5\n")
  assert real_set.measure_bpm(str(path), 2) == 60.0
  with pytest.raises(ValueError, match="fetch_recordings"):
    real_set.entries(str(tmp_path))
