"""What keeps a studio that trains on the user's machine from being used by anyone else.

- It listens on 127.0.0.1. Any other address needs `allow_remote` and a token; with a token set,
  every request (the GUI's too) must carry it in the `X-Studio-Token` header, or `?token=` for a
  download link, compared in constant time.
- Request bodies are capped (`max_request_bytes`, checked on Content-Length and while reading),
  each uploaded file too (`max_file_bytes`), and a zip's members by their stated and read sizes.
- Paths hold ids only; a user's file name is only ever displayed, after `safe_name`.
"""

import dataclasses
import hmac
import ipaddress
import os
import re

TOKEN_HEADER = "X-Studio-Token"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class SecurityError(ValueError):
  """Settings that would expose the studio."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """Upload caps."""
  max_request_bytes: int = 256 << 20  # one request's body
  max_file_bytes: int = 16 << 20  # one MIDI file (the largest MAESTRO file is ~1 MB)
  max_files: int = 2000  # files in one dataset
  max_unzipped_bytes: int = 512 << 20  # a zip's members together


def check_bind(host: str, allow_remote: bool, token: str) -> None:
  """Raise unless listening on `host` is safe with these settings."""
  if host in LOOPBACK:
    return
  try:
    if ipaddress.ip_address(host).is_loopback:
      return
  except ValueError:
    pass
  if not allow_remote:
    raise SecurityError(f"--host={host} would let other machines reach the studio (it runs "
                        f"training and writes files): pass --allow_remote and a --token too, or "
                        f"keep the default 127.0.0.1")
  if len(token) < 16:
    raise SecurityError(f"--host={host} with --allow_remote needs a --token (or STUDIO_TOKEN) of "
                        f"at least 16 characters; got {len(token)}")


def token_ok(expected: str, given: str | None) -> bool:
  """Whether a request's token matches (always true when no token is set)."""
  if not expected:
    return True
  return given is not None and hmac.compare_digest(expected.encode(), given.encode())


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_name(name: str, limit: int = 120) -> str:
  """A file name to display and to keep a suffix from: no folders, no control or odd
  characters, no leading dots; never empty."""
  base = os.path.basename(name.replace("\\", "/"))
  base = _UNSAFE.sub("_", base).strip(" .")
  if len(base) > limit:
    stem, dot, suffix = base.rpartition(".")
    base = (stem[:limit - len(suffix) - 1] + "." + suffix) if dot and len(suffix) < 10 else \
        base[:limit]
  return base or "file"
