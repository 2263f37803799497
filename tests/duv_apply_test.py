"""Humanising a PrettyMIDI: what must never change, what the track and protection rules select,
adapters that are applied (or refused), windowed prediction, and the humanize program."""

import io
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pretty_midi
import pytest

from lora_jax import lora
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.duv import apply, bundle, predict
from lora_jax.models.phrase_transformer import PhraseTransformer, PhraseTransformerConfig

_ROOT = pathlib.Path(__file__).parents[1]
CONFIG = PhraseTransformerConfig(n_features=17, d_model=32, n_heads=4, n_layers=2, d_ff=48,
                                 max_len=16, dropout=0.0)  # 16 notes: long tracks take windows
TARGETS = ("attn.q_proj", "attn.v_proj", "attn.out_proj", "ff.in", "ff.out")


def _track(name, program, n, seed, is_drum=False, pitch_lo=48):
  rng = np.random.default_rng(seed)
  inst = pretty_midi.Instrument(program, is_drum=is_drum, name=name)
  t = 0.0
  for _ in range(n):
    dur = float(rng.choice([0.125, 0.25, 0.5]))
    inst.notes.append(pretty_midi.Note(int(rng.integers(40, 110)), int(rng.integers(pitch_lo, 80)),
                                       t, t + dur))
    t += float(rng.choice([0.125, 0.25, 0.5]))
  return inst


def _song(protected=True) -> pretty_midi.PrettyMIDI:
  pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
  piano = _track("Piano", 0, 40, 1)
  if protected:
    piano.notes.insert(5, pretty_midi.Note(100, 64, 1.0, 1.01))  # a 10 ms trigger
    piano.notes.insert(9, pretty_midi.Note(90, 12, 1.5, 2.0))  # a key switch (C0)
  piano.control_changes.append(pretty_midi.ControlChange(64, 127, 0.5))
  pm.instruments = [piano, _track("Lead Guitar", 27, 25, 2), _track("Drums", 0, 20, 3, True, 36),
                    _track("Bass", 33, 18, 4, pitch_lo=28)]
  return pm


def _scaler(pm) -> duv_manifest.Scaler:
  names = duv_features.ALL_FEATURES
  mats = []
  for inst in pm.instruments:
    f = duv_features.instrument_features(pm, inst, names)
    mats.append(np.concatenate([f[k].reshape(len(inst.notes), -1) for k in names], axis=1))
  x = np.concatenate(mats)
  return duv_manifest.Scaler(names, x.mean(0), x.std(0))


def _params(seed):
  """Random base weights, the duration head too (it starts at zero: durations as written)."""
  x = np.zeros((1, 4, CONFIG.n_features), np.float32)
  params = jax.device_get(PhraseTransformer(CONFIG).init(
      jax.random.key(seed), x, np.ones((1, 4), bool), np.ones((1, 4), np.float32))["params"])
  kernel = params["dur_head"]["kernel"]
  params["dur_head"]["kernel"] = 0.3 * np.random.default_rng(seed).normal(
      size=kernel.shape).astype(np.float32)
  return params


def _adapter_record(params, seed, name="piano", family=bundle.MODEL_FAMILY):
  spec = lora.LoraSpec(rank=4, alpha=8.0, target_modules=TARGETS)
  adapter = lora.init_adapter(lora.resolve(spec, params), spec, jax.random.key(seed))
  leaves, treedef = jax.tree.flatten(adapter.params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]  # B != 0
  adapter = adapter.replace(params=jax.tree.unflatten(treedef, leaves))
  return lora.AdapterRecord(adapter, spec, lora.fingerprint(params), family, name)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("duv_model")
  params = _params(0)
  bundle.save_bundle(str(folder), params, CONFIG, _scaler(_song()))
  lora.save_adapter(str(folder / "piano.lora"), _adapter_record(params, 5))
  return folder


@pytest.fixture(scope="module")
def base(model_dir):
  return bundle.load_model(str(model_dir))


def _notes(pm):
  return [[(n.velocity, n.pitch, n.start, n.end) for n in inst.notes] for inst in pm.instruments]


def _midi_bytes(pm) -> bytes:
  buffer = io.BytesIO()
  pm.write(buffer)
  return buffer.getvalue()


def test_intensity_zero_is_bit_identical(model_dir):
  pm = _song()
  out = apply.apply_duv_to_pretty_midi(pm, str(model_dir), intensity=0.0, include_drums=True)
  assert out is not pm and out.instruments[0] is not pm.instruments[0]
  assert _notes(out) == _notes(pm)
  for a, b in zip(out.instruments, pm.instruments):
    assert [type(n.end) for n in a.notes] == [type(n.end) for n in b.notes]
  assert _midi_bytes(out) == _midi_bytes(pm)


def test_full_intensity_keeps_count_order_pitches_and_starts(base):
  pm = _song()
  before = _notes(pm)
  out, report = apply.humanize(pm, base, 1.0)
  assert _notes(pm) == before  # the input is not touched
  after = _notes(out)
  assert [len(t) for t in after] == [len(t) for t in before]
  for old_track, new_track in zip(before, after):
    assert [(p, s) for _, p, s, _ in new_track] == [(p, s) for _, p, s, _ in old_track]
    assert all(1 <= v <= 127 and e > s for v, _, s, e in new_track)
  assert report.tracks == ("Piano", "Lead Guitar", "Bass")
  assert report.notes == 40 + 25 + 18 and report.protected == 2
  assert report.velocity_changed > 0.5 * report.notes
  assert sum(a[3] != b[3] for a, b in zip(after[0], before[0])) > 30  # durations move too
  assert out.instruments[0].control_changes[0].value == 127
  assert out.instruments[0].control_changes[0] is not pm.instruments[0].control_changes[0]


def test_half_intensity_lies_between(base):
  pm = _song()
  full = _notes(apply.humanize(pm, base, 1.0)[0])[1]
  half = _notes(apply.humanize(pm, base, 0.5)[0])[1]
  for (v0, _, _, e0), (v1, _, _, e1), (vh, _, _, eh) in zip(_notes(pm)[1], full, half):
    assert min(v0, v1) - 1 <= vh <= max(v0, v1) + 1
    np.testing.assert_allclose(eh, (e0 + e1) / 2, rtol=1e-9)


def test_drums_left_alone_unless_asked(base):
  pm = _song()
  out, _ = apply.humanize(pm, base, 1.0)
  assert _notes(out)[2] == _notes(pm)[2]
  out, report = apply.humanize(pm, base, 1.0, include_drums=True)
  assert _notes(out)[2] != _notes(pm)[2] and "Drums" in report.tracks


def test_include_and_exclude(base):
  pm = _song()
  out, report = apply.humanize(pm, base, 1.0, include_regex=r"(?i)guitar")
  changed = [a != b for a, b in zip(_notes(out), _notes(pm))]
  assert changed == [False, True, False, False] and report.tracks == ("Lead Guitar",)
  out, report = apply.humanize(pm, base, 1.0, exclude_regex=r"^(Piano|Bass)$")
  changed = [a != b for a, b in zip(_notes(out), _notes(pm))]
  assert changed == [False, True, False, False]
  with pytest.raises(apply.TrackSelectionError, match=r"'violin' matches no track; tracks "
                                                      r"are 0:'Piano', 1:'Lead Guitar', "
                                                      r"2:'Drums' \(drums\)"):
    apply.humanize(pm, base, 1.0, include_regex="violin")
  with pytest.raises(apply.TrackSelectionError, match="no track left to humanise"):
    apply.humanize(pm, base, 1.0, include_regex="Drums")
  with pytest.raises(apply.TrackSelectionError, match=r"bad include regex '\('"):
    apply.humanize(pm, base, 1.0, include_regex="(")
  with pytest.raises(ValueError, match=r"intensity 1.5 is not in \[0, 1\]"):
    apply.humanize(pm, base, 1.5)


def test_protected_notes_unchanged_and_unseen(base):
  with_protected, without = _song(True), _song(False)
  out, _ = apply.humanize(with_protected, base, 1.0)
  piano_in, piano_out = _notes(with_protected)[0], _notes(out)[0]
  assert piano_out[5] == piano_in[5] and piano_out[9] == piano_in[9]
  # The model never saw them: every other note comes out as if they were not there.
  out_without, _ = apply.humanize(without, base, 1.0)
  others = [n for i, n in enumerate(piano_out) if i not in (5, 9)]
  assert others == _notes(out_without)[0]
  # Protection is configurable: with none, both notes are humanised.
  out, report = apply.humanize(with_protected, base, 1.0,
                               protection=apply.Protection(0.0, 0))
  assert report.protected == 0 and _notes(out)[0][9] != piano_in[9]


def test_adapter_is_applied_and_changes_the_output(model_dir, base):
  pm = _song()
  adapted_model = bundle.load_model(str(model_dir / "piano.lora"))
  assert adapted_model.adapter is not None and adapted_model.fingerprint == base.fingerprint
  adapted = _notes(apply.apply_duv_to_pretty_midi(pm, str(model_dir / "piano.lora")))
  plain = _notes(apply.apply_duv_to_pretty_midi(pm, str(model_dir)))
  assert adapted != plain
  diffs = [abs(a[0] - b[0]) for a, b in zip(adapted[0], plain[0])]
  assert np.mean(diffs) > 1.0, diffs
  # The same loaded model without its adapter is the base, exactly.
  assert _notes(apply.humanize(pm, adapted_model, 1.0, use_adapter=False)[0]) == plain


def test_adapters_that_do_not_fit_are_errors(model_dir, tmp_path):
  for name in (bundle.PARAMS_FILE, bundle.CONFIG_FILE, bundle.SCALER_FILE):
    (tmp_path / name).write_bytes((model_dir / name).read_bytes())
  other_base = _params(1)  # same shapes, other weights: another base
  lora.save_adapter(str(tmp_path / "other.lora"), _adapter_record(other_base, 2, "other"))
  with pytest.raises(bundle.BundleError, match="was trained on base"):
    bundle.load_model(str(tmp_path / "other.lora"))
  bigger = PhraseTransformerConfig(**{**CONFIG.__dict__, "d_ff": 64})
  big_params = jax.device_get(PhraseTransformer(bigger).init(
      jax.random.key(0), np.zeros((1, 4, 17), np.float32), np.ones((1, 4), bool),
      np.ones((1, 4), np.float32))["params"])
  lora.save_adapter(str(tmp_path / "big.lora"), _adapter_record(big_params, 3, "big"))
  with pytest.raises(bundle.BundleError, match=r"ff.in is 32x64 but the base kernel is 32x48"):
    bundle.load_model(str(tmp_path / "big.lora"))
  lm = _adapter_record(_params(0), 4, "lm", family="music_lm")
  lora.save_adapter(str(tmp_path / "lm.lora"), lm)
  with pytest.raises(bundle.BundleError, match="is for model family 'music_lm'"):
    bundle.load_model(str(tmp_path / "lm.lora"))
  (tmp_path / "junk.lora").write_bytes(b"not an adapter")
  with pytest.raises(bundle.BundleError, match="junk.lora is not a safetensors adapter"):
    bundle.load_model(str(tmp_path / "junk.lora"))
  with pytest.raises(bundle.BundleError, match="neither a DUV bundle folder"):
    bundle.load_model(str(tmp_path / bundle.PARAMS_FILE))


def test_bundle_files_are_checked(model_dir, tmp_path):
  for name in (bundle.PARAMS_FILE, bundle.SCALER_FILE):
    (tmp_path / name).write_bytes((model_dir / name).read_bytes())
  (tmp_path / bundle.CONFIG_FILE).write_text('{"d_model": 32, "colour": "red", '
                                             '"bundle_version": 2}')
  with pytest.raises(bundle.BundleError, match=r"unknown fields \['colour'\], missing fields"):
    bundle.load_model(str(tmp_path))
  fields = {k: v for k, v in CONFIG.__dict__.items() if k != "dtype"}
  (tmp_path / bundle.CONFIG_FILE).write_text(json.dumps(fields))  # no bundle_version: version 1
  with pytest.raises(bundle.BundleError, match="is a version 1 DUV bundle, this lora_jax reads "
                                               "version 2"):
    bundle.load_model(str(tmp_path))
  big = {**fields, "d_ff": 64, "bundle_version": bundle.BUNDLE_VERSION}
  (tmp_path / bundle.CONFIG_FILE).write_text(json.dumps(big))
  with pytest.raises(ValueError, match="shape mismatch"):
    bundle.load_model(str(tmp_path))


def test_windows_cover_every_note_with_context():
  for n in (1, 15, 16, 17, 40, 100, 1000):
    w, starts, where = predict.windows(n, 16)
    pos = where[:, 1]
    assert w == 16  # MIN_WINDOW is 16, so every track here takes 16-note windows
    assert np.all(starts[where[:, 0]] + pos == np.arange(n))
    assert np.all((pos >= 0) & (pos < w)) and starts[-1] + w >= n
    if n > w:  # inner notes sit away from their window's edges
      inner = (np.arange(n) >= w // 8) & (np.arange(n) < n - w // 8)
      assert np.all((pos[inner] >= w // 8) & (pos[inner] < w - w // 8))
  assert predict.window_length(3, 256) == 16 and predict.window_length(200, 256) == 256
  assert predict._batches(37, 16) == [(0, 16), (16, 16), (32, 4), (36, 1)]


def test_predict_tracks_of_many_lengths_match_one_window_runs(base):
  rng = np.random.default_rng(0)
  tracks = [rng.normal(size=(n, 17)).astype(np.float32) for n in (3, 16, 9)]
  written = [rng.choice([0.25, 0.5, 1.0], size=n).astype(np.float32) for n in (3, 16, 9)]
  together = predict.predict(base, tracks, written)
  forward = jax.jit(lambda x, m, w: base.module.apply({"params": base.params}, x, m, w))
  for x, w, (vel, dur) in zip(tracks, written, together):  # each alone, one masked 16-note phrase
    out = forward(np.pad(x, ((0, 16 - len(x)), (0, 0)))[None], (np.arange(16) < len(x))[None],
                  np.pad(w, (0, 16 - len(w)))[None])
    np.testing.assert_allclose(vel, np.asarray(out["velocity"][0, :len(x)]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dur, np.asarray(out["dur_beats"][0, :len(x)]), rtol=1e-5,
                               atol=1e-6)
  with pytest.raises(ValueError, match=r"track 1 has 16 notes but written durations of shape"):
    predict.predict(base, tracks, [written[0], written[0], written[2]])


def _humanize(*args):
  return subprocess.run([sys.executable, str(_ROOT / "launch" / "humanize_midi.py"), *args],
                        cwd=_ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_humanizes_and_fails_with_one_line(model_dir, tmp_path):
  good = tmp_path / "song.mid"
  _song().write(str(good))
  out = tmp_path / "out.mid"
  result = _humanize(f"--input={good}", f"--output={out}", f"--model={model_dir / 'piano.lora'}",
                     "--intensity=0.8", "--exclude=(?i)bass")
  assert result.returncode == 0, result.stderr
  assert "humanised 65 notes of 2 tracks (2 protected" in result.stdout
  written = pretty_midi.PrettyMIDI(str(out))
  assert [len(i.notes) for i in written.instruments] == [42, 25, 20, 18]

  bad = tmp_path / "corrupt.mid"
  bad.write_bytes(b"MThd\x00\x00\x00\x06garbage")
  result = _humanize(f"--input={bad}", f"--output={tmp_path / 'x.mid'}", f"--model={model_dir}")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("humanize: error: ") and "corrupt.mid" in lines[0]
  assert not (tmp_path / "x.mid").exists()


def test_cli_draws_the_pianoroll_and_refuses_bad_passages(model_dir, tmp_path):
  image = pytest.importorskip("PIL.Image")  # matplotlib's own dependency
  song = tmp_path / "song.mid"
  _song().write(str(song))
  png = tmp_path / "roll.png"
  result = _humanize(f"--input={song}", f"--output={tmp_path / 'out.mid'}", f"--model={model_dir}",
                     "--deadpan", f"--pianoroll={png}", "--pianoroll-seconds=0.5,3")
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().endswith(f"piano roll -> {png}")
  with image.open(png) as roll:
    roll.verify()  # a whole, readable PNG
    assert roll.format == "PNG" and roll.size == (1200, 600)
  velocities = {n.velocity for n in pretty_midi.PrettyMIDI(str(tmp_path / "out.mid")).instruments[
      2].notes}  # drums, left alone: deadpan
  assert velocities == {64}

  for seconds, message in (("3,1", "need 0 <= START < END"),
                           ("100,101", "no notes between 100.0 s and 101.0 s to draw")):
    result = _humanize(f"--input={song}", f"--output={tmp_path / 'bad.mid'}",
                       f"--model={model_dir}", f"--pianoroll={tmp_path / 'bad.png'}",
                       f"--pianoroll_seconds={seconds}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("humanize: error: ") and message in lines[0]
  assert not (tmp_path / "bad.mid").exists() and not (tmp_path / "bad.png").exists()


def test_pianoroll_png(base, tmp_path):
  pytest.importorskip("matplotlib")
  from lora_jax.duv import pianoroll
  pm = _song()
  out, _ = apply.humanize(pm, base, 1.0)
  path = tmp_path / "roll.png"
  pianoroll.draw(pm, out, str(path), 0.0, 4.0, title="test")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
  with pytest.raises(ValueError, match="no notes between 100.0 s and 101.0 s"):
    pianoroll.draw(pm, out, str(path), 100.0, 101.0)


def test_cached_loads_follow_the_files(model_dir, tmp_path):
  for name in (bundle.PARAMS_FILE, bundle.CONFIG_FILE, bundle.SCALER_FILE, "piano.lora"):
    (tmp_path / name).write_bytes((model_dir / name).read_bytes())
  path = str(tmp_path / "piano.lora")
  first = bundle.load_model_cached(path)
  assert bundle.load_model_cached(path) is first
  lora.save_adapter(path, _adapter_record(_params(0), 9))  # retrained: a new file
  second = bundle.load_model_cached(path)
  assert second is not first and second.adapter is not None
