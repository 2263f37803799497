"""Condition dropout in song_lm training (classifier-free guidance): a dropped condition is
exactly generation's unconditional input, the draw follows the step's key, probability 0 trains
bit for bit as without it, evaluation never drops, and the YAML sets it with the original's names.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from lora_jax.data.song import qwen_text
from lora_jax.data.song import text as song_text
from lora_jax.families import song_lm as family_lib
from lora_jax.song import generate
from lora_jax.song import yaml_config
from lora_jax.train import batches
from lora_jax.train import config as config_lib
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import state as state_lib
from lora_jax.train import step as step_lib
from song_qwen_text_test import qwen_folder  # pylint: disable=unused-import (a fixture)
import train_song_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "song_lm.py")
DROP_ALL = {"cfg_dropout": 0.0, "description_dropout": 1.0, "type_info_dropout": 1.0,
            "prompt_audio_dropout": 1.0}


def _model(text=None, **dropout):
  model = {**train_song_test.MODEL, **dropout}
  if text is not None:
    model.update(text_start_id=text.start, text_pad_id=text.pad,
                 text_vocab_size=max(text.vocab_size, model["text_vocab_size"]))
  return family_lib.SongConfig(**model)


def _batch(model, n=6):
  return {k: jnp.asarray(v) for k, v in family_lib.synthetic(model, n, 0).items()}


@pytest.mark.parametrize("dropout", [DROP_ALL, {"cfg_dropout": 1.0}])
@pytest.mark.parametrize("tokenizer", ["bytes", "qwen"])
def test_a_dropped_condition_is_what_generation_feeds_its_unconditional_rows(
    dropout, tokenizer, request):
  text = (qwen_text.QwenText(str(request.getfixturevalue("qwen_folder") / "tokenizer.json"))
          if tokenizer == "qwen" else song_text.ByteText())
  model = _model(text, **dropout)
  batch = _batch(model)
  dropped = family_lib.make(model, "float32").prepare(batch, jax.random.key(0))
  _, null = generate._conditions(generate.Request(output="x.wav", lyrics="[verse] la"), model,
                                 text, None)
  rows = len(batch["length"])
  for name, ours in (("lyrics", null["description"][0]), ("sections", null["description"][1]),
                     ("style", null["type_info"]), ("prompt", null["prompt_audio"])):
    np.testing.assert_array_equal(np.asarray(dropped[name]),
                                  np.repeat(np.asarray(ours), rows, axis=0), err_msg=name)
  for name in ("codes", "length", "song_end"):  # the song itself is never touched
    np.testing.assert_array_equal(np.asarray(dropped[name]), np.asarray(batch[name]))


def test_rows_draw_from_the_key_and_each_condition_on_its_own():
  model = _model(type_info_dropout=0.5)
  family = family_lib.make(model, "float32")
  batch = _batch(model, 64)
  a = family.prepare(batch, jax.random.key(1))
  again = family.prepare(batch, jax.random.key(1))
  other = family.prepare(batch, jax.random.key(2))
  for name in a:
    np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(again[name]))
  style_dropped = lambda b: np.any(np.asarray(b["style"]) != np.asarray(batch["style"]), axis=1)
  assert 16 < style_dropped(a).sum() < 48  # about half the rows, each its own draw
  assert not np.array_equal(style_dropped(a), style_dropped(other))
  # Only type_info has a probability: lyrics and prompt stay.
  for name in ("lyrics", "sections", "prompt"):
    np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(batch[name]))


def _steps(config, family, host, train=True, evaluate=True):
  """The validation loss of the initial state, then train steps on `host`, on one device."""
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.setup(config, family, mesh)
  initial = None
  if evaluate:
    eval_fn = step_lib.jit_eval_step(setup.step_config, mesh, setup.state_shardings.params,
                                     setup.frozen_shardings)
    initial = float(eval_fn(setup.state.params, setup.frozen,
                            jax.device_put(host[0], mesh_lib.batch_sharding(mesh)))["loss"])
  train_fn = step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                                     setup.frozen_shardings)
  state, losses = setup.state, []  # donated by the train step: evaluated first
  for b in host if train else ():
    state, m = train_fn(state, setup.frozen, jax.device_put(
        batches.micro_batches(b, 1), mesh_lib.batch_sharding(mesh, 1)))
    losses.append(float(m["loss"]))
  return losses, initial, jax.tree.leaves(jax.device_get(state.params))


def test_probability_zero_trains_bit_for_bit_and_evaluation_never_drops():
  base = config_lib.load(CONFIG, "tiny", {"mesh.data": 1})
  zero = dataclasses.replace(base, model=dataclasses.replace(
      base.model, cfg_dropout=0.0, description_dropout=0.0, type_info_dropout=0.0))
  family = family_lib.make(zero.model, "float32")
  data = family.synthetic(2 * base.data.batch_size, 5)
  host = [{k: v[i * base.data.batch_size:(i + 1) * base.data.batch_size] for k, v in data.items()}
          for i in range(2)]
  with_prepare = _steps(zero, family, host)
  without = _steps(zero, dataclasses.replace(family, prepare=None), host, evaluate=False)
  assert with_prepare[0] == without[0]
  for x, y in zip(with_prepare[2], without[2]):
    np.testing.assert_array_equal(x, y)
  # Every condition dropped in training; evaluation still reads them (the same initial loss).
  everything = dataclasses.replace(base, model=dataclasses.replace(base.model, cfg_dropout=1.0))
  dropped = _steps(everything, family_lib.make(everything.model, "float32"), host, train=False)
  assert dropped[1] == with_prepare[1]


def test_the_yaml_sets_it_with_the_original_names(tmp_path):
  defaults = config_lib.load_config_dict(CONFIG)
  path = train_song_test._yaml(tmp_path)
  raw = yaml.safe_load(path.read_text())
  assert (defaults.model.cfg_dropout, defaults.model.type_info_dropout) == (0.15, 0.5)
  run = yaml_config.read(str(path), defaults)  # not in the YAML: the released base's values
  assert (run.config.model.cfg_dropout, run.config.model.type_info_dropout) == (0.15, 0.5)
  raw["classifier_free_guidance"] = {"training_dropout": 0.0}
  raw["attribute_dropout"] = {"text": {"type_info": 0.25}, "audio": {"prompt_audio": 1}}
  path.write_text(yaml.safe_dump(raw))
  model = yaml_config.read(str(path), defaults).config.model
  assert (model.cfg_dropout, model.description_dropout, model.type_info_dropout,
          model.prompt_audio_dropout) == (0.0, 0.0, 0.25, 1.0)
  for edit, message in (
      ({"attribute_dropout": {"text": {"lyrics": 0.1}}},
       "unknown key attribute_dropout.text.lyrics; attribute_dropout.text keys are description, "
       "type_info"),
      ({"classifier_free_guidance": {"training_dropout": 1.5}},
       "classifier_free_guidance.training_dropout must be a probability in [0, 1], got 1.5"),
      ({"model": {"cfg_dropout": 0.1}}, "unknown key model.cfg_dropout")):
    path.write_text(yaml.safe_dump({**raw, **edit}))
    with pytest.raises(yaml_config.SongYamlError, match=message.replace("[", r"\[")):
      yaml_config.read(str(path), defaults)
