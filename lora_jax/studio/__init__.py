"""The training studio: a local web app that turns a user's MIDI into style adapters, for real.

  app.py          the FastAPI app: the token and body guard, JSON errors, the GUI's static files
  routes.py       the API under /api/training/
  serve.py        uvicorn, after the bind checks (launch/studio.py calls it)
  static/         the four-tab GUI: plain HTML and JavaScript, nothing fetched from elsewhere
  api_models.py   request bodies (pydantic): what the API accepts, checked
  db.py           the SQLite state (datasets, files, jobs, adapters), its schema version and
                  migrations
  storage.py      files under the root by content hash, written atomically before their row
  datasets.py     uploads (MIDI files, a zip, audio transcribed to MIDI) checked by decoding,
                  packed as a style pack, kept by content hash (clips and stems too)
  sources.py      datasets built offline in the background: corpus genres, the bundled
                  performances, a folder on the server (checked: no links leading out)
  jobs.py         a training job: the real launcher's command line and what its run wrote
  worker.py       runs queued jobs one at a time in a subprocess; stop, resume, restart recovery
  security.py     where the server may listen, the token, upload caps, safe file names
  audio_bridge.py the audio endpoints' link to lora_jax.audio.service, looked up per request
  listen.py       an adapter's sample against the base's (same seed), rendered by fluidsynth, kept
  song_base.py    --song_base: the song model song jobs train over, read strictly at start
  song_datasets.py  audio clips with lyrics and description per clip (the song model's data)
  song_jobs.py    a song job: the fork's metadata.jsonl and train_config.yaml, prepare + train_song
  song_listen.py  a song adapter's few seconds against its base's (same seed), by generate_song

Order of writes, everywhere: a file is written atomically first, then the row that names it, so
after a crash the database never names a file that is not whole (a file no row names is only
unused space, removed by `storage.sweep`).
"""
