"""The studio through its real app: upload real MIDI, pack it, train real adapters with the
project's launchers in a worker process, follow them, stop and resume, survive a server killed
with SIGKILL (the resumed adapter is byte-identical to an uninterrupted one), download an adapter
and read it back; and the security cases. One root is shared: each test opens a new app on it, so
every test also restarts the studio on the state the last one left."""

import io
import os
import shutil
import signal
import time

import httpx
import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from lora_jax import lora
from lora_jax.studio import app as app_lib
from lora_jax.studio import db as db_lib
import studio_testlib

API = "/api/training"
# 9 steps an epoch, a checkpoint at each epoch end; long enough that a stop lands mid-run even on
# a fast machine.
PARENT = dict(studio_testlib.TINY, epochs=30)
STEPS = 30 * 9


def make_client(root, **settings) -> TestClient:
  s = app_lib.Settings(root=str(root), worker_env=studio_testlib.worker_env(str(root.parent)),
                       **settings)
  return TestClient(app_lib.create_app(s))


def upload(client, files, name="my jigs", style="celtic/jig"):
  return client.post(f"{API}/prepare-dataset", data={"name": name, "style": style},
                     files=[("files", (n, d, "application/octet-stream")) for n, d in files])


def wait(client, job_id, states, timeout=300.0, pred=None) -> dict:
  deadline = time.time() + timeout
  job = {}
  while time.time() < deadline:
    job = client.get(f"{API}/training-status", params={"job_id": job_id}).json()["job"]
    if job["state"] in states and (pred is None or pred(job)):
      return job
    if job["state"] == "failed" and "failed" not in states:
      raise AssertionError(job["message"])
    time.sleep(0.1)
  raise AssertionError(f"job {job_id} still {job.get('state')} at step {job.get('step')}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A root with a dataset of four jigs (three in a zip) and a finished parent adapter."""
  root = tmp_path_factory.mktemp("studio") / "root"
  jigs = studio_testlib.jig_files(4)
  with make_client(root) as client:
    zipped = studio_testlib.zipped(jigs[:3], {"tunes/readme.txt": b"hi"})
    ds = upload(client, [("set.zip", zipped), jigs[3]])
    assert ds.status_code == 200, ds.text
    job = client.post(f"{API}/train-lora", json=dict(
        name="celtic parent", dataset_id=ds.json()["id"], level="parent", **PARENT))
    assert job.status_code == 200, job.text
    job = wait(client, job.json()["id"], ("finished",))
  return {"root": root, "dataset": ds.json(), "job": job, "jigs": jigs}


def test_dataset_job_and_adapter_survive_a_restart(trained):
  ds, job = trained["dataset"], trained["job"]
  assert ds["style"] == "celtic/jig" and sorted(f["name"] for f in ds["files"]) == [
      "jig_0.mid", "jig_1.mid", "jig_2.mid", "jig_3.mid"]
  assert ds["report"]["ignored"] == ["set.zip:tunes/readme.txt"]
  assert sum(ds["report"]["splits"]["celtic/jig"].values()) == 4
  assert job["step"] == job["total_steps"] == STEPS and job["val_loss"] is not None
  with make_client(trained["root"]) as client:  # a new app on the same root
    assert [d["id"] for d in client.get(f"{API}/datasets").json()] == [ds["id"]]
    rows = client.get(f"{API}/jobs/{job['id']}/metrics").json()
    assert rows[0]["step"] == 0 and rows[-1]["step"] == STEPS
    assert all(r["train_loss"] is not None for r in rows[1:])
    assert rows[-1]["train_loss"] < rows[1]["train_loss"]  # it learned
    adapters = client.get(f"{API}/lora-adapters").json()
    assert [a["id"] for a in adapters] == [job["adapter_id"]]
    assert adapters[0]["level"] == "parent" and adapters[0]["steps"] == STEPS
    got = client.get(f"{API}/lora-adapters/{job['adapter_id']}/download")
    assert got.status_code == 200 and "celtic_" in got.headers["content-disposition"]
    path = trained["root"].parent / "downloaded.lora"
    path.write_bytes(got.content)
    record = lora.load_adapter(str(path))
    assert record.name == "celtic" and record.extra["level"] == "parent"
    assert record.spec.rank == 2 and record.base_fingerprint == adapters[0]["base"]


def test_listen_renders_adapter_and_base_from_one_seed(trained, monkeypatch, tmp_path):
  """Tab 4's listen: a sample with the adapter and one from the base (same seed), rendered by
  fluidsynth, served as WAV, kept per (adapter, seed); without fluidsynth, 503 and what to do."""
  if shutil.which("fluidsynth") is None:
    pytest.skip("no fluidsynth (scripts/setup.sh installs it)")
  adapter_id = trained["job"]["adapter_id"]
  url = f"{API}/lora-adapters/{adapter_id}/listen"
  with make_client(trained["root"]) as client:
    assert client.get(f"{url}/adapter.wav", params={"seed": 3}).status_code == 404
    made = client.post(url, json={"seed": 3})
    assert made.status_code == 200, made.text
    wavs = {}
    for which in ("adapter", "base"):
      got = client.get(made.json()[f"{which}_url"])
      assert got.status_code == 200 and got.headers["content-type"] == "audio/wav"
      samples, rate = soundfile.read(io.BytesIO(got.content))
      assert len(samples) > rate and np.abs(samples).max() > 0.01  # over a second, audible
      wavs[which] = got.content
    assert wavs["adapter"] != wavs["base"]
    kept = trained["root"] / "listen" / adapter_id / "3" / "adapter.wav"
    before = kept.stat().st_mtime_ns
    monkeypatch.setenv("PATH", str(tmp_path))  # fluidsynth gone: a kept pair is still served
    assert client.post(url, json={"seed": 3}).status_code == 200
    assert kept.stat().st_mtime_ns == before
    refused = client.post(url, json={"seed": 4})
    assert refused.status_code == 503 and "fluidsynth" in refused.json()["error"]


def test_child_adapter_over_the_parent_across_a_server_restart(trained):
  """A child adapter over the fixture's parent; the server stops (its lifespan ends) mid-run, the
  job is left interrupted, and the next server resumes it to the end."""
  parent_id = trained["job"]["adapter_id"]
  with make_client(trained["root"]) as client:
    bad = client.post(f"{API}/train-lora", json=dict(
        name="x", dataset_id=trained["dataset"]["id"], level="child", **studio_testlib.TINY))
    assert bad.status_code == 400 and "parent_adapter_id" in bad.json()["error"]
    child = client.post(f"{API}/train-lora", json=dict(
        name="jig child", dataset_id=trained["dataset"]["id"], level="child",
        parent_adapter_id=parent_id, **dict(studio_testlib.TINY, epochs=20)))
    assert child.status_code == 200, child.text
    child_id = child.json()["id"]
    wait(client, child_id, ("running",), pred=lambda j: j["step"] >= 1)
  database = db_lib.Database(str(trained["root"] / app_lib.DB_FILE))
  left = database.one("SELECT state, exit_code FROM jobs WHERE id = ?", (child_id,))
  database.close()
  assert left == {"state": "interrupted", "exit_code": 75}
  with make_client(trained["root"]) as client:
    child = wait(client, child_id, ("finished",))
    assert "resumed from step" in _log(trained["root"], child_id)
    row = client.get(f"{API}/lora-adapters/{child['adapter_id']}").json()
    assert row["parent_adapter_id"] == parent_id and row["style"] == "celtic/jig"
    assert row["steps"] == 20 * 9
    refused = client.delete(f"{API}/lora-adapters/{parent_id}")
    assert refused.status_code == 409 and "parent of adapter" in refused.json()["error"]
    assert client.delete(f"{API}/lora-adapters/{child['adapter_id']}").status_code == 200
    assert [a["id"] for a in client.get(f"{API}/lora-adapters").json()] == [parent_id]


def _log(root, job_id) -> str:
  return (root / "jobs" / job_id / "log.txt").read_text()


def test_stop_resume_and_a_killed_server_give_the_same_adapter(trained):
  """Stop (SIGTERM, exit 75) and resume through the API, then SIGKILL the server mid-run: the
  kernel sends the trainer SIGTERM, it checkpoints, the next server resumes the job, and its
  adapter is byte-identical to the uninterrupted one of the fixture."""
  root, port = trained["root"], studio_testlib.free_port()
  server = studio_testlib.server(root, port)
  try:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    job = client.post(f"{API}/train-lora", json=dict(
        name="again", dataset_id=trained["dataset"]["id"], level="parent", **PARENT)).json()
    wait(client, job["id"], ("running",), pred=lambda j: j["step"] >= 3)
    stopping = client.post(f"{API}/stop-training", json={"job_id": job["id"]}).json()
    assert stopping["state"] in ("stopping", "stopped")
    stopped = wait(client, job["id"], ("stopped",))
    assert stopped["exit_code"] == 75 and 3 <= stopped["step"] < STEPS
    busy = client.delete(f"{API}/datasets/{trained['dataset']['id']}")
    assert busy.status_code == 409 and job["id"] in busy.json()["error"]
    again = client.post(f"{API}/jobs/{job['id']}/resume")
    assert again.status_code == 200 and again.json()["state"] == "queued"
    wait(client, job["id"], ("running",), pred=lambda j: j["step"] >= stopped["step"] + 3)
    assert f"resumed from step {stopped['step']}" in _log(root, job["id"])
    assert client.post(f"{API}/jobs/{job['id']}/resume").status_code == 400  # running

    pid = db_lib.Database(str(root / app_lib.DB_FILE)).one(
        "SELECT pid FROM jobs WHERE id = ?", (job["id"],))["pid"]
    server.send_signal(signal.SIGKILL)
    server.wait()
    deadline = time.time() + 120  # the trainer got SIGTERM from the kernel: it checkpoints
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
      time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), "the training process outlived its server"
    server = studio_testlib.server(root, port)
    done = wait(client, job["id"], ("finished",))
    assert _log(root, job["id"]).count("resumed from step") == 2 and done["step"] == STEPS
    rows = {a["id"]: a for a in client.get(f"{API}/lora-adapters").json()}
    # Same data, same settings: the twice-interrupted job's file is the uninterrupted one's, byte
    # for byte (one blob, two rows).
    assert rows[done["adapter_id"]]["sha256"] == rows[trained["job"]["adapter_id"]]["sha256"]
  finally:
    server.kill()
    server.wait()
