"""LoRA on the song LM as PEFT adapters, both directions, with real PEFT on the PyTorch twin.

The adapter keys are what PEFT writes for the original model
(`base_model.model.transformer.model.layers.0.self_attn.q_proj.lora_A.weight`), because the Flax
parameter paths are the original's module names.
"""

import jax
import jax.numpy as jnp
import numpy as np
import peft
import safetensors.numpy
import torch

from lora_jax import lora, tree_paths
from lora_jax.interop import peft as peft_io
from lora_jax.interop import song_lm_weights
from lora_jax.models.song import delay_pattern
from lora_jax.models.song import lm as song_lm
from third_party import song_lm_torch
import testlib

_SIZES = dict(code_depth=3, code_size=40, dim=32, intermediate_size=48, num_heads=4,
              num_layers=2, num_layers_sub=1, text_vocab_size=30)
# The fork's train_config.yaml targets q/k/v/o_proj: in both stacks.
SPEC = lora.LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))


def _base():
  config = song_lm.SongLMConfig(**_SIZES)
  rng = np.random.default_rng(5)
  params = jax.tree_util.tree_map_with_path(
      lambda p, l: (float(tree_paths.key_name(p[-1]) == "scale")
                    + 0.3 * rng.standard_normal(l.shape)).astype(np.float32),
      song_lm.abstract_params(config))
  return config, params


def _twin(params):
  twin = song_lm_torch.LmModel(song_lm_torch.SongLMConfig(**_SIZES)).eval()
  state = song_lm_weights.params_to_state_dict(params)
  twin.load_state_dict({k[len(song_lm_weights.PREFIX):]: v for k, v in state.items()},
                       strict=True)
  return twin


def _inputs(config):
  rng = np.random.default_rng(9)
  codes = jnp.asarray(rng.integers(0, config.code_size, (2, 3, 6)))
  seq = np.asarray(delay_pattern.build(codes, (0, 2, 2), config.special_token))
  cond = {"description": (rng.integers(0, 30, (2, 4)), rng.integers(0, 200, (2, 4))),
          "type_info": rng.integers(0, 30, (2, 3)),
          "prompt_audio": rng.integers(0, config.code_size + 2, (2, 3, 2))}
  return seq, cond


def _torch_logits(module, seq, cond):
  t = lambda a: torch.from_numpy(np.asarray(a, np.int64))
  tc = {k: tuple(map(t, v)) if isinstance(v, tuple) else t(v) for k, v in cond.items()}
  with torch.no_grad():
    return module(t(seq), tc).numpy()


def _jax_logits(config, params, actives, seq, cond):
  t = lambda a: jnp.asarray(a, jnp.int32)
  jc = {k: tuple(map(t, v)) if isinstance(v, tuple) else t(v) for k, v in cond.items()}
  return np.asarray(lora.apply(song_lm.SongLM(config), params, actives, t(seq), jc))


def test_peft_export_has_the_originals_keys_and_loads_in_peft(tmp_path):
  config, params = _base()
  adapter = testlib.random_adapter(params, SPEC, 3)
  record = lora.AdapterRecord(adapter, SPEC, lora.fingerprint(params), "song_lm", "style")
  folder = str(tmp_path / "style_peft")
  peft_io.export_peft(record, folder)
  keys = set(safetensors.numpy.load_file(f"{folder}/adapter_model.safetensors"))
  assert "base_model.model.transformer.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
  assert "base_model.model.transformer2.model.layers.0.self_attn.o_proj.lora_B.weight" in keys
  assert len(keys) == 2 * 4 * (config.num_layers + config.num_layers_sub)
  seq, cond = _inputs(config)
  want = _jax_logits(config, params, [lora.Active(adapter)], seq, cond)
  base = _jax_logits(config, params, [], seq, cond)
  assert np.abs(want - base).max() > 1e-2  # the adapter changes every stream's logits
  peft_model = peft.PeftModel.from_pretrained(_twin(params), folder).eval()
  diff = np.abs(_torch_logits(peft_model, seq, cond) - want).max()
  print(f"song LM PEFT export in real PEFT vs JAX: max abs logit diff {diff:.2e}")
  assert diff <= 1e-4


def test_adapter_made_in_peft_imports_and_matches(tmp_path):
  config, params = _base()
  peft_config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"])
  peft_model = peft.get_peft_model(_twin(params), peft_config)
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "lora_" in name:
        p.normal_(0.0, 0.3)  # B too: with B = 0 parity is trivial
  peft_model.save_pretrained(str(tmp_path / "from_peft"))
  record = peft_io.import_peft(str(tmp_path / "from_peft"), params, model_family="song_lm")
  assert "transformer2.model.layers.0.self_attn.v_proj" in record.targets()
  seq, cond = _inputs(config)
  want = _torch_logits(peft_model.eval(), seq, cond)
  got = _jax_logits(config, params, [lora.Active(record.adapter)], seq, cond)
  diff = np.abs(want - got).max()
  print(f"PEFT-made song LM adapter imported into JAX: max abs logit diff {diff:.2e}")
  assert diff <= 1e-4
