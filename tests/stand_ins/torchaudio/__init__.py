"""Test-only stand-in for torchaudio (see tests/stand_ins/README.md): imports, never computes."""

from . import transforms  # noqa: F401
