"""A dataset: files checked, kept by content hash and packed as a style pack.

Here the user's uploads (MIDI files one by one or in a zip, or audio); `sources.py` builds the
others (the corpus, the bundled performances, a local folder) and ends in the same `pack` and
`commit`. Every file is decoded before anything is stored: MIDI by the project's reader
(`midi_file.read_midi`), audio by the audio package, which transcribes it to MIDI (basic-pitch,
`lora_jax.audio.service.transcribe_file`). One file that cannot be read refuses the whole upload
with one message naming it, so a dataset never holds a file training would fail on. The MIDI
becomes the style pack of the dataset's style ('genre' or 'genre/sub_style') through
`style_packs.folder.build_from_files` (splits by content hash, a report), moved to
`<root>/datasets/<id>/`, and only then are the blobs and rows written (`commit`).
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
from lora_jax.studio import audio_bridge
from lora_jax.studio import db as db_lib
from lora_jax.studio import security, storage as storage_lib


class DatasetError(ValueError):
  """An upload that cannot become a dataset; the message says which file and why."""


@dataclasses.dataclass(frozen=True)
class Kept:
  """A file a dataset keeps (a blob and a `files` row): where it is now, its kind (db.py)."""
  name: str
  path: str
  kind: str = "midi"
  state: str = "packed"  # 'packed', 'left out', or 'kept' (audio, clips, stems: not packed)
  reason: str = ""
  meta: dict = dataclasses.field(default_factory=dict)


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
    raise DatasetError("no files uploaded: send MIDI files (.mid, .midi), audio files or a .zip "
                       "of MIDI files")
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
    elif midi_file.is_midi_name(name) or is_audio_name(name):
      files.append(Upload(name, up.data))
    else:
      raise DatasetError(f"{name}: not a MIDI file (.mid, .midi, .smf, .kar), an audio file "
                         f"({', '.join(folder.AUDIO_SUFFIXES)}) or a .zip of MIDI files")
  if not files:
    raise DatasetError(f"no MIDI files in the upload ({len(other)} other files: "
                       f"{', '.join(other[:5])})")
  if len(files) > limits.max_files:
    raise DatasetError(f"{len(files)} MIDI files, more than the limit of {limits.max_files}")
  names = unique_names([f.name for f in files])
  return [Upload(n, f.data) for n, f in zip(names, files)], other


def unique_names(names: list[str], taken: set[str] = frozenset()) -> list[str]:
  """`names` with a repeat (case-insensitive, or one in `taken`) numbered: a.mid, a_2.mid."""
  seen = {t.lower() for t in taken}
  out = []
  for name in names:
    stem, dot, suffix = name.rpartition(".")
    candidate, n = name, 1
    while candidate.lower() in seen:
      n += 1
      candidate = f"{stem}_{n}.{suffix}" if dot else f"{name}_{n}"
    seen.add(candidate.lower())
    out.append(candidate)
  return out


def is_audio_name(name: str) -> bool:
  return name.lower().endswith(folder.AUDIO_SUFFIXES)


def transcribe(audio: list[tuple[str, str]], scratch: str, meta: dict[str, dict],
               taken: set[str]) -> list[Kept]:
  """Each (shown name, path) of audio kept as itself and as its MIDI transcription, which is what
  the pack reads. A file that cannot be decoded refuses them all, named."""
  if not audio:
    return []
  fn = audio_bridge.function("transcribe_file")  # 501 when the audio package is missing
  names = unique_names([os.path.splitext(shown)[0] + ".mid" for shown, _ in audio], taken)
  kept = []
  for i, ((shown, path), name) in enumerate(zip(audio, names)):
    try:
      midi = fn(path, os.path.join(scratch, "transcribed", str(i)))
    except ValueError as e:  # BadAudio, or basic-pitch missing: one line naming the file
      raise DatasetError(str(e).replace(path, shown)) from e
    kept.append(Kept(shown, path, "audio", "kept", "", meta.get(shown, {})))
    kept.append(Kept(name, midi, "transcription", "packed", "", {"from": shown}))
  return kept


def pack(kept: list[Kept], style: str, scratch: str,
         split: folder.SplitSettings = folder.SplitSettings()) -> tuple[dict, list[Kept]]:
  """Pack the MIDI of `kept` (unique names) as `style` into `<scratch>/packs`; (the report's
  summary, `kept` with each MIDI file's state)."""
  midi = {k.name: k for k in kept if k.kind in ("midi", "transcription")}
  if not midi:
    raise DatasetError("no MIDI files to pack")
  paths = []
  for name, k in midi.items():  # the pack names a file by its base name: its kept name
    path = os.path.join(scratch, "named", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(k.path, path)
    paths.append(path)
  try:
    report = folder.build_from_files(paths, style, os.path.join(scratch, "packs"), split)
  except folder.FolderPackError as e:
    raise DatasetError(str(e)) from e
  packed = {s.style: s for s in report.styles}
  if not packed[style].packed:
    raise DatasetError(f"style {style}: {packed[style].why_not}")
  left_out = {os.path.basename(piece): reason for piece, reason in report.failures}
  kept = [dataclasses.replace(k, state="left out", reason=left_out[k.name])
          if k.kind in ("midi", "transcription") and k.name in left_out else k for k in kept]
  return {"lines": report.lines(), "splits": {s.style: s.splits for s in report.styles}}, kept


_FILE_COLUMNS = "id, dataset_id, name, sha256, size, state, reason, kind, meta"


def _keep(store: storage_lib.Storage, dataset_id: str, kept: list[Kept]) -> list[tuple]:
  """Each file as a blob (under store.lock); its `files` row."""
  rows = []
  for k in kept:
    sha, size = store.put_file(k.path)
    rows.append((db_lib.new_id(), dataset_id, k.name, sha, size, k.state, k.reason, k.kind,
                 json.dumps(k.meta)))
  return rows


def commit(database: db_lib.Database, store: storage_lib.Storage, dataset_id: str,
           scratch: str, kept: list[Kept], summary: dict, new_row: dict | None = None) -> None:
  """Move `<scratch>/packs` into place and keep the files as blobs, then write the rows: a new
  dataset's (`new_row`: name, style, source, kind) or a preparing one's, now ready."""
  final = store.folder("datasets", dataset_id)
  with store.lock:  # the pack and blobs are whole before any row names them
    rows = _keep(store, dataset_id, kept)  # before the move: a kept file may be in the pack
    os.makedirs(os.path.dirname(final), exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)  # what an interrupted earlier build left
    os.rename(os.path.join(scratch, "packs"), final)
    with database.transaction() as c:
      if new_row is not None:
        c.execute("INSERT INTO datasets (id, name, style, pack_dir, report, created, source, "
                  "state, message, kind) VALUES (?, ?, ?, ?, ?, ?, ?, 'ready', '', ?)",
                  (dataset_id, new_row["name"], new_row["style"],
                   os.path.relpath(final, store.root), json.dumps(summary), db_lib.now(),
                   json.dumps(new_row["source"]), new_row["kind"]))
      else:
        c.execute("UPDATE datasets SET pack_dir = ?, report = ?, state = 'ready', message = '' "
                  "WHERE id = ?", (os.path.relpath(final, store.root), json.dumps(summary),
                                   dataset_id))
      c.executemany(f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows)


def add_files(database: db_lib.Database, store: storage_lib.Storage, dataset_id: str,
              kept: list[Kept]) -> list[dict]:
  """Keep more files (clips, stems) in a dataset: blobs first, then rows; the new rows."""
  with store.lock:
    rows = _keep(store, dataset_id, kept)
    with database.transaction() as c:
      if c.execute("SELECT id FROM datasets WHERE id = ?", (dataset_id,)).fetchone() is None:
        raise db_lib.NotFound(f"no dataset {dataset_id}")
      c.executemany(f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows)
  return [dict(zip(_FILE_COLUMNS.split(", "), r), meta=k.meta) for r, k in zip(rows, kept)]


def prepare(database: db_lib.Database, store: storage_lib.Storage, name: str, style: str,
            uploads: list[Upload], limits: security.Limits,
            split: folder.SplitSettings = folder.SplitSettings(),
            meta: dict[str, dict] | None = None) -> dict:
  """Check, pack and keep an upload (MIDI, audio) as a new dataset; its row (see `get`).
  `meta` holds the user's metadata of audio files by name (tab 2's table)."""
  check_style(style)
  if not 0 < len(name.strip()) <= 80:
    raise DatasetError(f"dataset name {name!r} must be 1 to 80 characters")
  files, other = expand(uploads, limits)
  dataset_id = db_lib.new_id()
  scratch = tempfile.mkdtemp(prefix=".upload.", dir=store.root)
  try:
    kept, audio = [], []
    for i, f in enumerate(files):
      path = os.path.join(scratch, "in", str(i), f.name)
      os.makedirs(os.path.dirname(path))
      with open(path, "wb") as out:
        out.write(f.data)
      if is_audio_name(f.name):
        audio.append((f.name, path))
        continue
      try:
        midi_file.read_midi(path)
      except midi_file.MidiReadError as e:
        raise DatasetError(str(e).replace(path, f.name)) from e
      kept.append(Kept(f.name, path))
    kept += transcribe(audio, scratch, meta or {}, {k.name for k in kept})
    summary, kept = pack(kept, style, scratch, split)
    summary["ignored"] = other
    commit(database, store, dataset_id, scratch, kept, summary,
           {"name": name.strip(), "style": style, "source": {"kind": "upload"},
            "kind": "midi"})
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return get(database, dataset_id)


def pack_dir(store: storage_lib.Storage, dataset: dict, style: str) -> str:
  """The folder of a style's pack in the dataset: its own style, or its genre's."""
  return os.path.join(store.root, dataset["pack_dir"], *style.split("/"))


_OTHER_KIND = {  # why a job of one kind refuses a dataset of the other
    "midi": "is a song dataset (audio clips with lyrics): train it with type 'song'",
    "song": "is a MIDI dataset; a song job trains on a song dataset (audio clips with lyrics, "
            "tab 2)",
}


def ready(database: db_lib.Database, dataset_id: str, kind: str, error: type) -> dict:
  """The dataset a job of `kind` trains on; NotFound, or `error` when it is not of that kind or
  not ready."""
  dataset = get(database, dataset_id)
  if dataset is None:
    raise db_lib.NotFound(f"no dataset {dataset_id}")
  if dataset["kind"] != kind:
    raise error(f"dataset {dataset_id} {_OTHER_KIND[kind]}")
  if dataset["state"] != "ready":
    raise error(f"dataset {dataset_id} is {dataset['state']}"
                f"{': ' + dataset['message'] if dataset['message'] else ''}; a job needs a "
                f"ready dataset")
  return dataset


def get(database: db_lib.Database, dataset_id: str) -> dict | None:
  row = database.one("SELECT * FROM datasets WHERE id = ?", (dataset_id,))
  if row is None:
    return None
  row["report"] = json.loads(row["report"])
  row["source"] = json.loads(row["source"])
  row["files"] = database.all("SELECT id, name, sha256, size, state, reason, kind, meta FROM "
                              "files WHERE dataset_id = ? ORDER BY kind, name", (dataset_id,))
  for f in row["files"]:
    f["meta"] = json.loads(f["meta"])
  return row


def listing(database: db_lib.Database) -> list[dict]:
  rows = database.all("SELECT d.id, d.name, d.style, d.kind, d.created, d.state, d.message, "
                      "COUNT(f.id) AS n_files "
                      "FROM datasets d LEFT JOIN files f ON f.dataset_id = d.id "
                      "GROUP BY d.id ORDER BY d.created")
  return rows


def delete(database: db_lib.Database, store: storage_lib.Storage, dataset_id: str) -> None:
  """Remove the dataset's rows, then its pack and any blob no row names any more."""
  with database.transaction() as c:
    c.execute("DELETE FROM files WHERE dataset_id = ?", (dataset_id,))
    c.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
  store.remove_folder("datasets", dataset_id)
