"""launch/prepare_song_data.py and the default song codec, on seconds of synthetic audio.

Songs of tones and clicks at 8 kHz go from WAV + metadata.jsonl to token files through the
launcher (bad rows reported by name, the rest prepared, a second run resuming), and the prepared
folder is read by launch/train_song.py's reader. The codec round-trips its file and decodes a
tone back to audio at that tone's pitch.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import yaml

from lora_jax.data.song import token_file
from lora_jax.families import song_lm as song_family
from lora_jax.train import config as config_lib
from lora_jax.song import codec as codec_lib
from lora_jax.song import codec_quality
from lora_jax.song import prepare as song_prepare
from lora_jax.song import prepare_audio
from lora_jax.song import separate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 8000
MODEL = dict(code_size=64, dim=32, intermediate_size=64, num_heads=4, num_layers=1,
             num_layers_sub=1, text_vocab_size=272, frames=16, lyrics_len=40, style_len=16,
             delays=[0, 2, 2])


def _song(seed: int, seconds: float = 2.0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * RATE)) / RATE
  pitch = 220.0 * 2 ** (rng.integers(0, 12, 4) / 12)
  tone = sum(0.2 * np.sin(2 * np.pi * f * t) * (np.floor(t * 2) % 4 == i)
             for i, f in enumerate(pitch))
  clicks = np.zeros_like(t)
  clicks[::RATE // 4] = 0.8
  return (tone + np.convolve(clicks, rng.standard_normal(80) * 0.1, "same")).astype(np.float32)


def _dataset(tmp_path):
  wavs = tmp_path / "wavs"
  wavs.mkdir()
  rows = []
  for i in range(5):
    soundfile.write(wavs / f"song{i}.wav", _song(i), RATE)
    rows.append({"path": f"wavs/song{i}.wav", "gt_lyric": "[verse] la la [chorus] oh",
                 "descriptions": "folk, tones", "idx": f"song{i}"})
  (wavs / "broken.wav").write_bytes(b"RIFF not really a wave")
  rows += [{"path": "wavs/gone.wav", "gt_lyric": "[verse] a", "descriptions": "x", "idx": "gone"},
           {"path": "wavs/broken.wav", "gt_lyric": "[verse] a", "descriptions": "x",
            "idx": "broken"},
           {"path": "wavs/song1.wav", "gt_lyric": "  ", "descriptions": "x", "idx": "blank"},
           {"path": "wavs/song1.wav", "gt_lyric": "[verse] a", "descriptions": "x",
            "idx": "song0"},
           {"path": "wavs/song1.wav", "gt_lyric": "[rap] yo", "descriptions": "x",
            "idx": "badtag"}]
  (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = {"paths": {"metadata_path": "metadata.jsonl", "prepared_data_dir": "prepared",
                      "output_dir": "out"},
            "data": {"sample_rate": RATE, "n_mels": 16, "separator": "hpss"},
            "model": MODEL}
  (tmp_path / "train_config.yaml").write_text(yaml.safe_dump(config))
  return tmp_path / "train_config.yaml"


def _launch(cwd):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "prepare_song_data.py"),
                         "--config=train_config.yaml",
                         f"--defaults={os.path.join(ROOT, 'configs', 'song_lm.py')}"],
                        cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_wavs_to_token_files_report_bad_rows_resume_and_train(tmp_path, monkeypatch):
  _dataset(tmp_path)
  done = _launch(tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  for name in ("(idx gone): audio file wavs/gone.wav not found", "(idx broken): cannot decode",
               "(idx blank): empty lyric", "duplicate idx 'song0'",
               "(idx badtag): unknown section tag '[rap]'"):
    assert name in done.stderr, (name, done.stderr[-3000:])
  assert "fitted codec prepared/audio_codec.safetensors; 5 songs tokenized" in done.stderr
  prepared = tmp_path / "prepared"
  rows = [json.loads(l) for l in (prepared / "manifest.jsonl").read_text().splitlines()]
  assert [r["idx"] for r in rows] == [f"song{i}" for i in range(5)]
  song = token_file.read(str(tmp_path / rows[0]["token_path"]), code_size=64)
  assert song.codes.shape == (3, 2 * 25) and song.lyrics == "[verse] la la [chorus] oh"
  assert len(np.unique(song.codes[0])) > 4  # the tones and clicks get different codes
  assert not (song.codes[1] == song.codes[2]).all()  # the split gives two different streams
  before = {p.name: p.read_bytes() for p in prepared.glob("*.pt")}

  os.remove(prepared / "song3.pt")  # as if interrupted before this song
  config = yaml.safe_load((tmp_path / "train_config.yaml").read_text())
  config["data"]["num_workers"] = 2  # the rest in worker processes: the same tokens
  (tmp_path / "train_config.yaml").write_text(yaml.safe_dump(config))
  again = _launch(tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "loaded codec prepared/audio_codec.safetensors; 1 songs tokenized, 4 already" in (
      again.stderr)
  assert {p.name: p.read_bytes() for p in prepared.glob("*.pt")} == before

  monkeypatch.chdir(tmp_path)  # the manifest's token paths are relative, as the config's are
  data = song_prepare.prepare("prepared", song_family.SongConfig(**MODEL), "windows",
                              val_fraction=0.3, overlap=2)
  assert data.songs == 5 and not data.problems and data.n_train > 0 and data.n_val > 0


def _edited(tmp_path, edit):
  path = _dataset(tmp_path)
  raw = yaml.safe_load(path.read_text())
  for section, values in edit.items():
    raw[section].update(values)
  path.write_text(yaml.safe_dump(raw))
  return path


@pytest.mark.parametrize("edit, message", [
    ({"data": {"separator": "demucs"}}, "unknown separator 'demucs'; known: hpss, mask"),
    ({"data": {"sample_rate": 22050}}, "sample rate 22050 must be a positive multiple of 100"),
    ({"data": {"n_fft": 512}}, "unknown key data.n_fft"),
    ({"model": {"code_size": 2}}, "code_size 2 leaves no room"),
])
def test_bad_settings_write_nothing(tmp_path, edit, message, monkeypatch):
  path = _edited(tmp_path, edit)
  monkeypatch.chdir(tmp_path)
  defaults = config_lib.load_config_dict(os.path.join(ROOT, "configs", "song_lm.py"))
  with pytest.raises(ValueError, match=re.escape(message)):
    prepare_audio.run(str(path), defaults)
  assert not (tmp_path / "prepared").exists()


def test_the_original_tokenizer_folder_is_one_error_line(tmp_path):
  _edited(tmp_path, {"paths": {"audio_tokenizer_path": "ckpt/third_party/audio_tokenizer/"}})
  done = _launch(tmp_path)
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert "is not a codec .safetensors file" in done.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "prepared").exists()


def test_codec_file_round_trip_and_a_tone_decodes_to_its_pitch(tmp_path):
  songs = [_song(i) for i in range(4)]
  features = {s: [] for s in codec_lib.STREAMS}
  for wave in songs:
    split = separate.harmonic_percussive(wave, RATE)
    for s, w in zip(codec_lib.STREAMS, (wave, *split)):
      features[s].append(codec_lib.log_mel(w, RATE, 32))
  fitted = codec_lib.fit(features, sample_rate=RATE, n_mels=32, separator="hpss", code_size=64)
  fitted.save(str(tmp_path / "codec.safetensors"))
  codec = codec_lib.load(str(tmp_path / "codec.safetensors"))
  assert codec.code_count == 64 and codec.separator == "hpss"
  np.testing.assert_array_equal(codec.encode(songs[0], RATE), fitted.encode(songs[0], RATE))

  t = np.arange(RATE) / RATE
  tone = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
  codes = codec.encode(tone, RATE)
  audio = codec.decode(codes)
  assert audio.shape == (25 * codec.hop,) and np.isfinite(audio).all()
  np.testing.assert_array_equal(audio, codec.decode(codes))  # same codes, same samples
  spectrum = np.abs(np.fft.rfft(audio))
  peak = np.argmax(spectrum) * RATE / len(audio)
  assert abs(peak - 440.0) < 40.0, peak  # pitch from the codebook of the fitted tones
  # A song's round trip is nearer it than another song of the same make is, in mel SNR. (Not in
  # log-spectral distance: these synthetic songs are silent between their few partials, and
  # Griffin-Lim's smeared floor there costs more dB than another song's partials do.)
  song, other = songs[0], songs[1]
  back = codec.decode(codec.encode(song, RATE))
  assert codec_quality.mel_snr(song, back, RATE) > codec_quality.mel_snr(song, other, RATE)

  (tmp_path / "other.safetensors").write_bytes((tmp_path / "codec.safetensors").read_bytes()[:50])
  with pytest.raises(codec_lib.CodecFileError, match="cannot read"):
    codec_lib.load(str(tmp_path / "other.safetensors"))
