"""Every float setting is finite and in range, checked when the config converts (before a run
writes anything): one error naming the field and the value."""

import pathlib

import pytest

from lora_jax.train import config as config_lib

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("key,value,message", [
    ("opt.learning_rate", NAN, r"config\.opt\.learning_rate must be a finite number, got nan"),
    ("opt.learning_rate", INF, r"config\.opt\.learning_rate must be a finite number, got inf"),
    ("opt.learning_rate", -INF, r"config\.opt\.learning_rate must be a finite number, got -inf"),
    ("opt.learning_rate", -1e-3, r"opt\.learning_rate must be >= 0, got -0\.001"),
    ("opt.weight_decay", NAN, r"config\.opt\.weight_decay must be a finite number, got nan"),
    ("opt.weight_decay", -0.1, r"opt\.weight_decay must be >= 0, got -0\.1"),
    ("opt.clip_norm", -1.0, r"opt\.clip_norm must be >= 0, got -1\.0"),
    ("opt.clip_norm", INF, r"config\.opt\.clip_norm must be a finite number, got inf"),
    ("opt.final_lr_fraction", 1.5, r"opt\.final_lr_fraction must be in \[0, 1\], got 1\.5"),
    ("opt.b1", 1.0, r"opt\.b1 must be in \[0, 1\), got 1\.0"),
    ("opt.b2", -0.5, r"opt\.b2 must be in \[0, 1\), got -0\.5"),
    ("opt.eps", 0.0, r"opt\.eps must be > 0, got 0\.0"),
    ("opt.warmup_steps", -1, r"opt\.warmup_steps must be >= 0, got -1"),
    ("opt.lr_groups", (("head", NAN),), r"config\.opt\.lr_groups\[0\]\[1\] must be a finite"),
    ("opt.lr_groups", (("head", -2.0),), r"opt\.lr_groups multiplier of 'head' must be >= 0"),
    ("lora.alpha", NAN, r"config\.lora\.alpha must be a finite number, got nan"),
    ("lora.alpha", 0.0, r"LoRA alpha must be a finite number > 0, got 0\.0"),
    ("lora.alpha_pattern", (("head", -4.0),), r"LoRA alpha_pattern 'head' must be a finite"),
    ("lora.rank_pattern", (("head", 0),), r"LoRA rank must be >= 1"),
    ("lora.dropout", NAN, r"config\.lora\.dropout must be a finite number, got nan"),
    ("lora.dropout", 1.0, r"LoRA dropout must be in \[0, 1\), got 1\.0"),
    ("lora.module_dropout", -0.1, r"LoRA module_dropout must be in \[0, 1\), got -0\.1"),
    ("model.dropout", INF, r"config\.model\.dropout must be a finite number, got inf"),
    ("data.val_fraction", 1.0, r"data\.val_fraction must be in \[0, 1\), got 1\.0"),
    ("data.val_fraction", NAN, r"config\.data\.val_fraction must be a finite number, got nan"),
])
def test_a_bad_float_is_refused_naming_field_and_value(key, value, message):
  with pytest.raises(config_lib.ConfigError, match=message) as refused:
    config_lib.load(CONFIG, "tiny", {key: value})
  assert "\n" not in str(refused.value)


def test_the_shipped_settings_pass():
  for variant in ("base", "tiny", "full"):
    overrides = {"data.path": "x.npz"} if variant != "tiny" else {}
    config = config_lib.load(CONFIG, variant, overrides)
    assert config.training.allow_changed_config is False
