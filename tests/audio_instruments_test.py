"""Instrument family guess: the set's splits keep pieces and held-out programs apart, features do not
depend on the level, the calibrated model fits, ships as JSON and says "unknown" below its
threshold, and the shipped model tells a rendered piano from a rendered church organ."""
import dataclasses
import json

import numpy as np
import pretty_midi
import pytest
import soundfile

from lora_jax.audio import batch, calibrated, eval_set, instrument_set, instruments, load, render

SR = load.SAMPLE_RATE


def _entries(n: int) -> list[eval_set.Entry]:
  truth = eval_set.Truth(100.0, 0, "major", "4/4")
  return [eval_set.Entry(f"piece{i}", "g", "", f"p{i}.wav", f"p{i}.mid", 20.0, truth)
          for i in range(n)]


def test_plan_splits_by_piece_and_holds_programs_out_of_fitting():
  renders = instrument_set.plan(_entries(60), per_piece=3)
  assert len(renders) == 180
  by_piece = {}
  for r in renders:
    by_piece.setdefault(r.piece, []).append(r)
    assert r.held_out_program == (r.program == instrument_set.FAMILIES[r.family][-1][0])
    assert not r.held_out_program or r.split != "fit", r
  for piece, rs in by_piece.items():
    assert len({r.split for r in rs}) == 1 and len({r.family for r in rs}) == 3, rs
  assert {r.split for r in renders} == {"fit", "validation", "test"}


def _scale(program: int) -> pretty_midi.PrettyMIDI:
  pm = pretty_midi.PrettyMIDI(initial_tempo=100.0)
  part = pretty_midi.Instrument(program=program)
  for i, pitch in enumerate([60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60, 55, 60]):
    part.notes.append(pretty_midi.Note(90, pitch, 0.6 * i, 0.6 * i + 0.55))
  part.notes.append(pretty_midi.Note(80, 48, 0.0, 7.8))  # a held bass under the tune
  pm.instruments.append(part)
  return pm


@pytest.fixture(scope="module")
def piano_and_organ():
  return render.render(_scale(0)), render.render(_scale(19))


def test_features_do_not_depend_on_the_level(piano_and_organ):
  piano, _ = piano_and_organ
  x = instruments.features(piano, SR)
  assert x.shape == (len(instruments.FEATURES),) and np.isfinite(x).all()
  np.testing.assert_allclose(instruments.features(0.25 * piano, SR), x, rtol=1e-2, atol=1e-3)  # flatness has a power floor


def test_shipped_model_tells_piano_from_organ(piano_and_organ):
  piano, organ = piano_and_organ
  model = instruments.shipped_model()
  assert model.classes == tuple(instrument_set.FAMILIES)
  p_piano = dict(instruments.guess(instruments.features(piano, SR)).probabilities)
  p_organ = dict(instruments.guess(instruments.features(organ, SR)).probabilities)
  assert p_piano["piano"] > p_organ["piano"] and p_organ["organ"] > p_piano["organ"]
  g = instruments.guess(instruments.features(organ, SR))
  assert (g.name == "unknown") == (g.confidence < model.threshold)
  assert instruments.guess(instruments.features(organ, SR),
                           dataclasses.replace(model, threshold=1.01)).name == "unknown"


def test_the_table_has_the_instruments_column(piano_and_organ, tmp_path):
  piano, _ = piano_and_organ
  soundfile.write(str(tmp_path / "piano.wav"), piano, SR)
  report = batch.run([str(tmp_path / "piano.wav")], str(tmp_path / "out"), split_clips=False)
  row, = report.rows
  assert row["Instruments"] in instruments.shipped_model().classes + ("unknown",)
  assert 0 < row["instruments_confidence"] <= 1
  written = json.loads((tmp_path / "out" / "report.json").read_text())
  assert "piano, organ" in written["instruments"]


def test_calibrated_fit_round_trips_and_refuses_other_features():
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
  y = rng.integers(0, 3, 300)
  x = centres[y] + rng.standard_normal((300, 2))
  raw, model = calibrated.fit(("a", "b"), ("x", "y", "z"), x[:200], y[:200], x[200:], y[200:])
  accuracy = (model.probabilities(x[200:]).argmax(1) == y[200:]).mean()
  assert accuracy > 0.8 and 0 <= model.threshold < 1 and model.temperature > 0
  again = calibrated.Model.from_json(model.to_json(), ("a", "b"))
  np.testing.assert_allclose(again.probabilities(x), model.probabilities(x))
  with pytest.raises(ValueError, match="features"):
    calibrated.Model.from_json(model.to_json(), ("a", "c"))
  with pytest.raises(ValueError, match=r"\['z'\] have no fitting rows"):
    calibrated.fit(("a", "b"), ("x", "y", "z"), x[y < 2], y[y < 2], x, y)
