"""The studio's state in one SQLite file: datasets, their files, jobs and adapters.

The schema carries its version in `schema_version`; `MIGRATIONS[i]` takes a database from version
i to i + 1, so an older studio's file is brought forward when it opens and a newer one is refused
(its meaning is unknown here). Every connection is used under one lock: the worker thread and the
request handlers share it, and SQLite's own locking then never sees two writers.
"""

import contextlib
import json
import sqlite3
import threading
import time
import uuid

MIGRATIONS = (
    # 0 -> 1: the first schema.
    """
    CREATE TABLE datasets (
      id TEXT PRIMARY KEY,
      name TEXT NOT NULL,
      style TEXT NOT NULL,          -- 'genre' or 'genre/sub_style': the pack's style
      pack_dir TEXT NOT NULL,       -- relative to the root
      report TEXT NOT NULL,         -- JSON: the pack builder's report
      created REAL NOT NULL
    );
    CREATE TABLE files (
      id TEXT PRIMARY KEY,
      dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
      name TEXT NOT NULL,           -- sanitised upload name
      sha256 TEXT NOT NULL,         -- the blob under the root
      size INTEGER NOT NULL,
      state TEXT NOT NULL,          -- 'packed' or 'left out'
      reason TEXT NOT NULL
    );
    CREATE TABLE jobs (
      id TEXT PRIMARY KEY,
      name TEXT NOT NULL,
      level TEXT NOT NULL,          -- 'parent' or 'child'
      dataset_id TEXT NOT NULL,
      parent_adapter_id TEXT,
      params TEXT NOT NULL,         -- JSON: the request's hyperparameters
      argv TEXT NOT NULL,           -- JSON: the launcher's command line, which resume reruns
      output_dir TEXT NOT NULL,     -- relative to the root
      state TEXT NOT NULL,          -- queued running stopping stopped interrupted finished failed
      pid INTEGER,
      exit_code INTEGER,
      message TEXT NOT NULL,
      adapter_id TEXT,
      created REAL NOT NULL,
      started REAL,
      ended REAL
    );
    CREATE TABLE adapters (
      id TEXT PRIMARY KEY,
      name TEXT NOT NULL,
      level TEXT NOT NULL,
      parent_adapter_id TEXT,
      job_id TEXT,
      style TEXT NOT NULL,          -- the genre, or genre/sub_style of a child
      sha256 TEXT NOT NULL,         -- the .lora blob
      size INTEGER NOT NULL,
      steps INTEGER NOT NULL,
      base TEXT NOT NULL,           -- the base model's fingerprint
      best_val_loss REAL,
      created REAL NOT NULL
    );
    """,
    # 1 -> 2: datasets built in the background from the project's own sources or a local folder
    # (their state while they build), and files of other kinds than MIDI (audio, transcriptions,
    # clips, stems) with the user's metadata.
    """
    ALTER TABLE datasets ADD COLUMN source TEXT NOT NULL DEFAULT '{"kind": "upload"}';
    ALTER TABLE datasets ADD COLUMN state TEXT NOT NULL DEFAULT 'ready';
    ALTER TABLE datasets ADD COLUMN message TEXT NOT NULL DEFAULT '';
    ALTER TABLE files ADD COLUMN kind TEXT NOT NULL DEFAULT 'midi';
    ALTER TABLE files ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'
    """,
    # 2 -> 3: song datasets (audio clips with lyrics, for the song model's LoRA) beside the MIDI
    # ones every earlier dataset is.
    """
    ALTER TABLE datasets ADD COLUMN kind TEXT NOT NULL DEFAULT 'midi'
    """,
)
# datasets.source: JSON, how it was made ({"kind": "upload"}, or a sources.BuildRequest).
# datasets.state: 'preparing' (its pack is being built: no pack_dir yet), 'ready' or 'failed'.
# datasets.kind: 'midi' (a style pack) or 'song' (audio clips, each with its lyrics: no pack).
# jobs.level and adapters.level: 'parent', 'child', or 'song' (the song model's LoRA).
# files.kind: 'midi', 'audio' (an uploaded recording), 'transcription' (its MIDI), 'clip', 'stem'.
# files.meta: JSON, the user's metadata of an audio file, or which file a clip or stem came from.
VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
  """A database this studio cannot use."""


class NotFound(LookupError):
  """An id that names no row."""


class InUse(ValueError):
  """A change refused because a job or another adapter still needs the row."""


def new_id() -> str:
  return uuid.uuid4().hex[:16]


def now() -> float:
  return time.time()


class Database:
  """One SQLite file shared by the request handlers and the worker thread."""

  def __init__(self, path: str):
    self.path = path
    self._lock = threading.RLock()
    self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    self._conn.row_factory = sqlite3.Row
    self._conn.execute("PRAGMA foreign_keys = ON")
    self._conn.execute("PRAGMA journal_mode = WAL")
    self.migrate()

  def migrate(self) -> None:
    """Bring the file to VERSION, one migration per transaction."""
    with self.transaction() as c:
      c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
      row = c.execute("SELECT version FROM schema_version").fetchone()
      if row is None:
        c.execute("INSERT INTO schema_version VALUES (0)")
    version = self.version()
    if version > VERSION:
      raise SchemaError(f"{self.path} has schema version {version}, newer than this studio's "
                        f"{VERSION}: use the studio that wrote it")
    for i in range(version, VERSION):
      with self.transaction() as c:
        for statement in MIGRATIONS[i].split(";"):  # no ';' inside a statement
          if statement.strip():
            c.execute(statement)
        c.execute("UPDATE schema_version SET version = ?", (i + 1,))

  def version(self) -> int:
    with self._lock:
      return self._conn.execute("SELECT version FROM schema_version").fetchone()[0]

  @contextlib.contextmanager
  def transaction(self):
    with self._lock:
      self._conn.execute("BEGIN IMMEDIATE")
      try:
        yield self._conn
      except BaseException:
        self._conn.execute("ROLLBACK")
        raise
      self._conn.execute("COMMIT")

  def all(self, sql: str, args: tuple = ()) -> list[dict]:
    with self._lock:
      return [dict(r) for r in self._conn.execute(sql, args).fetchall()]

  def one(self, sql: str, args: tuple = ()) -> dict | None:
    rows = self.all(sql, args)
    return rows[0] if rows else None

  def execute(self, sql: str, args: tuple = ()) -> int:
    """Run one statement in its own transaction; the number of rows it changed."""
    with self.transaction() as c:
      return c.execute(sql, args).rowcount

  def close(self) -> None:
    with self._lock:
      self._conn.close()


def loads(text: str | None):
  return None if text is None else json.loads(text)
