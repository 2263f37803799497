"""Test-only stand-in for torchvision.transforms."""
from . import functional  # noqa: F401
