"""load_style_pack checks and pack_sequences windows, on small packs written here."""
import json
import os

import numpy as np
import pretty_midi
import pytest

from lora_jax import atomic
from lora_jax.data import midi_tokenizer as mt
from lora_jax.data.style_packs import pack as sp


@pytest.fixture(scope="module")
def tok() -> mt.MidiTokenizer:
  return mt.MidiTokenizer(mt.MidiTokenizerConfig())


def scale_midi(n_bars: int, seed: int) -> pretty_midi.PrettyMIDI:
  """A piece of n_bars 4/4 bars of eighth notes."""
  rng = np.random.default_rng(seed)
  pm = mt.midi_with_meter([(0, 100.0)], [(0, 4, 4)])
  inst = pretty_midi.Instrument(program=40)
  for i in range(n_bars * 8):
    start, end = pm.tick_to_time(i * 240), pm.tick_to_time(i * 240 + 240)
    inst.notes.append(pretty_midi.Note(velocity=80, pitch=int(rng.integers(55, 80)),
                                       start=start, end=end))
  pm.instruments.append(inst)
  return pm


def write_pack(path, pieces: dict[str, pretty_midi.PrettyMIDI], split="train") -> str:
  os.makedirs(os.path.join(path, sp.REFS_MIDI), exist_ok=True)
  entries = []
  for name, pm in pieces.items():
    rel = os.path.join(sp.REFS_MIDI, f"{name}.mid")
    pm.write(os.path.join(path, rel))
    entries.append({"id": name, "source": "test", "path": rel, "split": split, "style": "toy",
                    "n_notes": sum(len(i.notes) for i in pm.instruments),
                    "duration": pm.get_end_time()})
  atomic.write_text(os.path.join(path, sp.MANIFEST), json.dumps(
      {"format": sp.PACK_FORMAT, "style": "toy", "parent": None, "children": [],
       "pieces": entries}))
  return str(path)


def test_load_valid_pack(tmp_path):
  path = write_pack(tmp_path / "toy", {"a": scale_midi(2, 0), "b": scale_midi(3, 1)})
  pack = sp.load_style_pack(path)
  assert pack.style == "toy" and pack.parent is None and len(pack.pieces) == 2
  assert [p.id for p in pack.split("train")] == ["a", "b"] and pack.split("test") == ()
  assert os.path.isfile(pack.midi_path(pack.pieces[0]))
  assert not [f for f in os.listdir(path) if f.endswith(".tmp")]


def edit_manifest(path, change):
  file = os.path.join(path, sp.MANIFEST)
  with open(file) as f:
    manifest = json.load(f)
  change(manifest)
  with open(file, "w") as f:
    json.dump(manifest, f)


@pytest.mark.parametrize("breakage, message", [
    (lambda p: os.rename(p, p + "_gone"), "directory does not exist"),
    (lambda p: os.remove(os.path.join(p, sp.MANIFEST)), "manifest is missing"),
    (lambda p: open(os.path.join(p, sp.MANIFEST), "w").write("{oops"), "not valid JSON"),
    (lambda p: edit_manifest(p, lambda m: m.update(format="other")), "format is not"),
    (lambda p: edit_manifest(p, lambda m: m.update(pieces=[])), "lists no pieces"),
    (lambda p: edit_manifest(p, lambda m: m["pieces"][0].pop("split")), "field 'split'"),
    (lambda p: edit_manifest(p, lambda m: m["pieces"][0].update(split="dev")), "not in"),
    (lambda p: edit_manifest(p, lambda m: m["pieces"].append(m["pieces"][0])), "listed twice"),
    (lambda p: edit_manifest(p, lambda m: m["pieces"][0].update(path="../x.mid")), "leaves"),
    (lambda p: os.remove(os.path.join(p, sp.REFS_MIDI, "a.mid")), "does not exist"),
    (lambda p: open(os.path.join(p, sp.REFS_MIDI, "a.mid"), "wb").write(b"garbage"),
     "not a MIDI file"),
])
def test_broken_packs_are_clear_errors(tmp_path, breakage, message):
  path = write_pack(tmp_path / "toy", {"a": scale_midi(2, 0)})
  breakage(path)
  with pytest.raises(sp.StylePackError, match=message) as error:
    sp.load_style_pack(path)
  assert "toy" in str(error.value) and "\n" not in str(error.value)
  assert isinstance(error.value, ValueError)


def test_truncated_midi_fails_when_tokenized(tmp_path, tok):
  path = write_pack(tmp_path / "toy", {"a": scale_midi(2, 0)})
  file = os.path.join(path, sp.REFS_MIDI, "a.mid")
  with open(file, "rb") as f:
    data = f.read()
  with open(file, "wb") as f:
    f.write(data[:30])
  pack = sp.load_style_pack(path)  # the header is intact
  with pytest.raises(sp.StylePackError, match="a.mid: not a readable MIDI file"):
    sp.pack_sequences(pack, tok, "train", 64)


def test_pack_sequences_windows(tmp_path, tok):
  pieces = {"short": scale_midi(1, 0), "long": scale_midi(40, 1)}
  pack = sp.load_style_pack(write_pack(tmp_path / "toy", pieces))
  seq_len = 128
  packed = sp.pack_sequences(pack, tok, "train", seq_len)
  tokens, mask = packed.tokens_NxT, packed.mask_NxT
  assert tokens.dtype == np.int32 and tokens.shape[1] == seq_len and mask.shape == tokens.shape
  assert (tokens[:, 0] == mt.BOS).all() and (tokens[:, 1] == tok.ids["Bar"]).all()
  assert (tokens[~mask] == mt.PAD).all() and (tokens[mask] != mt.PAD).all()
  assert mask[:, 0].all() and (np.diff(mask.astype(int), axis=1) <= 0).all()  # padding at the end
  owners = [packed.piece_ids[i] for i in packed.piece_index_N]
  assert owners.count("short") == 1 and owners.count("long") > 5
  assert packed.n_tokens_skipped == 0
  for row, m in zip(tokens, mask):
    tok.decode(row[m], truncated=True)  # every window decodes on its own
  # The long piece's windows are slices of its tokens from a Bar on, covering all of them.
  long_pm = pretty_midi.PrettyMIDI(pack.midi_path(next(p for p in pack.pieces if p.id == "long")))
  piece = tok.encode(long_pm)
  covered, pos = set(), 0
  for row, m, owner in zip(tokens, mask, owners):
    if owner != "long":
      continue
    body = list(row[m][1:])
    pos = next(s for s in range(pos, len(piece)) if piece[s:s + len(body)] == body)
    assert piece[pos] == tok.ids["Bar"]
    covered |= set(range(pos, pos + len(body)))
    pos += 1
  assert covered == set(range(1, len(piece))) and body[-1] == mt.EOS


def test_pack_sequences_bad_arguments(tmp_path, tok):
  pack = sp.load_style_pack(write_pack(tmp_path / "toy", {"a": scale_midi(2, 0)}))
  with pytest.raises(sp.StylePackError, match="split 'test' holds no pieces"):
    sp.pack_sequences(pack, tok, "test", 64)
  with pytest.raises(ValueError, match="split 'dev' is not one of"):
    sp.pack_sequences(pack, tok, "dev", 64)
  with pytest.raises(ValueError, match="seq_len 1"):
    sp.pack_sequences(pack, tok, "train", 1)


def test_split_of_is_deterministic_and_balanced():
  ids = [f"corpus/piece_{i}.abc#{i}" for i in range(5000)]
  splits = [sp.split_of(i) for i in ids]
  assert splits == [sp.split_of(i) for i in ids]
  assert sp.split_of("oneills1850/0001-0050.abc#1") == sp.split_of("oneills1850/0001-0050.abc#1")
  counts = {s: splits.count(s) / len(ids) for s in sp.SPLITS}
  assert abs(counts["train"] - 0.8) < 0.03 and abs(counts["validation"] - 0.1) < 0.02
