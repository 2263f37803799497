"""Runs queued jobs one at a time, each as the launcher's own process; stop, resume, recovery.

States: queued -> running -> finished | stopped | failed | interrupted; stop moves running to
stopping (SIGTERM sent: the loop checkpoints and exits with status 75) and then stopped, or a
queued job straight to stopped; resume moves stopped, interrupted or failed back to queued, and
the same command continues from the run's last checkpoint.

The training process asks the kernel to take SIGTERM when the worker thread that started it
dies (PR_SET_PDEATHSIG), so a server killed with SIGKILL still leaves a checkpointed run behind,
never an orphan training on. A server that stops leaves its running job interrupted (SIGTERM, checkpoint).
When a server starts it finds jobs left 'running' (killed) or interrupted by the last one: with
`auto_resume` they are queued again, else they wait as interrupted for a resume; before one is rerun, the old
process (if still writing its checkpoint) is waited for.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from absl import logging

from lora_jax import lora
from lora_jax.song import model_record
from lora_jax.studio import db as db_lib
from lora_jax.studio import jobs, song_jobs
from lora_jax.studio import storage as storage_lib
from lora_jax.train import exit_status

_PR_SET_PDEATHSIG = 1
RESUMABLE = ("stopped", "interrupted", "failed")


# Run first in the training process: ask for SIGTERM when the server dies, then exec the launcher.
# (A preexec_fn would do the same but makes subprocess fork a process that imported JAX.) If the
# server died before the request was made, the parent pid is no longer the server's: stop.
_TRAMPOLINE = ("import ctypes, os, signal, sys; "
               f"ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM); "
               "os.getppid() == int(sys.argv[1]) or sys.exit(75); "
               "os.execv(sys.argv[2], sys.argv[2:])")


def _with_trampoline(argv: list[str]) -> list[str]:
  return [sys.executable, "-c", _TRAMPOLINE, str(os.getpid()), *argv]


def _alive(pid: int, marker: str) -> bool:
  """Whether `pid` is still the process whose command line holds `marker` (not a reused pid)."""
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return marker.encode() in f.read()
  except OSError:
    return False


class Worker:
  """The job queue's one consumer thread."""

  def __init__(self, database: db_lib.Database, store: storage_lib.Storage, env: dict[str, str],
               auto_resume: bool = True):
    self.db, self.store, self.env, self.auto_resume = database, store, env, auto_resume
    self._wake = threading.Condition()
    self._closing = False
    self._current: tuple[str, subprocess.Popen] | None = None
    self._thread = threading.Thread(target=self._loop, name="studio-worker", daemon=True)

  def start(self) -> None:
    self.recover()
    self._thread.start()

  def recover(self) -> None:
    """Jobs the last server left running (killed) or interrupted (stopped with it): queued again
    with auto_resume, else left interrupted for the user to resume."""
    self.db.execute("UPDATE jobs SET state = 'stopped', message = 'stopped; the server ended "
                    "before its run did' WHERE state = 'stopping'")
    if self.auto_resume:
      n = self.db.execute("UPDATE jobs SET state = 'queued', message = 'interrupted by a server "
                          "restart; resumed from its last checkpoint' WHERE state IN "
                          "('running', 'interrupted')")
    else:
      n = self.db.execute("UPDATE jobs SET state = 'interrupted', message = 'interrupted by a "
                          "server restart: resume it to continue' WHERE state = 'running'")
    if n:
      logging.info("studio: %d job(s) found interrupted by a restart; %s", n,
                   "queued again" if self.auto_resume else "waiting for resume")

  def notify(self) -> None:
    with self._wake:
      self._wake.notify_all()

  def stop(self, job_id: str) -> dict:
    """Stop a queued or running job; its row."""
    with self._wake:
      job = self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
      if job is None:
        raise db_lib.NotFound(f"no job {job_id}")
      if job["state"] == "queued":
        self.db.execute("UPDATE jobs SET state = 'stopped', message = 'stopped before it started' "
                        "WHERE id = ?", (job_id,))
      elif job["state"] == "running" and self._current and self._current[0] == job_id:
        self.db.execute("UPDATE jobs SET state = 'stopping', message = 'SIGTERM sent: "
                        "checkpointing' WHERE id = ?", (job_id,))
        self._current[1].send_signal(signal.SIGTERM)
      elif job["state"] != "stopping":
        raise ValueError(f"job {job_id} is {job['state']}: only a queued or running job can be "
                         f"stopped")
    return self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))

  def resume(self, job_id: str) -> dict:
    """Queue a stopped, interrupted or failed job again; its row."""
    with self._wake:
      job = self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
      if job is None:
        raise db_lib.NotFound(f"no job {job_id}")
      if job["state"] not in RESUMABLE:
        raise ValueError(f"job {job_id} is {job['state']}: only a {', '.join(RESUMABLE)} job can "
                         f"be resumed")
      self.db.execute("UPDATE jobs SET state = 'queued', message = 'queued to resume', "
                      "exit_code = NULL WHERE id = ?", (job_id,))
      self._wake.notify_all()
    return self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))

  def close(self, timeout: float = 120.0) -> None:
    """Stop taking jobs; a running one gets SIGTERM (it checkpoints) and is left interrupted, to
    be resumed by the next server."""
    with self._wake:
      self._closing = True
      if self._current:
        self._current[1].send_signal(signal.SIGTERM)
      self._wake.notify_all()
    if self._thread.is_alive():
      self._thread.join(timeout)

  def _loop(self) -> None:
    while True:
      with self._wake:
        if self._closing:
          return
        job = self.db.one("SELECT * FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1")
        if job is None:
          self._wake.wait(1.0)
          continue
      try:
        self._run(job)
      except Exception as e:  # a bug here must not end the queue; the job says what happened
        logging.exception("studio: job %s", job["id"])
        self.db.execute("UPDATE jobs SET state = 'failed', message = ?, ended = ? WHERE id = ?",
                        (f"studio error: {type(e).__name__}: {e}", db_lib.now(), job["id"]))

  def _wait_for_old_process(self, job: dict, output_dir: str) -> None:
    pid = job["pid"]
    if not pid or not _alive(pid, output_dir):
      return
    logging.info("studio: waiting for job %s's earlier process %d to exit", job["id"], pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 300
    while _alive(pid, output_dir) and time.time() < deadline:
      time.sleep(0.2)
    if _alive(pid, output_dir):
      os.kill(pid, signal.SIGKILL)

  def _run(self, job: dict) -> None:
    output_dir = os.path.join(self.store.root, job["output_dir"])
    self._wait_for_old_process(job, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    with self._wake:
      if self._closing:
        return
      current = self.db.one("SELECT state FROM jobs WHERE id = ?", (job["id"],))
      if current is None or current["state"] != "queued":  # stopped or deleted meanwhile
        return
      with open(os.path.join(output_dir, "log.txt"), "ab") as log:
        proc = subprocess.Popen(_with_trampoline(json.loads(job["argv"])), cwd=output_dir,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env, start_new_session=True)
      self._current = (job["id"], proc)
      self.db.execute("UPDATE jobs SET state = 'running', pid = ?, started = ?, message = '' "
                      "WHERE id = ?", (proc.pid, db_lib.now(), job["id"]))
    code = proc.wait()
    with self._wake:
      self._current = None
      self._finish(job, output_dir, code)

  def _finish(self, job: dict, output_dir: str, code: int) -> None:
    state = self.db.one("SELECT state FROM jobs WHERE id = ?", (job["id"],))["state"]
    signalled = code in (exit_status.STOPPED, -signal.SIGTERM)
    if code == 0:
      self._register(job, output_dir)
      return
    if signalled and self._closing:
      new, message = "interrupted", "the server stopped; resume continues from the checkpoint"
    elif signalled and state == "stopping":
      new, message = "stopped", "stopped after a checkpoint; resume continues from it"
    else:
      new = "failed"
      message = jobs.error_line(jobs.log_tail(os.path.join(output_dir, "log.txt")))
    self.db.execute("UPDATE jobs SET state = ?, exit_code = ?, message = ?, ended = ? "
                    "WHERE id = ?", (new, code, message, db_lib.now(), job["id"]))

  def _register(self, job: dict, output_dir: str) -> None:
    """A finished job's adapter (a .lora, or a song job's PEFT folder zipped) becomes a blob,
    then an adapter row."""
    dataset = self.db.one("SELECT style FROM datasets WHERE id = ?", (job["dataset_id"],))
    style = dataset["style"] if dataset else ""
    if job["level"] == "parent":
      style = style.split("/")[0]
    if job["level"] == "song":
      path = song_jobs.adapter_zip(output_dir)  # a job that wrote no adapter did not finish
      fingerprint = model_record.read(song_jobs.adapter_dir(output_dir), "the job's adapter"
                                      ).base_fingerprint
    else:
      path = jobs.adapter_path(job["level"], style, output_dir)
      fingerprint = lora.load_adapter(path).base_fingerprint  # unreadable: it did not finish
    status = jobs.read_status(jobs.run_dir(job["level"], style, output_dir))
    adapter_id = db_lib.new_id()
    with self.store.lock, self.db.transaction() as c:
      sha, size = self.store.put_file(path)
      c.execute("INSERT INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (adapter_id, job["name"], job["level"], job["parent_adapter_id"], job["id"],
                 style, sha, size, int(status.get("step", 0)), fingerprint,
                 status.get("best_val_loss"), db_lib.now()))
      c.execute("UPDATE jobs SET state = 'finished', exit_code = 0, adapter_id = ?, message = ?, "
                "ended = ? WHERE id = ?", (adapter_id, f"adapter {adapter_id} written",
                                           db_lib.now(), job["id"]))
