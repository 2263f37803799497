"""The API under /api/training/: the seed's endpoints and what a user needs beside them.

Paths name rows by id, never by a file name. Long work (a training run) is a job the worker runs;
a request only queues it, stops it or reads what its run wrote.
"""

import json
import os
import tempfile
from typing import Annotated, Literal

import fastapi
from fastapi import responses

from lora_jax.studio import api_models, audio_bridge, datasets, jobs, listen, security, sources
from lora_jax.studio import song_datasets, song_jobs, song_listen
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


def _metadata(text: str | None, limit: int = 400) -> dict[str, dict]:
  """Tab 2's table as {file name: {column: text}}, each text cut at `limit` (a song dataset
  checks its own lengths: song_datasets.check_meta); a ValueError (400) naming what is wrong."""
  if not text:
    return {}
  try:
    table = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"metadata is not JSON: {e}") from e
  if not isinstance(table, dict) or not all(
      isinstance(row, dict) and all(isinstance(v, (str, int, float)) for v in row.values())
      for row in table.values()):
    raise ValueError("metadata must be {file name: {column: text or number}}")
  return {security.safe_name(name): {str(k)[:40]: str(v)[:limit] for k, v in row.items()}
          for name, row in table.items()}


def router(studio, error_responses: dict) -> fastapi.APIRouter:
  """The routes, bound to one `app.Studio`."""
  r = fastapi.APIRouter(responses={k: v for k, v in error_responses.items()
                                   if k in (400, 401, 413, 411)})
  db, store, limits = studio.db, studio.store, studio.settings.limits
  not_found = {404: error_responses[404]}
  in_use = {404: error_responses[404], 409: error_responses[409]}

  # Datasets.
  @r.post("/prepare-dataset", summary="Upload MIDI files, a zip of them, or audio files "
          "(transcribed to MIDI by basic-pitch) as a new dataset; or, with kind 'song', audio "
          "clips with their lyrics for the song model",
          responses={501: {"model": api_models.Error, "description": "no lora_jax.audio"}})
  def prepare_dataset(files: list[fastapi.UploadFile] = fastapi.File(...),
                      name: str = fastapi.Form(..., max_length=80),
                      style: str = fastapi.Form(..., max_length=80, description=(
                          "'genre' or 'genre/sub_style': the style pack and adapter name")),
                      metadata: str | None = fastapi.Form(None, max_length=200_000, description=(
                          "JSON {file name: {genre, bpm, key, mood, instruments, description, "
                          "lyrics}}: kept with audio files")),
                      kind: Literal["midi", "song"] = fastapi.Form("midi", description=(
                          "midi: a style pack (audio transcribed); song: audio clips kept as "
                          "they are, each with its lyrics and description"))):
    uploads = _read_uploads(files, limits.max_request_bytes)
    if kind == "song":
      return song_datasets.prepare(db, store, name, style, uploads, limits,
                                   _metadata(metadata, limit=200_000))
    return datasets.prepare(db, store, name, style, uploads, limits, meta=_metadata(metadata))

  @r.put("/datasets/{dataset_id}/files/{file_id}/meta", summary="Edit a song clip's row of the "
         "table (lyrics, description, ...)", responses=not_found)
  def set_meta(dataset_id: Id, file_id: Id, row: api_models.ClipMeta):
    return song_datasets.set_meta(db, dataset_id, file_id, row.model_dump(exclude_none=True))

  @r.get("/song-base", summary="The song model song jobs train over (--song_base), or why "
         "there is none")
  def get_song_base():
    if studio.song_base is None:
      return {"configured": False, "message": song_jobs.no_base_message()}
    return {"configured": True, **studio.song_base.describe()}

  @r.get("/dataset-sources", summary="What build-dataset can build here: corpus genres, bundled "
         "performances")
  def dataset_sources():
    return sources.catalog(studio.settings.performances_dir)

  @r.post("/build-dataset", summary="Build a dataset in the background from the music21 corpus, "
          "the bundled performances or a folder on the server (state 'preparing', then 'ready' "
          "or 'failed')")
  def build_dataset(request: api_models.BuildRequest):
    return datasets.get(db, studio.builder.submit(request))

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
    row = datasets.get(db, dataset_id)
    if row is None:
      raise db_lib.NotFound(f"no dataset {dataset_id}")
    if row["state"] == "preparing":
      raise db_lib.InUse(f"dataset {dataset_id} is still preparing: delete it once it is ready "
                         f"or failed")
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
    params = request.params()
    other = request.MIDI_ONLY if request.type == "song" else request.SONG_ONLY
    given = [k for k in other if params[k] is not None]
    if given:
      raise jobs.JobError(f"{given[0]} is not a setting of a {request.type} job")
    if request.type == "song":
      if request.parent_adapter_id or request.level != "parent":
        raise jobs.JobError("a song job trains over the song base alone: leave level and "
                            "parent_adapter_id out")
      job_id = song_jobs.create(db, store, studio.song_base, request.name, request.dataset_id,
                                params)
    else:
      job_id = jobs.create(db, store, studio.settings.base_model, request.name, request.level,
                           request.dataset_id, request.parent_adapter_id, params)
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
    suffix = ".zip" if row["level"] == "song" else ".lora"  # song: the PEFT folder and its codec
    name = security.safe_name(row["style"].replace("/", "_") + "_" + adapter_id + suffix)
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
    studio.listener.forget(adapter_id)
    studio.sweep()
    return {"deleted": adapter_id}

  @r.post("/lora-adapters/{adapter_id}/listen", summary="Render a short sample with the adapter "
          "and one from the base with the same seed (WAV, kept per adapter and seed)",
          responses={**not_found, 503: error_responses[503]})
  def listen_adapter(adapter_id: Id, request: api_models.ListenRequest):
    row = _adapter(adapter_id)
    if row["level"] == "song":
      job_dir = store.folder("jobs", row["job_id"])
      base = song_listen.base_of(job_dir, studio.song_base.model_pt if studio.song_base else "")
      studio.listener.keep(adapter_id, request.seed, song_listen.maker(
          store.blob_path(row["sha256"]), base, *song_listen.prompt_of(job_dir), request.seed))
    else:
      files = [store.blob_path(row["sha256"])]
      if row["parent_adapter_id"]:  # a child plays over its parent
        files.insert(0, store.blob_path(_adapter(row["parent_adapter_id"])["sha256"]))
      studio.listener.render(adapter_id, files, request.seed)
    url = f"/api/training/lora-adapters/{adapter_id}/listen"
    return {"adapter_id": adapter_id, "seed": request.seed,
            **{f"{which}_url": f"{url}/{which}.wav?seed={request.seed}" for which in listen.WHICH}}

  @r.get("/lora-adapters/{adapter_id}/listen/{which}.wav", summary="A rendered sample (POST "
         "listen first)", responses=not_found, response_class=responses.FileResponse)
  def listened(adapter_id: Id, which: Literal["adapter", "base"],
               seed: int = fastapi.Query(0, ge=0, le=2**31 - 1)):
    _adapter(adapter_id)
    path = studio.listener.paths(adapter_id, seed)[which]
    if not os.path.isfile(path):
      raise db_lib.NotFound(f"adapter {adapter_id} has no sample for seed {seed} yet: POST "
                            f"listen first")
    return responses.FileResponse(path, media_type="audio/wav")

  # Audio: lora_jax.audio, looked up per request (audio_bridge).
  audio_errors = {501: {"model": api_models.Error, "description": "lora_jax.audio.service missing"}}

  def _with_audio(files, fn_name: str, outputs: bool, dataset_id: str | None = None):
    fn = audio_bridge.function(fn_name)  # 501 before anything is read
    if dataset_id is not None and datasets.get(db, dataset_id) is None:
      raise db_lib.NotFound(f"no dataset {dataset_id}")
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
        paths = list(made.values() if isinstance(made, dict) else made)
        shown = security.safe_name(up.name)
        if dataset_id is None:  # listed only
          results.append({"file": shown, "outputs": [
              {"name": security.safe_name(os.path.basename(p)), "size": os.path.getsize(p)}
              for p in paths]})
          continue
        kind = "stem" if isinstance(made, dict) else "clip"
        kept = [datasets.Kept(security.safe_name(os.path.basename(p)), p, kind, "kept", "",
                              {"from": shown}) for p in paths]
        results.append({"file": shown, "outputs": datasets.add_files(db, store, dataset_id,
                                                                     kept)})
    return results

  @r.post("/analyze-audio", summary="Tempo, key, genre, energy of WAV files (lora_jax.audio)",
          responses=audio_errors)
  def analyze_audio(files: list[fastapi.UploadFile] = fastapi.File(...)):
    return _with_audio(files, "analyze_file", outputs=False)

  keep_in = fastapi.Form(None, pattern=r"^[0-9a-f]{16}$", description=(
      "a dataset to keep the outputs in, as its files; without it they are only listed"))

  @r.post("/split-audio", summary="Split WAV files into clips (lora_jax.audio)",
          responses={**audio_errors, **not_found})
  def split_audio(files: list[fastapi.UploadFile] = fastapi.File(...),
                  dataset_id: str | None = keep_in):
    return _with_audio(files, "split_file", outputs=True, dataset_id=dataset_id)

  @r.post("/separate-stems", summary="Separate WAV files into stems (lora_jax.audio)",
          responses={**audio_errors, **not_found})
  def separate_stems(files: list[fastapi.UploadFile] = fastapi.File(...),
                     dataset_id: str | None = keep_in):
    return _with_audio(files, "separate_stems", outputs=True, dataset_id=dataset_id)

  return r
