"""stable-audio-tools' InverseLR schedule and its EMA of the weights (ema_pytorch 0.2.3, as its
training wrapper configures it) against the originals, and the EMA inside the train state: it is
what a run exports, and an interrupted run resumes it to the same result."""

import ast
import importlib.util
import os
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.interop import flax_weights
from lora_jax.train import config as config_lib
from lora_jax.train import loop
from lora_jax.train import optimizer as optimizer_lib

torch = pytest.importorskip("torch")
CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dit.py")


def _original_inverse_lr():
  """The original's InverseLR class, from the installed package's source: its module
  (training/utils.py) also imports pytorch_lightning and wandb, which are not installed, and it
  passes torch's base class a `verbose` that torch 2.13 dropped."""
  spec = importlib.util.find_spec("stable_audio_tools")
  if spec is None:
    pytest.skip("stable-audio-tools is not installed (scripts/setup.sh installs it)")
  path = os.path.join(os.path.dirname(spec.origin), "training", "utils.py")
  tree = ast.parse(open(path).read())
  cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "InverseLR")
  class Scheduler(torch.optim.lr_scheduler.LRScheduler):
    """torch 2.13's base, which no longer takes the `verbose` the original passes."""

    def __init__(self, optimizer, last_epoch=-1, verbose=False):
      del verbose
      super().__init__(optimizer, last_epoch)

  lr_scheduler = types.SimpleNamespace(_LRScheduler=Scheduler)
  scope = {"torch": types.SimpleNamespace(optim=types.SimpleNamespace(lr_scheduler=lr_scheduler))}
  exec(compile(ast.Module([cls], []), path, "exec"), scope)  # pylint: disable=exec-used
  return scope["InverseLR"]


def _original_rates(peak, steps, **config):
  """The rate each optimiser step uses, stepped per step as the original's wrapper does."""
  opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=peak)
  sched = _original_inverse_lr()(opt, **config)
  rates = []
  for _ in range(steps):
    rates.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
  return np.array(rates)


@pytest.mark.parametrize("peak,config", [
    (1e-3, dict(inv_gamma=20.0, power=0.5, warmup=0.9, final_lr=3e-4)),
    (5e-5, dict(inv_gamma=1e6, power=0.5, warmup=0.99)),  # Stable Audio Open's training config
])
def test_inverse_lr_is_the_originals(peak, config):
  want = _original_rates(peak, 400, **config)
  opt = config_lib.load(CONFIG, "tiny", {
      "opt.decay": "inverse", "opt.warmup_steps": 0, "opt.learning_rate": peak,
      "opt.inv_gamma": config["inv_gamma"], "opt.inv_power": config["power"],
      "opt.inv_warmup": config["warmup"],
      "opt.final_lr_fraction": config.get("final_lr", 0.0) / peak}).opt
  got = np.array(jax.vmap(optimizer_lib.schedule(opt, 400))(jnp.arange(400)))
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)


def test_inverse_lr_refuses_a_linear_warmup_too():
  with pytest.raises(config_lib.ConfigError, match="opt.warmup_steps 5: opt.decay 'inverse'"):
    config_lib.load(CONFIG, "tiny", {"opt.decay": "inverse", "opt.warmup_steps": 5})


@pytest.mark.parametrize("beta", [0.9999, 0.6])  # 0.6: the clamp at beta bites from step 4
def test_ema_is_ema_pytorchs(beta):
  ema_pytorch = pytest.importorskip("ema_pytorch")
  torch.manual_seed(0)
  model = torch.nn.Linear(3, 2)
  ema = ema_pytorch.EMA(model, beta=beta, power=3 / 4, update_every=1, update_after_step=1,
                        include_online_model=False)
  params = {"w": model.weight.detach().numpy().copy(), "b": model.bias.detach().numpy().copy()}
  tx = optimizer_lib.ema_weights(beta, 0.75)
  state = tx.init(jax.tree.map(jnp.asarray, params))
  rng = np.random.default_rng(0)
  for _ in range(12):  # an optimiser step moves the weights, then the EMA updates
    new = {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    with torch.no_grad():
      model.weight.copy_(torch.from_numpy(new["w"]))
      model.bias.copy_(torch.from_numpy(new["b"]))
    ema.update()
    updates = jax.tree.map(lambda n, p: jnp.asarray(n - p), new, params)
    _, state = tx.update(updates, state, jax.tree.map(jnp.asarray, params))
    params = new
    np.testing.assert_allclose(state.ema["w"], ema.ema_model.weight.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(state.ema["b"], ema.ema_model.bias.detach().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_a_run_exports_its_ema_and_resumes_it(tmp_path):
  run = {"training.type": "full", "opt.ema_beta": 0.9, "training.steps": 8,
         "ckpt.every_steps": 4, "training.eval_every": 4, "ckpt.export": "final"}
  config = config_lib.load(CONFIG, "tiny", run)
  whole = loop.train(config, str(tmp_path / "whole"), devices=jax.devices()[:1])
  exported = flax_weights.read_metadata(whole.export_path)
  assert exported["model_family"] == "dit"
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), whole.params)
  ema = flax_weights.load_params(whole.export_path, abstract)
  moved = [float(np.abs(e - p).max()) for e, p in zip(jax.tree.leaves(ema),
                                                      jax.tree.leaves(whole.params))]
  assert max(moved) > 1e-6  # the average, not the last weights
  loop.train(config, str(tmp_path / "split"), devices=jax.devices()[:1], stop_after=4)
  split = loop.train(config, str(tmp_path / "split"), devices=jax.devices()[:1])
  resumed = flax_weights.load_params(split.export_path, abstract)
  for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_a_checkpoint_from_before_these_fields_resumes_at_their_neutral_values():
  from lora_jax.train import resume  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  new = json.loads(config_lib.load(CONFIG, "tiny").to_json())
  old = json.loads(json.dumps(new))
  for field in ("inv_gamma", "inv_power", "inv_warmup", "ema_beta", "ema_power"):
    del old["opt"][field]
  assert resume.changed_fields(json.dumps(old), json.dumps(new)) == {}
  new["opt"]["ema_beta"] = 0.9999
  assert resume.changed_fields(json.dumps(old), json.dumps(new)) == {
      "opt.ema_beta": (0.0, 0.9999)}
