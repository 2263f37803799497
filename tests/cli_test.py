"""lora_jax.cli: dashed flags, `--config` defaults, and bad input as one error line, in
subprocesses as a user runs them (a small script here, then every launch script with a config)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

from absl import flags
import pytest

from lora_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = '''
from absl import flags
from lora_jax import cli
_CONFIG = cli.define_config({config!r}, "A test config.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Examples per step.")
def main(argv):
  if _BATCH.value < 0:
    raise ValueError(f"batch size {{_BATCH.value}} is negative\\nand a second line")
  print(_CONFIG.value.model.width, _CONFIG.value.opt.lr, _BATCH.value)
if __name__ == "__main__":
  cli.run(main, "fake")
'''

CONFIG = '''
import ml_collections
def get_config(arg=None):
  if arg not in (None, "wide"):
    raise ValueError(f"unknown variant {arg!r}")
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict({"width": 64 if arg else 8, "depth": 2})
  config.opt = ml_collections.ConfigDict({"lr": 0.1})
  return config
'''


def launch(script, *args, cwd) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def error_line(done: subprocess.CompletedProcess, name: str) -> str:
  """The run failed with exit 1; returns its one error line (the last), after `name: error: `."""
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{name}: error: "), done.stderr[-3000:]
  return last[len(f"{name}: error: "):]


@pytest.fixture
def fake(tmp_path):
  config = tmp_path / "config.py"
  config.write_text(CONFIG)
  script = tmp_path / "fake.py"
  script.write_text(SCRIPT.format(config=str(config)))
  return lambda *args: launch(script, *args, cwd=tmp_path)


def test_default_config_overrides_and_dashed_flags(fake, tmp_path):
  assert fake().stdout.split() == ["8", "0.1", "1"]
  done = fake("--batch-size=4", "--config.model.width=16")
  assert done.stdout.split() == ["16", "0.1", "4"], done.stderr[-2000:]
  done = fake(f"--config={tmp_path / 'config.py'}:wide", "--config.opt.lr=0.5")
  assert done.stdout.split() == ["64", "0.5", "1"], done.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["--config.model.widht=3"], "--config.model.widht=3: {config} has no field 'model.widht' "
                                 "(did you mean 'model.width'?)"),
    (["--config.data.path=x"], "--config.data.path=x: {config} has no field 'data' (the config "
                               "has model, opt)"),
    (["--config.model.width.x=1"], "has no field 'model.width.x' (model.width is 8, not a group "
                                   "of fields)"),
    (["--config.model.width=abc"], "flag --config.model.width=abc: invalid literal for int()"),
    (["--config={config}:bad"], "ValueError: unknown variant 'bad'"),
    (["--config=missing.py"], "No such file or directory: 'missing.py'"),
    (["--config=missing.py", "--config.model.width=1"], "No such file or directory"),
    (["--batch-size=-1"], "batch size -1 is negative"),
    (["--nope"], "Unknown command line flag 'nope'"),
])
def test_bad_input_is_one_error_line(fake, tmp_path, args, message):
  config = str(tmp_path / "config.py")
  got = error_line(fake(*(a.format(config=config) for a in args)), "fake")
  assert message.format(config=config) in got


# Every launch script that takes --config, and the arguments that make its config load.
CONFIG_SCRIPTS = {
    "train.py": [f"--config={ROOT / 'configs' / 'music_lm.py'}:tiny"],
    "convert_torch.py": [f"--config={ROOT / 'configs' / 'music_transformer.py'}"],
    "export_torch.py": [f"--config={ROOT / 'configs' / 'music_transformer.py'}"],
    "convert_adapter.py": [f"--config={ROOT / 'configs' / 'music_transformer.py'}"],
    "convert_song_lm.py": [f"--config={ROOT / 'configs' / 'song_lm.py'}:tiny"],
    "train_duv.py": [f"--config={ROOT / 'configs' / 'duv' / 'base.py'}"],
    "train_duv_lora.py": [f"--config={ROOT / 'configs' / 'duv' / 'guitar.py'}"],
    "train_base.py": [],  # these have a default config, loaded when no --config is given
    "train_parent_adapter.py": [],
    "train_child_adapter.py": [],
    "demo.py": [],
    "train_separator.py": [],
    # --config is the fork's YAML; the config file it is read over is --defaults.
    "train_song.py": ["--config=unused.yaml"],
    "prepare_song_data.py": ["--config=unused.yaml"],
    "prepare_and_train_song.py": ["--config=unused.yaml"],
    "train_loraw.py": ["--model-config=unused.json", "--save-dir=unused"],
    "train_autoencoder.py": ["--workdir=unused"],
}
# The config_flags flag, where --config is something else (the fork's YAML).
CONFIG_FLAG = {"train_song.py": "defaults", "prepare_song_data.py": "defaults",
               "prepare_and_train_song.py": "defaults"}


def test_every_launch_script_with_a_config_is_checked():
  takes_config = {p.name for p in (ROOT / "launch").glob("*.py") if "--config" in p.read_text()}
  assert takes_config == set(CONFIG_SCRIPTS)


@pytest.mark.parametrize("script", sorted(CONFIG_SCRIPTS))
def test_unknown_config_key_is_one_error_line(script, tmp_path):
  # Run as `python launch/x.py` from elsewhere: launch/ comes first on sys.path.
  flag = CONFIG_FLAG.get(script, "config")
  done = launch(ROOT / "launch" / script, *CONFIG_SCRIPTS[script], f"--{flag}.nope.key=1",
                cwd=tmp_path)
  got = error_line(done, script.removesuffix(".py"))
  assert got.startswith(f"--{flag}.nope.key=1: ") and "has no field 'nope'" in got


def test_no_launch_script_shadows_a_module():
  # `python launch/x.py` puts launch/ first on sys.path, so a script named like a module
  # (launch/humanize.py once hid the `humanize` package Orbax imports) replaces it.
  for path in (ROOT / "launch").glob("*.py"):
    assert importlib.util.find_spec(path.stem) is None, f"{path} shadows module {path.stem}"


def test_dashed_flags_become_underscored():
  values = flags.FlagValues()
  flags.DEFINE_integer("batch_size", 8, "", flag_values=values)
  flags.DEFINE_bool("create_config", False, "", flag_values=values)
  flags.DEFINE_string("parent_lora", "", "", flag_values=values)
  got = cli.underscore_flags(
      ["prog", "--batch-size=4", "--batch-size", "5", "--create-config", "--no-create-config",
       "--parent_lora=a-b.lora", "--config.parent.rank=3", "--un-known=1", "-x", "--",
       "--batch-size=9"], values)
  assert got == ["prog", "--batch_size=4", "--batch_size", "5", "--create_config",
                 "--nocreate_config", "--parent_lora=a-b.lora", "--config.parent.rank=3",
                 "--un-known=1", "-x", "--", "--batch-size=9"]
  values(got[:got.index("--parent_lora=a-b.lora") + 1])
  assert values.batch_size == 5 and values.create_config is False


CONTRACT = '''
import sys
from lora_jax import cli, errors
class RunDied(errors.UserError, RuntimeError):
  pass
def main(argv):
  kind = argv[1]
  if kind == "user":
    raise errors.UserError("batch size 12 is not divisible by 8 devices")
  if kind == "runtime_user":
    raise RunDied("loss went NaN 3 steps in a row\\nsecond line")
  if kind == "os":
    open("/nonexistent/x")
  if kind == "key":
    {}["model"]
  if kind == "zero":
    1 // 0
if __name__ == "__main__":
  cli.run(main, "contract")
'''


@pytest.mark.parametrize("kind, line", [
    ("user", "contract: error: batch size 12 is not divisible by 8 devices"),
    ("runtime_user", "contract: error: loss went NaN 3 steps in a row"),
    ("os", "contract: error: [Errno 2] No such file or directory: '/nonexistent/x'"),
])
def test_user_errors_are_one_line(tmp_path, kind, line):
  script = tmp_path / "contract.py"
  script.write_text(CONTRACT)
  done = launch(script, kind, cwd=tmp_path)
  assert "contract: error: " + error_line(done, "contract") == line


@pytest.mark.parametrize("kind, error", [("key", "KeyError: 'model'"),
                                         ("zero", "ZeroDivisionError")])
def test_programming_errors_keep_their_traceback(tmp_path, kind, error):
  script = tmp_path / "contract.py"
  script.write_text(CONTRACT)
  done = launch(script, kind, cwd=tmp_path)
  assert done.returncode != 0 and "Traceback" in done.stderr and error in done.stderr
  assert "contract: error:" not in done.stderr


def test_every_launch_script_runs_through_cli_run():
  for path in (ROOT / "launch").glob("*.py"):
    text = path.read_text()
    assert "app.run(" not in text, path
    assert "cli.run(" in text or "command.main(" in text, path
