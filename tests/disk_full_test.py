"""A disk that fills up, and output folders that cannot be written, against the real launch scripts.

A training run whose disk fills while it writes a checkpoint must end in one `train: error:`
line naming the problem, keep its complete checkpoints as they were (the interrupted one only as
Orbax's `<step>.orbax-checkpoint-tmp`, never restored), and, once there is room again, the same
command resumes from the last complete checkpoint and finishes. A merge or export that hits the
full disk leaves no partial file, and so does one whose output folder is read-only.

The full disk is a small tmpfs where this process may mount one (root on Linux), filled with a
ballast file; elsewhere (CI containers without mount rights) a file size limit on the writing
process (RLIMIT_FSIZE), which makes writes past it fail with EFBIG just as a full disk fails them
with ENOSPC.
"""

import concurrent.futures
import contextlib
import errno
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from lora_jax import disk_errors
import bad_input_world
import train_fault_test

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKPOINT_FILE_LIMIT = 8 << 10  # below a tiny run's largest checkpoint file (~18 KB)
PROBLEM = r"(no space left on device|file too large)"


class Disk:
  """A folder on a small disk that `full()` fills: a tmpfs, or a file size limit."""

  def __init__(self, tmp_path: pathlib.Path):
    self.path = tmp_path / "disk"
    self.path.mkdir()
    self.tmpfs = (shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.path)],
        capture_output=True, check=False).returncode == 0)
    self.limited = False

  def close(self) -> None:
    if self.tmpfs:
      subprocess.run(["umount", "-l", str(self.path)], check=False)

  @contextlib.contextmanager
  def full(self, room: int):
    """The disk with `room` bytes left (tmpfs), or every file capped at `room` bytes."""
    if not self.tmpfs:
      self.limited, self.limit = True, room
      try:
        yield
      finally:
        self.limited = False
      return
    ballast = self.path / "ballast"
    stat = os.statvfs(self.path)
    with open(ballast, "wb") as f:
      os.posix_fallocate(f.fileno(), 0, max(stat.f_bavail * stat.f_frsize - room, 1))
    try:
      yield
    finally:
      ballast.unlink()

  def command(self, argv: list[str]) -> list[str]:
    """`argv` (a Python command) run under the file size limit, when one is on."""
    if not self.limited:
      return argv
    return [sys.executable, "-c", _CAPPED, str(self.limit), *argv[1:]]


# Sets the limit in a fresh interpreter and execs the command (a preexec_fn would fork this
# process, which runs JAX's threads). EFBIG instead of a process killed by SIGXFSZ.
_CAPPED = ("import os, resource, signal, sys\n"
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
           "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)\n"
           "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n")


@pytest.fixture
def disk(tmp_path):
  d = Disk(tmp_path)
  yield d
  d.close()


def _env(cache=None) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  if cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def _launch(script: str, args, disk: Disk | None = None, env=None):
  argv = [sys.executable, str(ROOT / "launch" / f"{script}.py"), *args]
  return subprocess.run(disk.command(argv) if disk else argv, env=env or _env(),
                        capture_output=True, text=True, timeout=600, check=False)


def _in_parallel(commands: dict[str, list[str]], disk: Disk | None = None) -> dict:
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    return dict(zip(commands, pool.map(lambda c: _launch(c[0], c[1], disk), commands.items())))


def _one_error_line(done, script: str) -> str:
  lines = [line for line in done.stderr.splitlines() if "error:" in line]
  assert done.returncode == 1 and len(lines) == 1, done.stderr[-4000:]
  assert lines[0].startswith(f"{script}: error: "), lines
  return lines[0]


def _files_under(folder) -> set[str]:
  return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


def _complete_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def test_a_run_whose_disk_fills_mid_checkpoint_ends_in_one_line_and_resumes(disk, tmp_path):
  workdir = disk.path / "w"
  command = [f"--config={ROOT / 'configs' / 'music_lm.py'}:tiny", "--config.model.n_layers=1",
             "--config.ckpt.every_steps=3", "--config.ckpt.export=final",
             "--config.training.log_every=1", f"--workdir={workdir}"]
  cache = tmp_path / "cache"
  done = _launch("train", command + ["--config.training.steps=6"], env=_env(cache))
  assert done.returncode == 0, done.stderr[-3000:]
  kept = _complete_steps(workdir)
  assert kept and kept[-1] == 6, kept

  with disk.full(room=40 << 10 if disk.tmpfs else CHECKPOINT_FILE_LIMIT):
    # No compilation cache under a file size limit: its entries would hit the limit first.
    done = _launch("train", command + ["--config.training.steps=12"], disk,
                   env=_env(None if disk.limited else cache))
  line = _one_error_line(done, "train")
  # The file named is the first write refused: a checkpoint file, or the status or metrics file
  # written while Orbax's background write had taken the last of the room.
  assert re.search(PROBLEM, line) and str(workdir) in line, line
  assert "resume" in line, line
  assert "Traceback" not in done.stderr, done.stderr[-4000:]
  assert _complete_steps(workdir) == kept  # nothing new looks complete
  for name in os.listdir(workdir / "checkpoints"):
    assert name.isdigit() or name.endswith(".orbax-checkpoint-tmp"), name

  done = _launch("train", command + ["--config.training.steps=12"], env=_env(cache))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from step 6 " in done.stderr, done.stderr[-3000:]
  assert (workdir / "adapter.lora").is_file()
  assert not [n for n in os.listdir(workdir / "checkpoints") if "tmp" in n]
  steps = [int(r.split(",")[0]) for r in (workdir / "metrics.csv").read_text().splitlines()[1:]]
  assert steps == list(range(13))  # one whole row a step, none cut short or twice


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("disk_world")
  files = bad_input_world.hierarchy_files(str(root))
  files.update(bad_input_world.torch_files(str(root), str(ROOT)))
  return files


def _writers(files: dict, out: pathlib.Path) -> dict[str, list[str]]:
  """Commands that write into `out`, by script."""
  return {
      "merge_adapters": [f"--base-model={files['base']}", f"--parent-adapter={files['parent']}",
                         f"--child-adapter={files['child']}", f"--output={out}/m.safetensors",
                         f"--torch-output={out}/m.pt", "--create-config"],
      "export_torch": [f"--input={files['base']}", f"--adapters={files['parent']}",
                       f"--output={out}/e.pt"],
  }


def test_a_merge_and_an_export_onto_a_full_disk_leave_no_partial_file(disk, world):
  out = disk.path / "out"
  out.mkdir()
  with disk.full(room=0 if disk.tmpfs else 4 << 10):
    runs = _in_parallel(_writers(world, out), disk)
  for script, done in runs.items():
    line = _one_error_line(done, script)
    assert re.search(PROBLEM, line) and str(out) in line, line
    assert ".tmp" not in line, line  # the output it was for, not a temporary name
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
  assert _files_under(out) == set()


def test_read_only_output_folders_are_one_line_and_stay_empty(tmp_path, world):
  out = tmp_path / "read_only"
  out.mkdir()
  writers = {"merge_adapters": _writers(world, out)["merge_adapters"]}
  writers["convert_torch"] = [f"--config={ROOT / 'configs' / 'music_transformer.py'}:tiny",
                              f"--input={world['good_base_pt']}",
                              f"--output={out}/c.safetensors"]
  if not train_fault_test.immutable(out, True):
    pytest.skip("no way to make a folder read-only for this user (chattr is missing)")
  try:
    runs = _in_parallel(writers)
  finally:
    train_fault_test.immutable(out, False)
  for script, done in runs.items():
    line = _one_error_line(done, script)
    assert re.search(r"(permission denied|operation not permitted)", line) and str(out) in line, (
        line)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
  assert _files_under(out) == set()


def test_the_disk_refusal_is_found_anywhere_in_the_chain():
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/9.tmp/_sharding": '
                           'Failed to write 12972 bytes to file 8: No space left on device '
                           "[os_error_code='28']")
  assert disk_errors.describe(tensorstore) == "/w/9.tmp/_sharding: no space left on device"
  unnamed = OSError(errno.ENOSPC, "No space left on device")
  try:
    try:
      raise unnamed
    except OSError:
      raise RuntimeError("cleanup failed") from tensorstore
  except RuntimeError as later:
    assert disk_errors.describe(later) == "/w/9.tmp/_sharding: no space left on device"
  assert disk_errors.describe(unnamed) == "no space left on device"
  assert disk_errors.describe(OSError(errno.EROFS, "x", "/ro/f")) == "/ro/f: read-only file system"
  assert disk_errors.describe(OSError(errno.ENOENT, "x", "/f")) is None  # not a disk refusal
  assert disk_errors.describe(ValueError("os_error_code='28' without a path")) is None
