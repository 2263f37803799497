"""A song dataset: the user's audio clips, each with its lyrics and description (tab 2's table),
for the song model's LoRA (song_jobs.py).

Every clip is decoded (soundfile) before anything is kept; one that cannot be read, is empty or
holds non-finite samples refuses the upload, named. Clips are kept as blobs with their table row
as `meta` (`lyrics`, `description`, `genre`, `bpm`, `key`, `mood`, `instruments`); nothing is
packed: a job tokenizes them with its base's codec (`launch/prepare_song_data.py`'s code), so the
same clips train over any base. Lyrics are checked when a job is made, not here: a user fills them
in afterwards (`set_meta`), clip by clip.
"""

import json
import os
import shutil
import tempfile

import numpy as np
import soundfile

from lora_jax.studio import datasets
from lora_jax.studio import db as db_lib
from lora_jax.studio import security
from lora_jax.studio import storage as storage_lib

COLUMNS = ("genre", "bpm", "key", "mood", "instruments", "description", "lyrics")
LYRICS_CHARS = 8000  # a whole song's text; the other columns are short


def check_meta(row: dict) -> dict:
  """A table row as {column: text}, every column known and within its length."""
  unknown = sorted(set(row) - set(COLUMNS))
  if unknown:
    raise datasets.DatasetError(f"unknown column {unknown[0]!r}; a song clip's columns are "
                                f"{', '.join(COLUMNS)}")
  out = {}
  for key, value in row.items():
    text = str(value)
    limit = LYRICS_CHARS if key == "lyrics" else 400
    if len(text) > limit:
      raise datasets.DatasetError(f"{key}: {len(text):,} characters, more than {limit:,}")
    out[key] = text
  return out


def description(meta: dict) -> str:
  """The text the song model is conditioned on: the description, then the table's tags."""
  parts = [meta.get("description", "")]
  parts += [meta.get(k, "") for k in ("genre", "mood", "instruments", "key")]
  if meta.get("bpm", "").strip():
    parts.append(f"the bpm is {meta['bpm'].strip()}")
  return ", ".join(p.strip() for p in parts if p.strip())


def _seconds(path: str, shown: str) -> float:
  try:
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError) as e:
    raise datasets.DatasetError(f"{shown}: cannot decode it as audio ({e})") from None
  if len(data) == 0:
    raise datasets.DatasetError(f"{shown}: holds no samples")
  if not np.isfinite(data).all():
    raise datasets.DatasetError(f"{shown}: holds non-finite samples")
  return len(data) / rate


def prepare(database: db_lib.Database, store: storage_lib.Storage, name: str, style: str,
            uploads: list[datasets.Upload], limits: security.Limits,
            meta: dict[str, dict]) -> dict:
  """Check and keep audio clips as a new song dataset; its row (datasets.get)."""
  datasets.check_style(style)
  if not 0 < len(name.strip()) <= 80:
    raise datasets.DatasetError(f"dataset name {name!r} must be 1 to 80 characters")
  if not uploads:
    raise datasets.DatasetError("no files uploaded: a song dataset is audio clips")
  if len(uploads) > limits.max_files:
    raise datasets.DatasetError(f"{len(uploads)} clips, more than the limit of {limits.max_files}")
  shown = [security.safe_name(u.name) for u in uploads]
  for u, s in zip(uploads, shown):
    if not datasets.is_audio_name(s):
      raise datasets.DatasetError(f"{s}: not an audio file; a song dataset is audio clips "
                                  f"({', '.join(datasets.folder.AUDIO_SUFFIXES)})")
    if len(u.data) > limits.max_file_bytes:
      raise datasets.DatasetError(f"{s}: {len(u.data):,} bytes, more than the limit of "
                                  f"{limits.max_file_bytes:,} per file")
  names = datasets.unique_names(shown)
  rows = {n: check_meta(meta.get(s, {})) for n, s in zip(names, shown)}
  dataset_id = db_lib.new_id()
  scratch = tempfile.mkdtemp(prefix=".upload.", dir=store.root)
  try:
    kept, total = [], 0.0
    for i, (u, n) in enumerate(zip(uploads, names)):
      path = os.path.join(scratch, "in", str(i), n)
      os.makedirs(os.path.dirname(path))
      with open(path, "wb") as f:
        f.write(u.data)
      total += _seconds(path, n)
      kept.append(datasets.Kept(n, path, "audio", "packed", "", rows[n]))
    os.makedirs(os.path.join(scratch, "packs"))  # a song dataset has no pack: an empty folder
    with_lyrics = sum(bool(r.get("lyrics", "").strip()) for r in rows.values())
    summary = {"lines": [f"{len(kept)} song clips, {total:.1f} s of audio; lyrics on "
                         f"{with_lyrics} of them"], "splits": {}, "ignored": []}
    datasets.commit(database, store, dataset_id, scratch, kept, summary,
                    {"name": name.strip(), "style": style, "source": {"kind": "upload"},
                     "kind": "song"})
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return datasets.get(database, dataset_id)


def set_meta(database: db_lib.Database, dataset_id: str, file_id: str, row: dict) -> dict:
  """Change a clip's table row (the columns given; others kept); the file's new row."""
  row = check_meta(row)
  with database.transaction() as c:
    found = c.execute("SELECT meta FROM files WHERE id = ? AND dataset_id = ?",
                      (file_id, dataset_id)).fetchone()
    if found is None:
      raise db_lib.NotFound(f"no file {file_id} in dataset {dataset_id}")
    meta = {**json.loads(found["meta"]), **row}
    c.execute("UPDATE files SET meta = ? WHERE id = ?", (json.dumps(meta), file_id))
  out = database.one("SELECT id, name, sha256, size, state, reason, kind, meta FROM files "
                     "WHERE id = ?", (file_id,))
  out["meta"] = json.loads(out["meta"])
  return out
