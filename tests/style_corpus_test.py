"""Style packs built from real music21 corpus pieces: layout, splits, cache, failures."""
import json
import os
import shutil
import subprocess
import sys

import music21
import pretty_midi
import pytest

from lora_jax.data import midi_tokenizer as mt
from lora_jax.data.style_packs import corpus as sc
from lora_jax.data.style_packs import pack as sp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELTIC = ("reel", "jig", "hornpipe")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("packs"))
  stats = sc.build_style_packs(out, ["celtic_fiddle", "baroque_chorale"], max_pieces=2)
  return out, stats


def midi_files(root: str) -> dict[str, float]:
  return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
          for d, _, files in os.walk(root) for f in files if f.endswith(".mid")}


def test_layout_and_manifests(built):
  out, stats = built
  assert [s.style for s in stats.styles] == [
      "celtic_fiddle", *(f"celtic_fiddle/{c}" for c in CELTIC), "baroque_chorale"]
  assert all(s.n_selected == 2 and s.n_available > 300 for s in stats.styles)
  assert sum(s.n_converted + s.n_failed for s in stats.styles) == 10
  parent = sp.load_style_pack(os.path.join(out, "celtic_fiddle"))
  assert parent.parent is None and parent.children == CELTIC
  own = [p for p in parent.pieces if p.style == "celtic_fiddle"]
  assert all(p.path.startswith("refs_midi/") for p in own)
  for child in CELTIC:
    pack = sp.load_style_pack(os.path.join(out, "celtic_fiddle", child))
    assert pack.parent == "celtic_fiddle" and pack.style == child and pack.pieces
    in_parent = {p.id: p for p in parent.pieces if p.style == f"celtic_fiddle/{child}"}
    assert set(in_parent) == {p.id for p in pack.pieces}  # the parent lists the union...
    for p in pack.pieces:  # ...and points at the child's file instead of copying it
      assert in_parent[p.id].path == os.path.join(child, p.path)
      assert p.split == sp.split_of(p.id) and p.n_notes > 0 and p.duration > 0
  assert len(midi_files(os.path.join(out, "celtic_fiddle"))) == len(parent.pieces)
  chorale = sp.load_style_pack(os.path.join(out, "baroque_chorale"))
  assert chorale.children == () and all(p.id.startswith("bach/") for p in chorale.pieces)
  for s in stats.styles:  # the per-style sums of what conversion left out, as the manifests say
    pack = sp.load_style_pack(os.path.join(out, *s.style.split("/")))
    own = [e for e in pack.manifest["pieces"] if e["style"] == s.style]
    assert s.n_dropped_notes == sum(e["n_dropped_notes"] for e in own)
    assert s.n_dropped_meters == sum(e["n_dropped_meters"] for e in own)


def test_second_build_is_a_cache_hit(built, tmp_path):
  out = str(tmp_path / "packs")
  shutil.copytree(built[0], out)
  before = midi_files(out)
  with open(os.path.join(out, "celtic_fiddle", "manifest.json")) as f:
    manifest = f.read()
  stats = sc.build_style_packs(out, ["celtic_fiddle", "baroque_chorale"], max_pieces=2)
  assert all(s.n_converted == 0 for s in stats.styles)
  assert [s.n_cached + s.n_failed for s in stats.styles] == [s.n_selected for s in stats.styles]
  assert midi_files(out) == before
  with open(os.path.join(out, "celtic_fiddle", "manifest.json")) as f:
    assert f.read() == manifest
  # A deleted file is converted again, and only that one.
  victim = sorted(before)[0]
  os.remove(victim)
  stats = sc.build_style_packs(out, ["celtic_fiddle", "baroque_chorale"], max_pieces=2)
  assert sum(s.n_converted for s in stats.styles) == 1 and os.path.isfile(victim)


def test_smaller_cap_keeps_a_subset_and_removes_stale_files(built, tmp_path):
  out = str(tmp_path / "packs")
  shutil.copytree(built[0], out)
  old = {p.id for p in sp.load_style_pack(os.path.join(out, "celtic_fiddle", "reel")).pieces}
  sc.build_style_packs(out, ["celtic_fiddle"], max_pieces=1)
  reel = sp.load_style_pack(os.path.join(out, "celtic_fiddle", "reel"))
  assert len(reel.pieces) == 1 and reel.pieces[0].id in old
  assert len(os.listdir(os.path.join(out, "celtic_fiddle", "reel", "refs_midi"))) == 1


def test_real_pack_to_token_windows(built):
  pack = sp.load_style_pack(os.path.join(built[0], "celtic_fiddle"))
  tok = mt.MidiTokenizer(mt.MidiTokenizerConfig())
  split = pack.pieces[0].split
  packed = sp.pack_sequences(pack, tok, split, 512)
  assert packed.tokens_NxT.shape[1] == 512 and len(packed.tokens_NxT) >= len(pack.split(split))
  assert (packed.tokens_NxT[:, 0] == mt.BOS).all() and packed.n_tokens_skipped == 0


def toy_genre(texts: dict[str, str]) -> sc.Genre:
  def collect(root):
    return [sc.CorpusPiece(f"toy/{name}.abc#1", "a", "toy", text, name)
            for name, text in texts.items()]
  return sc.Genre("toy", 0, ("a",), collect)


def test_failures_are_reported_and_remembered(tmp_path, monkeypatch):
  texts = {"good": "X:1\nT:good\nM:2/4\nL:1/8\nK:G\nGABc|d4|]\n", "empty": "X:1\nT:empty\nK:C\n"}
  monkeypatch.setitem(sc.GENRES, "toy", toy_genre(texts))
  out = str(tmp_path)
  for _ in range(2):
    stats = sc.build_style_packs(out, ["toy"])
    child = next(s for s in stats.styles if s.style == "toy/a")
    assert (child.n_selected, child.n_failed) == (2, 1)
    assert [f["id"] for f in stats.failures] == ["toy/empty.abc#1"]
    assert "no notes" in stats.failures[0]["error"]
  assert child.n_cached == 1  # the second run converted nothing, and kept the failure
  with open(os.path.join(out, "toy", sc.FAILURES)) as f:
    assert [x["id"] for x in json.load(f)["failures"]] == ["toy/empty.abc#1"]
  assert [p.id for p in sp.load_style_pack(os.path.join(out, "toy", "a")).pieces] == [
      "toy/good.abc#1"]


def test_sub_style_without_pieces_is_an_error(tmp_path, monkeypatch):
  genre = sc.Genre("toy", 0, ("a", "b"), toy_genre({"x": "X:1\nK:C\nC|]\n"}).collect)
  monkeypatch.setitem(sc.GENRES, "toy", genre)
  with pytest.raises(ValueError, match="sub-style toy/b matched no pieces"):
    sc.build_style_packs(str(tmp_path), ["toy"])


@pytest.mark.parametrize("kwargs, message", [
    ({"genres": ["polka"]}, "unknown genres \\['polka'\\]"),
    ({"max_pieces": 0}, "max_pieces 0"),
    ({"workers": 0}, "workers 0"),
])
def test_bad_arguments(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    sc.build_style_packs(str(tmp_path), **kwargs)


def test_parallel_build(tmp_path):
  stats = sc.build_style_packs(str(tmp_path), ["essen_folk"], max_pieces=1, workers=2)
  assert [s.n_converted for s in stats.styles] == [1, 1, 1]
  for child in ("german", "chinese"):
    sp.load_style_pack(os.path.join(str(tmp_path), "essen_folk", child))


def test_catalog_labels():
  root = music21.common.getCorpusFilePath()
  celtic = sc.GENRES["celtic_fiddle"].collect(root)
  by_id = {p.id: p for p in celtic}
  assert len(by_id) == len(celtic)
  assert by_id["oneills1850/0051-0100.abc#51"].sub_style in ("jig", "reel", "hornpipe", "")
  doubles = [p for p in celtic if "R:double jig" in (p.abc_text or "")]
  assert doubles and all(p.sub_style == "jig" for p in doubles)
  assert sc._essen_region("China, Shaanxi, Zizhou") == "chinese"
  assert sc._essen_region("Europa, Mitteleuropa, Deutschland") == "german"
  assert sc._essen_region("Mitteleuropa, Deutschland (DDR)") == "german"
  assert sc._essen_region("Europa, Mitteleuropa, Deutschland; Frankreich") == ""
  assert sc._essen_region("Luxemburg") == ""


def test_score_to_midi_pads_pickup_merges_ties_drops_graces():
  score = music21.converter.parseData(
      'X:1\nT:t\nM:4/4\nL:1/4\nK:C\nG|"C"c2-c d|{a}e4|]\n', format="abc")
  pm, dropped = sc.score_to_midi(score, 40)
  notes = sorted((round(pm.time_to_tick(n.start) / 480, 3), round(
      pm.time_to_tick(n.end) / 480, 3), n.pitch) for i in pm.instruments for n in i.notes)
  assert notes == [(3.0, 4.0, 67), (4.0, 7.0, 72), (7.0, 8.0, 74), (8.0, 12.0, 76)]
  assert (dropped.n_notes, dropped.n_meters) == (1, 0)
  assert [(ts.numerator, ts.denominator, ts.time) for ts in pm.time_signature_changes] == [
      (4, 4, 0.0)]
  assert {i.program for i in pm.instruments} == {40}


def test_meters_music21_makes_up_are_dropped_and_counted():
  root = music21.common.getCorpusFilePath()
  text = next(t for x, _, t in sc.abc_tunes(root, "essenFolksong/altdeu20.abc") if x == "195")
  pm, dropped = sc.score_to_midi(music21.converter.parseData(text, format="abc"), 53)
  assert dropped.n_meters == 2  # 24/4 and 20/4 for two overfull bars of a 4/1 song
  assert {(ts.numerator, ts.denominator) for ts in pm.time_signature_changes} == {(4, 1)}
  tokens, stats = mt.MidiTokenizer(mt.MidiTokenizerConfig()).encode_with_stats(pm)
  assert stats.n_encoded == stats.n_notes > 20


def test_a_meter_the_tokenizer_cannot_write_is_dropped_and_the_piece_packs(tmp_path):
  # A cap of 150 selects this unbarred Chinese song; music21 gives its long measures 93/16, 63/16,
  # 66/4 and 45/16. Packing its split once failed on the 66/4.
  root = music21.common.getCorpusFilePath()
  text = next(t for x, _, t in sc.abc_tunes(root, "essenFolksong/han2.abc") if x == "374")
  pm, dropped = sc.score_to_midi(music21.converter.parseData(text, format="abc"), 53)
  assert dropped.n_meters == 4
  assert {(ts.numerator, ts.denominator) for ts in pm.time_signature_changes} == {(4, 4)}
  path = str(tmp_path / "han2.mid")
  pm.write(path)
  tokens, stats = mt.MidiTokenizer(mt.MidiTokenizerConfig()).encode_with_stats(
      pretty_midi.PrettyMIDI(path))  # as style_pack.pack_sequences reads it
  assert stats.n_encoded == stats.n_notes == 55


def test_launch_script(tmp_path):
  script = os.path.join(REPO, "launch", "build_style_packs.py")
  bad = subprocess.run([sys.executable, script, f"--out={tmp_path}", "--styles=polka"],
                       capture_output=True, text=True, check=False)
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith(
      "build_style_packs: error: unknown genres ['polka']")
  good = subprocess.run([sys.executable, script, f"--out={tmp_path}", "--max_pieces=1",
                         "--styles=baroque_chorale", "--workers=1"],
                        capture_output=True, text=True, check=False)
  assert good.returncode == 0, good.stderr
  assert len(sp.load_style_pack(os.path.join(str(tmp_path), "baroque_chorale")).pieces) == 1
