"""`Family.prepare`: a family whose loss needs randomness (diffusion time and noise) draws it inside
the step. A toy denoiser with the v-objective trains, resumes bit for bit and evaluates the same at
every evaluation; the existing families, which prepare nothing, keep their numbers."""

import dataclasses
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lora_jax import families, lora, tree_paths
from lora_jax.families import duv, music_lm
from lora_jax.train import batches
from lora_jax.train import config as config_lib
from lora_jax.train import loop
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import state as state_lib
from lora_jax.train import step as step_lib
from lora_jax.train.family import Example, Family

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")
TOY = "denoise_toy"


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  dim: int
  hidden: int


class Denoiser(nn.Module):
  """Predicts v from the noised x_t and the time t."""

  config: ToyConfig

  @nn.compact
  def __call__(self, x_t, t, deterministic: bool = True):
    h = jnp.concatenate([x_t, jnp.cos(math.pi * t)[:, None], jnp.sin(math.pi * t)[:, None]], -1)
    h = nn.gelu(nn.Dense(self.config.hidden, name="inp")(h))
    h = nn.Dropout(0.1)(h, deterministic=deterministic)
    h = nn.gelu(nn.Dense(self.config.hidden, name="mid")(h))
    return nn.Dense(self.config.dim, name="out")(h)


def v_prepare(batch, key):
  """The v-objective: t ~ U(0, 1), x_t = cos(pi t / 2) x + sin(pi t / 2) noise, v the target."""
  x = batch["x"]
  t_key, noise_key = jax.random.split(key)
  t = jax.random.uniform(t_key, x.shape[:1])
  noise = jax.random.normal(noise_key, x.shape)
  alpha, sigma = jnp.cos(math.pi * t / 2)[:, None], jnp.sin(math.pi * t / 2)[:, None]
  return {**batch, "x_t": alpha * x + sigma * noise, "t": t, "v": alpha * noise - sigma * x}


def v_loss(v_pred, batch):
  loss = jnp.mean(jnp.square(v_pred - batch["v"]))
  return loss, {"v_mse": loss}


def synthetic(config: ToyConfig, n: int, seed: int) -> dict[str, np.ndarray]:
  """Points on a curve in `dim` dimensions: a denoiser that learns the curve beats one that
  does not."""
  rng = np.random.default_rng(seed)
  s = rng.uniform(-1, 1, (n, 1))
  freqs = np.arange(1, config.dim + 1)[None, :]
  return {"x": np.sin(np.pi * s * freqs / 2).astype(np.float32)}


def make(config: ToyConfig, compute_dtype: str) -> Family:
  del compute_dtype
  return Family(name=TOY, model=Denoiser(config), batch_spec={"x": Example((config.dim,),
                                                                             "float32")},
                inputs=("x_t", "t"), loss_fn=v_loss,
                partition_rules=((r"mid\.kernel$", P("fsdp", "model")), (r".*", P())),
                synthetic=lambda n, seed: synthetic(config, n, seed), prepare=v_prepare)


@pytest.fixture(scope="module", autouse=True)
def registered():
  with pytest.MonkeyPatch.context() as m:
    m.setitem(families.REGISTRY, TOY, families.Entry(ToyConfig, make))
    yield


def toy_config(**training) -> config_lib.TrainConfig:
  base = config_lib.load(CONFIG, "tiny", {"model.n_layers": 1})
  return dataclasses.replace(
      base, family=TOY, name="toy", model=ToyConfig(dim=8, hidden=32),
      lora=lora.LoraSpec(rank=4, alpha=8.0, target_modules=("inp", "mid", "out")),
      opt=dataclasses.replace(base.opt, learning_rate=5e-2),
      mesh=config_lib.MeshConfig(4, 2, 1),
      training=dataclasses.replace(base.training, **{"steps": 12, "eval_every": 4,
                                                     "log_every": 2, **training}),
      ckpt=dataclasses.replace(base.ckpt, every_steps=4))


def flat(tree) -> dict:
  return {tree_paths.dotted(k): np.asarray(v) for k, v in tree_paths.flatten(tree).items()}


def built(config, family, devices):
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  setup = state_lib.setup(config, family, mesh)
  return (setup, step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                                         setup.frozen_shardings),
          step_lib.jit_eval_step(setup.step_config, mesh, setup.state_shardings.params,
                                 setup.frozen_shardings))


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
  config = toy_config()
  whole, parts = (str(tmp_path_factory.mktemp(n)) for n in ("whole", "parts"))
  return {"whole": (whole, loop.train(config, whole)),
          "stopped": loop.train(config, parts, stop_after=5),
          "resumed": (parts, loop.train(config, parts))}


def test_denoiser_learns_and_resumes_bit_exactly(toy_runs):
  whole_dir, whole = toy_runs["whole"]
  _, resumed = toy_runs["resumed"]
  assert toy_runs["stopped"].status == "stopped" and resumed.status == "finished"
  with open(f"{whole_dir}/metrics.csv") as f:
    initial = float(f.readlines()[1].split(",")[3])  # row 0: the untrained model
  assert whole.val_loss < 0.9 * initial, (whole.val_loss, initial)
  a, b = flat(whole.params), flat(resumed.params)
  assert a.keys() == b.keys()
  for k in a:
    assert np.array_equal(a[k], b[k]), k
  assert resumed.val_loss == whole.val_loss


def test_prepare_draws_per_step_and_evaluation_is_fixed():
  config = dataclasses.replace(toy_config(), mesh=config_lib.MeshConfig(-1, 1, 1))
  family = make(config.model, "float32")
  setup, train_fn, eval_fn = built(config, family, jax.devices()[:1])
  x = synthetic(config.model, 16, 3)
  sharding = mesh_lib.batch_sharding(setup.mesh)
  batch = jax.device_put(x, sharding)
  params, frozen = setup.state.params, setup.frozen
  first = float(eval_fn(params, frozen, batch, 0)["loss"])
  assert float(eval_fn(params, frozen, batch, 0)["loss"]) == first  # the same draws every time
  assert float(eval_fn(params, frozen, batch, 1)["loss"]) != first  # each batch its own draws
  # The train step draws from the step's key: the same params and batch at another step see
  # other noise (the loss is computed before the update).
  b = jax.device_put(batches.micro_batches(x, 1), mesh_lib.batch_sharding(setup.mesh, 1))
  host = jax.device_get(setup.state)
  _, m0 = train_fn(jax.device_put(host, setup.state_shardings), frozen, b)
  _, m0_again = train_fn(jax.device_put(host, setup.state_shardings), frozen, b)
  _, m1 = train_fn(jax.device_put(host.replace(step=np.int32(1)), setup.state_shardings),
                   frozen, b)
  assert float(m0["loss"]) == float(m0_again["loss"])
  assert float(m0["loss"]) != float(m1["loss"])
  assert float(m0["loss"]) != first


def existing(name: str) -> config_lib.TrainConfig:
  # Adapter dropout and module dropout on, so the dropout stream shows in the numbers.
  config = config_lib.load(CONFIG, "tiny", {"model.n_layers": 1, "lora.dropout": 0.1,
                                            "lora.module_dropout": 0.2})
  if name == "duv":
    config = dataclasses.replace(
        config, family="duv", model=duv.DuvConfig(
            n_features=6, d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=16, dropout=0.1,
            seq_len=16, vel_weight=1.0, dur_weight=1.0),
        lora=dataclasses.replace(config.lora, target_modules=("q_proj", "v_proj", "ff.in")))
  return dataclasses.replace(config, mesh=config_lib.MeshConfig(2, 1, 1))


@pytest.mark.parametrize("name", ["music_lm", "duv"])
def test_a_neutral_prepare_changes_no_number_of_the_existing_families(name):
  """The hook's own key is a stream apart: a family that prepares (here: nothing) gets exactly the
  dropout masks, losses and updates it got without the hook."""
  config = existing(name)
  family = families.lookup(name).make(config.model, "float32")
  data = family.synthetic(3 * config.data.batch_size, 7)
  it = batches.BatchIterator(data, config.data.batch_size, seed=3)
  host = [next(it)[0] for _ in range(3)]
  out = {}
  for variant, fam in (("none", family),
                       ("neutral", dataclasses.replace(family, prepare=lambda b, key: b))):
    setup, train_fn, eval_fn = built(config, fam, jax.devices()[:2])
    state, losses = setup.state, []
    for b in host:
      state, m = train_fn(state, setup.frozen, jax.device_put(
          batches.micro_batches(b, 1), mesh_lib.batch_sharding(setup.mesh, 1)))
      losses.append(float(m["loss"]))
    val = float(eval_fn(state.params, setup.frozen, jax.device_put(
        host[0], mesh_lib.batch_sharding(setup.mesh)))["loss"])
    out[variant] = (losses, val, flat(state.params))
  assert out["none"][0] == out["neutral"][0] and out["none"][1] == out["neutral"][1]
  assert len(set(out["none"][0])) == 3  # it trained
  for k, v in out["none"][2].items():
    assert np.array_equal(v, out["neutral"][2][k]), k


def test_inputs_a_prepare_does_not_make_are_an_error():
  family = make(ToyConfig(4, 8), "float32")
  bad = dataclasses.replace(family, prepare=lambda b, key: b)
  with pytest.raises(ValueError, match=r"model inputs \['x_t', 't'\] are not in the prepared "
                                       r"batch, which holds \['x'\]"):
    bad.init_args()
  with pytest.raises(ValueError, match="not in its batch_spec"):
    dataclasses.replace(family, prepare=None)
  assert music_lm.NAME in families.REGISTRY
