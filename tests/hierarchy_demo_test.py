"""The demo's config variants and the expectations its table is checked against."""

import pytest

from lora_jax.hierarchy import base_file, demo, evaluation, settings
from lora_jax.train import config as config_lib
import hierarchy_testlib

CONFIG = str(hierarchy_testlib.ROOT / "configs" / "demo.py")


@pytest.mark.parametrize("variant", [None, "full", "from_scratch"])
def test_every_variant_converts_and_its_settings_resolve(variant):
  config = demo.load_config(config_lib.load_config_dict(CONFIG, variant))
  assert isinstance(config.base.genres, tuple) and config.child != config.sibling
  assert all(k.split(".")[0] in ("parent", "child") for k in config.overrides)
  path, variant_name = config.adapter_config.partition(":")[::2]
  tree = config_lib.load_config_dict(path, variant_name or None)
  child = settings.resolve(tree, path, config.parent, config.child, config.overrides)
  assert child.child.epochs >= 1
  if variant is None:
    assert config.base.path.endswith("assets/base_model/base_model.safetensors")
    assert config.overrides == {"parent.epochs": 4}
    # The samples fit the shipped base's context, and EOS waits for a tune's worth of bars.
    shipped = base_file.read_settings(config.base.path)[0]
    assert config.generate.length + 1 <= shipped.max_len and config.generate.min_bars >= 8
  if variant == "from_scratch":
    assert config.base.path == ""


def table(rows):
  nll = lambda v: evaluation.Nll(v, 100)
  return evaluation.Table(("child test", "other test"),
                          tuple((name, (nll(a), nll(b))) for name, (a, b) in rows))


def test_the_table_must_show_each_level_helping_and_merged_equal_to_unmerged():
  good = table([("base", (2.4, 0.9)), ("base + parent", (0.84, 2.1)),
                ("base + parent + child", (0.80, 2.2)), ("merged", (0.8000001, 2.2))])
  assert demo.check_table(good) == []
  assert "base + parent\n" not in good.format() and "0.8400" in good.format()
  bad = table([("base", (2.4, 0.9)), ("base + parent", (0.84, 2.1)),
               ("base + parent + child", (0.85, 2.2)), ("merged", (0.80, 2.3))])
  problems = demo.check_table(bad)
  assert problems[0].startswith("base + parent + child (0.8500) does not lower the NLL of "
                                "base + parent (0.8400) on child test")
  assert "merged differs from base + parent + child by 5.00e-02 bits on child test" in problems[1]
  assert len(problems) == 3
