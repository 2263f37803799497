"""The adapter config hierarchy: defaults < genre < style < flags, strict keys, target names."""

import dataclasses

import pytest

from lora_jax import errors, lora
from lora_jax.hierarchy import settings
from lora_jax.train import config as config_lib
import hierarchy_testlib
import testlib

GENRE = ("  config.parent = ml_collections.ConfigDict({'rank': 32, 'epochs': 3})\n"
         "  config.child = ml_collections.ConfigDict({'rank': 5, 'alpha': 7.0, 'seed': 9})\n")
STYLE = "  config.child = ml_collections.ConfigDict({'rank': 3, 'learning_rate': 0.5})\n"


def resolve(defaults, child="waltz", flag_values=None, variant=None):
  tree = config_lib.load_config_dict(defaults, variant)
  return settings.resolve(tree, defaults, "folk", child, flag_values or {})


@pytest.fixture
def defaults(tmp_path):
  return hierarchy_testlib.write_configs(str(tmp_path), "folk", ["waltz", "march"], GENRE,
                                         {"waltz": STYLE})


def test_precedence_defaults_genre_style_flags(defaults):
  base = resolve(defaults, child=None)
  real = config_lib.load_config_dict(defaults)
  assert base.parent.rank == 32 and base.parent.epochs == 3  # genre beats defaults
  assert base.parent.alpha == real.parent.alpha  # untouched: the default
  assert base.child.rank == 5 and base.child.alpha == 7.0  # a genre sets its children's values
  assert base.child.learning_rate == real.child.learning_rate

  waltz = resolve(defaults)
  assert waltz.child.rank == 3 and waltz.child.learning_rate == 0.5  # style beats genre
  assert waltz.child.alpha == 7.0 and waltz.child.seed == 9  # the genre's: the style is silent
  assert waltz.parent == base.parent
  assert resolve(defaults, child="march").child.rank == 5  # a style without overrides inherits

  flagged = resolve(defaults, flag_values={"child.rank": 2, "parent.epochs": 1,
                                           "data.seq_len": 64})
  assert flagged.child.rank == 2 and flagged.parent.epochs == 1 and flagged.data.seq_len == 64
  assert flagged.child.learning_rate == 0.5
  assert waltz.sources[1:] == (settings.genre_path(defaults, "folk"),
                               settings.style_path(defaults, "folk", "waltz"))


def test_values_are_frozen_and_typed(defaults):
  config = resolve(defaults)
  assert isinstance(config.child.target_modules, tuple) and isinstance(config.child.alpha, float)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.child.rank = 1  # type: ignore[misc]


@pytest.mark.parametrize("genre_lines, message", [
    ("  config.parent = ml_collections.ConfigDict({'rnak': 4})\n",
     r"genres/folk.py: parent.rnak: no such key in the defaults; parent has alpha, batch_size"),
    ("  config.teacher = ml_collections.ConfigDict({'rank': 4})\n",
     r"genres/folk.py: teacher.rank: the defaults have no group teacher"),
    ("  config.seq_len = 4\n", r"genres/folk.py: seq_len: no such key in the defaults"),
    ("  config.parent = ml_collections.ConfigDict({'rank': 'big'})\n",
     r"config.parent.rank must be int, got str 'big'"),
])
def test_a_genre_key_the_defaults_lack_is_an_error_naming_it(tmp_path, genre_lines, message):
  defaults = hierarchy_testlib.write_configs(str(tmp_path), "folk", ["waltz"], genre_lines)
  with pytest.raises(ValueError, match=message) as error:
    resolve(defaults)
  assert "\n" not in str(error.value)


def test_style_files_may_only_touch_their_child(tmp_path):
  defaults = hierarchy_testlib.write_configs(
      str(tmp_path), "folk", ["waltz"],
      style_lines={"waltz": "  config.opt = ml_collections.ConfigDict({'b1': 0.5})\n"})
  with pytest.raises(settings.HierarchyConfigError,
                     match=r"styles/folk/waltz.py: opt.b1 may not be overridden here; only child"):
    resolve(defaults)
  defaults = hierarchy_testlib.write_configs(
      str(tmp_path / "b"), "folk", ["waltz"],
      style_lines={"waltz": "  config.child = ml_collections.ConfigDict({'rnak': 1})\n"})
  with pytest.raises(settings.HierarchyConfigError, match=r"waltz.py: child.rnak: no such key"):
    resolve(defaults)


def test_unknown_flags_names_and_files_are_errors(defaults):
  with pytest.raises(settings.HierarchyConfigError, match=r"command line: child.rnak: no such key"):
    resolve(defaults, flag_values={"child.rnak": 2})
  tree = config_lib.load_config_dict(defaults)
  with pytest.raises(errors.UserError, match=r"name '\.\./x' must be a plain"):
    settings.resolve(tree, defaults, "../x", None, {})
  with pytest.raises(settings.HierarchyConfigError, match=r"'run' is reserved"):
    settings.resolve(tree, defaults, "folk", "run", {})


def test_genres_and_styles_without_files_train_on_the_defaults(defaults, caplog):
  tree = config_lib.load_config_dict(defaults)
  polka = resolve(defaults, child="polka")  # a sub-style without a file: the genre's values
  assert polka.child == resolve(defaults, child="march").child
  assert polka.sources == (defaults, settings.genre_path(defaults, "folk"))
  with caplog.at_level("INFO"):
    rock = settings.resolve(tree, defaults, "rock", "punk", {})
  assert rock.sources == (defaults,)
  assert rock.parent == settings.resolve(config_lib.load_config_dict(defaults), defaults, "rock",
                                         None, {}).parent
  assert rock.parent.rank == tree.parent.rank and rock.child.rank == tree.child.rank
  said = [r.getMessage() for r in caplog.records]
  assert any("genre rock trains on the defaults" in m for m in said)
  assert any("sub-style rock/punk trains on the defaults" in m for m in said)


def test_config_dir_outside_the_project_comes_first(defaults, tmp_path):
  mine = tmp_path / "my_configs"
  hierarchy_testlib.write_configs(str(mine), "rock", ["punk"], "  config.parent = "
                                  "ml_collections.ConfigDict({'rank': 6})\n",
                                  {"punk": "  config.child = ml_collections.ConfigDict("
                                           "{'rank': 2})\n"})
  tree = config_lib.load_config_dict(defaults)
  punk = settings.resolve(tree, defaults, "rock", "punk", {}, config_dirs=[str(mine)])
  assert punk.parent.rank == 6 and punk.child.rank == 2
  assert punk.sources[1:] == (str(mine / "genres" / "rock.py"),
                              str(mine / "styles" / "rock" / "punk.py"))
  folk = settings.resolve(tree, defaults, "folk", None, {}, config_dirs=[str(mine)])
  assert folk.parent.rank == 32  # not in the user's folder: the file beside the defaults
  with pytest.raises(settings.HierarchyConfigError, match=r"config folder .*nowhere does not "
                                                          r"exist"):
    settings.resolve(tree, defaults, "rock", None, {}, config_dirs=[str(tmp_path / "nowhere")])


def test_identity_fields_must_match(tmp_path):
  defaults = hierarchy_testlib.write_configs(str(tmp_path), "folk", ["waltz"])
  path = settings.style_path(defaults, "folk", "waltz")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text.replace("config.name = 'waltz'", "config.name = 'wlatz'"))
  with pytest.raises(settings.HierarchyConfigError, match=r"field 'name' is 'wlatz', expected "
                                                          r"'waltz'"):
    resolve(defaults)


def test_shorthand_flags_merge_with_config_flags():
  out = settings.shorthand_overrides("parent", {"rank": 4, "alpha": None},
                                     {"parent.epochs": 2})
  assert out == {"parent.rank": 4, "parent.epochs": 2}
  assert settings.shorthand_overrides("child", {"rank": 4}, {"child.rank": 4}) == {"child.rank": 4}
  with pytest.raises(settings.HierarchyConfigError, match=r"child.rank is given twice: 3 .* 4"):
    settings.shorthand_overrides("child", {"rank": 4}, {"child.rank": 3})


def test_seed_target_names_map_onto_module_suffixes():
  assert settings.expand_targets(("attention",)) == (
      "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj")
  assert settings.expand_targets(("feed_forward", "output_projection", "attn.q_proj")) == (
      "ff.in", "ff.out", "head", "attn.q_proj")
  with pytest.raises(settings.HierarchyConfigError, match="empty"):
    settings.expand_targets(())
  with pytest.raises(settings.HierarchyConfigError, match="string"):
    settings.expand_targets("attention")
  _, params = testlib.tiny_model()  # two blocks
  spec = lora.LoraSpec(target_modules=settings.expand_targets(
      ("attention", "feed_forward", "output_projection")))
  paths = {t.path for t in lora.resolve(spec, params)}
  assert paths == {f"blocks.{i}.{m}" for i in range(2) for m in (
      "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "ff.in", "ff.out")} | {"head"}


def test_every_shipped_genre_and_style_file_resolves():
  defaults = str(hierarchy_testlib.ROOT / "configs" / "lora_adapter_config.py")
  genres = sorted(p.stem for p in (hierarchy_testlib.ROOT / "configs" / "genres").glob("*.py"))
  assert "celtic_fiddle" in genres
  for variant in (None, "tiny"):
    tree = config_lib.load_config_dict(defaults, variant)
    for genre in genres:
      settings.resolve(tree, defaults, genre, None, {})
      for style in (hierarchy_testlib.ROOT / "configs" / "styles" / genre).glob("*.py"):
        config = settings.resolve(tree, defaults, genre, style.stem, {})
        assert config.child.rank <= config.parent.rank


def test_every_corpus_genre_trains_on_the_real_configs():
  from lora_jax.data.style_packs import corpus as style_corpus  # pylint: disable=C0415
  defaults = str(hierarchy_testlib.ROOT / "configs" / "lora_adapter_config.py")
  tree = config_lib.load_config_dict(defaults)
  for genre in style_corpus.GENRES.values():
    settings.resolve(tree, defaults, genre.name, None, {})
    for child in genre.sub_styles:
      settings.resolve(tree, defaults, genre.name, child, {})
