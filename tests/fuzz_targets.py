"""The parsers that read user files, as fuzz targets: each takes what hypothesis draws, runs the
parser, and may fail only with the error type its module declares (any other exception is a bug).
Shared by tests/fuzz_parsers_test.py (bounded, in CI) and bench/fuzz_parsers.py (long runs).
"""

import atexit
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Callable

from hypothesis import strategies as st
import numpy as np
import pretty_midi
import safetensors
import safetensors.numpy

from lora_jax import errors, lora, pickles, stable_safetensors
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.data.duv import pairs as duv_pairs
from lora_jax.data import midi_tokenizer as mt
from lora_jax.data.style_packs import pack as style_pack
from lora_jax.hierarchy import merging
from lora_jax.interop import peft, peft_config

TOKENIZER = mt.MidiTokenizer(mt.MidiTokenizerConfig())
_DIR = tempfile.mkdtemp(prefix="lora_jax_fuzz_")
atexit.register(shutil.rmtree, _DIR, True)


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  strategy: st.SearchStrategy
  run: Callable[[Any], None]
  declared: tuple[type, ...]  # the errors the parser may raise


def _file(name: str, data: bytes) -> str:
  path = os.path.join(_DIR, name)
  with open(path, "wb") as f:
    f.write(data)
  return path


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _mutated(valid: dict) -> st.SearchStrategy:
  """`valid` with some fields deleted, replaced by any JSON value, or added."""
  keys = sorted(valid)
  edit = st.tuples(st.sampled_from(["delete", "replace", "add"]),
                   st.sampled_from(keys) | st.text(max_size=8), JSON)

  def apply(edits):
    out = dict(valid)
    for kind, key, value in edits:
      if kind == "delete":
        out.pop(key, None)
      else:
        out[key] = value
    return out
  return st.lists(edit, min_size=1, max_size=3).map(apply)


# --- the MIDI tokenizer and decoder ---------------------------------------------------------

def _decode(args) -> None:
  tokens, truncated = args
  TOKENIZER.decode(tokens, truncated=truncated)


NOTES = st.lists(st.tuples(
    st.sampled_from([0, 40, 73, mt.DRUM_PROGRAM]), st.integers(0, 127), st.integers(1, 127),
    st.integers(0, 400), st.integers(1, 60)), max_size=40)
EVENTS = st.tuples(NOTES, st.sampled_from([40.0, 96.0, 120.0, 177.0, 300.0]),
                   st.sampled_from([(4, 4), (3, 4), (6, 8), (2, 2), (9, 8)]))


def _pm_of(args) -> pretty_midi.PrettyMIDI:
  """A PrettyMIDI of notes on the tokenizer's grid, at one tempo and meter."""
  notes, qpm, (num, den) = args
  ticks = mt.MIDI_RESOLUTION // TOKENIZER.config.steps_per_quarter
  pm = mt.midi_with_meter([(0, qpm)], [(0, num, den)])
  by_program: dict[int, pretty_midi.Instrument] = {}
  for program, pitch, velocity, onset, duration in notes:
    inst = by_program.setdefault(program, pretty_midi.Instrument(
        program % 128, is_drum=program == mt.DRUM_PROGRAM))
    inst.notes.append(pretty_midi.Note(velocity, pitch, pm.tick_to_time(onset * ticks),
                                       pm.tick_to_time((onset + duration) * ticks)))
  pm.instruments = list(by_program.values())
  return pm


def _round_trip(args) -> None:
  """Notes on the grid -> tokens -> MIDI -> tokens: the second encoding equals the first."""
  tokens = TOKENIZER.encode(_pm_of(args))
  assert all(0 <= t < TOKENIZER.vocab_size for t in tokens)
  again = TOKENIZER.encode(TOKENIZER.decode(tokens))
  assert again == tokens, (tokens, again)


def _song_bytes() -> bytes:
  pm = mt.midi_with_meter([(0, 100.0)], [(0, 3, 4)])
  inst = pretty_midi.Instrument(40)
  inst.notes = [pretty_midi.Note(70 + i, 60 + i % 12, i * 0.3, i * 0.3 + 0.25) for i in range(24)]
  pm.instruments.append(inst)
  path = os.path.join(_DIR, "song.mid")
  pm.write(path)
  with open(path, "rb") as f:
    return f.read()


SONG = _song_bytes()
MIDI_BYTES = st.one_of(
    st.binary(max_size=400),
    st.binary(max_size=300).map(lambda b: b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0" + b),
    st.lists(st.tuples(st.integers(0, len(SONG) - 1), st.integers(0, 255)), min_size=1,
             max_size=6).map(lambda flips: bytes(
                 [dict(flips).get(i, b) for i, b in enumerate(SONG)])),
    st.integers(0, len(SONG)).map(lambda n: SONG[:n]))


def _midi_bytes(data: bytes) -> None:
  pm = duv_pairs.load_midi(_file("fuzz.mid", data))
  TOKENIZER.encode(pm)


def _torch_bytes() -> bytes:
  import torch  # pylint: disable=g-import-not-at-top
  path = os.path.join(_DIR, "good.pt")
  torch.save({"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}, path)
  with open(path, "rb") as f:
    return f.read()


TORCH = _torch_bytes()
TORCH_BYTES = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: b"\x80\x02" + b),  # a pickle's opening
    st.lists(st.tuples(st.integers(0, len(TORCH) - 1), st.integers(0, 255)), min_size=1,
             max_size=6).map(lambda flips: bytes(
                 [dict(flips).get(i, b) for i, b in enumerate(TORCH)])),
    st.integers(0, len(TORCH)).map(lambda n: TORCH[:n]))


def _torch_file(data: bytes) -> None:
  pickles.torch_load(_file("fuzz.pt", data))


# --- manifests ----------------------------------------------------------------------------

def _duv_row() -> dict:
  n = 4
  row = {"file": "pop909/a.mid", "source": "pop909", "piece_id": "pop909/a", "instrument": "piano",
         "track": 0, "split": "train", "n_notes": n, "duration_sec": 2.0,
         "notes": {"onset_beats": [0.0, 1.0, 2.0, 3.0], "dur_beats": [0.5] * n,
                   "pitch": [60, 62, 64, 65], "velocity": [80] * n},
         "downbeat_beats": [0.0, 4.0], "sections": [[0.0, "A"]],
         "features": {name: [0.0] * n for name in duv_features.CORE_FEATURES},
         "targets": {"velocity": [80] * n, "dur_beats": [0.5] * n}}
  return row


def _duv_manifest(rows) -> None:
  path = _file("manifest.jsonl", "\n".join(
      r if isinstance(r, str) else json.dumps(r) for r in rows).encode())
  duv_manifest.read_manifest(path, duv_features.CORE_FEATURES)


DUV_ROWS = st.lists(_mutated(_duv_row()) | st.just(_duv_row()) | st.text(max_size=30),
                    min_size=1, max_size=3)


def _pack_manifest() -> dict:
  return {"format": style_pack.PACK_FORMAT, "style": "toy", "parent": None, "children": [],
          "pieces": [{"id": "a", "source": "test", "path": "refs_midi/a.mid", "split": "train",
                      "style": "toy", "n_notes": 24, "duration": 7.2}]}


def _style_pack(manifest) -> None:
  folder = os.path.join(_DIR, "pack")
  os.makedirs(os.path.join(folder, style_pack.REFS_MIDI), exist_ok=True)
  _file(os.path.join("pack", style_pack.REFS_MIDI, "a.mid"), SONG)
  _file(os.path.join("pack", style_pack.MANIFEST), json.dumps(manifest).encode())
  style_pack.load_style_pack(folder)


PIECE = _mutated(_pack_manifest()["pieces"][0])
PACK_MANIFESTS = (_mutated(_pack_manifest())
                  | st.lists(PIECE, min_size=1, max_size=3).map(
                      lambda pieces: {**_pack_manifest(), "pieces": pieces})
                  | JSON)


# --- adapter files -----------------------------------------------------------------------

def _lora_file() -> tuple[dict, dict, Any]:
  from lora_jax.models import transformer  # pylint: disable=g-import-not-at-top
  config = transformer.TransformerConfig(vocab_size=16, d_model=8, n_heads=2, n_layers=1, d_ff=16,
                                         max_len=8)
  params = transformer.abstract_params(config)
  params = __import__("jax").tree.map(lambda a: np.zeros(a.shape, a.dtype), params)
  spec = lora.LoraSpec(rank=2, alpha=4.0, target_modules=("q_proj",))
  adapter = lora.init_adapter(lora.resolve(spec, params), spec, __import__("jax").random.key(0))
  path = os.path.join(_DIR, "valid.lora")
  lora.save_adapter(path, lora.AdapterRecord(adapter, spec, "f" * 16, "music_lm", "x",
                                             {"level": "parent"}))
  with safetensors.safe_open(path, framework="numpy") as f:
    return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}, params


LORA_METADATA, LORA_TENSORS, LORA_BASE = _lora_file()
SPEC_JSON = json.loads(LORA_METADATA["spec"])
LORA_METADATA_EDITS = st.one_of(
    _mutated(LORA_METADATA).map(lambda m: {k: v if isinstance(v, str) else json.dumps(v)
                                           for k, v in m.items()}),
    _mutated(SPEC_JSON).map(lambda s: {**LORA_METADATA, "spec": json.dumps(s)}))


def _lora_metadata(metadata: dict) -> None:
  path = os.path.join(_DIR, "fuzz.lora")
  stable_safetensors.save_numpy(LORA_TENSORS, path, metadata)
  lora.load_adapter(path, LORA_BASE)


def _peft_folder() -> tuple[str, dict]:
  folder = os.path.join(_DIR, "peft")
  record = lora.load_adapter(os.path.join(_DIR, "valid.lora"), LORA_BASE)
  peft.export_peft(record, folder)
  with open(os.path.join(folder, peft.CONFIG_NAME)) as f:
    return folder, json.load(f)


PEFT_FOLDER, PEFT_CONFIG = _peft_folder()


def _peft_config(config) -> None:
  _file(os.path.join("peft", peft.CONFIG_NAME), json.dumps(config).encode())
  peft.import_peft(PEFT_FOLDER, LORA_BASE, model_family="music_lm")


def _inference_config(config) -> None:
  merging.read_inference_config(_file("model.json", json.dumps(config).encode()))


INFERENCE_CONFIG = {"format": merging.CONFIG_FORMAT, "model": "m.safetensors",
                    "vocab": "vocab.json", "model_family": "music_lm", "fingerprint": "ab",
                    "model_settings": {}, "merged_from": {}, "torch_export": "", "generate": ""}

def _edited(args) -> list[int]:
  """The tokens of a real piece with a few tokens replaced, inserted or deleted."""
  events, edits = args
  tokens = TOKENIZER.encode(_pm_of(events))
  for kind, at, token in edits:
    i = at % (len(tokens) + 1)
    if kind == "replace" and i < len(tokens):
      tokens[i] = token
    elif kind == "insert":
      tokens.insert(i, token)
    elif i < len(tokens):
      del tokens[i]
  return tokens


TOKEN = st.integers(-3, TOKENIZER.vocab_size + 3)
TOKENS = st.one_of(
    st.lists(TOKEN, max_size=60),
    st.tuples(EVENTS, st.lists(st.tuples(st.sampled_from(["replace", "insert", "delete"]),
                                         st.integers(0, 10**6), TOKEN), max_size=3)).map(_edited))

TARGETS = [
    Target("tokenizer_decode", st.tuples(TOKENS, st.booleans()), _decode,
           (mt.TokenSequenceError,)),
    Target("tokenizer_round_trip", EVENTS, _round_trip, (mt.UnsupportedMidiError,)),
    Target("midi_bytes", MIDI_BYTES, _midi_bytes, (duv_pairs.CorruptMidiError,
                                                   mt.UnsupportedMidiError)),
    Target("torch_file_bytes", TORCH_BYTES, _torch_file, (errors.UserError,)),
    Target("duv_manifest", DUV_ROWS, _duv_manifest, (duv_manifest.ManifestError,)),
    Target("style_pack_manifest", PACK_MANIFESTS, _style_pack, (style_pack.StylePackError,)),
    Target("lora_metadata", LORA_METADATA_EDITS, _lora_metadata, (lora.AdapterFileError,)),
    Target("peft_adapter_config", _mutated(PEFT_CONFIG) | JSON, _peft_config,
           (peft.PeftFormatError, peft_config.PeftConfigError)),
    Target("inference_config", _mutated(INFERENCE_CONFIG) | JSON, _inference_config,
           (errors.UserError,)),
]
