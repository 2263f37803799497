"""One refusal for every file that would need pickle: lora_jax never unpickles what a user gives it.

torch files are read with `torch.load(weights_only=True)`, which loads tensors and plain
containers and refuses any other object; a `.lora` is safetensors and is never unpickled at all.
Every place that reads such a file words the refusal the same way (`refusal`), so a user learns
once what to do about it.
"""

import pickle
import re
from typing import Any

from lora_jax import errors

_ADVICE = ("this file needs pickle to load; lora_jax never unpickles; re-save it as safetensors "
           "or a weights-only state dict")
_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; a pickle of protocol 2 or later


def refusal(path: str, detail: str = "", error: type = errors.UserError) -> errors.UserError:
  """The error (of type `error`) for a file that needs pickle, with what refused it if known."""
  return error(f"{path}: {_ADVICE}" + (f" ({detail})" if detail else ""))


def looks_pickled(path: str) -> bool:
  """Whether the file starts like a torch.save archive or a pickle."""
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except OSError:
    return False
  return any(head.startswith(m) for m in _MAGIC)


def torch_load(path: str, error: type = errors.UserError) -> Any:
  """`torch.load(path, weights_only=True)` on the CPU; a file that needs pickle gets `refusal`,
  any other unreadable file (empty, truncated, not a torch file) one error naming it; both of
  type `error`, a UserError."""
  import torch  # pylint: disable=g-import-not-at-top; only readers of torch files need it
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    first = " ".join(str(e).split())
    if "Weights only load failed" in first:  # an object weights_only will not build
      raise refusal(path, _unpickler_detail(first), error) from None
    raise error(f"cannot read {path} as a torch weight file: {first[:200]}") from None
  except Exception as e:  # pylint: disable=broad-except; torch's readers raise anything on junk
    detail = " ".join(str(e).split())[:200] or type(e).__name__
    raise error(f"cannot read {path} as a torch weight file (empty, truncated or "
                           f"not one): {detail}") from None


def _unpickler_detail(text: str) -> str:
  text = re.sub(r"\x1b\[[0-9;]*m", "", text)
  m = re.search(r"WeightsUnpickler error: (.+?)(?:\. Please| Check the documentation|$)", text)
  return m.group(1).rstrip(". ") if m else ""
