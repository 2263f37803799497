"""Test-only stand-in for torchvision (see tests/stand_ins/README.md): imports, never computes."""
