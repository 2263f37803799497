"""The song_lm family on the shared loop: its loss is the masked per-stream NLL, and LoRA on the
original's q/k/v/o_proj lowers it on learnable windows."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import tree_paths
from lora_jax.families import song_lm as family_lib
from lora_jax.models.song import delay_pattern
from lora_jax.models.song import lm as song_lm
from lora_jax.models.song import loss as song_lm_loss
from lora_jax.train import config as config_lib
from lora_jax.train import loop

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "song_lm.py")


def _tiny(**overrides):
  return config_lib.load(CONFIG, "tiny", overrides)


def test_family_loss_is_the_masked_stream_nll():
  config = _tiny()
  family = family_lib.make(config.model, "float32")
  batch = {k: jnp.asarray(v) for k, v in family.synthetic(4, 0).items()}
  params = jax.jit(family.model.init)(jax.random.key(0), *family.model_args(batch))["params"]
  # The window model's parameters are the song LM's, under the original's paths.
  assert (jax.tree.map(lambda x: x.shape, params)
          == jax.tree.map(lambda x: x.shape, song_lm.abstract_params(family.model.config)))
  assert "transformer.model.layers.0.self_attn.q_proj.kernel" in {
      tree_paths.dotted(k) for k in tree_paths.flatten(params)}
  loss, metrics = jax.jit(lambda p, b: family.loss_fn(
      family.model.apply({"params": p}, *family.model_args(b)), b))(params, batch)
  # Recomputed by hand from the plain model.
  delays = config.model.delays
  ends = batch["song_end"] > 0
  codes, frames = song_lm_loss.targets(batch["codes"], batch["length"], ends,
                                       code_size=config.model.code_size)
  mask = np.asarray(song_lm_loss.target_mask(frames, ends, delays))
  seq = delay_pattern.build(codes, delays, config.model.code_size + 1)
  logits = jax.jit(song_lm.SongLM(family.model.config).apply)(
      {"params": params}, seq, {"description": (batch["lyrics"], batch["sections"]),
                                "type_info": batch["style"]})
  logp = np.asarray(jax.nn.log_softmax(delay_pattern.revert_logits(logits, delays, 16), -1))
  c = np.where(mask, np.asarray(codes), 0)  # the special token is no output class
  picked = np.take_along_axis(logp, c[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, -picked[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["nll_stream1"], -picked[:, 1][mask[:, 1]].mean(), rtol=1e-5)
  assert float(family.loss_weight(batch)) == mask.sum()


def test_lora_on_the_loop_lowers_the_loss(tmp_path):
  """Resume, checkpoints and export are the shared loop's (tests/train_loop_test.py); here only
  that the family trains there."""
  config = _tiny(**{"training.steps": 12, "training.eval_every": 6, "ckpt.every_steps": 6})
  whole = loop.train(config, str(tmp_path / "run"))
  assert whole.status == "finished"
  first = float(open(tmp_path / "run" / "metrics.csv").read().splitlines()[1].split(",")[3])
  print(f"song_lm tiny LoRA: validation NLL {first:.3f} -> {whole.val_loss:.3f} nats")
  assert whole.val_loss < 0.9 * first
  names = {tree_paths.dotted(k) for k in tree_paths.flatten(whole.params)}
  assert "transformer2.model.layers.0.self_attn.o_proj.lora_A" in names
