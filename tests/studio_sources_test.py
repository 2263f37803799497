"""Datasets the studio builds offline (the corpus, the bundled performances, a server folder with
MIDI and audio) and audio kept as dataset files (uploads transcribed to MIDI with their metadata,
clips and stems by content hash), through the real app. No training here: studio_test trains."""

import json
import os
import sqlite3

import pretty_midi
import pytest
import soundfile
from fastapi.testclient import TestClient

from lora_jax.studio import api_models
from lora_jax.studio import app as app_lib
from lora_jax.studio import db as db_lib
import studio_testlib

API = "/api/training"
PERFORMANCES = os.path.join(os.path.dirname(__file__), "..", ".cache", "performances")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Three jigs as MIDI and one rendered by fluidsynth as a WAV (real music for basic-pitch)."""
  render = pytest.importorskip("lora_jax.audio.render")
  folder = tmp_path_factory.mktemp("music")
  jigs = studio_testlib.jig_files(4)
  for name, data in jigs[:3]:
    (folder / name).write_bytes(data)
  (folder / jigs[3][0]).write_bytes(jigs[3][1])
  pm = pretty_midi.PrettyMIDI(str(folder / jigs[3][0]))
  soundfile.write(str(folder / "fiddle.wav"), render.render(pm), render.SAMPLE_RATE)
  os.remove(folder / jigs[3][0])
  (folder / "notes.txt").write_text("not music")
  return folder


@pytest.fixture(scope="module")
def client(tmp_path_factory):
  root = tmp_path_factory.mktemp("studio") / "root"
  settings = app_lib.Settings(root=str(root), performances_dir=PERFORMANCES)
  with TestClient(app_lib.create_app(settings)) as c:
    c.studio = c.app.state.studio
    yield c


def build(client, **request) -> dict:
  made = client.post(f"{API}/build-dataset", json=request)
  assert made.status_code == 200, made.text
  assert made.json()["state"] == "preparing"
  client.studio.builder.wait()
  return client.get(f"{API}/datasets/{made.json()['id']}").json()


def test_bad_build_requests_are_refused_before_any_row(client, tmp_path):
  outside = tmp_path / "outside.mid"
  outside.write_bytes(studio_testlib.jig_files(1)[0][1])
  linked = tmp_path / "linked"
  linked.mkdir()
  (linked / "escape.mid").symlink_to(outside)
  cases = [
      (dict(source="corpus", style="polka"), "not one of"),
      (dict(source="corpus", style="celtic_fiddle/polka"), "no sub-style 'polka'"),
      (dict(source="corpus", style="celtic_fiddle", path="/tmp"), "takes no path"),
      (dict(source="performances", style="pop"), "needs a collection"),
      (dict(source="folder", style="mine", path="relative/dir"), "not an absolute path"),
      (dict(source="folder", style="mine", path=str(tmp_path / "nowhere")), "no such folder"),
      (dict(source="folder", style="mine", path=str(linked)), "outside the folder"),
  ]
  for request, expected in cases:
    got = client.post(f"{API}/build-dataset", json=dict(name="x", **request))
    assert got.status_code == 400 and expected in got.json()["error"], (request, got.text)
  assert client.get(f"{API}/datasets").json() == []


def test_corpus_genre_builds_in_the_background(client):
  sources = client.get(f"{API}/dataset-sources").json()
  assert {"genre": "celtic_fiddle", "sub_styles": ["reel", "jig", "hornpipe"]} in sources["corpus"]
  assert "0.42" in sources["transcription"]
  ds = build(client, name="jigs", source="corpus", style="celtic_fiddle/jig", max_pieces=5)
  assert ds["state"] == "ready", ds["message"]
  assert ds["source"]["max_pieces"] == 5
  assert sum(ds["report"]["splits"]["celtic_fiddle/jig"].values()) == 5
  assert len(ds["files"]) == 20 and {f["kind"] for f in ds["files"]} == {"midi"}
  blob = client.studio.store.blob_path(ds["files"][0]["sha256"])
  assert os.path.getsize(blob) == ds["files"][0]["size"]
  job = client.post(f"{API}/train-lora", json=dict(name="j", dataset_id=ds["id"], level="child",
                                                   **studio_testlib.TINY))
  assert job.status_code == 400 and "parent_adapter_id" in job.json()["error"]  # ready: checked on


@pytest.mark.skipif(not os.path.isdir(os.path.join(PERFORMANCES, "pop909")),
                    reason="scripts/fetch_performances.sh has not run")
def test_bundled_performances(client):
  ds = build(client, name="pop", source="performances", collection="pop909", style="pop")
  assert ds["state"] == "ready", ds["message"]
  assert sorted(f["name"] for f in ds["files"]) == [
      "POP909_008.mid", "POP909_010.mid", "POP909_022.mid", "POP909_191.mid"]


def test_folder_of_midi_and_audio(client, files):
  ds = build(client, name="my folder", source="folder", style="celtic/jig", path=str(files))
  assert ds["state"] == "ready", ds["message"]
  kinds = {f["name"]: (f["kind"], f["state"]) for f in ds["files"]}
  assert kinds == {"jig_0.mid": ("midi", "packed"), "jig_1.mid": ("midi", "packed"),
                   "jig_2.mid": ("midi", "packed"), "fiddle.wav": ("audio", "kept"),
                   "fiddle.mid": ("transcription", "packed")}
  assert ds["report"]["ignored"] == ["notes.txt"]
  assert sorted(os.listdir(files)) == ["fiddle.wav", "jig_0.mid", "jig_1.mid", "jig_2.mid",
                                       "notes.txt"]  # only read


def test_audio_upload_with_metadata_then_clips_and_stems_kept(client, files):
  uploads = [("files", (n, (files / n).read_bytes(), "application/octet-stream"))
             for n in ("jig_0.mid", "jig_1.mid", "fiddle.wav")]
  meta = {"fiddle.wav": {"genre": "jig", "bpm": "120", "mood": "lively"}}
  made = client.post(f"{API}/prepare-dataset", files=uploads,
                     data={"name": "take", "style": "celtic", "metadata": json.dumps(meta)})
  assert made.status_code == 200, made.text
  ds = made.json()
  by_name = {f["name"]: f for f in ds["files"]}
  assert by_name["fiddle.wav"]["meta"] == meta["fiddle.wav"]
  assert by_name["fiddle.mid"]["kind"] == "transcription"
  assert by_name["fiddle.mid"]["meta"] == {"from": "fiddle.wav"}

  wav = [("files", ("fiddle.wav", (files / "fiddle.wav").read_bytes(), "audio/wav"))]
  clips = client.post(f"{API}/split-audio", files=wav, data={"dataset_id": ds["id"]})
  stems = client.post(f"{API}/separate-stems", files=wav, data={"dataset_id": ds["id"]})
  assert clips.status_code == 200 and stems.status_code == 200, (clips.text, stems.text)
  kept = client.get(f"{API}/datasets/{ds['id']}").json()["files"]
  for kind, reply in (("clip", clips.json()), ("stem", stems.json())):
    rows = [f for f in kept if f["kind"] == kind]
    assert rows and {f["id"] for f in rows} == {o["id"] for o in reply[0]["outputs"]}
    for f in rows:
      data, rate = soundfile.read(client.studio.store.blob_path(f["sha256"]))
      assert rate > 0 and len(data) > rate and f["meta"] == {"from": "fiddle.wav"}
  missing = client.post(f"{API}/split-audio", files=wav, data={"dataset_id": "0" * 16})
  assert missing.status_code == 404


def test_a_build_the_server_left_preparing_is_built_by_the_next(tmp_path):
  folder = tmp_path / "jigs"
  folder.mkdir()
  for name, data in studio_testlib.jig_files(3):
    (folder / name).write_bytes(data)
  root = str(tmp_path / "root")
  stopped = app_lib.create_app(app_lib.Settings(root=root))  # no lifespan: its builder never runs
  dataset_id = stopped.state.studio.builder.submit(api_models.BuildRequest(
      name="jigs", source="folder", style="celtic", path=str(folder)))
  early = TestClient(stopped).post(f"{API}/train-lora", json=dict(
      name="too early", dataset_id=dataset_id, **studio_testlib.TINY))
  assert early.status_code == 400 and "is preparing" in early.json()["error"], early.text
  stopped.state.studio.db.close()
  with TestClient(app_lib.create_app(app_lib.Settings(root=root))) as c:
    c.app.state.studio.builder.wait()
    ds = c.get(f"{API}/datasets/{dataset_id}").json()
  assert ds["state"] == "ready" and len(ds["files"]) == 3, ds


def test_a_version_1_database_is_migrated_with_its_rows(tmp_path):
  path = str(tmp_path / "studio.sqlite")
  conn = sqlite3.connect(path)
  conn.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL); "
                     "INSERT INTO schema_version VALUES (1);" + db_lib.MIGRATIONS[0])
  conn.execute("INSERT INTO datasets VALUES ('0123456789abcdef', 'old', 'folk', 'datasets/x', "
               "'{}', 0)")
  conn.commit()
  conn.close()
  database = db_lib.Database(path)
  assert database.version() == db_lib.VERSION == 3
  assert database.one("SELECT name, state, source, kind FROM datasets") == {
      "name": "old", "state": "ready", "source": '{"kind": "upload"}', "kind": "midi"}
