r"""python bench/duv_ablation.py [--dur_head=absolute] [--features=all] [--dur_loss=huber] ...

The experiment bench the DUV fixes were measured with, one switch at a time, on the same split as
scripts/duv_proof.sh: a base trained on the classical performances (MAESTRO + Mozart; Maestro_6
and Maestro_7 held out) and a pop LoRA on it for each POP909 song left out. Needs the manifest
(python launch/build_duv_manifest.py). It is a bench, not the proof: a minimal loop (batches drawn
with replacement, no checkpoints) over the library's PhraseTransformer and LoRA, so a variant
costs about two minutes. Checkpoints are picked, as in training, on the last 10% of the training
tracks; held-out pieces are only scored.

Switches (defaults are the library's design):
  --dur_head      residual: written * exp(head), head zero at init (the library's)
                  absolute: softplus(head), the first version's
  --features      notes: duv_features without the ones constant per track (the library's)
                  all: every feature, vel_norm / swing_hint / section_onehot included
  --dur_loss      l1 (library) | huber (delta 1 beat, the first version's) | l1_log
  --dur_weight    weight of the duration loss (4; the first version's 1)
  --vel_loss      l1 (library) | centered: L1 of velocities centred per window, plus
                  --anchor times the raw L1
  --d_model, --n_layers, --d_ff, --dropout, --steps, --lora_steps, --lora_targets, --seed

Prints, per held-out MAESTRO piece and per left-out POP909 song, the velocity MAE raw and
level-matched (each piece's predictions shifted to its true mean) and the duration MAE in beats,
with the baselines (train-mean velocity / the piece's own mean / the written duration).
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from lora_jax import lora
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.duv import splits
from lora_jax.models.phrase_transformer import PhraseTransformer, PhraseTransformerConfig

NOTE_FEATURES = ("beat_pos", "beat_frac", "pitch", "dur_beats", "prev_ioi", "next_ioi",
                 "is_downbeat", "strum_dir_hint")
FEATURES = {"notes": NOTE_FEATURES, "all": duv_features.ALL_FEATURES}
SEED_TARGETS = "attn.q_proj,attn.v_proj,attn.out_proj,ff.in,ff.out"

_MANIFEST = flags.DEFINE_string("manifest", "build/duv/duv_manifest_enriched.jsonl", "manifest")
_DUR_HEAD = flags.DEFINE_enum("dur_head", "residual", ["residual", "absolute"], "duration head")
_FEATURES = flags.DEFINE_enum("features", "notes", list(FEATURES), "input features")
_DUR_LOSS = flags.DEFINE_enum("dur_loss", "l1", ["l1", "huber", "l1_log"], "duration loss")
_DUR_WEIGHT = flags.DEFINE_float("dur_weight", 4.0, "duration loss weight")
_VEL_LOSS = flags.DEFINE_enum("vel_loss", "l1", ["l1", "centered"], "velocity loss")
_ANCHOR = flags.DEFINE_float("anchor", 0.1, "raw L1 weight beside the centred velocity loss")
_D_MODEL = flags.DEFINE_integer("d_model", 64, "width")
_N_LAYERS = flags.DEFINE_integer("n_layers", 2, "encoder blocks")
_D_FF = flags.DEFINE_integer("d_ff", 128, "feed-forward width")
_SEQ = flags.DEFINE_integer("seq_len", 64, "notes per window")
_DROPOUT = flags.DEFINE_float("dropout", 0.1, "dropout of the base while it trains")
_STEPS = flags.DEFINE_integer("steps", 300, "base steps")
_LORA_STEPS = flags.DEFINE_integer("lora_steps", 150, "LoRA steps per fold")
_LR = flags.DEFINE_float("lr", 1e-3, "base peak learning rate")
_LORA_LR = flags.DEFINE_float("lora_lr", 2e-3, "LoRA peak learning rate")
_RANK = flags.DEFINE_integer("rank", 8, "LoRA rank (alpha = 2 rank)")
_TARGETS = flags.DEFINE_string("lora_targets", SEED_TARGETS, "LoRA target modules")
_BATCH = flags.DEFINE_integer("batch_size", 32, "windows per step")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 50, "steps between validations")
_SEED = flags.DEFINE_integer("seed", 0, "seed")
_FOLDS = flags.DEFINE_list("folds", ["008", "010", "022", "191"], "POP909 songs to leave out")


class Variant(nn.Module):
  """The library's PhraseTransformer, its duration head read as a residual or as absolute."""

  config: PhraseTransformerConfig

  @nn.compact
  def __call__(self, inputs, mask, written, deterministic=True):
    model = PhraseTransformer(self.config, name="model")
    if _DUR_HEAD.value == "residual":
      out = model(inputs, mask, written, deterministic=deterministic)
      return out["velocity"], out["dur_beats"]
    out = model(inputs, mask, jnp.ones_like(written), deterministic=deterministic)
    return out["velocity"], jax.nn.softplus(jnp.log(out["dur_beats"]))  # softplus(head)


def _loss(outputs, batch):
  vel, dur = outputs
  m = batch["mask"].astype(jnp.float32)
  n = m.sum()
  vel_true, dur_true = batch["targets"][..., 0], batch["targets"][..., 1]
  vel_l1 = (jnp.abs(vel - vel_true) * m).sum() / n / 127
  if _VEL_LOSS.value == "centered":
    count = m.sum(1, keepdims=True) + 1e-6
    centre = lambda v: v - (v * m).sum(1, keepdims=True) / count
    vel_loss = ((jnp.abs(centre(vel) - centre(vel_true)) * m).sum() / n / 127
                + _ANCHOR.value * vel_l1)
  else:
    vel_loss = vel_l1
  if _DUR_LOSS.value == "l1":
    err = jnp.abs(dur - dur_true)
  elif _DUR_LOSS.value == "huber":
    err = optax.huber_loss(dur, dur_true, delta=1.0)
  else:  # padding holds zeros: keep log(0) out of the sum and its gradient
    ok = m > 0
    err = jnp.where(ok, jnp.abs(jnp.log(jnp.where(ok, dur, 1.0))
                                - jnp.log(jnp.where(ok, jnp.maximum(dur_true, 1e-3), 1.0))), 0.0)
  return vel_loss + _DUR_WEIGHT.value * (err * m).sum() / n


def _windows(rows, scaler, stride):
  w = duv_manifest.phrase_windows(rows, _SEQ.value, stride, scaler.features, scaler)
  written = duv_manifest.phrase_windows(rows, _SEQ.value, stride, ("dur_beats",))
  return {"inputs": w["inputs"], "targets": w["targets"], "mask": w["mask"],
          "written": written["inputs"][..., 0], "row": w["row"]}


def _train(model, params, data, valid, steps, lr, adapter=None):
  """Trains the model (or the adapter's factors); returns the best on validation and its step."""
  schedule = optax.warmup_cosine_decay_schedule(0, lr, max(1, min(100, steps // 10)), steps,
                                                lr * 0.1)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
  if adapter is None:
    trainable = params
    fwd = lambda t, b, key: model.apply(
        {"params": t}, b["inputs"], b["mask"], b["written"], deterministic=key is None,
        rngs=None if key is None else {"dropout": key})
  else:
    trainable = adapter.params
    fwd = lambda t, b, key: lora.apply(model, params, [lora.Active(lora.Adapter(
        t, adapter.scales), 1.0)], b["inputs"], b["mask"], b["written"])
  opt = tx.init(trainable)

  @jax.jit
  def step(t, opt, b, key):
    value, grads = jax.value_and_grad(lambda t: _loss(fwd(t, b, key), b))(t)
    updates, opt = tx.update(grads, opt, t)
    return optax.apply_updates(t, updates), opt, value

  val_loss = jax.jit(lambda t, b: _loss(fwd(t, b, None), b))
  keys = ("inputs", "targets", "mask", "written")
  rng, key = np.random.default_rng(_SEED.value), jax.random.key(_SEED.value)
  best = (np.inf, trainable, 0)
  for s in range(1, steps + 1):
    idx = rng.integers(0, len(data["mask"]), _BATCH.value)
    trainable, opt, _ = step(trainable, opt, {k: data[k][idx] for k in keys},
                             jax.random.fold_in(key, s))
    if s % _EVAL_EVERY.value == 0 or s == steps:
      v = float(val_loss(trainable, {k: valid[k] for k in keys}))
      if v < best[0]:
        best = (v, trainable, s)
  return best[1], best[2]


def _scores(model, params, rows, scaler, train_mean, adapter=None):
  w = _windows(rows, scaler, _SEQ.value)
  args = (w["inputs"], w["mask"], w["written"])
  if adapter is None:
    vel, dur = jax.jit(lambda p, *a: model.apply({"params": p}, *a))(params, *args)
  else:
    vel, dur = jax.jit(lambda p, ad, *a: lora.apply(model, p, [lora.Active(ad, 1.0)], *a))(
        params, adapter, *args)
  vel, dur = np.asarray(vel), np.asarray(dur)
  out = {}
  for i, row in enumerate(rows):
    sel = w["row"] == i
    v, d = vel[sel][w["mask"][sel]], dur[sel][w["mask"][sel]]
    vt = np.asarray(row["targets"]["velocity"], float)
    dt = np.asarray(row["targets"]["dur_beats"], float)
    written = np.asarray(row["notes"]["dur_beats"], float)
    out[row["piece_id"]] = {
        "baseline": (np.abs(vt - train_mean).mean(), np.abs(vt - vt.mean()).mean(),
                     np.abs(dt - written).mean()),
        "model": (np.abs(vt - v).mean(), np.abs(vt - (v - v.mean() + vt.mean())).mean(),
                  np.abs(dt - d).mean())}
  return out


def _line(label, s):
  return f"  {label:9s} vel raw {s[0]:6.2f}  level-matched {s[1]:6.2f}  dur {s[2]:.4f}"


def main(argv):
  del argv
  t0 = time.time()
  features = FEATURES[_FEATURES.value]
  rows = duv_manifest.read_manifest(_MANIFEST.value, features)
  classical = splits.split(splits.select(rows, "", r"^(maestro|mozart)/"),
                           r"^maestro/Maestro_(6|7)$", 0.1)
  scaler = duv_manifest.fit_scaler([{**r, "split": "train"} for r in classical.train], features)
  config = PhraseTransformerConfig(
      n_features=len(duv_manifest.feature_columns(features)), d_model=_D_MODEL.value, n_heads=4,
      n_layers=_N_LAYERS.value, d_ff=_D_FF.value, max_len=_SEQ.value, dropout=_DROPOUT.value)
  model = Variant(config)
  train = _windows(classical.train, scaler, _SEQ.value // 2)
  params = model.init(jax.random.key(_SEED.value), train["inputs"][:2], train["mask"][:2],
                      train["written"][:2])["params"]
  params, best = _train(model, params, train, _windows(classical.valid, scaler, _SEQ.value),
                        _STEPS.value, _LR.value)
  mean = splits.velocity_mean(classical.train + classical.valid)
  print(f"base: best step {best} of {_STEPS.value}, {time.time() - t0:.0f} s")
  for piece, s in _scores(model, params, classical.heldout, scaler, mean).items():
    print(piece)
    print(_line("baseline", s["baseline"]))
    print(_line("base", s["model"]))
  spec = lora.LoraSpec(rank=_RANK.value, alpha=2.0 * _RANK.value,
                       target_modules=tuple(_TARGETS.value.split(",")))
  targets = lora.resolve(spec, params)
  folds = []
  for song in _FOLDS.value:
    pop = splits.split(splits.select(rows, "", r"^pop909/"), rf"POP909_{song}$", 0.1)
    mean = splits.velocity_mean(pop.train + pop.valid)
    adapter = lora.init_adapter(targets, spec, jax.random.key(1))
    factors, best = _train(model, params, _windows(pop.train, scaler, _SEQ.value // 4),
                           _windows(pop.valid, scaler, _SEQ.value), _LORA_STEPS.value,
                           _LORA_LR.value, adapter)
    base = _scores(model, params, pop.heldout, scaler, mean)
    adapted = _scores(model, params, pop.heldout, scaler, mean,
                      lora.Adapter(factors, adapter.scales))
    (piece, b), = base.items()
    print(f"{piece} (LoRA best step {best} of {_LORA_STEPS.value})")
    print(_line("baseline", b["baseline"]))
    print(_line("base", b["model"]))
    print(_line("adapted", adapted[piece]["model"]))
    folds.append((b["baseline"], b["model"], adapted[piece]["model"]))
  print(f"mean of {len(folds)} pop folds")
  for i, label in enumerate(("baseline", "base", "adapted")):
    print(_line(label, np.mean([f[i] for f in folds], axis=0)))
  print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
  app.run(main)
