"""Datasets the studio builds itself, offline, in the background: the music21 corpus's style packs,
the bundled expressive performances, and a folder on the server's disk.

  corpus        a genre of `style_packs.corpus.GENRES` (all its sub-style packs are built), at
                most `max_pieces` pieces per style; the dataset's style is the genre or one of its
                sub-styles
  performances  the MIDI fetched at setup into `.cache/performances/` (scripts/setup.sh):
                MAESTRO piano performances, POP909 pop songs; packed as the style the user names
  folder        every MIDI and audio file under an absolute path on the server (folders starting
                with '.' or '_' skipped), packed as the style the user names; audio is transcribed
                to MIDI by basic-pitch first (note F about 0.42 on GM renders: a sketch of the
                notes, good on solo lines, poor on organ or choir)

The folder is only read: its files are copied into the dataset, nothing is written beside them.
It must exist and be readable, and no link in it may lead outside it (one such link refuses the
import, naming it); files are read through their resolved paths, which are checked to lie inside.

A request is checked before its row exists (400 with one line); then the row says 'preparing',
the build runs on the builder's one thread, and the row becomes 'ready' (pack, blobs, file rows:
`datasets.commit`) or 'failed' with the reason. A server that stops mid-build finds the row
'preparing' and builds it again (the request is stored in the row's `source`).
"""

import glob
import os
import queue
import shutil
import tempfile
import threading

from absl import logging

from lora_jax.data import midi_file
from lora_jax.data.style_packs import corpus
from lora_jax.data.style_packs import pack as style_pack
from lora_jax.studio import api_models, datasets, security
from lora_jax.studio import db as db_lib
from lora_jax.studio import storage as storage_lib

PERFORMANCES = {"maestro": "classical piano performances (MAESTRO, CC BY-NC-SA 4.0)",
                "pop909": "pop songs as piano arrangements (POP909, MIT)"}


def catalog(performances_dir: str) -> dict:
  """What can be built here: the corpus genres and the performance collections on disk."""
  return {
      "corpus": [{"genre": g.name, "sub_styles": list(g.sub_styles)}
                 for g in corpus.GENRES.values()],
      "performances": [{"collection": name, "description": text,
                        "n_files": len(_performance_files(performances_dir, name))}
                       for name, text in PERFORMANCES.items()],
      "transcription": "audio becomes MIDI by basic-pitch: note F about 0.42 on rendered General "
                       "MIDI pieces (0.7 on fiddle and flute, under 0.15 on organ and choir)",
  }


def _performance_files(performances_dir: str, collection: str) -> list[str]:
  return sorted(glob.glob(os.path.join(performances_dir, collection, "*.mid")))


def _inside(root: str, path: str) -> bool:
  return os.path.commonpath([root, os.path.realpath(path)]) == root


MAX_WALKED = 50_000  # entries looked at in a folder: '/' given by mistake ends with a message


def folder_files(path: str, limits: security.Limits) -> tuple[list[tuple[str, str]], list[str]]:
  """(shown name, resolved path) of the MIDI and audio files under `path`, and the others' names;
  a DatasetError when the folder is missing, unreadable or links outside itself."""
  if not os.path.isabs(path):
    raise datasets.DatasetError(f"folder {path!r} is not an absolute path on the server")
  if not os.path.isdir(path):
    raise datasets.DatasetError(f"folder {path}: no such folder on the server")
  root = os.path.realpath(path)
  if not os.access(root, os.R_OK | os.X_OK):
    raise datasets.DatasetError(f"folder {path}: the server may not read it")
  found, other, walked = [], [], 0
  for here, dirs, names in os.walk(root):  # links to folders are checked, never entered
    walked += len(dirs) + len(names)
    if walked > MAX_WALKED:
      raise datasets.DatasetError(f"folder {path} holds more than {MAX_WALKED:,} files and "
                                  f"folders: choose the folder of the music itself")
    for name in sorted(dirs) + sorted(names):
      full = os.path.join(here, name)
      if os.path.islink(full) and not _inside(root, full):
        raise datasets.DatasetError(
            f"{os.path.relpath(full, root)} in folder {path} links to "
            f"{os.path.realpath(full)}, outside the folder: copy the files in instead")
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_"))
                     and not os.path.islink(os.path.join(here, d)))
    for name in sorted(names):
      rel = os.path.relpath(os.path.join(here, name), root)
      if name.startswith("."):
        continue
      if datasets.is_audio_name(name) or midi_file.is_midi_name(name):
        found.append((security.safe_name(rel.replace(os.sep, "_")),
                      os.path.realpath(os.path.join(here, name))))
      else:
        other.append(rel)
  if not found:
    raise datasets.DatasetError(f"folder {path}: no MIDI or audio files in it ({len(other)} "
                                f"other files)")
  if len(found) > limits.max_files:
    raise datasets.DatasetError(f"folder {path}: {len(found)} MIDI and audio files, more than "
                                f"the limit of {limits.max_files}")
  return found, other


def check(request: api_models.BuildRequest, performances_dir: str,
          limits: security.Limits) -> None:
  """Refuse a request that cannot build, before any row is written."""
  datasets.check_style(request.style)
  genre, _, sub = request.style.partition("/")
  if request.source == "corpus":
    if genre not in corpus.GENRES:
      raise datasets.DatasetError(f"corpus genre {genre!r} is not one of {sorted(corpus.GENRES)}")
    if sub and sub not in corpus.GENRES[genre].sub_styles:
      raise datasets.DatasetError(f"corpus genre {genre} has no sub-style {sub!r}; it has "
                                  f"{list(corpus.GENRES[genre].sub_styles) or 'none'}")
  elif request.source == "performances":
    if request.collection is None:
      raise datasets.DatasetError(f"source 'performances' needs a collection: one of "
                                  f"{sorted(PERFORMANCES)}")
    if not _performance_files(performances_dir, request.collection):
      raise datasets.DatasetError(
          f"no {request.collection} performances in {performances_dir}: scripts/setup.sh "
          f"fetches them (scripts/fetch_performances.sh)")
  else:
    if request.path is None:
      raise datasets.DatasetError("source 'folder' needs a path: an absolute folder on the server")
    folder_files(request.path, limits)
  extra = {"corpus": ("collection", "path"), "performances": ("path", "max_pieces"),
           "folder": ("collection", "max_pieces")}[request.source]
  given = [f for f in extra if getattr(request, f) is not None]
  if given:
    raise datasets.DatasetError(f"source {request.source!r} takes no {', '.join(given)}")


def _corpus_pack(request: api_models.BuildRequest, scratch: str) -> tuple[dict, list]:
  """The genre's packs built from the music21 corpus into `<scratch>/packs`."""
  genre = request.style.split("/")[0]
  packs = os.path.join(scratch, "packs")
  stats = corpus.build_style_packs(packs, [genre], request.max_pieces, workers=1)
  splits = {}
  for s in stats.styles:
    loaded = style_pack.load_style_pack(os.path.join(packs, *s.style.split("/")))
    splits[s.style] = {name: len(loaded.split(name)) for name in style_pack.SPLITS}
  missing = [k for k in ("train", "validation") if not splits[request.style][k]]
  if missing:
    raise datasets.DatasetError(
        f"style {request.style}: no {' or '.join(missing)} pieces among the "
        f"{sum(splits[request.style].values())} taken (max_pieces {request.max_pieces}): "
        f"take more")
  union = style_pack.load_style_pack(os.path.join(packs, genre))
  kept = [datasets.Kept(os.path.basename(p.path), union.midi_path(p), "midi", "packed", "",
                        {"source": p.source, "style": p.style}) for p in union.pieces]
  lines = [f"{s.style}: {s.n_selected} of {s.n_available} pieces, {s.n_failed} failed; splits "
           f"{splits[s.style]}" for s in stats.styles]
  return {"lines": lines, "splits": splits, "ignored": []}, kept


class Builder:
  """Builds datasets one at a time on its own thread. It is a daemon: a server that stops does
  not wait for a build, whose row stays 'preparing' and is built again by the next server."""

  def __init__(self, database: db_lib.Database, store: storage_lib.Storage,
               limits: security.Limits, performances_dir: str):
    self.db, self.store, self.limits = database, store, limits
    self.performances_dir = performances_dir
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._loop, name="studio-datasets", daemon=True)

  def submit(self, request: api_models.BuildRequest) -> str:
    """Check the request, write its 'preparing' row and queue the build; the dataset id."""
    check(request, self.performances_dir, self.limits)
    dataset_id = db_lib.new_id()
    self.db.execute("INSERT INTO datasets (id, name, style, pack_dir, report, created, source, "
                    "state, message) VALUES (?, ?, ?, '', '{}', ?, ?, 'preparing', ?)",
                    (dataset_id, request.name.strip(), request.style, db_lib.now(),
                     request.model_dump_json(), f"building from {request.source}"))
    self._queue.put((dataset_id, request))
    return dataset_id

  def start(self) -> None:
    """Build again what the last server left preparing, then take requests."""
    for row in self.db.all("SELECT id, source FROM datasets WHERE state = 'preparing'"):
      logging.info("studio: dataset %s was preparing when the server stopped: building again",
                   row["id"])
      self._queue.put((row["id"], api_models.BuildRequest.model_validate_json(row["source"])))
    self._thread.start()

  def wait(self) -> None:
    """Until every queued build is done (tests)."""
    self._queue.join()

  def _loop(self) -> None:
    while True:
      dataset_id, request = self._queue.get()
      try:
        self._build(dataset_id, request)
      finally:
        self._queue.task_done()

  def _build(self, dataset_id: str, request: api_models.BuildRequest) -> None:
    scratch = tempfile.mkdtemp(prefix=".upload.", dir=self.store.root)
    try:
      if request.source == "corpus":
        summary, kept_files = _corpus_pack(request, scratch)
      else:
        if request.source == "performances":
          files = [(os.path.basename(p), p)
                   for p in _performance_files(self.performances_dir, request.collection)]
          other = []
        else:
          files, other = folder_files(request.path, self.limits)
        names = datasets.unique_names([shown for shown, _ in files])
        midi = [datasets.Kept(n, p) for n, (_, p) in zip(names, files)
                if not datasets.is_audio_name(n)]
        audio = [(n, p) for n, (_, p) in zip(names, files) if datasets.is_audio_name(n)]
        midi += datasets.transcribe(audio, scratch, {}, set(names))
        summary, kept_files = datasets.pack(midi, request.style, scratch)
        summary["ignored"] = other
      datasets.commit(self.db, self.store, dataset_id, scratch, kept_files, summary)
    except Exception as e:  # the row says why; a bug also goes to the log
      if not isinstance(e, ValueError):
        logging.exception("studio: building dataset %s", dataset_id)
      message = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
      self.db.execute("UPDATE datasets SET state = 'failed', message = ? WHERE id = ?",
                      (message.splitlines()[0] if message else type(e).__name__, dataset_id))
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
