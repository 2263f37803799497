"""The config boundary: ConfigDict to frozen dataclasses, strict both ways, and config_flags."""

import dataclasses
import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from lora_jax.families import music_lm
from lora_jax.train import config as config_lib

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")


@pytest.mark.parametrize("variant", [None, "tiny", "full"])
def test_every_variant_converts(variant):
  overrides = {} if variant == "tiny" else {"data.path": "windows.npz"}
  config = config_lib.load(CONFIG, variant, overrides)
  assert isinstance(config.model, music_lm.LmConfig)
  assert isinstance(config.lora.target_modules, tuple)
  assert isinstance(config.lora.alpha, float)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.training.steps = 3  # type: ignore[misc]
  assert config_lib.load(CONFIG, variant, overrides).to_json() == config.to_json()


def test_data_source_must_be_given():
  with pytest.raises(config_lib.ConfigError, match=r"exactly one of data\.path \(''\) and "
                                                   r"data\.synthetic_examples \(0\)"):
    config_lib.load(CONFIG)


def test_a_key_the_dataclass_lacks_is_an_error_naming_it():
  raw = config_lib.load_config_dict(CONFIG, "tiny")
  raw.opt.lerning_rate = 0.1  # ConfigDict accepts new keys; the boundary must not
  with pytest.raises(config_lib.ConfigError, match=r"config\.opt\.lerning_rate: no such field "
                                                   r"in OptConfig"):
    config_lib.from_config_dict(raw)


def test_an_undeclared_field_is_an_error():
  raw = config_lib.load_config_dict(CONFIG, "tiny")
  del raw.training["patience"]
  with pytest.raises(config_lib.ConfigError, match=r"config\.training does not declare patience"):
    config_lib.from_config_dict(raw)


def test_values_are_checked():
  raw = config_lib.load_config_dict(CONFIG, "tiny").to_dict()  # a plain dict has no type safety
  raw["training"]["steps"] = "ten"
  with pytest.raises(config_lib.ConfigError, match=r"config\.training\.steps must be int, got "
                                                   r"str 'ten'"):
    config_lib.from_config_dict(raw)
  with pytest.raises(config_lib.ConfigError, match=r"opt\.decay must be"):
    config_lib.load(CONFIG, "tiny", {"opt.decay": "exp"})
  with pytest.raises(config_lib.ConfigError, match=r"LoRA rank must be >= 1, got 0"):
    config_lib.load(CONFIG, "tiny", {"lora.rank": 0})
  with pytest.raises(config_lib.ConfigError,
                     match=r"override lora.rnak: config has no field 'rnak'"):
    config_lib.load(CONFIG, "tiny", {"lora.rnak": 4})
  with pytest.raises(ValueError, match=r"unknown model family 'song'"):
    config_lib.load(CONFIG, "tiny", {"family": "song"})


def parse_flags(argv: list[str]):
  values = flags.FlagValues()
  # config_flags defines the `--config.*` override flags from the argv it is given.
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def test_config_flags_refuses_an_override_of_an_undeclared_key():
  config = parse_flags(["prog", f"--config={CONFIG}:tiny", "--config.lora.rank=3"])
  assert config_lib.from_config_dict(config).lora.rank == 3
  with pytest.raises(AttributeError, match=r"rnak.*Did you mean \"rank\""):
    parse_flags(["prog", f"--config={CONFIG}:tiny", "--config.lora.rnak=3"])
