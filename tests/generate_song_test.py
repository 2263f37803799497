"""launch/generate_song.py end to end, and train_song refusing a run before writing anything.

Seconds of synthetic songs go through prepare_song_data (song_prepare_audio_test's fixture) and
train_song (3 LoRA steps over a random base model.pt, train_song_test's), then a short WAV is
generated from the run's adapter (through the launcher, and in-process with the same seed: the
same bytes), from the adapter merged into a model.pt (the same codes), and with a prompt audio.
The adapter's factorised forward and the merged model give the same logits.
"""

import dataclasses
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
import yaml

from lora_jax import lora, tree_paths
from lora_jax.interop import peft, song_lm_weights
from lora_jax.models.song import delay_pattern
from lora_jax.models.song import lm as song_lm
from lora_jax.song import command
from lora_jax.song import generate
from lora_jax.song import model_record
from lora_jax.song import prepare_audio
from lora_jax.train import config as config_lib
import song_prepare_audio_test
import train_song_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# train_song_test's model (with prompt_audio) in windows of 8 frames: 2 s songs make 8 each.
MODEL = {**train_song_test.MODEL, "frames": 8}
LYRICS = "[verse] la la [chorus] oh"


def _defaults():
  return config_lib.load_config_dict(os.path.join(ROOT, "configs", "song_lm.py"))


def _train_config(tmp_path, **training):
  path = train_song_test._yaml(tmp_path, epochs=1, **training)
  raw = yaml.safe_load(path.read_text())
  raw["model"] = {**MODEL, "use_flash_attn_2": True}
  path.write_text(yaml.safe_dump(raw))
  return path


def _prepared(tmp_path, monkeypatch):
  song_prepare_audio_test._dataset(tmp_path)
  monkeypatch.chdir(tmp_path)  # the fixture's config is relative
  raw = yaml.safe_load((tmp_path / "train_config.yaml").read_text())
  raw["model"] = MODEL
  (tmp_path / "train_config.yaml").write_text(yaml.safe_dump(raw))
  prepare_audio.run("train_config.yaml", _defaults())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("song")
  with pytest.MonkeyPatch.context() as monkeypatch:
    _prepared(tmp_path, monkeypatch)
    train_song_test._base(tmp_path)
    done = command.run(str(_train_config(tmp_path)), _defaults())
  assert done.result.status == "finished" and done.result.step >= 2, done
  return tmp_path


def _request(tmp_path, name, **kw):
  return generate.Request(**{"output": str(tmp_path / "wavs" / name), "lyrics": LYRICS,
                             "description": "folk, tones", "seconds": 0.4, "seed": 3, **kw})


def _wav(path):
  data, rate = soundfile.read(path, dtype="int16")
  return data, rate


def test_adapter_and_merged_model_generate_the_same_song(trained, tmp_path):
  out = trained / "out"
  record = model_record.read(str(out / "checkpoints" / "adapter"), "adapter")
  assert record.codecs and record.codec_path.endswith("audio_codec.safetensors")

  song = generate.generate(_request(tmp_path, "a.wav", run=str(out)))
  data, rate = _wav(song.path)
  hop = rate // 25
  assert rate == song_prepare_audio_test.RATE and 1 <= song.frames <= 10
  assert len(data) == song.frames * hop and np.abs(data).max() > 0
  assert song.codes.shape == (3, 10)

  # The launcher, in a process of its own, with the same seed: the same bytes.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "generate_song.py"),
       f"--adapter={out / 'checkpoints' / 'adapter'}", f"--lyrics={LYRICS}",
       "--description=folk, tones", "--seconds=0.4", "--seed=3",
       f"--output={tmp_path / 'b.wav'}"], capture_output=True, text=True, timeout=600,
      env=env, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert (tmp_path / "b.wav").read_bytes() == (tmp_path / "wavs" / "a.wav").read_bytes()
  other = generate.generate(_request(tmp_path, "c.wav", run=str(out), seed=4))
  assert not np.array_equal(other.codes, song.codes)

  # The adapter over the original's model.pt it was trained from (converted at load): the same.
  via_pt = generate.generate(_request(tmp_path, "f.wav", adapter=str(out / "checkpoints" /
                                                                      "adapter"),
                                      base=str(trained / "base" / "model.pt")))
  np.testing.assert_array_equal(via_pt.codes, song.codes)

  # The adapter merged into its base, written as a whole model.pt: the same codes and bytes.
  config = record.model.lm_config("float32")
  abstract = song_lm.abstract_params(config)
  merged = generate.load_params(record.base, str(out / "checkpoints" / "adapter"), record, 1.0,
                                abstract)
  (tmp_path / "merged").mkdir()
  song_lm_weights.save_model_pt(merged, str(tmp_path / "merged" / "model.pt"))
  shutil.copy(out / "checkpoints" / "adapter" / model_record.NAME, tmp_path / "merged")
  whole = generate.generate(_request(tmp_path, "d.wav", model=str(tmp_path / "merged" /
                                                                   "model.pt")))
  np.testing.assert_array_equal(whole.codes, song.codes)
  assert (tmp_path / "wavs" / "d.wav").read_bytes() == (tmp_path / "wavs" / "a.wav").read_bytes()

  # The merge is what LoRA computes: the factorised forward over the base (never W + BA) gives
  # the merged model's logits, on the sampled song, to float32 rounding.
  base = song_lm_weights.load_model_pt(str(trained / "base" / "model.pt"), abstract)
  adapter = peft.import_peft(str(out / "checkpoints" / "adapter"), base, model_family="song_lm")
  trained_b = [v for k, v in tree_paths.flatten(adapter.adapter.params).items()
               if k[-1] == "lora_B"]
  assert max(float(np.abs(np.asarray(b)).max()) for b in trained_b) > 0  # B moved off zero
  seq = delay_pattern.build(jnp.asarray(np.minimum(song.codes, config.eos_token))[None],
                            MODEL["delays"], config.special_token)
  request = _request(tmp_path, "x.wav", run=str(out))
  from lora_jax.data.song import text as song_text  # pylint: disable=g-import-not-at-top
  cond, _ = generate._conditions(request, record.model, song_text.ByteText(), None)
  factorised = lora.apply(song_lm.SongLM(config), base, [lora.Active(adapter.adapter)], seq, cond)
  folded = song_lm.SongLM(config).apply({"params": merged}, seq, cond)
  plain = song_lm.SongLM(config).apply({"params": base}, seq, cond)
  np.testing.assert_allclose(np.asarray(folded), np.asarray(factorised), atol=2e-5)
  assert np.abs(np.asarray(plain) - np.asarray(folded)).max() > 1e-3  # the adapter matters

  # A reference audio: the prompt condition takes its codes (and changes the song).
  soundfile.write(tmp_path / "prompt.wav", song_prepare_audio_test._song(9, 1.0),
                  song_prepare_audio_test.RATE)
  prompted = generate.generate(_request(tmp_path, "e.wav", run=str(out),
                                        prompt_audio=str(tmp_path / "prompt.wav")))
  assert not np.array_equal(prompted.codes, song.codes)


@pytest.mark.parametrize("change, message", [
    ({"lyrics": "[rap] yo"}, "unknown section tag '[rap]'"),
    ({"seconds": float("inf")}, "--seconds inf is not a finite number"),
    ({"codec": "other"}, "is not the one the training songs were tokenized with"),
    ({"base": "other"}, "was trained on base"),
])
def test_bad_requests_write_nothing(trained, tmp_path, change, message):
  adapter = str(trained / "out" / "checkpoints" / "adapter")
  if change.get("codec") == "other":  # the same format, fitted again: another codec
    codec = prepare_audio.codec_lib.load(str(trained / "prepared" / "audio_codec.safetensors"))
    streams = {s: dataclasses.replace(q, mean=q.mean + 1) for s, q in codec.streams.items()}
    dataclasses.replace(codec, streams=streams).save(str(tmp_path / "other.safetensors"))
    change = {"codec": str(tmp_path / "other.safetensors")}
  if change.get("base") == "other":
    record = model_record.read(adapter, "adapter")
    params = song_lm_weights.load_model_pt(
        str(trained / "base" / "model.pt"),
        song_lm.abstract_params(record.model.lm_config("float32")))
    params = jax.tree.map(lambda x: np.asarray(x) * 1.01, params)
    song_lm_weights.save_model_pt(params, str(tmp_path / "other.pt"))
    change = {"base": str(tmp_path / "other.pt")}
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    generate.generate(_request(tmp_path, "bad.wav", adapter=adapter, **change))
  assert not (tmp_path / "wavs").exists()


def test_a_refused_run_writes_nothing(tmp_path, monkeypatch):
  """The eval batch is larger than the validation windows: refused before the windows or the
  converted base are written."""
  _prepared(tmp_path, monkeypatch)
  train_song_test._base(tmp_path)
  path = _train_config(tmp_path, validation_batch_size=4096)
  with pytest.raises(ValueError, match="does not fill one eval batch of 4096"):
    command.run(str(path), _defaults())
  assert not (tmp_path / "out").exists()
