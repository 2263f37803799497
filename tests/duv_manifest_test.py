"""DUV manifest: filters, split, enrichment, scaler, windows, errors; real files when fetched."""

import hashlib
import json
import os

import numpy as np
import pretty_midi
import pytest

from lora_jax.data.duv import baselines as duv_baselines
from lora_jax.data.duv import build as duv_build
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.data.duv import pairs as duv_pairs

REAL_CACHE = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "performances")
SMALL = duv_manifest.Filters(min_notes=8, min_duration_sec=1.0, max_duration_sec=600.0)


def _write_midi(path, n_notes, seed, programs=(0,)):
  """A 100 bpm file (0.6 s a beat) of n_notes eighths per instrument, human-ish velocity."""
  rng = np.random.default_rng(seed)
  pm = pretty_midi.PrettyMIDI(initial_tempo=100.0)
  for program in programs:
    inst = pretty_midi.Instrument(program=program)
    for i in range(n_notes):
      start = i * 0.3 + rng.uniform(0, 0.01)
      inst.notes.append(pretty_midi.Note(int(rng.integers(30, 110)), 48 + i % 24, start,
                                         start + rng.uniform(0.1, 0.5)))
    pm.instruments.append(inst)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pm.write(str(path))


@pytest.fixture
def cache(tmp_path):
  """pop909: a (12 notes), duo (2 instruments), short (4 notes); maestro: m1, m2 (30 notes)."""
  root = tmp_path / "cache"
  _write_midi(root / "pop909" / "a.mid", 12, 0)
  _write_midi(root / "pop909" / "duo.mid", 16, 1, programs=(0, 33))
  _write_midi(root / "pop909" / "short.mid", 4, 2)
  _write_midi(root / "maestro" / "m1.mid", 30, 3)
  _write_midi(root / "maestro" / "m2.mid", 30, 4)
  return str(root)


def _row(pitches, split, piece, velocity=None, features=duv_features.CORE_FEATURES):
  n = len(pitches)
  notes = duv_features.WrittenNotes(np.arange(n, dtype=float), np.ones(n), np.asarray(pitches),
                                    np.full(n, 64), np.array([0.0]))
  pair = duv_pairs.DeadpanPair(
      file=f"{piece}.mid", source="pop909", piece_id=piece, instrument="piano", track=0,
      grid_source="tempo_map", grid_fit=1.0, snap_beats=0.0, duration_sec=float(n), notes=notes,
      target_velocity=np.asarray(velocity if velocity is not None else [80] * n),
      target_dur_beats=np.full(n, 0.5))
  return duv_manifest.pair_to_row(pair, split, features)


def test_build_rows_filters_and_counts(cache):
  rows, removed = duv_manifest.build_rows(cache, ["pop909", "maestro"], SMALL, 0.5)
  assert removed == {"files_without_notes": 0, "min_notes": 1, "min_duration_sec": 0,
                     "max_duration_sec": 0}
  assert [(r["file"], r["track"], r["instrument"]) for r in rows] == [
      ("pop909/a.mid", 0, "piano"), ("pop909/duo.mid", 0, "piano"), ("pop909/duo.mid", 1, "bass"),
      ("maestro/m1.mid", 0, "piano"), ("maestro/m2.mid", 0, "piano")]
  assert [r["grid_is_real"] for r in rows] == [True, True, True, False, False]
  for row in rows:
    assert set(row["features"]) == set(duv_features.CORE_FEATURES)
    assert row["notes"]["velocity"] == [64] * row["n_notes"]
    duv_manifest.check_row(row, duv_features.CORE_FEATURES, row["file"])
  tight = duv_manifest.Filters(min_notes=8, min_duration_sec=5.0, max_duration_sec=8.0)
  _, removed = duv_manifest.build_rows(cache, ["pop909", "maestro"], tight, 0.5)
  assert removed == {"files_without_notes": 0, "min_notes": 1, "min_duration_sec": 3,
                     "max_duration_sec": 2}


def test_split_is_by_piece_hash(cache):
  rows, _ = duv_manifest.build_rows(cache, ["pop909", "maestro"], SMALL, 0.5)
  for row in rows:
    draw = int.from_bytes(hashlib.sha256(row["piece_id"].encode()).digest()[:8], "big") / 2**64
    assert row["split"] == ("valid" if draw < 0.5 else "train")
  duo = [r["split"] for r in rows if r["piece_id"] == "pop909/duo"]
  assert len(duo) == 2 and duo[0] == duo[1]
  assert duv_manifest.split_of("x", 0.0) == "train"
  with pytest.raises(ValueError, match="1.5"):
    duv_manifest.split_of("x", 1.5)


def test_manifest_round_trip_and_enrich(cache, tmp_path):
  rows, _ = duv_manifest.build_rows(cache, ["pop909", "maestro"], SMALL, 0.5)
  core, enriched = str(tmp_path / "m.jsonl"), str(tmp_path / "e.jsonl")
  duv_manifest.write_manifest(core, rows)
  assert duv_manifest.read_manifest(core, duv_features.CORE_FEATURES) == rows
  out = duv_manifest.enrich_manifest(core, enriched)
  assert duv_manifest.read_manifest(enriched, duv_features.ALL_FEATURES) == out
  direct = duv_manifest.pair_to_row(
      duv_pairs.pairs_from_file(os.path.join(cache, "pop909", "a.mid"), "pop909/a.mid",
                                "pop909")[0], out[0]["split"], duv_features.ALL_FEATURES)
  assert out[0]["features"] == direct["features"]
  assert sorted(os.listdir(tmp_path)) == ["cache", "e.jsonl", "m.jsonl"]  # no temp files left


def test_scaler_uses_train_rows_only(tmp_path):
  rows = [_row([60, 62], "train", "a"), _row([100, 100, 100], "valid", "b")]
  scaler = duv_manifest.fit_scaler(rows, ["pitch", "vel_norm"])
  np.testing.assert_allclose(scaler.mean, [61, 64 / 127])
  np.testing.assert_allclose(scaler.std, [1, 0])
  np.testing.assert_allclose(scaler.apply(np.array([[63.0, 1.0]])), [[2.0, 1.0 - 64 / 127]])
  path = str(tmp_path / "scaler.json")
  duv_manifest.save_scaler(path, scaler, 2)
  blob = json.load(open(path))
  assert blob["columns"] == ["pitch", "vel_norm"] and blob["constant_columns"] == ["vel_norm"]
  loaded = duv_manifest.load_scaler(path)
  assert loaded.features == ("pitch", "vel_norm")
  np.testing.assert_allclose(loaded.mean, scaler.mean)
  with pytest.raises(duv_manifest.ManifestError, match="no train rows"):
    duv_manifest.fit_scaler(rows[1:], ["pitch"])


def test_phrase_windows():
  rows = [_row(list(range(60, 70)), "train", "a", list(range(10)), duv_features.ALL_FEATURES),
          _row([50, 51, 52], "train", "b", features=duv_features.ALL_FEATURES)]
  w = duv_manifest.phrase_windows(rows, max_len=4, stride=2, features=["pitch", "section_onehot"])
  assert w["inputs"].shape == (5, 4, 1 + len(duv_features.SECTION_LABELS))
  assert w["targets"].shape == (5, 4, 2) and w["mask"].shape == (5, 4)
  assert w["row"].tolist() == [0, 0, 0, 0, 1] and w["start"].tolist() == [0, 2, 4, 6, 0]
  np.testing.assert_array_equal(w["inputs"][3, :, 0], [66, 67, 68, 69])
  np.testing.assert_array_equal(w["targets"][3, :, 0], [6, 7, 8, 9])
  np.testing.assert_array_equal(w["targets"][4, :, 1], [0.5, 0.5, 0.5, 0])
  np.testing.assert_array_equal(w["mask"][4], [True, True, True, False])
  np.testing.assert_array_equal(w["inputs"][4, 3], 0)
  scaler = duv_manifest.fit_scaler(rows, ["pitch"])
  scaled = duv_manifest.phrase_windows(rows, 4, 4, ["pitch"], scaler)
  np.testing.assert_allclose(scaled["inputs"][0, :, 0],
                             (np.arange(60, 64) - scaler.mean[0]) / scaler.std[0], rtol=1e-6)
  with pytest.raises(duv_manifest.ManifestError, match="scaler features"):
    duv_manifest.phrase_windows(rows, 4, 4, ["beat_pos"], scaler)
  with pytest.raises(ValueError, match="stride"):
    duv_manifest.phrase_windows(rows, 4, 5)


def test_read_errors_name_file_line_and_feature(tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(duv_manifest.ManifestError, match="empty.jsonl: manifest has no rows"):
    duv_manifest.read_manifest(str(empty))
  good = json.dumps(_row([60] * 3, "train", "a"))
  bad = tmp_path / "bad.jsonl"
  bad.write_text(good + "\n{not json\n")
  with pytest.raises(duv_manifest.ManifestError, match="bad.jsonl:2: not valid JSON"):
    duv_manifest.read_manifest(str(bad))
  with pytest.raises(duv_manifest.MissingFeatureError,
                     match=r"bad.jsonl:1 \(file 'a.mid'\): no feature 'swing_hint'"):
    duv_manifest.read_manifest(str(bad), ["pitch", "swing_hint"])
  short = json.loads(good)
  short["targets"]["velocity"] = [80]
  with pytest.raises(duv_manifest.ManifestError, match="targets.velocity has 1 values for 3"):
    duv_manifest.phrase_windows([short], 4, 4)
  with pytest.raises(duv_manifest.MissingFeatureError, match="row 0 .*'strum_dir_hint'"):
    duv_manifest.phrase_windows([json.loads(good)], 4, 4, ["strum_dir_hint"])
  with pytest.raises(duv_manifest.ManifestError, match="empty manifest"):
    duv_manifest.write_manifest(str(tmp_path / "none.jsonl"), [])


def test_missing_cache_says_how_to_fetch(tmp_path):
  with pytest.raises(duv_manifest.PerformanceCacheMissingError,
                     match="scripts/fetch_performances.sh"):
    duv_manifest.cache_files(str(tmp_path / "nowhere"), ["maestro"])


def test_corrupt_midi_in_cache_names_it(cache):
  with open(os.path.join(cache, "maestro", "broken.mid"), "wb") as f:
    f.write(b"MThd\x00\x00\x00\x06garbage")
  with pytest.raises(duv_pairs.CorruptMidiError, match="broken.mid"):
    duv_manifest.build_rows(cache, ["maestro"], SMALL, 0.5)


def test_build_dataset_end_to_end(cache, tmp_path):
  out = str(tmp_path / "out")
  config = duv_build.BuildConfig(cache_dir=cache, out_dir=out, sources=("pop909", "maestro"),
                                 filters=SMALL, valid_fraction=0.5, max_len=8, stride=4)
  report = duv_build.build_duv_dataset(config)
  splits = sorted({r["split"] for r in duv_manifest.read_manifest(
      os.path.join(out, "duv_manifest_enriched.jsonl"), duv_features.ALL_FEATURES)})
  assert sorted(os.listdir(out)) == sorted(
      ["duv_manifest.jsonl", "duv_manifest_enriched.jsonl", "duv_scaler.json",
       "duv_report.json"] + [f"duv_windows_{s}.npz" for s in splits])
  assert report["filters_removed_tracks"]["min_notes"] == 1
  windows = np.load(os.path.join(out, "duv_windows_train.npz"))
  assert windows["inputs"].shape[1:] == (8, len(windows["columns"]))
  scaler = json.load(open(os.path.join(out, "duv_scaler.json")))
  assert list(windows["columns"]) == scaler["columns"]
  assert report == json.load(open(os.path.join(out, "duv_report.json")))


def test_baselines_on_hand_built_rows():
  rows = [_row([60] * 4, "train", "a", velocity=[60, 80, 60, 80]),
          _row([60] * 2, "valid", "b", velocity=[50, 90])]
  held = duv_baselines.heldout_baselines(rows)
  assert held["train_mean_velocity"] == 70
  assert held["by_source"]["pop909"]["velocity_mae_train_mean"] == 20
  assert held["by_source"]["pop909"]["dur_beats_mae_deadpan"] == 0.5  # 1 beat written, 0.5 played
  lopo = duv_baselines.leave_one_piece_out_baselines(rows)["all"]
  assert lopo["velocity_mae_others_mean"] == pytest.approx((10 * 4 + 20 * 2) / 6, abs=1e-3)
  assert lopo["velocity_mae_own_mean_oracle"] == pytest.approx((10 * 4 + 20 * 2) / 6, abs=1e-3)


@pytest.mark.skipif(not os.path.exists(os.path.join(REAL_CACHE, "FETCHED")),
                    reason=f"real performances not fetched into {REAL_CACHE}: run "
                           f"`bash scripts/fetch_performances.sh`")
def test_real_performances(tmp_path):
  config = duv_build.BuildConfig(cache_dir=REAL_CACHE, out_dir=str(tmp_path), max_len=256,
                                 stride=256)
  report = duv_build.build_duv_dataset(config)
  rows = duv_manifest.read_manifest(os.path.join(str(tmp_path), "duv_manifest_enriched.jsonl"),
                                    duv_features.ALL_FEATURES)
  by_source = {s: [r for r in rows if r["source"] == s] for s in ("maestro", "pop909", "mozart")}
  assert {s: len(v) for s, v in by_source.items()} == {"maestro": 10, "pop909": 4, "mozart": 1}
  assert {s: sum(r["n_notes"] for r in v) for s, v in by_source.items()} == {
      "maestro": 101901, "pop909": 6790, "mozart": 218}
  assert all(not r["grid_is_real"] for r in by_source["maestro"])
  assert all(r["grid_is_real"] for r in by_source["pop909"] + by_source["mozart"])
  assert min(r["grid_fit"] for r in by_source["pop909"]) > 0.45
  for row in rows:
    velocity = np.asarray(row["targets"]["velocity"])
    assert velocity.min() >= 1 and velocity.max() <= 127 and velocity.std() > 5
    assert np.all(np.asarray(row["targets"]["dur_beats"]) > 0)
  mozart = by_source["mozart"][0]
  assert mozart["notes"]["onset_beats"][:3] == [0.0, 0.0, 0.25]  # the score, as written
  assert report["baselines"]["by_source"]["all"]["pieces"] >= 1
