"""The vocal/accompaniment separator: its STFT, its family on the loop, the shipped model's
quality on a held-out render, and the wiring that picks it."""

import os
import subprocess
import sys

import librosa
import music21
import numpy as np
import pytest

from configs import separator as separator_config
from lora_jax.audio import stems
from lora_jax.audio.separator import demucs_model, mask_model, spectrum, stem_set
from lora_jax.data.style_packs import corpus
from lora_jax.interop import flax_weights
from lora_jax.song import separate
from lora_jax.train import config as config_lib
from lora_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELD_OUT = "bach/bwv89.6.mxl"  # a piece of the stem set's 'test' split: never trained on


def test_magnitude_is_librosas():
  wave = np.random.default_rng(0).normal(size=(2, 5000)).astype(np.float32)
  got = np.asarray(spectrum.magnitude(wave, 1024, 256))
  want = np.abs(librosa.stft(wave[1], n_fft=1024, hop_length=256, window="hann", center=True,
                             pad_mode="constant")).T
  assert got.shape == (2, *want.shape)
  np.testing.assert_allclose(got[1], want, rtol=1e-4, atol=1e-3)


def test_family_learns_synthetic_stems(tmp_path):
  c = separator_config.get_config("tiny").to_dict()
  c.pop("stems")  # the loop's own config; the stem set is the launcher's
  c["data"].update(synthetic_examples=40, val_fraction=0.2)
  c["training"].update(steps=12, eval_every=12)
  result = loop.train(config_lib.from_config_dict(c), str(tmp_path))
  first = float(open(tmp_path / "metrics.csv").read().splitlines()[1].split(",")[3])  # step 0
  assert result.status == "finished" and result.best_val_loss < 0.8 * first
  assert flax_weights.read_metadata(result.export_path)["model_family"] == "separator"
  mask_model.load(result.export_path)  # the export is what inference loads


@pytest.fixture(scope="module")
def held_out_mix(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("stems"))
  assert stem_set.piece_split(HELD_OUT) == "test"
  root = music21.common.getCorpusFilePath()
  piece = corpus.CorpusPiece(HELD_OUT, "", HELD_OUT, None, "")
  render = stem_set.render_piece(piece, root, "test", out, max_seconds=6.0)
  return stem_set.load_stems(out, render)


@pytest.mark.skipif(not mask_model.WEIGHTS.is_file(), reason="no shipped separator weights")
def test_shipped_model_beats_hpss_on_a_held_out_mix(held_out_mix):
  vocal, accompaniment = held_out_mix
  mix = vocal + accompaniment
  model = mask_model.shipped()
  got = mask_model.separate(model, mix, stem_set.SAMPLE_RATE)
  again = mask_model.separate(model, mix, stem_set.SAMPLE_RATE)
  np.testing.assert_array_equal(got[0], again[0])  # deterministic
  hpss = stems.hpss(mix).parts
  model_scores = [stems.si_sdr(got[0], vocal), stems.si_sdr(got[1], accompaniment)]
  hpss_scores = [stems.si_sdr(hpss["harmonic"], vocal),
                 stems.si_sdr(hpss["percussive"], accompaniment)]
  mix_scores = [stems.si_sdr(mix, vocal), stems.si_sdr(mix, accompaniment)]
  for m, h, x in zip(model_scores, hpss_scores, mix_scores):
    assert m > h + 6 and m > x + 6, (model_scores, hpss_scores, mix_scores)


@pytest.mark.skipif(not mask_model.WEIGHTS.is_file(), reason="no shipped separator weights")
def test_the_stems_path_and_song_preparation_pick_the_model(monkeypatch):
  tone = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050).astype(np.float32) * 0.3
  got = stems.separate(tone)
  assert set(got.parts) == {"vocal", "accompaniment"} and got.separator == mask_model.DESCRIPTION
  assert separate.default_name() == "mask"
  vocal, accompaniment = separate.get("mask")(tone, 24000)  # resampled to 22050 Hz and back
  assert len(vocal) == len(accompaniment) == len(tone)
  # The stems add up to the mix, away from the resampler's edges.
  np.testing.assert_allclose((vocal + accompaniment)[1024:-1024], tone[1024:-1024], atol=2e-3)
  # Without the weights: HPSS, said so.
  monkeypatch.setattr(mask_model, "WEIGHTS", mask_model.WEIGHTS.with_name("absent.safetensors"))
  mask_model.shipped.cache_clear()
  try:
    got = stems.separate(tone)
    assert set(got.parts) == {"harmonic", "percussive"} and got.separator == stems.HPSS
    assert separate.default_name() == "hpss"
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
      separate.get("mask")(tone, 22050)
  finally:
    mask_model.shipped.cache_clear()


def test_other_weights_are_refused_by_name(tmp_path):
  path = str(tmp_path / "other.safetensors")
  flax_weights.save_params({"w": np.zeros(3, np.float32)}, path, {"model_family": "duv"})
  with pytest.raises(mask_model.SeparatorWeightsError, match="model family 'duv'"):
    mask_model.load(path)


def _tiny_demucs_file(path: str) -> None:
  """A small random HTDemucs saved as demucs' own model files are (states.serialize_model's
  keys), so the hook is tested on the real package without weights anyone would download."""
  import fractions
  import torch
  from demucs import htdemucs, states
  torch.manual_seed(0)
  model = htdemucs.HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=16, depth=2,
                            t_layers=1, t_heads=2, dconv_comp=4, dconv_depth=1, nfft=512,
                            segment=fractions.Fraction(2, 1))
  args, kwargs = model._init_args_kwargs
  torch.save({"klass": htdemucs.HTDemucs, "args": args, "kwargs": kwargs,
              "state": states.get_state(model, None, True), "training_args": {}}, path)


@pytest.mark.skipif(not demucs_model.installed(), reason="the demucs package is not installed")
def test_a_users_demucs_model_makes_the_stems(tmp_path):
  path = str(tmp_path / "tiny.th")
  _tiny_demucs_file(path)
  tone = np.sin(2 * np.pi * 330 * np.arange(22050) / 22050).astype(np.float32) * 0.3
  model = demucs_model.load(path)
  got = stems.separate(tone, 22050, model)
  assert set(got.parts) == {"vocal", "accompaniment"}
  assert got.separator.startswith(f"Demucs ({path})")
  assert all(len(p) == len(tone) and np.isfinite(p).all() for p in got.parts.values())
  vocal, _ = separate.get(f"demucs:{path}")(tone, 24000)  # the song preparation's name for it
  assert len(vocal) == len(tone)
  # A pickle carrying anything but the Demucs classes is refused, not run.
  import torch
  torch.save({"klass": pytest.raises}, str(tmp_path / "evil.th"))
  with pytest.raises(demucs_model.DemucsError, match="not a Demucs model file that loads"):
    demucs_model.load(str(tmp_path / "evil.th"))


def test_demucs_without_the_package_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(demucs_model, "installed", lambda: False)
  with pytest.raises(demucs_model.DemucsError, match="demucs package is not installed"):
    stems_out = tmp_path / "out"
    from lora_jax.audio import batch
    batch.run([str(tmp_path)], str(stems_out), split_clips=False, stems=True,
              demucs_weights=str(tmp_path / "model.th"))
  assert not (tmp_path / "out").exists()


def test_the_recipe_trains_exports_and_resumes(tmp_path):
  # The stem windows are written first (the recipe reuses them), so no piece is rendered.
  from lora_jax.families import separator as family_lib
  tiny = config_lib.from_mapping(family_lib.SeparatorConfig,
                                 separator_config.get_config("tiny").model.to_dict(), "model")
  work = tmp_path / "work"
  work.mkdir()
  for split, seed in (("train", 0), ("val", 1)):
    np.savez(work / f"separator_{split}.npz", **family_lib.synthetic(tiny, 16, seed))
  out = tmp_path / "separator.safetensors"
  command = [sys.executable, os.path.join(ROOT, "launch", "train_separator.py"),
             f"--config={os.path.join(ROOT, 'configs', 'separator.py')}:tiny",
             "--config.stems.n_pieces=0", f"--config.stems.dir={tmp_path / 'stems'}",
             f"--config.stems.out={out}", f"--workdir={work}"]
  first = subprocess.run(command, capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-3000:]
  weights = out.read_bytes()
  again = subprocess.run(command, capture_output=True, text=True)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step 4" in again.stderr
  assert out.read_bytes() == weights
  mask_model.load(str(out))
