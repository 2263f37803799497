"""SI-SDR of the trained vocal/accompaniment separator on held-out rendered mixes.

  nice -n 5 python bench/separator_eval.py --stems=.cache/separator_stems

For each held-out piece of the stem set (`lora_jax/audio/separator/stem_set.py`: 'test' played by
the training instrument programs, 'test_unseen' by programs no training piece has) the mix is the
sum of its exact stems, vocal at the accompaniment's RMS (0 dB). Prints the mean SI-SDR of the
vocal and accompaniment estimates of:
  mix     the unprocessed mix as either stem (the bar any separator must clear)
  hpss    the stand-in: harmonic part as the vocal, percussive part as the accompaniment
  model   the mask model (--weights, default the shipped one)
  oracle  the ideal ratio mask |V| / (|V| + |A|) on the model's STFT with the mix's phase: what
          a mask of this STFT can reach at best
"""

from absl import flags
import librosa
import numpy as np

from lora_jax import cli
from lora_jax.audio import stems
from lora_jax.audio.separator import mask_model, stem_set

_STEMS = flags.DEFINE_string("stems", ".cache/separator_stems", "Folder stem_set.build wrote.")
_WEIGHTS = flags.DEFINE_string("weights", str(mask_model.WEIGHTS), "Separator weights to score.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Score at most this many pieces per set; 0 = all.",
                              lower_bound=0)


def oracle(model: mask_model.MaskModel, vocal: np.ndarray,
           accompaniment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The ideal ratio mask's two stems."""
  stft = lambda w: librosa.stft(w, n_fft=model.n_fft, hop_length=model.hop, window="hann",
                                center=True, pad_mode="constant")
  v, a = np.abs(stft(vocal)), np.abs(stft(accompaniment))
  mix = stft(vocal + accompaniment)
  mask = v / (v + a + 1e-8)
  return tuple(librosa.istft(mix * m, hop_length=model.hop, window="hann", center=True,
                             length=len(vocal)) for m in (mask, 1.0 - mask))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  model = mask_model.load(_WEIGHTS.value)
  renders = stem_set.read_manifest(_STEMS.value)
  print(f"weights {_WEIGHTS.value}; SI-SDR in dB, mean over pieces (median in brackets)")
  print("set | pieces | stem | mix | hpss | model | oracle")
  for split in ("test", "test_unseen"):
    chosen = [r for r in renders if r.split == split]
    chosen = chosen[:_LIMIT.value] if _LIMIT.value else chosen
    scores = {k: [] for k in ("mix", "hpss", "model", "oracle")}
    for r in chosen:
      vocal, accompaniment = stem_set.load_stems(_STEMS.value, r)
      mix = vocal + accompaniment
      parts = stems.hpss(mix).parts
      estimates = {"mix": (mix, mix), "hpss": (parts["harmonic"], parts["percussive"]),
                   "model": mask_model.separate(model, mix, stem_set.SAMPLE_RATE),
                   "oracle": oracle(model, vocal, accompaniment)}
      for k, (v, a) in estimates.items():
        scores[k].append((stems.si_sdr(v, vocal), stems.si_sdr(a, accompaniment)))
    for i, stem in enumerate(("vocal", "accompaniment")):
      cells = [f"{np.mean(np.array(s)[:, i]):.1f} ({np.median(np.array(s)[:, i]):.1f})"
               for s in scores.values()]
      print(f"{split} | {len(chosen)} | {stem} | {' | '.join(cells)}")


if __name__ == "__main__":
  cli.run(main, "separator_eval")
