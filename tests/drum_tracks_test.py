"""A General MIDI drum track (channel 10) in a user's folder: what the style-pack path does with
it and how its Program tokens are scored (docs/own_music.md, "Drum tracks"). The shipped
base has never read one."""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.data import midi_file
from lora_jax.data.style_packs import folder as fp
from lora_jax.families import music_lm
from lora_jax.hierarchy import base_file, evaluation, windows
import own_music_testlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = str(ROOT / "assets" / "base_model" / "base_model.safetensors")


def test_a_drum_track_packs_tokenises_and_drums_are_a_class_of_their_own(tmp_path):
  music = tmp_path / "my_music" / "rock" / "punk"
  os.makedirs(music)
  for i in range(4):  # drums on channel 10 and a bass (program 33), tempo and meter changes
    own_music_testlib.drum_track(str(music / f"take_{i}.mid"))
    with open(music / f"take_{i}.mid", "ab") as f:
      f.write(bytes([i]))  # four files, four splits' worth of hashes, the same music
  report = fp.build_from_dir(str(tmp_path / "my_music"), str(tmp_path / "packs"))
  assert [s.style for s in report.styles if s.packed] == ["rock", "rock/punk"]

  base = base_file.load_model(BASE)
  tokenizer = base_file.load_tokenizer(base.path, base.settings)
  # Drum notes keep their channel: Program_drums, then the drum's GM key number as the Pitch.
  tokens = tokenizer.encode(midi_file.read_midi(str(music / "take_0.mid")))
  names = [tokenizer.tokens[t] for t in tokens]
  after_drums = {names[i + 1] for i, n in enumerate(names) if n == "Program_drums"}
  assert after_drums == {"Pitch_36", "Pitch_42"} and "Program_33" in names
  decoded = tokenizer.decode(tokens)
  assert sorted((i.is_drum, len(i.notes)) for i in decoded.instruments) == [(False, 21),
                                                                            (True, 42)]

  # The windows an adapter trains on carry them as they are.
  train = windows.split_windows([str(tmp_path / "packs" / "rock" / "punk")], "train", tokenizer,
                                64, str(tmp_path / "cache"))
  window = windows.load_arrays(train)["tokens"][:1]
  drums, bass = tokenizer.ids["Program_drums"], tokenizer.ids["Program_33"]
  assert drums in window and bass in window

  # What training and the NLL tables score: the pitched Program tokens are one class (saying
  # "flute" where the file says "bass" costs nothing), Program_drums is a class of its own, so
  # predicting a bass where the file has drums costs bits, and the by-kind breakdown shows the
  # drums' Program tokens apart.
  pooled = base_file.pooled_targets(tokenizer)
  assert drums not in pooled and bass in pooled and len(pooled) == 128
  flute = tokenizer.ids["Program_73"]
  logits = base.model().apply({"params": base.params}, jnp.asarray(window))
  ce = lambda w: np.asarray(music_lm.next_token_ce(logits, jnp.asarray(w), pooled))
  as_written = ce(window)
  assert np.isfinite(as_written).all()
  np.testing.assert_array_equal(ce(np.where(window == bass, flute, window)), as_written)
  at_drums = window[:, 1:] == drums
  relabelled = ce(np.where(window == drums, bass, window))
  np.testing.assert_array_equal(relabelled[~at_drums], as_written[~at_drums])
  assert (relabelled[at_drums] != as_written[at_drums]).all()
  # A drum target is scored by its own logit alone.
  log_p = np.asarray(logits[:, :-1] - jax.nn.logsumexp(logits[:, :-1], axis=-1, keepdims=True))
  np.testing.assert_allclose(as_written[at_drums], -log_p[at_drums][:, drums], rtol=1e-5)
  arrays = {"tokens": window, "mask": np.ones_like(window)}
  kinds = evaluation.nll_by_kind(base.model(), base.params, arrays, tokenizer)
  assert {"Program", "Program_drums", "Pitch"} <= set(kinds)
  assert kinds["Program_drums"].n_tokens == int(at_drums.sum())
