"""Test-only stand-in for torchvision.transforms.functional: the names k-diffusion imports."""


def _not_here(*args, **kwargs):
  raise RuntimeError("torchvision is a test stand-in here: it is not installed")


to_tensor = to_pil_image = _not_here
