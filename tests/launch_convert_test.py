"""launch/convert_torch.py and launch/export_torch.py run as programs on tiny files."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

from lora_jax.interop import flax_weights, torch_convert
from lora_jax.models import transformer
from lora_jax.train import config as config_lib
from third_party.music_transformer_torch import MusicTransformer as TorchMusicTransformer

_ROOT = pathlib.Path(__file__).parents[1]
_CONFIG = f"{_ROOT / 'configs' / 'music_transformer.py'}:tiny"


def _tiny_config():
  spec = importlib.util.spec_from_file_location("music_transformer_config",
                                                _ROOT / "configs" / "music_transformer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_lib.from_mapping(transformer.TransformerConfig, module.get_config("tiny").model,
                                 "config.model")


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(_ROOT / "launch" / script), f"--config={_CONFIG}",
                         *args], cwd=_ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def torch_state_dict():
  torch.manual_seed(0)
  model = TorchMusicTransformer(_tiny_config())
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.5)
  return model.state_dict()


def test_convert_then_export_round_trips(tmp_path, torch_state_dict):
  source = tmp_path / "base.pt"
  torch.save(torch_state_dict, source)
  flax_file = tmp_path / "base.safetensors"
  result = _run("convert_torch.py", f"--input={source}", f"--output={flax_file}")
  assert result.returncode == 0, result.stderr

  abstract = transformer.abstract_params(_tiny_config())
  params = flax_weights.load_params(str(flax_file), abstract)
  want = torch_convert.state_dict_to_flax(torch_state_dict, abstract)
  np.testing.assert_array_equal(params["blocks_1"]["ff"]["in"]["kernel"],
                                want["blocks_1"]["ff"]["in"]["kernel"])
  assert flax_weights.read_metadata(str(flax_file))["source"] == "base.pt"

  for suffix in (".safetensors", ".pt"):
    out = tmp_path / f"exported{suffix}"
    result = _run("export_torch.py", f"--input={flax_file}", f"--output={out}")
    assert result.returncode == 0, result.stderr
    if suffix == ".pt":
      exported = torch.load(out, map_location="cpu", weights_only=True)
    else:
      exported = safetensors.torch.load_file(out)
    assert exported.keys() == torch_state_dict.keys()
    for k, v in torch_state_dict.items():
      assert torch.equal(exported[k], v), k


def test_lightning_ckpt_converts_with_prefix_flag(tmp_path, torch_state_dict):
  source = tmp_path / "last.ckpt"
  torch.save({"state_dict": {f"net.{k}": v for k, v in torch_state_dict.items()}}, source)
  result = _run("convert_torch.py", f"--input={source}", f"--output={tmp_path / 'b.safetensors'}",
                "--prefix=net.")
  assert result.returncode == 0, result.stderr


def _assert_one_line_error(result: subprocess.CompletedProcess, script: str, text: str):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(f"{script}: ") and text in lines[0], lines[0]


def test_corrupt_inputs_fail_with_one_line(tmp_path):
  bad_pt = tmp_path / "bad.pt"
  bad_pt.write_bytes(b"this is not a checkpoint")
  out = tmp_path / "out.safetensors"
  result = _run("convert_torch.py", f"--input={bad_pt}", f"--output={out}")
  _assert_one_line_error(result, "convert_torch", "bad.pt")
  assert not out.exists()

  bad_st = tmp_path / "bad.safetensors"
  bad_st.write_bytes(b"this is not a checkpoint")
  result = _run("export_torch.py", f"--input={bad_st}", f"--output={tmp_path / 'out.pt'}")
  _assert_one_line_error(result, "export_torch", "bad.safetensors")


def test_export_merged_with_adapters_and_peft(tmp_path, torch_state_dict):
  import jax
  from lora_jax import lora
  from lora_jax.models.transformer import MusicTransformer
  config = _tiny_config()
  abstract = transformer.abstract_params(config)
  params = torch_convert.state_dict_to_flax(torch_state_dict, abstract)
  flax_file = tmp_path / "base.safetensors"
  flax_weights.save_params(params, str(flax_file))
  spec = lora.LoraSpec(rank=2, target_modules=("q_proj", "ff.out"))
  adapter = lora.init_adapter(lora.resolve(spec, params), spec, jax.random.key(0))
  adapter = adapter.replace(params=jax.tree.map(lambda x: x + 0.2, adapter.params))
  lora.save_adapter(str(tmp_path / "pop.lora"), lora.AdapterRecord(
      adapter, spec, lora.fingerprint(params), "music_lm", "pop"))

  out = tmp_path / "merged.pt"
  result = _run("export_torch.py", f"--input={flax_file}", f"--adapters={tmp_path / 'pop.lora'}",
                "--weights=0.5", f"--output={out}")
  assert result.returncode == 0, result.stderr
  twin = TorchMusicTransformer(config).eval()
  twin.load_state_dict(torch.load(out, weights_only=True), strict=True)
  x = np.arange(12).reshape(1, 12) % config.vocab_size
  want = lora.apply(MusicTransformer(config), params, [lora.Active(adapter, 0.5)], x)
  with torch.no_grad():
    got = twin(torch.as_tensor(x)).numpy()
  assert np.abs(got - np.asarray(want)).max() < 1e-5

  result = _run("export_torch.py", f"--peft_adapter={tmp_path / 'pop.lora'}",
                f"--input={flax_file}", f"--output={tmp_path / 'pop_peft'}")
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "pop_peft" / "adapter_model.safetensors").exists()
  peft_config = json.loads((tmp_path / "pop_peft" / "adapter_config.json").read_text())
  assert peft_config["base_model_name_or_path"] == "base.safetensors"

  # An adapter trained on another base is refused with one line naming both fingerprints.
  other = jax.tree.map(lambda x: x * 1.01, params)
  flax_weights.save_params(other, str(tmp_path / "other.safetensors"))
  result = _run("export_torch.py", f"--input={tmp_path / 'other.safetensors'}",
                f"--adapters={tmp_path / 'pop.lora'}", f"--output={tmp_path / 'x.pt'}")
  _assert_one_line_error(result, "export_torch", "was trained on base")
  assert "pass --allow_other_base to use it anyway" in result.stderr
  assert not (tmp_path / "x.pt").exists()


def test_config_model_must_match_the_transformer_config(tmp_path):
  config = tmp_path / "typo.py"
  config.write_text(
      "import importlib.util\n"
      f"spec = importlib.util.spec_from_file_location('base', {str(_ROOT / 'configs' / 'music_transformer.py')!r})\n"
      "module = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(module)\n"
      "def get_config(arg=None):\n"
      "  config = module.get_config('tiny')\n"
      "  model = config.model.to_dict()\n"
      "  model['n_layer'] = model.pop('n_layers')\n"
      "  config.model = model\n"
      "  return config\n")
  result = subprocess.run([sys.executable, str(_ROOT / "launch" / "convert_torch.py"),
                           f"--config={config}", f"--input={tmp_path / 'x.pt'}",
                           f"--output={tmp_path / 'x.safetensors'}"],
                          cwd=_ROOT, capture_output=True, text=True, timeout=120)
  _assert_one_line_error(result, "convert_torch", "config.model.n_layer: no such field in "
                                                  "TransformerConfig")


def _run_bare(script: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(_ROOT / "launch" / script), *args], cwd=_ROOT,
                        capture_output=True, text=True, timeout=120)


def test_shipped_base_exports_and_converts_back_without_config(tmp_path):
  shipped = _ROOT / "assets" / "base_model" / "base_model.safetensors"
  exported = tmp_path / "base_torch.safetensors"
  result = _run_bare("export_torch.py", f"--input={shipped}", f"--output={exported}")
  assert result.returncode == 0, result.stderr
  back = tmp_path / "back.safetensors"
  result = _run_bare("convert_torch.py", f"--input={exported}", f"--output={back}")
  assert result.returncode == 0, result.stderr
  original, again = (safetensors.torch.load_file(p) for p in (shipped, back))
  assert original.keys() == again.keys()
  for k in original:
    assert torch.equal(original[k], again[k]), k
  # A .pt records no size: then --config is needed, and saying so is one line.
  pt = tmp_path / "base_torch.pt"
  torch.save(safetensors.torch.load_file(exported), pt)
  result = _run_bare("convert_torch.py", f"--input={pt}", f"--output={tmp_path / 'x.safetensors'}")
  _assert_one_line_error(result, "convert_torch", "base_torch.pt does not record the model's size")
  # A config that disagrees with the size the file records is refused, not silently used.
  result = _run("export_torch.py", f"--input={shipped}", f"--output={tmp_path / 'y.pt'}")
  _assert_one_line_error(result, "export_torch", "records vocab_size=561 but the config says")
