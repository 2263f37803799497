"""Test-only stand-in for torchaudio.transforms: the names stable-audio-tools imports, unusable."""


class _NotHere:
  def __init__(self, *args, **kwargs):
    raise RuntimeError(f"{type(self).__name__} is a test stand-in: torchaudio is not installed")


class Resample(_NotHere):
  pass


class Loudness(_NotHere):
  pass
