"""DUV data from the user's own takes (one line per file), the seed's note CSV and its commands."""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import mido
import pytest

from lora_jax import families
from lora_jax.data.duv import build as duv_build
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.duv import bundle, seed_csv, takes
from lora_jax.families import duv as duv_family
from lora_jax.train import config as config_lib
import own_music_testlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_performances = pytest.mark.skipif(
    not os.path.isdir(own_music_testlib.PERFORMANCES / "pop909"),
    reason="real performances not fetched: run `bash scripts/fetch_performances.sh`")


@pytest.fixture(autouse=True)
def registered(monkeypatch):
  if duv_family.NAME not in families.REGISTRY:
    monkeypatch.setitem(families.REGISTRY, duv_family.NAME,
                        families.Entry(duv_family.DuvConfig, duv_family.make))


def guitar_take(path: str, program: int, n: int = 96, with_piano: bool = False) -> None:
  """A take recorded to a click at 100 bpm: strummed on the beat, a little late and uneven."""
  tpq = 480
  tracks = [mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100), time=0)])]
  for channel, prog in [(0, program)] + [(1, 0)] * with_piano:
    track = mido.MidiTrack([mido.Message("program_change", channel=channel, program=prog)])
    for i in range(n):
      late = 7 + (i * 13) % 11
      track.append(mido.Message("note_on", channel=channel, note=52 + (i * 5) % 12,
                                velocity=60 + (i * 37) % 50, time=late if i == 0 else late))
      track.append(mido.Message("note_off", channel=channel, note=52 + (i * 5) % 12,
                                time=tpq // 2 - late))
    tracks.append(track)
  midi = mido.MidiFile(type=1, ticks_per_beat=tpq)
  midi.tracks += tracks
  midi.save(path)


@pytest.fixture
def takes_dir(tmp_path) -> pathlib.Path:
  folder = tmp_path / "my_takes"
  os.makedirs(folder / "monday")
  guitar_take(str(folder / "take1.mid"), program=25, with_piano=True)
  guitar_take(str(folder / "monday" / "take2.mid"), program=0)  # saved with the default program
  guitar_take(str(folder / "short.mid"), program=27, n=20)
  own_music_testlib.drum_track(str(folder / "drums.mid"))
  (folder / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")
  (folder / "notes.txt").write_text("not a take\n")
  return folder


def test_one_line_per_file(takes_dir):
  rows, removed, lines = takes.takes_rows(str(takes_dir), "guitar", "tempo_map",
                                          duv_manifest.Filters(), 0.2)
  by_file = {line.file: line for line in lines}
  assert set(by_file) == {"take1.mid", "monday/take2.mid", "short.mid", "drums.mid", "broken.mid"}
  assert by_file["take1.mid"].text() == ("take1.mid: 1 track, 96 notes, grid fit "
                                         f"{by_file['take1.mid'].grid_fit:.2f}; 1 other track left out")
  assert by_file["take1.mid"].grid_fit > 0.9  # played to the click
  assert "no guitar program in the file (piano): took its tracks as guitar" in \
      by_file["monday/take2.mid"].text()
  assert "dropped" in by_file["short.mid"].text() and "fails min_notes" in by_file["short.mid"].note
  assert by_file["drums.mid"].text().startswith("drums.mid: dropped")
  assert by_file["broken.mid"].text().startswith("broken.mid: dropped: not a readable MIDI file")
  assert {r["instrument"] for r in rows} == {"guitar"} and len(rows) == 2
  assert {r["piece_id"] for r in rows} == {"own/take1", "own/monday/take2"}
  assert removed["min_notes"] == 2  # short.mid, and drums.mid's bass taken as guitar
  drums, _, _ = takes.takes_rows(str(takes_dir), "drums", "tempo_map",
                                 duv_manifest.Filters(min_notes=8), 0.2)
  assert [r["file"] for r in drums] == ["drums.mid"] and drums[0]["instrument"] == "drums"
  with pytest.raises(ValueError, match="instrument 'kazoo' is not one of"):
    takes.takes_rows(str(takes_dir), "kazoo", "tempo_map", duv_manifest.Filters(), 0.2)


@needs_performances
def test_real_performances_as_takes(tmp_path):
  folder = tmp_path / "takes"
  os.makedirs(folder)
  for f in ("pop909/POP909_008.mid", "pop909/POP909_010.mid", "mozart/mozart_k265_var1.match"):
    shutil.copyfile(own_music_testlib.PERFORMANCES / f, folder / os.path.basename(f))
  config = duv_build.BuildConfig(cache_dir="", out_dir=str(tmp_path / "out"), max_len=64,
                                 stride=32)
  report, lines = takes.build_from_dir(str(folder), config, "piano", "tempo_map")
  assert [line.file for line in lines] == ["POP909_008.mid", "POP909_010.mid",
                                           "mozart_k265_var1.match"]
  assert all(line.tracks >= 1 and line.notes > 200 for line in lines)
  assert report["instrument"] == "piano" and len(report["files"]) == 3
  rows = duv_manifest.read_manifest(str(tmp_path / "out" / "duv_manifest_enriched.jsonl"),
                                    ("strum_dir_hint", "swing_hint"))
  assert {r["source"] for r in rows} == {"own"} and {r["instrument"] for r in rows} == {"piano"}


def write_csv(path, notes, extra_columns=()):
  columns = ["file", "onset_beats", "dur_beats", "pitch", "velocity", "played_dur_beats",
             *extra_columns]
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(notes)


def song(name: str, n: int, shift: int = 0):
  return [[name, i * 0.5, 0.5, 50 + (i * 7 + shift) % 20, 60 + (i * 11) % 50, 0.4 + (i % 3) * 0.05]
          for i in range(n)]


def test_seed_csv_rows_and_errors(tmp_path):
  path = tmp_path / "notes.csv"
  write_csv(path, [row + [1, "guitar", 0.0] for row in song("a", 40)],
            ("track", "instrument", "beat_pos"))
  (row,) = seed_csv.read_note_csv(str(path), "train")
  assert row["piece_id"] == "csv/a" and row["track"] == 1 and row["instrument"] == "guitar"
  assert row["n_notes"] == 40 and row["targets"]["velocity"][:2] == [60, 71]
  assert row["downbeat_beats"][:3] == [0.0, 4.0, 8.0]  # no downbeat column: a bar every 4 beats
  duv_manifest.check_row(row, duv_manifest.duv_features.CORE_FEATURES, "row")
  path.write_text("file,onset_beats,dur_beats,pitch,velocity\na,0,1,60,80\n")
  with pytest.raises(duv_manifest.ManifestError, match="no column 'played_dur_beats'"):
    seed_csv.read_note_csv(str(path), "train")
  for notes, columns, message in (
      ([["a", 0, 1, 60, 80]], (), "6 columns in the header, another number of values"),
      ([r + ["x"] for r in song("a", 2)], ("colour",), "unknown column 'colour'"),
      ([["a", "zero", 1, 60, 80, 1]], (), ":2: column 'onset_beats' is 'zero', not float"),
      ([["a", 0, 1, 60, 200, 1]], (), ":2: pitch 60, velocity 200"),
      ([["a", 0, 0, 60, 80, 1]], (), ":2: durations must be > 0 beats")):
    write_csv(path, notes, columns)
    with pytest.raises(duv_manifest.ManifestError, match=message):
      seed_csv.read_note_csv(str(path), "train")


def test_seed_command_trains_a_base_from_csv(tmp_path):
  write_csv(tmp_path / "train.csv", song("a", 160) + song("b", 160, 3) + song("c", 160, 5))
  write_csv(tmp_path / "valid.csv", song("d", 40, 1))
  config = config_lib.load_config_dict(str(ROOT / "configs" / "duv" / "base.py"), "tiny")
  config.model.n_layers = 1
  path = seed_csv.train_from_csv(config, str(tmp_path / "train.csv"), str(tmp_path / "valid.csv"),
                                 str(tmp_path / "stats.json"), str(tmp_path / "duv_universal"), 1,
                                 str(tmp_path / "run"))
  assert path == str(tmp_path / "duv_universal")
  bundle.load_model(path)
  with open(tmp_path / "stats.json") as f:
    assert json.load(f)["n_notes"] == 3 * 160 - 3 * 40  # training notes, their tails apart
  with open(tmp_path / "run" / "duv_split.json") as f:
    record = json.load(f)
  assert record["heldout_pieces"] == ["csv/d"] and "csv/d" not in record["train_pieces"]
  write_csv(tmp_path / "valid.csv", song("a", 40))
  with pytest.raises(duv_manifest.ManifestError, match="piece 'csv/a' is in both"):
    seed_csv.train_from_csv(config, str(tmp_path / "train.csv"), str(tmp_path / "valid.csv"),
                            str(tmp_path / "s.json"), str(tmp_path / "b"), 1, str(tmp_path / "r"))


def test_enrich_manifest_command(tmp_path):
  write_csv(tmp_path / "notes.csv", song("a", 40))
  core = tmp_path / "m.jsonl"
  duv_manifest.write_manifest(str(core), seed_csv.read_note_csv(str(tmp_path / "notes.csv"),
                                                                "train"))
  done = subprocess.run([sys.executable, str(ROOT / "launch" / "enrich_manifest.py"),
                         f"--input={core}", f"--output={tmp_path / 'e.jsonl'}"],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0 and "wrote" in done.stdout, done.stderr[-1000:]
  duv_manifest.read_manifest(str(tmp_path / "e.jsonl"), ("strum_dir_hint", "section_onehot"))
  done = subprocess.run([sys.executable, str(ROOT / "launch" / "enrich_manifest.py"),
                         f"--input={tmp_path / 'none.jsonl'}", "--output=x"],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
      "enrich_manifest: error:") and "none.jsonl" in done.stderr
