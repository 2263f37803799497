"""The studio's guards, through the real app: where it listens, the token, body and file caps,
uploads decoded before anything is stored, ids (never names) in paths, validated bodies, one JSON
error each; and the database's schema versioning."""

import io
import os
import pathlib
import re
import sqlite3
import subprocess
import sys
import zipfile

import pytest
from fastapi.testclient import TestClient

from lora_jax.studio import app as app_lib
from lora_jax.studio import db as db_lib
from lora_jax.studio import security
import studio_testlib

API = "/api/training"
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jigs():
  return studio_testlib.jig_files(3)


def client_for(tmp_path, **settings) -> TestClient:
  return TestClient(app_lib.create_app(app_lib.Settings(root=str(tmp_path / "root"), **settings)))


def upload(client, files, style="celtic/jig"):
  return client.post(f"{API}/prepare-dataset", data={"name": "n", "style": style},
                     files=[("files", (n, d, "application/octet-stream")) for n, d in files])


def stored(tmp_path) -> list[str]:
  return [f for _, _, fs in os.walk(tmp_path / "root" / "blobs") for f in fs]


def test_listening_elsewhere_needs_allow_remote_and_a_token(tmp_path):
  security.check_bind("127.0.0.1", False, "")
  security.check_bind("::1", False, "")
  with pytest.raises(security.SecurityError, match="--allow_remote"):
    security.check_bind("0.0.0.0", False, "")
  with pytest.raises(security.SecurityError, match="at least 16 characters; got 3"):
    security.check_bind("0.0.0.0", True, "abc")
  security.check_bind("0.0.0.0", True, "x" * 16)
  done = subprocess.run([sys.executable, str(ROOT / "launch" / "studio.py"), "--host=0.0.0.0",
                         f"--root={tmp_path / 'r'}"], capture_output=True, text=True, timeout=120)
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1].startswith("studio: error: --host=0.0.0.0 would")
  assert not (tmp_path / "r").exists()  # refused before anything was written


def test_token_on_every_request(tmp_path):
  token = "t" * 20
  with client_for(tmp_path, token=token) as client:
    for path in (f"{API}/datasets", "/", "/docs", "/openapi.json"):
      refused = client.get(path)
      assert refused.status_code == 401 and "X-Studio-Token" in refused.json()["error"]
    assert client.get(f"{API}/datasets", headers={"X-Studio-Token": "t" * 19 + "u"}
                      ).status_code == 401
    assert client.get(f"{API}/datasets", headers={"X-Studio-Token": token}).json() == []
    assert client.get("/", params={"token": token}).status_code == 200


def test_caps_bad_files_and_names(tmp_path, jigs):
  limits = security.Limits(max_request_bytes=200_000, max_file_bytes=20_000,
                           max_unzipped_bytes=100_000)
  with client_for(tmp_path, limits=limits) as client:
    big = client.post(f"{API}/prepare-dataset", data={"name": "n", "style": "a"},
                      files=[("files", ("x.mid", b"0" * 300_000))])
    assert big.status_code == 413 and "over the limit of 200,000" in big.json()["error"]
    one = upload(client, [("x.mid", b"0" * 30_000)])
    assert one.status_code == 400 and "more than the limit of 20,000" in one.json()["error"]
    broken = upload(client, jigs + [("broken.mid", b"MThd\x00\x00\x00\x06\x00\x01")])
    assert broken.status_code == 400 and broken.json()["error"].startswith(
        "broken.mid: not a readable MIDI file")
    text = upload(client, jigs + [("notes.txt", b"hello")])
    assert text.status_code == 400 and "notes.txt: not a MIDI file" in text.json()["error"]
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
      z.writestr("a.mid", b"\0" * 150_000)
    zipped = upload(client, [("b.zip", bomb.getvalue())])
    assert zipped.status_code == 400 and "150,000 bytes unzipped" in zipped.json()["error"]
    style = upload(client, jigs, style="../etc")
    assert style.status_code == 400 and "not 'genre' or 'genre/sub_style'" in (
        style.json()["error"])
    few = upload(client, jigs[:2])
    assert few.status_code == 400 and "style celtic/jig" in few.json()["error"]
    assert client.get(f"{API}/datasets").json() == [] and stored(tmp_path) == []
    # A client's file name is only displayed, cleaned; the bytes go under their hash.
    named = [("../../evil.mid", jigs[0][1]), ("..\\x\\odd\x07name.mid", jigs[1][1]), jigs[2]]
    ds = upload(client, named)
    assert ds.status_code == 200, ds.text
    names = sorted(f["name"] for f in ds.json()["files"])
    assert names[:2] == ["evil.mid", "jig_2.mid"] and names[2].startswith("odd")
    assert all(re.fullmatch(r"[A-Za-z0-9._ -]+", n) for n in names)
    assert not (tmp_path / "evil.mid").exists() and len(stored(tmp_path)) == 3


def test_paths_take_ids_and_errors_are_one_json_line(tmp_path):
  with client_for(tmp_path) as client:
    for path in (f"{API}/lora-adapters/x/download", f"{API}/jobs/ABCDEF0123456789/log",
                 f"{API}/datasets/..."):
      got = client.get(path)
      assert got.status_code == 422 and "String should match pattern" in got.json()["error"]
    for path in (f"{API}/datasets/..%2F..%2Fstudio.sqlite", "/..%2Fstudio.sqlite",
                 f"{API}/datasets/..%2Fstudio.sqlite",
                 "/static/../../studio.sqlite"):
      got = client.get(path)
      assert got.status_code == 404 and list(got.json()) == ["error"]
    missing = client.get(f"{API}/lora-adapters/0123456789abcdef")
    assert missing.status_code == 404 and missing.json() == {
        "error": "no adapter 0123456789abcdef"}
    extra = client.post(f"{API}/train-lora", json={"name": "a", "dataset_id": "0" * 16,
                                                   "rank": 2, "shell": "rm -rf /"})
    assert extra.status_code == 422 and extra.json() == {
        "error": "shell: Extra inputs are not permitted"}
    bad = client.post(f"{API}/train-lora", json={"name": "a", "dataset_id": "0" * 16,
                                                 "learning_rate": -1})
    assert bad.status_code == 422 and bad.json()["error"].startswith("learning_rate: ")
    nodata = client.post(f"{API}/train-lora", json={"name": "a", "dataset_id": "0" * 16})
    assert nodata.status_code == 404 and nodata.json() == {"error": "no dataset " + "0" * 16}
    stop = client.post(f"{API}/stop-training", json={"job_id": "0" * 16})
    assert stop.status_code == 404
    audio = client.post(f"{API}/analyze-audio", files=[("files", ("a.wav", b"RIFF"))])
    assert audio.status_code == 400 and "a.wav" in audio.json()["error"], audio.text
    assert "/api/training/train-lora" in client.get("/openapi.json").json()["paths"]
    docs = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()


def test_schema_is_versioned_and_migrated(tmp_path):
  path = str(tmp_path / "s.sqlite")
  sqlite3.connect(path).executescript(
      "CREATE TABLE schema_version (version INTEGER NOT NULL); "
      "INSERT INTO schema_version VALUES (0);")
  database = db_lib.Database(path)  # an empty version-0 file is brought forward
  assert database.version() == db_lib.VERSION and database.all("SELECT * FROM jobs") == []
  database.execute("UPDATE schema_version SET version = ?", (db_lib.VERSION + 1,))
  database.close()
  with pytest.raises(db_lib.SchemaError, match=f"newer than this studio's {db_lib.VERSION}"):
    db_lib.Database(path)
