r"""The README's "Your own music" example at the default sizes: the output the README shows.

  PYTHONPATH=. python bench/own_music_readme.py --workdir=runs/own_music_readme

Writes the folder `tests/own_music_test.py` runs on (tests/own_music_testlib.py: chorales as
music21 writes them, a format-0 copy, a 640 s piece, O'Neill's jigs and reels, a drum track with
tempo and meter changes, the POP909 performances, and broken, empty, audio and text files) and
the takes (two POP909 songs, the Mozart .match, the same performance as a score/performance
pair), then runs the README's commands exactly as written, with no tiny-step flags, and prints
each command's output and seconds. Needs the fetched performances
(`bash scripts/fetch_performances.sh`).
"""

import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "tests"))
import own_music_testlib  # noqa: E402  (the test's folder, so the README shows what it tests)

_WORKDIR = flags.DEFINE_string("workdir", "runs/own_music_readme",
                               "Where the folders and every output go (it must not exist).")


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  if os.path.exists(workdir):
    raise SystemExit(f"own_music_readme: error: {workdir} exists; pass a new --workdir")
  music = own_music_testlib.make_folder(os.path.join(workdir, "my_music"))
  takes = own_music_testlib.make_takes(os.path.join(workdir, "my_takes"))
  out = os.path.join(workdir, "runs", "own_music")
  total = time.monotonic()
  for command in own_music_testlib.readme_commands():
    print(f"$ {command}", flush=True)
    real = (command.replace("runs/own_music", out)  # first: the workdir's name may hold it
            .replace("my_music", music).replace("my_takes", takes))
    started = time.monotonic()
    done = subprocess.run([sys.executable] + shlex.split(real)[1:], cwd=_ROOT,
                          capture_output=True, text=True)
    print((done.stdout + done.stderr).replace(workdir + "/", "").rstrip())
    print(f"[{time.monotonic() - started:.0f} s, exit {done.returncode}]", flush=True)
    if done.returncode:
      raise SystemExit(f"own_music_readme: error: exit {done.returncode}: {command}")
  print(f"[total {time.monotonic() - total:.0f} s]")


if __name__ == "__main__":
  app.run(main)
