"""The studio through its real app (FastAPI's TestClient): upload real MIDI, pack it, train a real
adapter with the project's launcher in a worker process, follow it, stop and resume it, survive a
restart, download the adapter and read it back; and the security cases."""

import io
import os
import time

import pytest
from fastapi.testclient import TestClient

from lora_jax import lora
from lora_jax.studio import app as app_lib
from lora_jax.studio import security
import studio_testlib

API = "/api/training"


@pytest.fixture(scope="module")
def jigs():
  return studio_testlib.jig_files(4)


def make_client(root, cache, **settings) -> TestClient:
  s = app_lib.Settings(root=str(root), worker_env=studio_testlib.worker_env(str(cache)),
                       **settings)
  return TestClient(app_lib.create_app(s))


def upload(client, files, name="my jigs", style="celtic/jig"):
  return client.post(f"{API}/prepare-dataset", data={"name": name, "style": style},
                     files=[("files", (n, d, "application/octet-stream")) for n, d in files])


def wait(client, job_id, states, timeout=240.0, pred=None) -> dict:
  deadline = time.time() + timeout
  while time.time() < deadline:
    job = client.get(f"{API}/training-status", params={"job_id": job_id}).json()["job"]
    if job["state"] in states and (pred is None or pred(job)):
      return job
    if job["state"] == "failed" and "failed" not in states:
      raise AssertionError(job["message"])
    time.sleep(0.2)
  raise AssertionError(f"job {job_id} still {job['state']} (step {job['step']})")


def test_upload_train_follow_download(jigs, tmp_path):
  with make_client(tmp_path / "root", tmp_path) as client:
    zipped = studio_testlib.zipped(jigs[:3], {"tunes/readme.txt": b"hi"})
    ds = upload(client, [("set.zip", zipped), jigs[3]])
    assert ds.status_code == 200, ds.text
    ds = ds.json()
    assert ds["style"] == "celtic/jig" and sorted(f["name"] for f in ds["files"]) == [
        "jig_0.mid", "jig_1.mid", "jig_2.mid", "jig_3.mid"]
    assert ds["report"]["ignored"] == ["set.zip:tunes/readme.txt"]
    assert sum(ds["report"]["splits"]["celtic/jig"].values()) == 4
    assert [d["id"] for d in client.get(f"{API}/datasets").json()] == [ds["id"]]

    job = client.post(f"{API}/train-lora", json=dict(
        name="celtic parent", dataset_id=ds["id"], level="parent", **studio_testlib.TINY))
    assert job.status_code == 200, job.text
    job = wait(client, job.json()["id"], ("finished",))
    assert job["step"] == job["total_steps"] > 0 and job["val_loss"] is not None
    rows = client.get(f"{API}/jobs/{job['id']}/metrics").json()
    assert rows[0]["step"] == 0 and rows[-1]["step"] == job["step"]
    assert all(r["train_loss"] is not None for r in rows[1:])

    adapters = client.get(f"{API}/lora-adapters").json()
    assert [a["id"] for a in adapters] == [job["adapter_id"]]
    assert adapters[0]["level"] == "parent" and adapters[0]["steps"] == job["step"]
    got = client.get(f"{API}/lora-adapters/{job['adapter_id']}/download")
    assert got.status_code == 200
    path = tmp_path / "downloaded.lora"
    path.write_bytes(got.content)
    record = lora.load_adapter(str(path))
    assert record.name == "celtic" and record.extra["level"] == "parent"
    assert record.spec.rank == 2 and record.base_fingerprint == adapters[0]["base"]

    # A child adapter over that parent, on the same dataset's sub-style.
    child = client.post(f"{API}/train-lora", json=dict(
        name="jig child", dataset_id=ds["id"], level="child",
        parent_adapter_id=job["adapter_id"], **studio_testlib.TINY))
    assert child.status_code == 200, child.text
    child = wait(client, child.json()["id"], ("finished",))
    child_row = client.get(f"{API}/lora-adapters/{child['adapter_id']}").json()
    assert child_row["parent_adapter_id"] == job["adapter_id"] and child_row["style"] == (
        "celtic/jig")
    # The parent cannot go while its child exists; the dataset not while jobs could resume.
    refused = client.delete(f"{API}/lora-adapters/{job['adapter_id']}")
    assert refused.status_code == 409 and "parent of adapter" in refused.json()["error"]
    assert client.delete(f"{API}/lora-adapters/{child['adapter_id']}").status_code == 200
    assert client.delete(f"{API}/lora-adapters/{job['adapter_id']}").status_code == 200
    assert client.get(f"{API}/lora-adapters").json() == []
    assert client.delete(f"{API}/datasets/{ds['id']}").status_code == 200
    blobs = [f for _, _, fs in os.walk(tmp_path / "root" / "blobs") for f in fs]
    assert blobs == []  # nothing a row no longer names is kept
