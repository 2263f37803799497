"""Audio analysis: the rendered truth set, tempo, key, energy and the refusal of bad files.

Renders are small (one short piece per genre) so that the file stays well under a minute; the
accuracy on the whole set is bench/audio_analysis_eval.py's job.
"""
import os

import numpy as np
import pytest
import soundfile

from lora_jax.audio import analysis, energy, eval_set, key, load, scoring, stems, tempo

SR = load.SAMPLE_RATE


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("eval_set"))
  plans = tuple(eval_set.GenrePlan(p.genre, 1, p.programs, p.bpm_range)
                for p in eval_set.DEFAULT_PLANS)
  return out, eval_set.build(out, plans, max_seconds=12.0)


def test_eval_set_truth_is_written_and_renders_are_cached(tiny_set):
  out, entries = tiny_set
  assert [e.genre for e in entries] == [p.genre for p in eval_set.DEFAULT_PLANS]
  assert eval_set.read_manifest(out) == entries
  for e in entries:
    info = soundfile.info(os.path.join(out, e.wav))
    assert info.samplerate == SR and 8 < info.duration < 20  # a 12 s cut plus the longest note and its release
    lo, hi = next(p.bpm_range for p in eval_set.DEFAULT_PLANS if p.genre == e.genre)
    assert lo <= e.truth.bpm <= hi and e.truth.mode in ("major", "minor")
  stamp = os.path.getmtime(os.path.join(out, entries[0].wav))
  plans = tuple(eval_set.GenrePlan(p.genre, 1, p.programs, p.bpm_range)
                for p in eval_set.DEFAULT_PLANS)
  assert eval_set.build(out, plans, max_seconds=12.0) == entries
  assert os.path.getmtime(os.path.join(out, entries[0].wav)) == stamp  # reused, not rendered


def test_a_fitting_set_leaves_out_the_evaluation_pieces(tiny_set, tmp_path):
  _, entries = tiny_set
  plans = tuple(eval_set.GenrePlan(p.genre, 1, p.programs, p.bpm_range)
                for p in eval_set.DEFAULT_PLANS[:2])
  other = eval_set.build(str(tmp_path), plans, max_seconds=4.0,
                         exclude=frozenset(e.id for e in entries))
  assert [e.genre for e in other] == [p.genre for p in plans]
  assert not {e.id for e in other} & {e.id for e in entries}


def test_analysis_finds_the_rendered_tempo_and_key(tiny_set):
  out, entries = tiny_set
  key_scores = []
  for e in entries:
    a = analysis.analyze(os.path.join(out, e.wav))
    assert scoring.tempo_correct(a.tempo.bpm, e.truth.bpm, octaves=True), (e.id, a.tempo, e.truth)
    key_scores.append(scoring.mirex_key_score(a.key.tonic, a.key.mode, e.truth.tonic,
                                              e.truth.mode))
    assert len(a.key.scores) == 24 and a.key.runner_up != a.key.name
  # One 12 s flute melody (Ab major, heard as Eb minor) is wrong; the set's mean is the bench's.
  assert np.mean(key_scores) >= 0.7, key_scores


def _clicks(bpm: float, seconds: float) -> np.ndarray:
  y = np.zeros(int(seconds * SR), np.float32)
  burst = (np.random.default_rng(0).standard_normal(400) * np.hanning(400)).astype(np.float32)
  for t in np.arange(0, seconds - 0.1, 60 / bpm):
    y[int(t * SR):int(t * SR) + 400] += burst
  return 0.5 * y


@pytest.mark.parametrize("bpm", [72.0, 128.0])
def test_tempo_of_a_click_track(bpm):
  t = tempo.estimate(_clicks(bpm, 12.0), SR)
  assert scoring.tempo_correct(t.bpm, bpm), t
  assert 0 <= t.confidence < 1


def test_key_of_a_minor_cadence():
  # A minor: i - iv - V - i, each chord a second, in sine tones.
  chords = [(57, 60, 64), (57, 62, 65), (56, 59, 64), (57, 60, 64)]
  time = np.arange(SR) / SR
  y = np.concatenate([sum(np.sin(2 * np.pi * 440 * 2 ** ((p - 69) / 12) * time) for p in c)
                      for c in chords]).astype(np.float32) * 0.2
  k = key.estimate(y, SR)
  assert k.name == "A minor", (k.name, k.runner_up)


def test_energy_classes_follow_the_measured_levels():
  noise = np.random.default_rng(1).standard_normal(SR * 3).astype(np.float32)
  loud, quiet = energy.measure(0.5 * noise, SR), energy.measure(0.05 * noise, SR)
  assert loud.level_dbfs - quiet.level_dbfs == pytest.approx(20.0, abs=0.1)
  split = energy.classes([-30.0, -20.0, -10.0, -25.0, -15.0, -5.0])
  assert split.labels == ("low", "medium", "high", "low", "medium", "high")
  assert split.low_below < split.high_from and "6 files" in split.basis


def test_mirex_weights():
  assert scoring.mirex_key_score(0, "major", 0, "major") == 1.0
  assert scoring.mirex_key_score(7, "major", 0, "major") == 0.5  # G for C
  assert scoring.mirex_key_score(9, "minor", 0, "major") == 0.3  # A minor for C major
  assert scoring.mirex_key_score(0, "major", 9, "minor") == 0.3  # C major for A minor
  assert scoring.mirex_key_score(0, "minor", 0, "major") == 0.2
  assert scoring.mirex_key_score(1, "major", 0, "major") == 0.0


def _write(path, data, rate=SR, subtype="PCM_16"):
  soundfile.write(str(path), data, rate, subtype=subtype)
  return str(path)


def test_bad_files_are_refused_by_name(tmp_path):
  tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(SR * 2) / SR).astype(np.float32)
  not_audio = tmp_path / "notes.wav"
  not_audio.write_text("not audio")
  nan = tone.copy()
  nan[100] = np.nan
  cases = {
      str(not_audio): "not readable as audio",
      _write(tmp_path / "silence.wav", np.zeros(SR * 2, np.float32)): "silent",
      _write(tmp_path / "click.wav", tone[:100]): "ms is shorter than",
      _write(tmp_path / "nan.wav", nan, subtype="FLOAT"): "1 samples are NaN",
      _write(tmp_path / "long.wav", np.tile(tone, 4)): "longer than the limit",
  }
  limits = load.Limits(min_seconds=1.0, max_seconds=6.0)
  for path, reason in cases.items():
    with pytest.raises(load.BadAudio, match=reason) as raised:
      load.load(path, limits)
    assert path in str(raised.value) and "\n" not in str(raised.value)


def test_any_rate_and_channel_count_is_read(tmp_path):
  seconds = 2.0
  for rate, channels in ((8000, 1), (44100, 2), (96000, 6)):
    t = np.arange(int(rate * seconds)) / rate
    data = np.stack([0.2 * np.sin(2 * np.pi * 440 * t)] * channels, axis=1)
    audio = load.load(_write(tmp_path / f"{rate}_{channels}.wav", data, rate))
    assert audio.sample_rate == SR and audio.source_rate == rate
    assert audio.source_channels == channels and audio.seconds == pytest.approx(seconds, abs=1e-3)


def test_hpss_separates_a_tone_from_clicks():
  t = np.arange(SR * 4) / SR
  tone = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
  clicks = _clicks(120.0, 4.0)
  clicks *= np.sqrt(np.mean(tone ** 2) / np.mean(clicks ** 2))
  mix = tone + clicks
  got = stems.hpss(mix).parts
  assert stems.si_sdr(got["harmonic"], tone) > stems.si_sdr(mix, tone) + 6
  assert stems.si_sdr(got["percussive"], clicks) > stems.si_sdr(mix, clicks) + 6
  assert stems.si_sdr(tone, tone) > 100
