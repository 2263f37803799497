"""Target rules: suffixes, regexes with ranges, patterns, and errors for rules that match nothing."""

import math

import pytest

from lora_jax import lora
from lora_jax.lora import spec as spec_lib
import testlib


def paths(targets):
  return [t.path for t in targets]


def test_suffix_targets_match_peft_semantics():
  _, params = testlib.tiny_model()
  targets = lora.resolve(lora.LoraSpec(target_modules=("attn.q_proj", "ff.in")), params)
  assert paths(targets) == ["blocks.0.attn.q_proj", "blocks.0.ff.in",
                            "blocks.1.attn.q_proj", "blocks.1.ff.in"]
  # 'q_proj' is a suffix at a dot boundary; 'proj' alone is not.
  assert len(lora.resolve(lora.LoraSpec(target_modules=("q_proj",)), params)) == 2
  with pytest.raises(lora.LoraRuleError, match="'proj' matches no dense module"):
    lora.resolve(lora.LoraSpec(target_modules=("proj",)), params)


def test_include_exclude_and_layer_ranges():
  _, params = testlib.tiny_model()
  spec = lora.LoraSpec(include=(r"blocks\.{0-1}\.attn\.",), exclude=(r"k_proj$",))
  targets = lora.resolve(spec, params)
  assert paths(targets) == [f"blocks.{i}.attn.{m}" for i in (0, 1)
                            for m in ("out_proj", "q_proj", "v_proj")]
  only_first = lora.resolve(lora.LoraSpec(include=(r"^blocks\.{0-0}\.ff",)), params)
  assert paths(only_first) == ["blocks.0.ff.in", "blocks.0.ff.out"]


def test_rule_matching_nothing_lists_paths():
  _, params = testlib.tiny_model()
  with pytest.raises(lora.LoraRuleError, match=r"'attention'.*modules are: blocks\.0\.attn"):
    lora.resolve(lora.LoraSpec(target_modules=("attention",)), params)
  with pytest.raises(lora.LoraRuleError, match="exclude rule 'nothing_here'"):
    lora.resolve(lora.LoraSpec(target_modules=("q_proj",), exclude=("nothing_here",)), params)
  with pytest.raises(lora.LoraRuleError, match="rank_pattern rule 'ff'"):
    lora.resolve(lora.LoraSpec(target_modules=("q_proj",), rank_pattern={"ff": 2}), params)
  with pytest.raises(lora.LoraRuleError, match="selects nothing"):
    lora.LoraSpec()
  # LayerNorms have no 2-D kernel: naming one is an error, not a silent skip.
  with pytest.raises(lora.LoraRuleError, match="'ln1'"):
    lora.resolve(lora.LoraSpec(target_modules=("ln1",)), params)


def test_rank_alpha_patterns_and_rslora():
  _, params = testlib.tiny_model()
  spec = lora.LoraSpec(rank=8, alpha=16, target_modules=("q_proj", "ff.in"),
                       rank_pattern={r"ff\.in": 4}, alpha_pattern={r"blocks\.1\.attn": 2.0})
  by_path = {t.path: t for t in lora.resolve(spec, params)}
  assert by_path["blocks.0.attn.q_proj"].rank == 8
  assert by_path["blocks.0.attn.q_proj"].scale == 2.0
  assert by_path["blocks.0.ff.in"].rank == 4 and by_path["blocks.0.ff.in"].scale == 4.0
  assert by_path["blocks.1.attn.q_proj"].scale == 2.0 / 8
  rs = lora.resolve(lora.LoraSpec(rank=16, alpha=8, use_rslora=True, target_modules=("q_proj",)),
                    params)
  assert rs[0].scale == pytest.approx(8 / math.sqrt(16))


def test_spec_json_round_trip_and_unknown_field():
  spec = lora.LoraSpec(rank=4, alpha=8, target_modules=("q_proj",), rank_pattern={"x": 2})
  assert lora.LoraSpec.from_json(spec.to_json()) == spec
  with pytest.raises(lora.LoraRuleError, match="unknown LoRA spec fields: rnak"):
    lora.LoraSpec.from_json('{"rnak": 4, "target_modules": ["q_proj"]}')


def test_bad_values_are_errors():
  with pytest.raises(lora.LoraRuleError, match="rank must be >= 1, got 0"):
    lora.LoraSpec(rank=0, target_modules=("q",))
  with pytest.raises(lora.LoraRuleError, match=r"bad regex '\['"):
    spec_lib._compile("[")
  with pytest.raises(lora.LoraRuleError, match="empty range"):
    spec_lib.expand_ranges("{5-2}")


def test_every_spec_field_is_checked_when_read_from_a_file():
  """A field added to LoraSpec without its type check would make every .lora unreadable."""
  import dataclasses
  from lora_jax.lora import spec as spec_lib
  assert set(spec_lib._SPEC_FIELD_CHECKS) == {f.name for f in dataclasses.fields(spec_lib.LoraSpec)}
  dora = spec_lib.LoraSpec(rank=2, target_modules=("q_proj",), use_dora=True)
  assert spec_lib.LoraSpec.from_json(dora.to_json()) == dora
