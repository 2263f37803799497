"""The genre guess: the shipped model loads from JSON (no pickle), its features do not depend on
the key a piece is played in, and a confidence below the threshold reads "unknown"."""
import dataclasses

import numpy as np
import pytest

from lora_jax.audio import calibrated, energy, genre, key, tempo


def _inputs(shift: int):
  profile = np.roll(np.array([9, 1, 5, 1, 7, 6, 1, 8, 1, 5, 1, 4], np.float64), shift)
  k = key.from_scores(key.scores(profile))
  return profile, k, tempo.Tempo(96.0, 0.4, 0.5, 0.3), energy.Energy(-20.0, 6.0)


def test_features_are_the_same_in_every_key():
  base = genre.features(*_inputs(0))
  assert base.shape == (len(genre.FEATURES),)
  for shift in (1, 5, 11):
    np.testing.assert_allclose(genre.features(*_inputs(shift)), base, atol=1e-9)


def test_shipped_model_guesses_a_fitted_genre_or_unknown():
  model = genre.shipped_model()
  assert model.classes == ("baroque_chorale", "celtic_fiddle", "essen_folk", "renaissance")
  again = calibrated.Model.from_json(model.to_json(), genre.FEATURES)
  np.testing.assert_array_equal(again.weights, model.weights)
  g = genre.guess(genre.features(*_inputs(3)))
  assert g.name in model.classes + ("unknown",)
  assert sum(p for _, p in g.probabilities) == pytest.approx(1.0, abs=0.01)
  assert (g.name == "unknown") == (g.confidence < model.threshold)
  sure = dataclasses.replace(model, threshold=1.01)
  assert genre.guess(genre.features(*_inputs(3)), sure).name == "unknown"


def test_model_of_other_features_is_refused():
  text = genre.shipped_model().to_json().replace('"chroma_0"', '"tempo_0"')
  with pytest.raises(ValueError, match="features"):
    calibrated.Model.from_json(text, genre.FEATURES)
