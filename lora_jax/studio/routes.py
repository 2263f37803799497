"""The API under /api/training/: the seed's endpoints and what a user needs beside them.

Paths name rows by id, never by a file name. Long work (a training run) is a job the worker runs;
a request only queues it, stops it or reads what its run wrote.
"""

import os
import tempfile
from typing import Annotated

import fastapi
from fastapi import responses

from lora_jax.studio import api_models, audio_bridge, datasets, jobs, security
from lora_jax.studio import db as db_lib

Id = Annotated[str, fastapi.Path(pattern=r"^[0-9a-f]{16}$", description="an id the studio gave")]


def _read_uploads(files: list[fastapi.UploadFile], limit: int) -> list[datasets.Upload]:
  out = []
  for f in files:
    data = f.file.read(limit + 1)
    if len(data) > limit:
      raise ValueError(f"{security.safe_name(f.filename or 'file')}: more than {limit:,} bytes")
    out.append(datasets.Upload(f.filename or "file", data))
  return out


def router(studio, error_responses: dict) -> fastapi.APIRouter:
  """The routes, bound to one `app.Studio`."""
  r = fastapi.APIRouter(responses={k: v for k, v in error_responses.items()
                                   if k in (400, 401, 413, 411)})
  db, store, limits = studio.db, studio.store, studio.settings.limits
  not_found = {404: error_responses[404]}
  in_use = {404: error_responses[404], 409: error_responses[409]}

  # Datasets.
  @r.post("/prepare-dataset", summary="Upload MIDI files or a zip of them as a new dataset")
  def prepare_dataset(files: list[fastapi.UploadFile] = fastapi.File(...),
                      name: str = fastapi.Form(..., max_length=80),
                      style: str = fastapi.Form(..., max_length=80, description=(
                          "'genre' or 'genre/sub_style': the style pack and adapter name"))):
    uploads = _read_uploads(files, limits.max_request_bytes)
    return datasets.prepare(db, store, name, style, uploads, limits)

  @r.get("/datasets", summary="List datasets")
  def list_datasets():
    return datasets.listing(db)

  @r.get("/datasets/{dataset_id}", summary="A dataset, its files and its pack report",
         responses=not_found)
  def get_dataset(dataset_id: Id):
    row = datasets.get(db, dataset_id)
    if row is None:
      raise db_lib.NotFound(f"no dataset {dataset_id}")
    return row

  @r.delete("/datasets/{dataset_id}", summary="Delete a dataset no job needs", responses=in_use)
  def delete_dataset(dataset_id: Id):
    if datasets.get(db, dataset_id) is None:
      raise db_lib.NotFound(f"no dataset {dataset_id}")
    busy = db.all("SELECT id, state FROM jobs WHERE dataset_id = ? AND state IN "
                  "('queued', 'running', 'stopping', 'stopped', 'interrupted')", (dataset_id,))
    if busy:
      raise db_lib.InUse(f"dataset {dataset_id} is used by job {busy[0]['id']} "
                         f"({busy[0]['state']}): let it finish or fail first")
    datasets.delete(db, store, dataset_id)
    studio.sweep()
    return {"deleted": dataset_id}

  # Jobs.
  @r.post("/train-lora", summary="Queue a training job (the project's own launcher)",
          responses=not_found)
  def train_lora(request: api_models.TrainRequest):
    job_id = jobs.create(db, store, studio.settings.base_model, request.name, request.level,
                         request.dataset_id, request.parent_adapter_id, request.params())
    studio.worker.notify()
    return studio.job_view(db.one("SELECT * FROM jobs WHERE id = ?", (job_id,)))

  @r.get("/training-status", summary="Step, loss, validation loss and ETA of a job (default: "
         "the running one, else the latest)", responses=not_found)
  def training_status(job_id: str | None = fastapi.Query(None, pattern=r"^[0-9a-f]{16}$")):
    if job_id is None:
      job = (db.one("SELECT * FROM jobs WHERE state IN ('running', 'stopping') LIMIT 1")
             or db.one("SELECT * FROM jobs ORDER BY created DESC LIMIT 1"))
      return {"job": studio.job_view(job) if job else None}
    job = db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
    if job is None:
      raise db_lib.NotFound(f"no job {job_id}")
    return {"job": studio.job_view(job)}

  @r.post("/stop-training", summary="Stop a job: SIGTERM, the run checkpoints and exits",
          responses=not_found)
  def stop_training(ref: api_models.JobRef):
    return studio.job_view(studio.worker.stop(ref.job_id))

  @r.post("/jobs/{job_id}/resume", summary="Queue a stopped, interrupted or failed job again",
          responses=not_found)
  def resume(job_id: Id):
    return studio.job_view(studio.worker.resume(job_id))

  @r.get("/jobs", summary="List jobs, newest first")
  def list_jobs():
    return [studio.job_view(j) for j in db.all("SELECT * FROM jobs ORDER BY created DESC")]

  @r.get("/jobs/{job_id}/metrics", summary="A job's metrics rows (for the loss plot)",
         responses=not_found)
  def metrics(job_id: Id):
    _, run = studio.run_of(job_id)
    return jobs.read_metrics(run)

  @r.get("/jobs/{job_id}/log", summary="The end of a job's log", responses=not_found,
         response_class=responses.PlainTextResponse)
  def log(job_id: Id):
    studio.run_of(job_id)
    return jobs.log_tail(os.path.join(store.folder("jobs", job_id), "log.txt"))

  # Adapters.
  @r.get("/lora-adapters", summary="List finished adapters")
  def list_adapters():
    return db.all("SELECT * FROM adapters ORDER BY created")

  def _adapter(adapter_id: str) -> dict:
    row = db.one("SELECT * FROM adapters WHERE id = ?", (adapter_id,))
    if row is None:
      raise db_lib.NotFound(f"no adapter {adapter_id}")
    return row

  @r.get("/lora-adapters/{adapter_id}", summary="One adapter", responses=not_found)
  def get_adapter(adapter_id: Id):
    return _adapter(adapter_id)

  @r.get("/lora-adapters/{adapter_id}/download", summary="The adapter's .lora file",
         responses=not_found, response_class=responses.FileResponse)
  def download(adapter_id: Id):
    row = _adapter(adapter_id)
    name = security.safe_name(row["style"].replace("/", "_") + "_" + adapter_id + ".lora")
    return responses.FileResponse(store.blob_path(row["sha256"]), filename=name,
                                  media_type="application/octet-stream")

  @r.delete("/lora-adapters/{adapter_id}", summary="Delete an adapter nothing builds on",
            responses=in_use)
  def delete_adapter(adapter_id: Id):
    _adapter(adapter_id)
    child = db.one("SELECT id FROM adapters WHERE parent_adapter_id = ?", (adapter_id,))
    if child:
      raise db_lib.InUse(f"adapter {adapter_id} is the parent of adapter {child['id']}: delete "
                         f"that first")
    job = db.one("SELECT id, state FROM jobs WHERE parent_adapter_id = ? AND state IN "
                 "('queued', 'running', 'stopping', 'stopped', 'interrupted')", (adapter_id,))
    if job:
      raise db_lib.InUse(f"adapter {adapter_id} is the parent of job {job['id']} "
                         f"({job['state']})")
    db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,))
    studio.sweep()
    return {"deleted": adapter_id}

  # Audio: lora_jax.audio, looked up per request (audio_bridge).
  audio_errors = {501: {"model": api_models.Error, "description": "lora_jax.audio.service missing"}}

  def _with_audio(files, fn_name: str, outputs: bool):
    fn = audio_bridge.function(fn_name)  # 501 before anything is read
    uploads = _read_uploads(files, limits.max_request_bytes)
    results = []
    with tempfile.TemporaryDirectory(dir=store.root, prefix=".audio.") as scratch:
      for i, up in enumerate(uploads):
        path = os.path.join(scratch, f"{i}_{security.safe_name(up.name)}")
        with open(path, "wb") as f:
          f.write(up.data)
        if not outputs:
          results.append({"file": security.safe_name(up.name), "analysis": fn(path)})
          continue
        out = os.path.join(scratch, f"{i}_out")
        made = fn(path, out)
        paths = made.values() if isinstance(made, dict) else made
        # Listed, not kept: keeping clips and stems as a dataset's files is the next step.
        results.append({"file": security.safe_name(up.name), "outputs": [
            {"name": security.safe_name(os.path.basename(p)), "size": os.path.getsize(p)}
            for p in paths]})
    return results

  @r.post("/analyze-audio", summary="Tempo, key, genre, energy of WAV files (lora_jax.audio)",
          responses=audio_errors)
  def analyze_audio(files: list[fastapi.UploadFile] = fastapi.File(...)):
    return _with_audio(files, "analyze_file", outputs=False)

  @r.post("/split-audio", summary="Split WAV files into clips (lora_jax.audio)",
          responses=audio_errors)
  def split_audio(files: list[fastapi.UploadFile] = fastapi.File(...)):
    return _with_audio(files, "split_file", outputs=True)

  @r.post("/separate-stems", summary="Separate WAV files into stems (lora_jax.audio)",
          responses=audio_errors)
  def separate_stems(files: list[fastapi.UploadFile] = fastapi.File(...)):
    return _with_audio(files, "separate_stems", outputs=True)

  return r
