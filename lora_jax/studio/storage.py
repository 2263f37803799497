"""Files under the studio root, named by the SHA-256 of their bytes.

  <root>/studio.sqlite           the state (db.py)
  <root>/blobs/<2 hex>/<64 hex>   every dataset file (MIDI, audio, transcriptions, clips, stems)
                                  and every finished adapter, once per content
  <root>/datasets/<id>/           a dataset's style pack (built from its blobs)
  <root>/jobs/<id>/               a job's output folder: the launcher's run/ and its .lora
  <root>/windows/                 token windows cached by content, shared by jobs
  <root>/listen/<id>/<seed>/      an adapter's listen WAVs (listen.py), removed with the adapter

A blob is written atomically before any row names it; `sweep` removes blobs no row names (what a
crash between the two writes leaves, or what deletes free).
"""

import hashlib
import os
import shutil
import threading

from lora_jax import atomic


class Storage:
  """Content-addressed blobs and per-id folders under one root."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    # Held from a blob's write to its row's insert, and by `sweep`: a blob about to be named is
    # never swept.
    self.lock = threading.RLock()
    os.makedirs(os.path.join(self.root, "blobs"), exist_ok=True)

  def blob_path(self, sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
      raise ValueError(f"{sha256!r} is not a SHA-256 hex digest")
    return os.path.join(self.root, "blobs", sha256[:2], sha256)

  def put_bytes(self, data: bytes) -> str:
    """Store `data`; its SHA-256 (the same bytes are stored once)."""
    sha = hashlib.sha256(data).hexdigest()
    path = self.blob_path(sha)
    if not os.path.isfile(path):
      with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return sha

  def put_file(self, path: str) -> tuple[str, int]:
    """Store a copy of the file at `path`; (its SHA-256, its size)."""
    with open(path, "rb") as f:
      data = f.read()
    return self.put_bytes(data), len(data)

  def folder(self, kind: str, item_id: str) -> str:
    """<root>/<kind>/<id>: ids are ours (hex), never a user's text."""
    if not item_id.isalnum():
      raise ValueError(f"{item_id!r} is not an id")
    return os.path.join(self.root, kind, item_id)

  def remove_folder(self, kind: str, item_id: str) -> None:
    shutil.rmtree(self.folder(kind, item_id), ignore_errors=True)

  def sweep(self, referenced: set[str]) -> int:
    """Remove blobs whose digest is not in `referenced`; how many were removed."""
    removed = 0
    blobs = os.path.join(self.root, "blobs")
    for prefix in os.listdir(blobs):
      for name in os.listdir(os.path.join(blobs, prefix)):
        if name not in referenced and not name.startswith("."):
          os.remove(os.path.join(blobs, prefix, name))
          removed += 1
    return removed
