"""Style packs from a folder of the user's own MIDI: layout, splits, one report, reuse, in place,
a few files; and the manifest checks that hold every pack."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from lora_jax import atomic
from lora_jax.data.style_packs import folder as fp
from lora_jax.data import midi_tokenizer as mt
from lora_jax.data.style_packs import pack as sp
import own_music_testlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> str:
  return own_music_testlib.make_folder(str(tmp_path_factory.mktemp("own") / "my_music"))


def manifest(path) -> dict:
  with open(os.path.join(path, sp.MANIFEST)) as f:
    return json.load(f)


def test_folder_becomes_packs_with_one_report(music, tmp_path):
  out = tmp_path / "packs"
  report = fp.build_from_dir(music, str(out))
  styles = {s.style: s for s in report.styles}
  assert set(styles) == {"classical", "classical/chorale", "folk", "folk/jig", "folk/reel", "pop"}
  assert all(s.packed for s in styles.values())
  assert dict(report.failures) == {"folk/jig/broken.mid": "not a readable MIDI file (it ends "
                                                          "inside a track)",
                                   "folk/reel/empty.mid": "no notes"}
  assert report.skipped_audio == ("folk/refs_audio/session.wav",) and report.ignored == (
      "folk/notes.txt",)
  text = "\n".join(report.lines())
  assert text.count("broken.mid") == 1 and "session.wav" in text and "--transcribe_audio" in text
  for style in styles:
    pack = sp.load_style_pack(str(out / style))
    assert len(pack.split("validation")) >= 1 and len(pack.split("test")) >= 1
    assert len(pack.split("train")) >= 1
  folk = sp.load_style_pack(str(out / "folk"))
  assert folk.children == ("jig", "reel") and {p.style for p in folk.pieces} == {
      "folk", "folk/jig", "folk/reel"}
  jig = sp.load_style_pack(str(out / "folk" / "jig"))
  assert {p.split for p in jig.pieces} == {p.split for p in folk.pieces if p.style == "folk/jig"}
  classical = sp.load_style_pack(str(out / "classical"))
  long = next(p for p in classical.pieces if p.id == "classical/long_640s.mid")
  assert long.n_notes == 1280 and long.duration == 640.0  # past pretty_midi's tick cap
  # Every piece tokenizes and its manifest figures hold against the file.
  tok = mt.MidiTokenizer(mt.MidiTokenizerConfig())
  for split in sp.SPLITS:
    assert sp.pack_sequences(classical, tok, split, 128).tokens_NxT.shape[0] > 0


def test_second_run_reuses_and_splits_follow_the_bytes(music, tmp_path):
  out = tmp_path / "packs"
  first = fp.build_from_dir(music, str(out))
  copy = out / "pop" / sp.REFS_MIDI / "POP909_008.mid"
  stamp = os.stat(copy).st_mtime_ns
  again = fp.build_from_dir(music, str(out))
  assert sum(s.n_read for s in again.styles) == 0
  assert sum(s.n_reused for s in again.styles) == sum(s.n_read for s in first.styles) - 2
  assert dict(again.failures) == dict(first.failures)  # remembered, not read again
  assert os.stat(copy).st_mtime_ns == stamp
  # A renamed file keeps its split (the hash is of the bytes), in a fresh build elsewhere.
  moved = pathlib.Path(str(tmp_path / "moved"))
  shutil.copytree(music, moved)
  os.rename(moved / "pop" / "refs_midi" / "POP909_008.mid", moved / "pop" / "refs_midi" / "x.mid")
  fp.build_from_dir(str(moved), str(tmp_path / "packs2"))
  split = lambda path, key: next(p["split"] for p in manifest(path)["pieces"] if key in p["id"])
  assert split(out / "pop", "POP909_008") == split(tmp_path / "packs2" / "pop", "x.mid")


def test_splits_keep_their_minimums_and_small_styles_say_so(tmp_path):
  hashes = {f"p{i}": f"{i * 7919:064x}" for i in range(40)}
  splits = fp.assign_splits(hashes, fp.SplitSettings(0.1, 0.1, 1, 1))
  assert splits == fp.assign_splits(dict(reversed(list(hashes.items()))), fp.SplitSettings())
  few = fp.assign_splits(dict(list(hashes.items())[:3]), fp.SplitSettings(0.0, 0.0, 1, 1))
  assert sorted(few.values()) == ["test", "train", "validation"]
  many = fp.assign_splits(hashes, fp.SplitSettings(0.0, 0.0, 4, 5))
  assert list(many.values()).count("validation") == 4 and list(many.values()).count("test") == 5
  with pytest.raises(fp.FolderPackError, match="min_validation 0"):
    fp.SplitSettings(min_validation=0)
  # A style of two pieces is too small; its genre with a bigger sibling still packs.
  music = tmp_path / "m"
  for style, n in (("rock/punk", 2), ("rock/grunge", 4)):
    os.makedirs(music / style)
    for i in range(n):
      own_music_testlib.drum_track(str(music / style / f"{i}.mid"))
      with open(music / style / f"{i}.mid", "ab") as f:
        f.write(bytes([i, len(style)]))  # different bytes, same music
  report = fp.build_from_dir(str(music), str(tmp_path / "out"))
  punk = next(s for s in report.styles if s.style == "rock/punk")
  assert not punk.packed and "2 readable pieces, too few to split: needs at least 3" in punk.why_not
  assert "NOT PACKED: 2 readable pieces" in "\n".join(report.lines())
  assert sp.load_style_pack(str(tmp_path / "out" / "rock")).children == ("grunge",)


def test_in_place_and_from_files(music, tmp_path):
  mine = tmp_path / "style_packs"
  shutil.copytree(pathlib.Path(music) / "folk", mine / "folk")
  fp.build_from_dir(str(mine), str(mine))  # manifests beside the files, nothing copied
  folk = sp.load_style_pack(str(mine / "folk"))
  assert {p.path for p in folk.pieces if p.style == "folk/jig"} == {
      f"jig/jig_{i}.mid" for i in range(4)}
  assert not (mine / "folk" / "jig" / sp.REFS_MIDI).exists()
  # A few files as a new sub-style of that genre: its other packs stay in the genre's manifest.
  files = [str(pathlib.Path(music) / "classical" / "chorale" / "refs_midi" / f"{n}.mid")
           for n in ("bwv66.6", "bwv10.7", "bwv101.7", "bwv102.7")]
  fp.build_from_files(files, "folk/hymn", str(mine))
  folk = sp.load_style_pack(str(mine / "folk"))
  assert folk.children == ("hymn", "jig", "reel")
  assert len([p for p in folk.pieces if p.style == "folk/hymn"]) == 4
  assert len(sp.load_style_pack(str(mine / "folk" / "hymn")).pieces) == 4
  with pytest.raises(fp.FolderPackError, match="not 'genre' or 'genre/sub_style'"):
    fp.build_from_files(files, "a/b/c", str(mine))
  with pytest.raises(fp.FolderPackError, match=r"folder name 'dance pop' is not a plain "
                                               r"identifier.*'dance_pop'"):
    fp.build_from_files(files, "pop/dance pop", str(mine))
  with pytest.raises(fp.FolderPackError, match="is inside --from_dir"):
    fp.build_from_dir(str(mine), str(mine / "packs"))


def write_one_piece_pack(path, change=lambda m: None) -> str:
  os.makedirs(os.path.join(path, sp.REFS_MIDI), exist_ok=True)
  file = os.path.join(path, sp.REFS_MIDI, "a.mid")
  own_music_testlib.drum_track(file)
  entry = {"id": "a", "source": "test", "path": "refs_midi/a.mid", "split": "train",
           "style": "toy", "n_notes": 63, "duration": 11.4}
  m = {"format": sp.PACK_FORMAT, "style": "toy", "parent": None, "children": [], "pieces": [entry]}
  change(m)
  atomic.write_text(os.path.join(path, sp.MANIFEST), json.dumps(m))
  return str(path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["pieces"][0].update(n_notes="63"), r"field 'n_notes' is '63', not int"),
    (lambda m: m["pieces"][0].update(n_notes=True), r"field 'n_notes' is True, not int"),
    (lambda m: m["pieces"][0].update(n_notes=-1), r"'n_notes' is -1, not a finite number >= 0"),
    (lambda m: m["pieces"][0].update(duration=None), r"field 'duration' is None, not float"),
    (lambda m: m["pieces"][0].update(source=3), r"field 'source' is 3, not str"),
    (lambda m: m["pieces"][0].update(tempo=3), r"unknown field 'tempo'"),
    (lambda m: m.update(colour="red"), r"unknown field 'colour'"),
    (lambda m: m.update(parent=4), r"field 'parent' is 4, not str or null"),
    (lambda m: m.update(children="jig"), r"field 'children' is 'jig', not list"),
    (lambda m: m.update(program=200), r"program 200 is not in 0..127"),
    (lambda m: m["pieces"][0].update(style="other"), r"has style 'other'; this pack holds toy"),
    (lambda m: m["pieces"][0].update(n_notes=0), r"all 1 pieces have no notes"),
])
def test_every_manifest_field_is_checked(tmp_path, change, message):
  path = write_one_piece_pack(tmp_path / "toy", change)
  with pytest.raises(sp.StylePackError, match=message):
    sp.load_style_pack(path)


def test_manifest_figures_are_checked_against_the_file(tmp_path):
  tok = mt.MidiTokenizer(mt.MidiTokenizerConfig())
  pack = sp.load_style_pack(write_one_piece_pack(tmp_path / "ok"))
  assert sp.pack_sequences(pack, tok, "train", 64).tokens_NxT.shape[0] > 0
  for name, value, message in (("n_notes", 62, "holds 63 notes, the manifest says n_notes 62"),
                               ("duration", 8.0, "lasts 11.400 s, the manifest says duration 8.0")):
    path = write_one_piece_pack(tmp_path / name,
                                lambda m, n=name, v=value: m["pieces"][0].update({n: v}))
    with pytest.raises(sp.StylePackError, match=message):
      sp.pack_sequences(sp.load_style_pack(path), tok, "train", 64)


def test_links_out_of_a_pack_are_refused(tmp_path):
  path = write_one_piece_pack(tmp_path / "toy")
  outside = tmp_path / "elsewhere.mid"
  os.rename(os.path.join(path, sp.REFS_MIDI, "a.mid"), outside)
  os.symlink(outside, os.path.join(path, sp.REFS_MIDI, "a.mid"))
  with pytest.raises(sp.StylePackError, match=r"a.mid: a link to .*elsewhere.mid, outside the "
                                              r"pack"):
    sp.load_style_pack(path)
  os.symlink(os.path.join(path, sp.REFS_MIDI), tmp_path / "toy" / "inner")  # inside: fine
  edit = lambda m: m["pieces"][0].update(path="../elsewhere.mid")
  with pytest.raises(sp.StylePackError, match="leaves the pack"):
    sp.load_style_pack(write_one_piece_pack(tmp_path / "toy2", edit))


def launch(*args, cwd) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(ROOT / "launch" / "build_style_packs.py"), *args],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_launcher_prints_the_report_and_refuses_bad_input(music, tmp_path):
  done = launch(f"--from_dir={music}", "--out=packs", "--min_test=2", cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "folk/jig/broken.mid: not a readable MIDI file" in done.stdout
  assert "wrote 6 packs under packs" in done.stdout and "Traceback" not in done.stderr
  assert all(len(sp.load_style_pack(str(tmp_path / "packs" / s)).split("test")) >= 2
             for s in ("pop", "folk/jig"))
  for args, message in (
      ([f"--from_dir={tmp_path / 'nowhere'}"], "nowhere: folder does not exist"),
      ([f"--from_dir={music}", "--from_files=a.mid"], "give --from_dir or --from_files"),
      (["--from_files=a.mid"], "--from_files and --style go together"),
      ([f"--from_dir={music}", "--validation_fraction=0.95"], "must be in [0, 1)")):
    done = launch(*args, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("build_style_packs: error: ")
    assert message in done.stderr, done.stderr[-500:]


def _melody_wav(path, pitches, sr=22050):
  """A plain melody of sine tones, a note a quarter second: audio basic-pitch can transcribe."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import soundfile  # pylint: disable=g-import-not-at-top
  t = np.arange(int(0.25 * sr)) / sr
  fade = np.minimum(1.0, np.minimum(t, t[::-1]) * 40)
  notes = [0.4 * fade * np.sin(2 * np.pi * 440 * 2 ** ((p - 69) / 12) * t) for p in pitches]
  soundfile.write(path, np.concatenate(notes).astype(np.float32), sr)


def test_audio_in_a_style_packs_as_transcribed_midi(tmp_path):
  from lora_jax.audio import service  # pylint: disable=g-import-not-at-top; basic-pitch is heavy
  audio = tmp_path / "mine" / "hum" / "refs_audio"
  audio.mkdir(parents=True)
  for i in range(3):
    _melody_wav(str(audio / f"tune{i}.wav"), [60 + i, 64, 67, 72, 67, 64, 62 + i, 60])
  (audio / "broken.wav").write_bytes(b"RIFF not really")
  calls = []

  def counted(path, cache):
    calls.append(path)
    return service.transcribe_cached(path, cache)

  out = str(tmp_path / "packs")
  skipped = fp.build_from_dir(str(tmp_path / "mine"), out)
  assert not skipped.packs and len(skipped.skipped_audio) == 4
  report = fp.build_from_dir(str(tmp_path / "mine"), out, audio_to_midi=counted)
  assert report.packs and not report.skipped_audio and len(calls) == 4
  assert list(dict(report.failures)) == ["hum/refs_audio/broken.wav"]
  assert dict(report.failures)["hum/refs_audio/broken.wav"].startswith("not transcribed: ")
  pieces = manifest(os.path.join(out, "hum"))["pieces"]
  assert sorted(p["path"] for p in pieces) == [f"refs_midi/tune{i}.mid" for i in range(3)]
  assert all(p["n_notes"] >= 4 for p in pieces)
  # Rebuilt: the transcriptions are reused by content, not redone.
  cache = os.path.join(out, "hum", fp.TRANSCRIBED)
  inodes = lambda: {n: os.stat(os.path.join(cache, n)).st_ino for n in os.listdir(cache)}
  before = inodes()
  assert len(before) == 3
  fp.build_from_dir(str(tmp_path / "mine"), out, audio_to_midi=service.transcribe_cached)
  assert inodes() == before
