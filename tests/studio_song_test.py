"""The studio's song jobs through the real app: a tiny song base made here (train_song_test's
random model.pt, a codec fitted on synthetic songs, its song_model.json), a song dataset of WAV
clips with lyrics edited through the API, a LoRA job run by prepare_song_data's and train_song's
code in a worker process (stopped while it prepares, resumed), the adapter listed as 'song' and
downloaded as its PEFT folder, and listen sampling it against its base. Without --song_base the
API says so in one error; a wrong one stops the studio before it starts."""

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest
import soundfile

from lora_jax.families import song_lm as song_family
from lora_jax.song import codec as codec_lib
from lora_jax.song import model_record
from lora_jax.song import prepare_audio
from lora_jax.studio import song_base as song_base_lib
import generate_song_test
import song_prepare_audio_test
import studio_test
import train_song_test

API = studio_test.API
RATE = song_prepare_audio_test.RATE
LYRICS = "[verse] la la [chorus] oh"
JOB = dict(type="song", epochs=1, batch_size=8, learning_rate=1e-2, rank=4, alpha=8.0,
           log_every=1, warmup_steps=1, val_fraction=0.3)


def _wav(i: int) -> bytes:
  buffer = io.BytesIO()
  soundfile.write(buffer, song_prepare_audio_test._song(i), RATE, format="WAV")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def song_base(tmp_path_factory):
  """A random model.pt of generate_song_test's tiny model, with the codec its record names."""
  tmp_path = tmp_path_factory.mktemp("song_base")
  train_song_test._base(tmp_path)  # tmp_path/base/model.pt
  features = []
  for i in range(3):
    soundfile.write(tmp_path / f"fit{i}.wav", song_prepare_audio_test._song(10 + i), RATE)
    features.append(prepare_audio.analyse(str(tmp_path / f"fit{i}.wav"), RATE, 16, "hpss"))
  codec = codec_lib.fit({s: [f[s] for f in features] for s in codec_lib.STREAMS},
                        sample_rate=RATE, n_mels=16, separator="hpss", code_size=64)
  codec_path = str(tmp_path / "base" / "codec.safetensors")
  codec.save(codec_path)
  model = song_family.SongConfig(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in generate_song_test.MODEL.items()})
  model_record.write(str(tmp_path / "base"), model_record.SongModelRecord(
      model, "full", (codec_lib.file_id(codec_path),), codec_path, "", "", "", ""))
  return tmp_path / "base"


def test_a_wrong_song_base_is_one_error_before_anything_is_written(song_base, tmp_path):
  with pytest.raises(song_base_lib.SongBaseError, match="no such file or folder"):
    studio_test.make_client(tmp_path / "root", song_base=str(tmp_path / "none"))
  (tmp_path / "run" / "checkpoints" / "adapter").mkdir(parents=True)
  with pytest.raises(song_base_lib.SongBaseError, match="merge its adapter"):
    studio_test.make_client(tmp_path / "root", song_base=str(tmp_path / "run"))
  record = model_record.read(str(song_base), "base")
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "model.pt").write_bytes((song_base / "model.pt").read_bytes())
  model_record.write(str(tmp_path / "other"), dataclasses.replace(
      record, model=dataclasses.replace(record.model, dim=64)))
  with pytest.raises(song_base_lib.SongBaseError, match="does not fit the model its song_model"):
    studio_test.make_client(tmp_path / "root", song_base=str(tmp_path / "other"))
  assert not (tmp_path / "root").exists()


def test_song_job_trains_stops_resumes_downloads_and_listens(song_base, tmp_path):
  root = tmp_path / "root"
  clips = [(f"song{i}.wav", _wav(i)) for i in range(5)]
  table = {name: {"lyrics": LYRICS, "description": "tones", "genre": "folk"}
           for name, _ in clips[:4]}
  with studio_test.make_client(root) as client:  # no song base: said once, in one error
    assert client.get(f"{API}/song-base").json()["configured"] is False
    made = client.post(f"{API}/prepare-dataset", data={
        "name": "my songs", "style": "folk", "kind": "song", "metadata": json.dumps(table)},
        files=[("files", (n, d, "audio/wav")) for n, d in clips])
    assert made.status_code == 200, made.text
    dataset = made.json()
    refused = client.post(f"{API}/train-lora", json=dict(name="x", dataset_id=dataset["id"], **JOB))
    assert refused.status_code == 400 and list(refused.json()) == ["error"]
    assert "--song_base" in refused.json()["error"]
    midi = client.post(f"{API}/train-lora", json=dict(name="x", dataset_id=dataset["id"]))
    assert midi.status_code == 400 and "type 'song'" in midi.json()["error"]

  assert dataset["kind"] == "song" and dataset["report"]["lines"] == [
      "5 song clips, 10.0 s of audio; lyrics on 4 of them"]
  files = {f["name"]: f for f in dataset["files"]}
  assert files["song0.wav"]["meta"]["lyrics"] == LYRICS and files["song4.wav"]["kind"] == "audio"
  with studio_test.make_client(root, song_base=str(song_base)) as client:
    assert client.get(f"{API}/song-base").json()["code_size"] == 64
    bad = client.post(f"{API}/prepare-dataset", data={"name": "x", "style": "x", "kind": "song"},
                      files=[("files", ("bad.wav", b"RIFF not really a wave", "audio/wav"))])
    assert bad.status_code == 400 and "bad.wav: cannot decode" in bad.json()["error"]
    no_lyrics = client.post(f"{API}/train-lora", json=dict(name="x", dataset_id=dataset["id"],
                                                           **JOB))
    assert no_lyrics.status_code == 400 and "song4.wav" in no_lyrics.json()["error"]
    url = f"{API}/datasets/{dataset['id']}/files/{files['song4.wav']['id']}/meta"
    assert client.put(url, json={"lyrics": "[rap] yo"}).status_code == 200
    tag = client.post(f"{API}/train-lora", json=dict(name="x", dataset_id=dataset["id"], **JOB))
    assert tag.status_code == 400 and "unknown section tag '[rap]'" in tag.json()["error"]
    edited = client.put(url, json={"lyrics": LYRICS, "description": "tones"})
    assert edited.status_code == 200
    assert edited.json()["meta"] == {"lyrics": LYRICS, "description": "tones"}

    job = client.post(f"{API}/train-lora", json=dict(name="folk songs", dataset_id=dataset["id"],
                                                     **JOB))
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    studio_test.wait(client, job_id, ("running",))  # preparing its clips: SIGTERM, then resume
    client.post(f"{API}/stop-training", json={"job_id": job_id})
    studio_test.wait(client, job_id, ("stopped",))
    assert client.post(f"{API}/jobs/{job_id}/resume").json()["state"] == "queued"
    done = studio_test.wait(client, job_id, ("finished",))
    assert done["level"] == "song" and done["step"] == done["total_steps"] >= 2
    assert done["val_loss"] is not None
    rows = client.get(f"{API}/jobs/{job_id}/metrics").json()
    assert rows[-1]["step"] == done["step"] and rows[-1]["val_loss"] is not None

    adapter = client.get(f"{API}/lora-adapters/{done['adapter_id']}").json()
    assert adapter["level"] == "song" and adapter["steps"] == done["step"]
    got = client.get(f"{API}/lora-adapters/{adapter['id']}/download")
    assert got.status_code == 200 and ".zip" in got.headers["content-disposition"]
    z = zipfile.ZipFile(io.BytesIO(got.content))
    assert sorted(z.namelist()) == ["adapter/adapter_config.json",
                                    "adapter/adapter_model.safetensors",
                                    "adapter/audio_codec.safetensors", "adapter/song_model.json"]
    assert json.loads(z.read("adapter/adapter_config.json"))["r"] == 4
    assert z.read("adapter/audio_codec.safetensors") == (song_base / "codec.safetensors"
                                                         ).read_bytes()
    assert json.loads(z.read("adapter/song_model.json"))["base_fingerprint"] == adapter["base"]

    made = client.post(f"{API}/lora-adapters/{adapter['id']}/listen", json={"seed": 1})
    assert made.status_code == 200, made.text
    waves = {}
    for which in ("adapter", "base"):
      wav = client.get(made.json()[f"{which}_url"])
      assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
      waves[which], rate = soundfile.read(io.BytesIO(wav.content))
      assert rate == RATE and len(waves[which]) > 0 and np.abs(waves[which]).max() > 0
    assert not (len(waves["adapter"]) == len(waves["base"]) and
                np.array_equal(waves["adapter"], waves["base"]))
    assert client.delete(f"{API}/lora-adapters/{adapter['id']}").status_code == 200
