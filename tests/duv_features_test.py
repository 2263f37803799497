"""DUV note features on a hand-built pretty_midi track with known answers."""

import numpy as np
import pretty_midi
import pytest

from lora_jax.data.duv import features as duv_features


def _midi(notes, numerator=4, texts=()):
  """120 bpm (a beat is 0.5 s); notes as (start_beat, dur_beats, pitch, velocity)."""
  pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
  pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, 4, 0.0))
  inst = pretty_midi.Instrument(program=0)
  for start, dur, pitch, velocity in notes:
    inst.notes.append(pretty_midi.Note(velocity, pitch, start * 0.5, (start + dur) * 0.5))
  pm.instruments.append(inst)
  for text, beat in texts:
    pm.text_events.append(pretty_midi.Text(text, beat * 0.5))
  return pm, inst


# (start beat, duration in beats, pitch, velocity), deliberately out of order.
NOTES = [(4.0, 2.0, 69, 75), (0.0, 1.0, 64, 70), (0.0, 1.0, 60, 80), (1.5, 0.5, 67, 90),
         (2.0, 0.5, 72, 100), (3.5, 0.5, 65, 55), (3.5, 0.5, 62, 60), (4 + 2 / 3, 1 / 3, 71, 64)]

EXPECTED = {  # in (onset, pitch) order: 60 64 | 67 | 72 | 62 65 | 69 | 71
    "beat_pos": [0, 0, 1.5, 2, 3.5, 3.5, 0, 2 / 3],
    "beat_frac": [0, 0, 0.5, 0, 0.5, 0.5, 0, 2 / 3],
    "pitch": [60, 64, 67, 72, 62, 65, 69, 71],
    "dur_beats": [1, 1, 0.5, 0.5, 0.5, 0.5, 2, 1 / 3],
    "prev_ioi": [0, 0, 1.5, 0.5, 1.5, 1.5, 0.5, 2 / 3],
    "next_ioi": [1.5, 1.5, 0.5, 1.5, 0.5, 0.5, 2 / 3, 0],
    "is_downbeat": [1, 1, 0, 0, 0, 0, 1, 0],
    "vel_norm": np.array([80, 70, 90, 100, 60, 55, 75, 64]) / 127,
    "strum_dir_hint": [1, 1, 0, 0, -1, -1, 0, 0],
    "swing_hint": [1 / 3] * 8,  # off-beat groups at 1.5, 3.5 (straight) and 4 2/3 (swung)
}


def test_features_of_hand_built_track():
  pm, inst = _midi(NOTES, texts=[("Chorus", 4.0), ("Copyright 2024", 0.0)])
  feats = duv_features.instrument_features(pm, inst)
  assert set(feats) == set(duv_features.ALL_FEATURES)
  for name, expected in EXPECTED.items():
    np.testing.assert_allclose(feats[name], expected, atol=1e-9, err_msg=name)
  chorus = duv_features.SECTION_LABELS.index("chorus")
  expected_sections = np.eye(len(duv_features.SECTION_LABELS))[[0] * 6 + [chorus] * 2]
  np.testing.assert_array_equal(feats["section_onehot"], expected_sections)


def test_three_four_bars_and_pickup():
  pm, inst = _midi([(3.0, 1.0, 60, 64), (4.5, 0.5, 62, 64), (6.0, 1.0, 64, 64)], numerator=3)
  notes = duv_features.written_notes_from_instrument(pm, inst)
  np.testing.assert_allclose(notes.downbeat_beats[:3], [0, 3, 6])
  feats = duv_features.compute_features(notes, ["beat_pos", "is_downbeat"])
  np.testing.assert_allclose(feats["beat_pos"], [0, 1.5, 0])
  np.testing.assert_allclose(feats["is_downbeat"], [1, 0, 1])
  pickup = duv_features.WrittenNotes(np.array([-1.0, 0.0]), np.ones(2), np.array([60, 62]),
                                     np.full(2, 64), np.array([0.0, 4.0]))
  np.testing.assert_allclose(duv_features.compute_features(pickup, ["beat_pos"])["beat_pos"],
                             [-1, 0])


def test_single_note_has_zero_iois_and_no_strum():
  notes = duv_features.WrittenNotes(np.array([0.25]), np.array([1.0]), np.array([60]),
                                    np.array([64]), np.array([0.0]))
  feats = duv_features.compute_features(notes, duv_features.ALL_FEATURES)
  assert feats["prev_ioi"].tolist() == [0.0] and feats["next_ioi"].tolist() == [0.0]
  assert feats["strum_dir_hint"].tolist() == [0.0] and feats["swing_hint"].tolist() == [0.0]
  assert feats["section_onehot"].shape == (1, len(duv_features.SECTION_LABELS))


def test_beat_grid_follows_tempo_changes_and_extends_past_ends():
  grid = duv_features.BeatGrid(np.array([0.0, 0.5, 1.0, 2.0]))
  np.testing.assert_allclose(grid.to_beats(np.array([-0.25, 0.25, 1.5, 3.0, 4.0])),
                             [-0.5, 0.5, 2.5, 4.0, 5.0])


def test_to_seconds_inverts_the_grid():
  grid = duv_features.BeatGrid(np.array([0.5, 1.0, 1.4, 2.0, 2.3]))
  seconds = np.array([0.0, 0.5, 0.7, 1.4, 2.1, 2.3, 3.0])
  np.testing.assert_allclose(grid.to_seconds(grid.to_beats(seconds)), seconds, atol=1e-12)


@pytest.mark.parametrize("text, label", [("Pre-Chorus 2", "prechorus"), ("VERSE", "verse"),
                                         ("chorus b", "chorus"), ("Copyright", None),
                                         ("", None)])
def test_section_label(text, label):
  assert duv_features.section_label(text) == label


def test_unknown_feature_is_named():
  pm, inst = _midi(NOTES)
  with pytest.raises(duv_features.FeatureError, match="'loudness'"):
    duv_features.instrument_features(pm, inst, ["pitch", "loudness"])


def test_empty_instrument_is_named():
  pm = pretty_midi.PrettyMIDI()
  inst = pretty_midi.Instrument(program=33, name="bass")
  with pytest.raises(duv_features.FeatureError, match="'bass'.*no notes"):
    duv_features.instrument_features(pm, inst)


@pytest.mark.parametrize("kwargs, message", [
    ({"onset_beats": np.array([1.0, 0.0])}, "sorted"),
    ({"downbeat_beats": np.array([])}, "downbeat"),
    ({"pitch": np.array([60])}, "pitch has 1 values for 2"),
    ({"sections": ((0.0, "solo"),)}, "'solo'"),
])
def test_bad_written_notes(kwargs, message):
  base = dict(onset_beats=np.array([0.0, 1.0]), dur_beats=np.ones(2), pitch=np.array([60, 62]),
              velocity=np.full(2, 64), downbeat_beats=np.array([0.0]))
  with pytest.raises(duv_features.FeatureError, match=message):
    duv_features.WrittenNotes(**{**base, **kwargs})


def test_beat_grid_rejects_non_increasing_times():
  with pytest.raises(duv_features.FeatureError, match="increasing"):
    duv_features.BeatGrid(np.array([0.0, 0.5, 0.5]))
