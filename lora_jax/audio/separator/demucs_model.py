"""Demucs, when the user has it: the `demucs` package installed and a model file of their own.

Nothing is downloaded: the model is the one `.th` file the user names (a single Demucs model as
demucs' model folders hold them, e.g. htdemucs's `955717e8-8726e21a.th`; a bag of several is
not read). Demucs itself unpickles that file whole; here it is read with
`torch.load(weights_only=True)`, which builds only tensors, plain containers and the globals
listed in `ALLOWED` (the Demucs model classes and `Fraction`, which their `segment` uses), so a
file carrying anything else is refused with the name of what it carried. The vocal stem is the
model's 'vocals' source, the accompaniment the sum of its others; the mono input is played to the
model on both of its channels at its sample rate and the stems are brought back.
"""

import dataclasses
import fractions
import importlib.util

import numpy as np

from lora_jax import errors


class DemucsError(errors.UserError):
  """Demucs asked for where it cannot run: package missing, file unreadable or not Demucs."""


@dataclasses.dataclass(frozen=True)
class DemucsModel:
  path: str
  model: object  # a demucs model (torch.nn.Module)


def installed() -> bool:
  return importlib.util.find_spec("demucs") is not None


def _allowed() -> list:
  from demucs import demucs, hdemucs, htdemucs
  return [demucs.Demucs, hdemucs.HDemucs, htdemucs.HTDemucs, fractions.Fraction]


def load(path: str) -> DemucsModel:
  """The Demucs model in `path`, read weights-only; DemucsError naming the problem otherwise."""
  if not installed():
    raise DemucsError(f"Demucs weights {path} given, but the demucs package is not installed "
                      "(pip install 'lora_jax[demucs]')")
  import torch
  from demucs import states
  try:
    with torch.serialization.safe_globals(_allowed()):
      package = torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError:
    raise DemucsError(f"no such Demucs model file: {path}") from None
  except Exception as e:  # torch raises UnpicklingError (and others) for what it refuses
    raise DemucsError(f"{path} is not a Demucs model file that loads weights-only: "
                      f"{str(e).splitlines()[0][:300]}") from None
  keys = ("klass", "args", "kwargs", "state")
  if not isinstance(package, dict) or any(k not in package for k in keys):
    raise DemucsError(f"{path} is not a Demucs model package (keys {', '.join(keys)})")
  model = package["klass"](*package["args"], **package["kwargs"])
  states.set_state(model, package["state"])
  if "vocals" not in model.sources:
    raise DemucsError(f"Demucs model {path} separates {model.sources}, no 'vocals'")
  return DemucsModel(path, model.eval())


def separate(model: DemucsModel, wave: np.ndarray,
             sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """(vocal, accompaniment) float32, each as long as the mono `wave`."""
  import librosa
  import torch
  from demucs.apply import apply_model
  net = model.model
  n = len(wave)
  x = librosa.resample(np.asarray(wave, np.float32), orig_sr=sample_rate,
                       target_sr=net.samplerate)
  mix = torch.from_numpy(np.stack([x] * net.audio_channels))[None]
  with torch.no_grad():
    sources = apply_model(net, mix, device="cpu", progress=False)[0].mean(dim=1).numpy()
  vocal_index = net.sources.index("vocals")
  vocal = sources[vocal_index]
  accompaniment = sources.sum(axis=0) - vocal
  out = []
  for stem in (vocal, accompaniment):
    stem = librosa.resample(stem, orig_sr=net.samplerate, target_sr=sample_rate)
    out.append(np.pad(stem, (0, max(0, n - len(stem))))[:n].astype(np.float32))
  return out[0], out[1]
