"""The progress line: a bar on a terminal, a log line elsewhere, and the folder build drawing it
to the end."""

import io
import logging

from lora_jax import progress
from lora_jax.data.style_packs import folder as fp
import own_music_testlib


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_a_terminal_gets_one_redrawn_bar_ending_in_a_newline():
  out = _Terminal()
  bar = progress.Progress(4, "reading MIDI files", stream=out)
  for i in range(4):
    bar.step("1 failed" if i == 3 else "")
  bar.close()
  text = out.getvalue()
  assert text.count("\r") == 4 and text.endswith("\n") and "\n" not in text[:-1]
  last = text.split("\r")[-1]
  assert last.startswith("reading MIDI files [" + "#" * 30 + "] 4/4 1 failed")
  assert "[" + "#" * 15 + "." * 15 + "] 2/4" in text  # half way


def test_a_redirected_stream_gets_log_lines_not_carriage_returns(caplog):
  out = io.StringIO()
  bar = progress.Progress(3, "transcribing audio", log_seconds=1e9, stream=out)
  with caplog.at_level(logging.INFO):
    for _ in range(3):
      bar.step()
    bar.close()
  assert out.getvalue() == ""
  lines = [r.getMessage() for r in caplog.records if "transcribing audio" in r.getMessage()]
  assert len(lines) == 1 and lines[0].startswith("transcribing audio 3/3 ")  # only the last


def test_the_folder_build_counts_every_file_once(tmp_path, monkeypatch):
  music = own_music_testlib.make_folder(str(tmp_path / "my_music"))
  bars = []

  class Recording(progress.Progress):

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      bars.append(self)

  monkeypatch.setattr(fp.progress, "Progress", Recording)
  report = fp.build_from_dir(music, str(tmp_path / "packs"))
  (bar,) = [b for b in bars if b.what == "reading MIDI files"]
  assert bar.done == bar.total == sum(s.n_found for s in report.styles) > 0
