"""The files bad_input_test.py feeds the launch scripts: good models to aim bad inputs at, and the
bad inputs themselves (broken MIDI, broken adapters and weight files, broken manifests)."""

import json
import os
import pickle

import jax
import mido
import numpy as np
import pretty_midi
import safetensors
import torch

from lora_jax import lora, stable_safetensors
from lora_jax.duv import bundle
from lora_jax.hierarchy import base_file, merging
from lora_jax.interop import torch_convert
from lora_jax.models import transformer
from lora_jax.train import config as config_lib
import duv_apply_test
import duv_training_test
import hierarchy_merge_test as hm


class _Evil:
  """Unpickling this would run code: what a hostile checkpoint carries."""

  def __reduce__(self):
    return (os.system, ("touch PWNED",))


def _write(path, data: bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def _song_bytes(tmp) -> bytes:
  path = os.path.join(tmp, "song.mid")
  duv_apply_test._song().write(path)
  with open(path, "rb") as f:
    return f.read()


def midi_files(root: str) -> dict[str, str]:
  """Good and broken MIDI files."""
  song = _song_bytes(root)
  files = {"song_mid": _write(os.path.join(root, "midi", "song.mid"), song),
           "empty_mid": _write(os.path.join(root, "midi", "empty.mid"), b""),
           "text_mid": _write(os.path.join(root, "midi", "text.mid"), b"not a MIDI file\n" * 20),
           "random_mid": _write(os.path.join(root, "midi", "random.mid"),
                                np.random.default_rng(0).bytes(3000)),
           "truncated_mid": _write(os.path.join(root, "midi", "truncated.mid"),
                                   song[:len(song) // 3])}
  pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
  pm.instruments.append(pretty_midi.Instrument(0, name="Piano"))  # a track without notes
  files["zero_notes_mid"] = os.path.join(root, "midi", "zero_notes.mid")
  pm.write(files["zero_notes_mid"])
  pm = duv_apply_test._song()
  pm.instruments[0].notes.append(pretty_midi.Note(80, 60, 3.0e6, 3.0e6 + 1))  # 35 days in
  files["huge_mid"] = os.path.join(root, "midi", "huge.mid")
  pm.write(files["huge_mid"])
  mid = mido.MidiFile(ticks_per_beat=480)
  track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=0),
                          mido.Message("note_on", note=60, velocity=90, time=0),
                          mido.Message("note_off", note=60, velocity=0, time=480),
                          mido.Message("note_on", note=62, velocity=90, time=0),
                          mido.Message("note_off", note=62, velocity=0, time=480)])
  mid.tracks.append(track)
  files["tempo0_mid"] = os.path.join(root, "midi", "tempo0.mid")
  mid.save(files["tempo0_mid"])
  return files


def hierarchy_files(root: str) -> dict[str, str]:
  """A base, its parent and child adapters, and broken or foreign adapters."""
  folder = os.path.join(root, "hier")
  os.makedirs(folder)
  base_path = hm.write_base(folder, seed=0)
  base = base_file.load_model(base_path)
  parent = hm.write_adapter(os.path.join(folder, "folk.lora"), base, hm.PARENT_SPEC, 1, "folk",
                            {"level": "parent"})
  child = hm.write_child(os.path.join(folder, "waltz.lora"), base, parent)
  other = os.path.join(root, "other_base")
  os.makedirs(other)
  foreign = hm.write_adapter(os.path.join(folder, "foreign.lora"),
                             base_file.load_model(hm.write_base(other, seed=5)), hm.PARENT_SPEC, 1,
                             "foreign", {"level": "parent"})
  with safetensors.safe_open(parent, framework="numpy") as f:
    metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
  name = sorted(k for k in tensors if k.endswith("lora_B"))[0]
  tensors[name] = tensors[name].copy()
  tensors[name][0, 0] = np.nan
  nan_lora = os.path.join(folder, "nan.lora")
  stable_safetensors.save_numpy(tensors, nan_lora, metadata)
  with open(parent, "rb") as f:
    parent_bytes = f.read()
  pickled = os.path.join(folder, "pickled.lora")
  torch.save({"lora_A": torch.ones(3), "evil": _Evil()}, pickled)
  config_dir = os.path.join(root, "configs")
  os.makedirs(config_dir)
  ic_nomodel = _write(os.path.join(config_dir, "no_model.json"), json.dumps(
      {"format": merging.CONFIG_FORMAT, "vocab": "vocab.json"}).encode())
  ic_number = _write(os.path.join(config_dir, "number.json"), json.dumps(
      {"format": merging.CONFIG_FORMAT, "model": 7}).encode())
  return {"base": base_path, "parent": parent, "child": child, "foreign_lora": foreign,
          "nan_lora": nan_lora, "pickled_lora": pickled,
          "truncated_lora": _write(os.path.join(folder, "truncated.lora"),
                                   parent_bytes[:len(parent_bytes) // 2]),
          "empty_lora": _write(os.path.join(folder, "empty.lora"), b""),
          "random_lora": _write(os.path.join(folder, "random.lora"),
                                np.random.default_rng(1).bytes(2000)),
          "ic_nomodel": ic_nomodel, "ic_number": ic_number}


def torch_files(root: str, repo: str) -> dict[str, str]:
  """PyTorch base files for configs/music_transformer.py:tiny: one with a NaN, broken ones."""
  folder = os.path.join(root, "torch")
  os.makedirs(folder)
  config = config_lib.load_config_dict(os.path.join(repo, "configs", "music_transformer.py"),
                                       "tiny")
  abstract = transformer.abstract_params(config_lib.from_mapping(
      transformer.TransformerConfig, config.model, "config.model"))
  params = jax.tree.map(lambda a: np.full(a.shape, 0.01, a.dtype), abstract)
  good_base = os.path.join(folder, "good_base.pt")
  torch_convert.save_torch_file(params, good_base)
  jax.tree.leaves(params)[-1].reshape(-1)[0] = np.inf
  nan_pt = os.path.join(folder, "nan_base.pt")
  torch_convert.save_torch_file(params, nan_pt)
  evil = os.path.join(folder, "evil.pt")
  torch.save({"w": torch.ones(2), "evil": _Evil()}, evil)
  good = os.path.join(folder, "good.pt")
  torch.save({"w": torch.ones(64)}, good)
  with open(good, "rb") as f:
    good_bytes = f.read()
  legacy = os.path.join(folder, "legacy.pt")
  with open(legacy, "wb") as f:
    pickle.dump({"evil": _Evil()}, f)
  return {"nan_pt": nan_pt, "good_base_pt": good_base, "evil_pt": evil, "legacy_pt": legacy,
          "empty_pt": _write(os.path.join(folder, "empty.pt"), b""),
          "truncated_pt": _write(os.path.join(folder, "truncated.pt"),
                                 good_bytes[:len(good_bytes) // 2])}


def duv_files(root: str) -> dict[str, str]:
  """A DUV bundle (random weights), the manifest it would train on, and broken manifests."""
  import pathlib  # pylint: disable=g-import-not-at-top
  folder = os.path.join(root, "duv_bundle")
  pm = duv_apply_test._song()
  bundle.save_bundle(folder, duv_apply_test._params(0), duv_apply_test.CONFIG,
                     duv_apply_test._scaler(pm), 100)
  torch.save({"lora_A": torch.ones(3), "evil": _Evil()}, os.path.join(folder, "pickled.lora"))
  manifest = duv_training_test._build(pathlib.Path(root) / "duv", ((0, False),))
  with open(manifest) as f:
    lines = f.read().splitlines()
  row = json.loads(lines[0])
  broken = {
      "manifest_badjson": [lines[0][:-20]] + lines[1:],
      "manifest_missing": [json.dumps({k: v for k, v in row.items() if k != "targets"})]
                          + lines[1:],
      "manifest_mistyped": [json.dumps({**row, "notes": {**row["notes"], "pitch": "C4"}})]
                           + lines[1:],
      "manifest_duplicate": lines + [lines[0]],
      "manifest_outside": [json.dumps({**row, "file": "../../../etc/passwd"})] + lines[1:],
  }
  files = {"duv_bundle": folder, "duv_pickled_lora": os.path.join(folder, "pickled.lora"),
           "manifest": manifest,
           "duv_cache": str(pathlib.Path(root) / "duv" / "cache")}
  for name, rows in broken.items():
    files[name] = _write(os.path.join(root, "manifests", f"{name}.jsonl"),
                         ("\n".join(rows) + "\n").encode())
  tokens = np.zeros((8, 16), np.int32)
  tokens[3, 5] = 10**6
  files["oob_npz"] = os.path.join(root, "oob_tokens.npz")
  np.savez(files["oob_npz"], tokens=tokens, mask=np.ones((8, 16), np.float32))
  return files


def song_files(root: str) -> dict[str, str]:
  """A tiny song LM as launch/train_song.py leaves it (a base, its PEFT adapter and the record
  beside it, the codec of its songs), and what generate_song must refuse: an adapter recorded
  over another base, another codec, a model.pt with no record."""
  from lora_jax.families import song_lm as song_family  # pylint: disable=g-import-not-at-top
  from lora_jax.interop import flax_weights, peft, song_lm_weights
  from lora_jax.models.song import lm as song_lm
  from lora_jax.song import codec as codec_lib
  from lora_jax.song import model_record
  folder = os.path.join(root, "song")
  model = song_family.SongConfig(
      code_size=64, dim=32, intermediate_size=64, num_heads=4, num_layers=1, num_layers_sub=1,
      text_vocab_size=272, frames=8, lyrics_len=40, style_len=16, delays=(0, 2, 2))
  abstract = song_lm.abstract_params(model.lm_config("float32"))
  rng = np.random.default_rng(0)
  base = jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(np.float32), abstract)
  os.makedirs(folder)
  base_path = os.path.join(folder, "base.safetensors")
  flax_weights.save_params(base, base_path)
  codecs = []
  for seed in (0, 1):
    features = {s: [rng.standard_normal((200, 16)).astype(np.float32)] for s in codec_lib.STREAMS}
    codecs.append(os.path.join(folder, f"codec{seed}.safetensors"))
    codec_lib.fit(features, sample_rate=8000, n_mels=16, separator="hpss", code_size=64,
                  seed=seed).save(codecs[-1])
  spec = lora.LoraSpec(rank=2, alpha=4.0, target_modules=("q_proj", "v_proj"))
  targets = lora.resolve(spec, abstract)
  adapter = lora.init_adapter(targets, spec, jax.random.key(0))
  record = lora.AdapterRecord(adapter, spec, lora.fingerprint(base), song_family.NAME, "song")
  files = {"song_base": base_path, "song_codec": codecs[0], "song_other_codec": codecs[1]}
  for name, fingerprint in (("song_adapter", record.base_fingerprint),
                            ("song_foreign_adapter", "0123456789abcdef")):
    files[name] = os.path.join(folder, name)
    peft.export_peft(record, files[name])
    model_record.write(files[name], model_record.SongModelRecord(
        model, "lora", (codec_lib.file_id(codecs[0]),), codecs[0], "", "", base_path,
        fingerprint))
  files["song_bare_model"] = os.path.join(folder, "bare", "model.pt")
  song_lm_weights.save_model_pt(base, files["song_bare_model"])
  return files


def build(root: str, repo: str) -> dict[str, str]:
  """Every file, by name."""
  os.makedirs(root, exist_ok=True)
  files = {}
  for make in (midi_files, hierarchy_files, duv_files, song_files):
    files.update(make(root))
  files.update(torch_files(root, repo))
  files["repo"] = repo
  return files
