r"""LoRAW's proof on audio, end to end on a CPU, every stage through the project's launchers.

  python bench/loraw_proof.py --out=.cache/loraw_proof --assets=assets

1. Render corpus pieces with fluidsynth as piano, guitar, choir and trumpet (the same pieces in
   each), the last piece of each genre held out (lora_jax/loraw/proof_data.py).
2. Train an Oobleck autoencoder on all training audio (launch/train_autoencoder.py); score its
   reconstruction of the held-out audio (mel SNR).
3. Encode every WAV to latents (launch/encode_latents.py), the latent scale set so the training
   latents have unit standard deviation (the pretransform's `scale`).
4. Train a base DiT from scratch on piano, guitar and choir (launch/train_loraw.py, full).
5. Adapt it to trumpet, which it never heard: LoRA, ReLoRA (--relora-every) and, for reference,
   full fine-tuning (launch/train_loraw.py).
6. Held-out v-loss over fixed times and noise (lora_jax/loraw/heldout.py) on held-out trumpet and
   base-instrument clips; same-seed samples prompted "trumpet" with and without each adapter,
   decoded (launch/decode_latents.py); their spectral centroid and MFCC distance to the decoded
   held-out trumpet and base sets; log-mel spectrogram pictures.
Writes <out>/report.json and <out>/report.md (the table), PNGs into --assets. Every stage keeps
what an earlier run finished (the launchers resume), so a rerun redoes only what is missing.
"""

import json
import os
import subprocess
import sys
import time

from absl import flags
import jax
import numpy as np

from lora_jax import atomic, cli, lora
from lora_jax.audio import spectral
from lora_jax.data.dit import autoencoder, pre_encoded, segments, wav
from lora_jax.loraw import generation, heldout, model_config as model_config_lib, proof_data

_OUT = flags.DEFINE_string("out", ".cache/loraw_proof", "Work folder of the proof.")
_ASSETS = flags.DEFINE_string("assets", "assets", "Folder for the spectrogram PNGs.")
_PER_GENRE = flags.DEFINE_integer("per_genre", 5, "Pieces per genre and instrument.")
_SECONDS = flags.DEFINE_float("max_seconds", 16.0, "Each piece is cut after this.")
_AE_STEPS = flags.DEFINE_integer("ae_steps", 1500, "Autoencoder training steps.")
_BASE_STEPS = flags.DEFINE_integer("base_steps", 600, "Base DiT training steps.")
_FT_STEPS = flags.DEFINE_integer("ft_steps", 150, "LoRA / ReLoRA / full fine-tuning steps.")
_RELORA = flags.DEFINE_integer("relora_every", 50, "ReLoRA fold period.")
_SAMPLES = flags.DEFINE_integer("samples", 4, "Same-seed samples per model.")
_SAMPLER_STEPS = flags.DEFINE_integer("sampler_steps", 50, "DPM-Solver++(2M) SDE steps.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_SET = ("piano", "guitar", "choir")
FT_SET = ("trumpet",)
INSTRUMENTS = (proof_data.Instrument("piano", 0), proof_data.Instrument("guitar", 24),
               proof_data.Instrument("choir", 52), proof_data.Instrument("trumpet", 56))
FRAMES = 64  # latent frames per clip: 4096 samples (0.51 s) at 8 kHz with the hop of 64
DIT = {"embed_dim": 128, "depth": 4, "num_heads": 4, "cond_token_dim": 64,
       "global_cond_dim": 128, "project_cond_tokens": False,
       "transformer_type": "continuous_transformer"}
LORA = {"component_whitelist": ["transformer"], "multiplier": 1.0, "rank": 8, "alpha": 8,
        "dropout": 0, "module_dropout": 0, "lr": 2e-3}
PROMPT = "trumpet"


def _finished(workdir: str, steps: int) -> bool:
  """Whether a training run in `workdir` already finished `steps` steps (a rerun would only
  recompile to find that out)."""
  try:
    status = json.load(open(os.path.join(workdir, "status.json")))
  except OSError:
    return False
  return status.get("state") == "finished" and status.get("step") == steps


def _run(what: str, args: list[str]) -> None:
  """A launcher as a user runs it; its log goes to <out>/logs/<what>.log."""
  log = os.path.join(_OUT.value, "logs", f"{what}.log")
  os.makedirs(os.path.dirname(log), exist_ok=True)
  started = time.time()
  with open(log, "w") as f:
    done = subprocess.run([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  if done.returncode != 0:
    raise RuntimeError(f"{what} failed ({done.returncode}); see {log}")
  print(f"[{time.strftime('%H:%M:%S')}] {what}: {time.time() - started:.0f} s", flush=True)


def _latent_scale(ae_dir: str, audio_dir: str) -> float:
  """Standard deviation of the VAE means over (up to) 128 training segments."""
  raw, config, params = autoencoder.load(os.path.join(ae_dir, "model_config.json"),
                                         os.path.join(ae_dir, "autoencoder.safetensors"), None)
  arrays, _ = segments.from_folder(audio_dir, config.sample_rate, config.io_channels,
                                   raw["sample_size"])
  audio = arrays["audio"][np.random.default_rng(0).permutation(len(arrays["audio"]))[:128]]
  encode = autoencoder.encoder(config, False)
  z = np.concatenate([np.asarray(encode(params, audio[i:i + 16], None))
                      for i in range(0, len(audio), 16)])
  return float(z.std())


def _model_config(ae_dir: str, scale: float) -> dict:
  ae = json.load(open(os.path.join(ae_dir, "model_config.json")))
  return {
      "model_type": "diffusion_cond", "sample_rate": ae["sample_rate"],
      "sample_size": FRAMES * ae["model"]["downsampling_ratio"],
      "audio_channels": ae["audio_channels"],
      "model": {
          "pretransform": {"type": "autoencoder", "scale": scale, "config": ae["model"]},
          "conditioning": {"configs": [
              {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base",
                                                        "max_length": 16}},
              {"id": "seconds_start", "type": "number", "config": {"min_val": 0,
                                                                   "max_val": 32}},
              {"id": "seconds_total", "type": "number", "config": {"min_val": 0,
                                                                   "max_val": 32}}],
              "cond_dim": 64},
          "diffusion": {"type": "dit", "config": {**DIT, "io_channels": ae["model"]["latent_dim"]},
                        "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                        "global_cond_ids": ["seconds_start", "seconds_total"]},
          "io_channels": ae["model"]["latent_dim"]},
      "lora": LORA}


def _dataset(path: str, part: str, names: tuple[str, ...]) -> str:
  atomic.write_text(path, json.dumps({
      "dataset_type": "pre_encoded", "latent_crop_length": FRAMES,
      "datasets": [{"id": n, "path": os.path.join("latents", part, n)} for n in names]}))
  return path


def _train_dit(name: str, dataset: str, steps: int, *extra: str) -> None:
  out = _OUT.value
  if _finished(os.path.join(out, name), steps):
    return
  _run(name, [os.path.join(ROOT, "launch", "train_loraw.py"),
              f"--model-config={out}/model_config.json", f"--dataset-config={dataset}",
              f"--save-dir={out}/{name}", "--batch-size=16", f"--max-steps={steps}",
              f"--config.model.latent_length={FRAMES}", "--config.data.val_fraction=0.1",
              f"--config.training.eval_every={max(steps // 4, 1)}",
              f"--config.training.log_every={max(steps // 20, 1)}",
              f"--config.ckpt.every_steps={max(steps // 4, 1)}", *extra])


def _sampler(config, steps: int):
  """(base, adapter or None, seed) -> latents [C, T] prompted PROMPT, by `generation.generate`
  (which keeps its compiled sampler between calls of the same shape)."""

  def sample(base, adapter, seed):
    request = generation.Request(prompt=PROMPT, seconds_start=0.0, seconds_total=16.0,
                                 latent_length=config.latent_length, steps=steps, cfg_scale=3.0,
                                 seed=seed, multiplier=1.0)
    return generation.generate(config, base, adapter, request)
  return sample


def _autoencoder_quality(ae_dir: str, test_dir: str, chunk: int) -> dict:
  """Per instrument: mel SNR, waveform SNR and log-mel L1 (dB) of held-out audio through the
  autoencoder (VAE mean), in chunks of `chunk` samples as the DiT's clips are."""
  raw, config, params = autoencoder.load(os.path.join(ae_dir, "model_config.json"),
                                         os.path.join(ae_dir, "autoencoder.safetensors"), None)
  encode, decode = autoencoder.encoder(config, False), autoencoder.decoder(config)
  rows = {}
  for inst in sorted(os.listdir(test_dir)):
    scores = []
    for path in wav.find(os.path.join(test_dir, inst)):
      audio = wav.load(path, config.sample_rate, config.io_channels)
      usable = audio[:, :audio.shape[-1] // chunk * chunk]
      chunks = usable.reshape(1, -1, chunk).transpose(1, 0, 2)
      recon = np.concatenate([np.asarray(decode(params, encode(params, c[None], None)))[0, 0]
                              for c in chunks])
      ref = chunks.reshape(-1)
      l1 = np.mean(np.abs(spectral.log_mel_db(ref, config.sample_rate)
                          - spectral.log_mel_db(recon, config.sample_rate)))
      scores.append((spectral.mel_snr_db(ref, recon, config.sample_rate),
                     spectral.snr_db(ref, recon), l1,
                     spectral.centroid_hz(ref, config.sample_rate),
                     spectral.centroid_hz(recon, config.sample_rate)))
    rows[inst] = dict(zip(("mel_snr_db", "snr_db", "log_mel_l1_db", "centroid_in_hz",
                           "centroid_out_hz"), np.mean(scores, axis=0).round(2).tolist()))
  return rows


def _stats(folder: str, sample_rate: int) -> dict:
  """Centroids and timbre vectors of every WAV under `folder`."""
  files = wav.find(folder)
  audio = [wav.load(f, sample_rate, 1)[0] for f in files]
  return {"files": files, "centroid": [spectral.centroid_hz(a, sample_rate) for a in audio],
          "timbre": [spectral.timbre(a, sample_rate) for a in audio], "audio": audio}


def _spectrogram_png(panels: list[tuple[str, np.ndarray]], sample_rate: int, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.2), sharey=True)
  for ax, (title, audio) in zip(axes, panels):
    mel = spectral.log_mel_db(audio, sample_rate)
    ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma",
              vmin=mel.max() - 70, vmax=mel.max(),
              extent=(0, len(audio) / sample_rate, 0, spectral.N_MELS))
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("s", fontsize=7)
    ax.tick_params(labelsize=6)
  axes[0].set_ylabel("mel band", fontsize=7)
  fig.tight_layout()
  with atomic.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=80, format="png")
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  out = os.path.abspath(_OUT.value)
  started = time.time()
  split = proof_data.build(out, INSTRUMENTS, _PER_GENRE.value, _SECONDS.value)
  print(f"[{time.strftime('%H:%M:%S')}] rendered: " + ", ".join(
      f"{k} {len(v['train'])}+{len(v['test'])}" for k, v in split.items()), flush=True)

  ae_dir = os.path.join(out, "ae")
  if not _finished(ae_dir, _AE_STEPS.value):
    _run("autoencoder", [os.path.join(ROOT, "launch", "train_autoencoder.py"),
                         f"--config={ROOT}/configs/autoencoder.py",
                         f"--audio-dir={out}/wavs/train", f"--workdir={ae_dir}",
                         f"--config.training.steps={_AE_STEPS.value}",
                         f"--config.opt.warmup_steps={min(50, _AE_STEPS.value)}",
                         f"--config.training.eval_every={max(_AE_STEPS.value // 4, 1)}",
                         f"--config.ckpt.every_steps={max(_AE_STEPS.value // 4, 1)}"])
  hop = json.load(open(os.path.join(ae_dir, "model_config.json")))["model"]["downsampling_ratio"]
  chunk = FRAMES * hop  # samples per DiT clip
  ae_quality = _autoencoder_quality(ae_dir, os.path.join(out, "wavs", "test"), chunk)
  scale = _latent_scale(ae_dir, os.path.join(out, "wavs", "train"))
  mc_path = os.path.join(out, "model_config.json")
  atomic.write_text(mc_path, json.dumps(_model_config(ae_dir, scale), indent=1))
  weights = os.path.join(ae_dir, "autoencoder.safetensors")
  for part in ("train", "test"):
    _run(f"encode_{part}", [os.path.join(ROOT, "launch", "encode_latents.py"),
                            f"--model-config={mc_path}", f"--autoencoder-ckpt={weights}",
                            f"--audio-dir={out}/wavs/{part}", f"--out-dir={out}/latents/{part}"])

  base_train = _dataset(os.path.join(out, "base_train.json"), "train", BASE_SET)
  ft_train = _dataset(os.path.join(out, "ft_train.json"), "train", FT_SET)
  _train_dit("dit_base", base_train, _BASE_STEPS.value,
             "--config.opt.learning_rate=1e-3",
             f"--config.opt.warmup_steps={min(50, _BASE_STEPS.value)}",
             "--config.opt.decay=cosine", "--config.opt.final_lr_fraction=0.1")
  base_file = os.path.join(out, "dit_base", "params.safetensors")
  warm = min(10, _RELORA.value, _FT_STEPS.value)
  ft_common = (f"--pretrained-ckpt-path={base_file}", f"--config.opt.warmup_steps={warm}")
  _train_dit("lora", ft_train, _FT_STEPS.value, "--use-lora", *ft_common)
  _train_dit("relora", ft_train, _FT_STEPS.value, "--use-lora",
             f"--relora-every={_RELORA.value}", f"--config.training.relora_warmup={warm}",
             *ft_common)
  _train_dit("full_ft", ft_train, _FT_STEPS.value, "--config.opt.learning_rate=2e-4",
             *ft_common)

  # Held-out v-loss: the same clips, times and noise for every model.
  mc = model_config_lib.load(mc_path)
  config = mc.dit_config(FRAMES)
  base = generation.load_base(base_file, config, 0)
  lora_adapter = generation.load_adapter(os.path.join(out, "lora", "lora.ckpt"), config,
                                         mc.lora.alpha)
  relora_base = generation.load_base(os.path.join(out, "relora", "params.safetensors"), config, 0)
  full_base = generation.load_base(os.path.join(out, "full_ft", "params.safetensors"), config, 0)
  models = {"base": (base, None), "LoRA": (base, lora_adapter), "ReLoRA": (relora_base, None),
            "full fine-tune": (full_base, None)}
  n_params = sum(x.size for x in jax.tree.leaves(base))
  n_lora = sum(a.size + b.size for a, b, _ in lora_adapter.modules().values())
  trained = {"base": n_params, "LoRA": n_lora, "ReLoRA": n_lora, "full fine-tune": n_params}
  held = {}
  for name, names in (("trumpet", FT_SET), ("base instruments", BASE_SET)):
    spec = pre_encoded.read_dataset_config(_dataset(os.path.join(out, f"test_{name[:4]}.json"),
                                                    "test", names))
    arrays = pre_encoded.load_arrays(spec, config.io_channels, FRAMES, config.text_len)
    held[name] = {m: heldout.v_loss(config, b, a, arrays) for m, (b, a) in models.items()}
    held[name]["clips"] = int(len(arrays["latents"]))

  # Same-seed samples prompted "trumpet", decoded; references: held-out latents decoded.
  sample_dir = os.path.join(out, "samples")
  sample = _sampler(config, _SAMPLER_STEPS.value)
  for name, (b, a) in models.items():
    for seed in range(_SAMPLES.value):
      npy = os.path.join(sample_dir, name.replace(" ", "_"), f"seed{seed}.npy")
      os.makedirs(os.path.dirname(npy), exist_ok=True)
      generation.save_latents(sample(b, a, seed), npy)
  for what, src in (("samples", sample_dir), ("test", os.path.join(out, "latents", "test"))):
    _run(f"decode_{what}", [os.path.join(ROOT, "launch", "decode_latents.py"),
                            f"--model-config={mc_path}", f"--autoencoder-ckpt={weights}",
                            f"--latents={src}", f"--out-dir={out}/decoded/{what}"])
  rate = mc.sample_rate
  refs = {n: _stats(os.path.join(out, "decoded", "test", n), rate) for n in BASE_SET + FT_SET}
  ft_ref = np.mean([t for n in FT_SET for t in refs[n]["timbre"]], axis=0)
  base_ref = np.mean([t for n in BASE_SET for t in refs[n]["timbre"]], axis=0)
  spectra = {"held-out trumpet (decoded)": {
      "centroid_hz": float(np.mean([c for n in FT_SET for c in refs[n]["centroid"]]))},
      "held-out base instruments (decoded)": {
          "centroid_hz": float(np.mean([c for n in BASE_SET for c in refs[n]["centroid"]]))}}
  sample_stats = {}
  for name in models:
    s = _stats(os.path.join(out, "decoded", "samples", name.replace(" ", "_")), rate)
    sample_stats[name] = s
    timbre = np.mean(s["timbre"], axis=0)
    spectra[f"samples: {name}"] = {
        "centroid_hz": float(np.mean(s["centroid"])),
        "mfcc_dist_to_trumpet": float(np.linalg.norm(timbre - ft_ref)),
        "mfcc_dist_to_base_set": float(np.linalg.norm(timbre - base_ref))}

  os.makedirs(_ASSETS.value, exist_ok=True)
  png = os.path.join(_ASSETS.value, "loraw_proof_spectrograms.png")
  _spectrogram_png([("held-out trumpet, decoded", refs["trumpet"]["audio"][0][:len(
      sample_stats["base"]["audio"][0])])] + [
      (f"{name}, seed 0", sample_stats[name]["audio"][0]) for name in models], rate, png)

  report = {"autoencoder_reconstruction": ae_quality, "latent_scale": scale,
            "held_out_v_loss": held, "parameters_trained": trained, "spectra": spectra,
            "settings": {"ae_steps": _AE_STEPS.value, "base_steps": _BASE_STEPS.value,
                         "ft_steps": _FT_STEPS.value, "relora_every": _RELORA.value,
                         "samples": _SAMPLES.value, "sampler_steps": _SAMPLER_STEPS.value,
                         "dit": DIT, "lora": LORA},
            "seconds": round(time.time() - started)}
  atomic.write_text(os.path.join(out, "report.json"), json.dumps(report, indent=1))
  md = _markdown(report)
  atomic.write_text(os.path.join(out, "report.md"), md)
  print(md)


def _markdown(r: dict) -> str:
  lines = ["| model | parameters trained | held-out v-loss, trumpet | held-out v-loss, base "
           "instruments |", "|---|---:|---:|---:|"]
  for name, count in r["parameters_trained"].items():
    lines.append(f"| {name} | {count:,} | {r['held_out_v_loss']['trumpet'][name]['mean']:.4f} | "
                 f"{r['held_out_v_loss']['base instruments'][name]['mean']:.4f} |")
  lines += ["", "| audio | spectral centroid (Hz) | MFCC distance to trumpet | MFCC distance to "
            "base set |", "|---|---:|---:|---:|"]
  for name, s in r["spectra"].items():
    lines.append(f"| {name} | {s['centroid_hz']:.0f} | "
                 + (f"{s['mfcc_dist_to_trumpet']:.2f} | {s['mfcc_dist_to_base_set']:.2f} |"
                    if "mfcc_dist_to_trumpet" in s else "| |"))
  lines += ["", "| held-out audio through the autoencoder | mel SNR (dB) | SNR (dB) | "
            "log-mel L1 (dB) | centroid in (Hz) | centroid decoded (Hz) |",
            "|---|---:|---:|---:|---:|---:|"]
  for inst, q in r["autoencoder_reconstruction"].items():
    lines.append(f"| {inst} | {q['mel_snr_db']:.2f} | {q['snr_db']:.2f} | "
                 f"{q['log_mel_l1_db']:.2f} | {q['centroid_in_hz']:.0f} | "
                 f"{q['centroid_out_hz']:.0f} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  cli.run(main, "loraw_proof")
