"""A dataset: the user's MIDI files (uploaded one by one or in a zip), checked, kept and packed.

Every file is decoded by the project's MIDI reader (`midi_file.read_midi`) before anything is
stored: one file that cannot be read refuses the whole upload with one message naming it, so a
dataset never holds a file training would fail on. Then the files become the style pack of the
dataset's style ('genre' or 'genre/sub_style') through `style_packs.folder.build_from_files`
(splits by content hash, a report), under `<root>/datasets/<id>/packs/`, and only then are the
blobs and rows written.
"""

import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import zipfile

from lora_jax.data import midi_file
from lora_jax.data.style_packs import folder
from lora_jax.studio import db as db_lib
from lora_jax.studio import security, storage as storage_lib


class DatasetError(ValueError):
  """An upload that cannot become a dataset; the message says which file and why."""


@dataclasses.dataclass(frozen=True)
class Upload:
  """One uploaded file: the name the client gave and its bytes."""
  name: str
  data: bytes


_STYLE = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?")


def check_style(style: str) -> None:
  if not _STYLE.fullmatch(style) or "run" in style.split("/"):
    raise DatasetError(f"style {style!r} is not 'genre' or 'genre/sub_style' made of letters, "
                       f"digits and underscores (not 'run'): it becomes the adapter's name")


def _unzip(upload: Upload, limits: security.Limits) -> tuple[list[Upload], list[str]]:
  """The MIDI members of a zip, and the names of the others (left out)."""
  try:
    archive = zipfile.ZipFile(io.BytesIO(upload.data))
    members = [m for m in archive.infolist() if not m.is_dir()]
  except zipfile.BadZipFile as e:
    raise DatasetError(f"{upload.name}: not a readable zip file ({e})") from e
  total = sum(m.file_size for m in members)
  if total > limits.max_unzipped_bytes:
    raise DatasetError(f"{upload.name}: its files hold {total:,} bytes unzipped, more than the "
                       f"limit of {limits.max_unzipped_bytes:,}")
  midi, other = [], []
  for m in members:
    shown = security.safe_name(m.filename)
    if not midi_file.is_midi_name(shown) or any(p.startswith(("_", ".")) for p in
                                                m.filename.split("/")):
      other.append(f"{upload.name}:{m.filename}")
      continue
    if m.file_size > limits.max_file_bytes:
      raise DatasetError(f"{upload.name}:{m.filename}: {m.file_size:,} bytes, more than the "
                         f"limit of {limits.max_file_bytes:,} per file")
    with archive.open(m) as f:
      data = f.read(limits.max_file_bytes + 1)  # the header's size may lie
    if len(data) > limits.max_file_bytes:
      raise DatasetError(f"{upload.name}:{m.filename}: more than {limits.max_file_bytes:,} bytes")
    midi.append(Upload(shown, data))
  return midi, other


def expand(uploads: list[Upload], limits: security.Limits) -> tuple[list[Upload], list[str]]:
  """The MIDI files of an upload (zips opened), with unique safe names; and names left out."""
  if not uploads:
    raise DatasetError("no files uploaded: send MIDI files (.mid, .midi) or a .zip of them")
  files, other = [], []
  for up in uploads:
    name = security.safe_name(up.name)
    if len(up.data) > (limits.max_unzipped_bytes if name.lower().endswith(".zip") else
                       limits.max_file_bytes):
      raise DatasetError(f"{name}: {len(up.data):,} bytes, more than the limit of "
                         f"{limits.max_file_bytes:,} per file")
    if name.lower().endswith(".zip"):
      found, left = _unzip(Upload(name, up.data), limits)
      files += found
      other += left
    elif midi_file.is_midi_name(name):
      files.append(Upload(name, up.data))
    else:
      raise DatasetError(f"{name}: not a MIDI file (.mid, .midi, .smf, .kar) or a .zip of them")
  if not files:
    raise DatasetError(f"no MIDI files in the upload ({len(other)} other files: "
                       f"{', '.join(other[:5])})")
  if len(files) > limits.max_files:
    raise DatasetError(f"{len(files)} MIDI files, more than the limit of {limits.max_files}")
  seen: dict[str, int] = {}
  unique = []
  for f in files:
    stem, dot, suffix = f.name.rpartition(".")
    n = seen.get(f.name.lower(), 0)
    seen[f.name.lower()] = n + 1
    unique.append(f if n == 0 else Upload(f"{stem}_{n + 1}.{suffix}", f.data))
  return unique, other


def prepare(database: db_lib.Database, store: storage_lib.Storage, name: str, style: str,
            uploads: list[Upload], limits: security.Limits,
            split: folder.SplitSettings = folder.SplitSettings()) -> dict:
  """Check, pack and keep an upload as a new dataset; its row (see `get`)."""
  check_style(style)
  if not 0 < len(name.strip()) <= 80:
    raise DatasetError(f"dataset name {name!r} must be 1 to 80 characters")
  files, other = expand(uploads, limits)
  dataset_id = db_lib.new_id()
  scratch = tempfile.mkdtemp(prefix=".upload.", dir=store.root)
  final = store.folder("datasets", dataset_id)
  try:
    paths = []
    for f in files:
      path = os.path.join(scratch, f.name)
      with open(path, "wb") as out:
        out.write(f.data)
      try:
        midi_file.read_midi(path)
      except midi_file.MidiReadError as e:
        raise DatasetError(str(e).replace(path, f.name)) from e
      paths.append(path)
    packs = os.path.join(scratch, "packs")
    try:
      report = folder.build_from_files(paths, style, packs, split)
    except folder.FolderPackError as e:
      raise DatasetError(str(e)) from e
    packed = {s.style: s for s in report.styles}
    if not packed[style].packed:
      raise DatasetError(f"style {style}: {packed[style].why_not}")
    left_out = {os.path.basename(p): reason for p, reason in report.failures}
    summary = {"lines": report.lines(), "ignored": other,
               "splits": {s.style: s.splits for s in report.styles}}
    with store.lock:  # the pack and blobs are whole before any row names them
      os.makedirs(os.path.dirname(final), exist_ok=True)
      os.rename(packs, final)
      rows = [(db_lib.new_id(), dataset_id, f.name, store.put_bytes(f.data), len(f.data),
               "left out" if f.name in left_out else "packed", left_out.get(f.name, ""))
              for f in files]
      with database.transaction() as c:
        c.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?)",
                  (dataset_id, name.strip(), style, os.path.relpath(final, store.root),
                   json.dumps(summary), db_lib.now()))
        c.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return get(database, dataset_id)


def pack_dir(store: storage_lib.Storage, dataset: dict, style: str) -> str:
  """The folder of a style's pack in the dataset: its own style, or its genre's."""
  return os.path.join(store.root, dataset["pack_dir"], *style.split("/"))


def get(database: db_lib.Database, dataset_id: str) -> dict | None:
  row = database.one("SELECT * FROM datasets WHERE id = ?", (dataset_id,))
  if row is None:
    return None
  row["report"] = json.loads(row["report"])
  row["files"] = database.all("SELECT id, name, sha256, size, state, reason FROM files "
                              "WHERE dataset_id = ? ORDER BY name", (dataset_id,))
  return row


def listing(database: db_lib.Database) -> list[dict]:
  rows = database.all("SELECT d.id, d.name, d.style, d.created, COUNT(f.id) AS n_files "
                      "FROM datasets d LEFT JOIN files f ON f.dataset_id = d.id "
                      "GROUP BY d.id ORDER BY d.created")
  return rows


def delete(database: db_lib.Database, store: storage_lib.Storage, dataset_id: str) -> None:
  """Remove the dataset's rows, then its pack and any blob no row names any more."""
  with database.transaction() as c:
    c.execute("DELETE FROM files WHERE dataset_id = ?", (dataset_id,))
    c.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
  store.remove_folder("datasets", dataset_id)
