"""The Oobleck autoencoder's building blocks: weight-normalised convolutions and SnakeBeta.

Parameters keep the original's names and PyTorch layouts (`weight_v` [out, in, k] for a Conv1d,
[in, out, k] for a ConvTranspose1d, `weight_g` [dim 0, 1, 1], `bias`, `alpha`, `beta`), and
activations are [batch, channels, time] as in the original, so a state dict converts by renaming
keys alone (`lora_jax.interop.oobleck_convert`).

Weight norm is the original's `torch.nn.utils.weight_norm(module)`, dimension 0: the weight is
`g * v / ||v||`, the norm taken over every axis but the first. For a transposed convolution the
first axis is the *input* channel (PyTorch's layout), so the norm is per input channel there; that
quirk is the original's and reproduced. No epsilon is added to the norm (the original adds none).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

_SNAKE_EPS = 1e-9  # the original's `no_div_by_zero`


def _norm(weight_v):
  """||v|| over every axis but the first, shaped like `weight_g` ([dim 0, 1, 1])."""
  return jnp.sqrt(jnp.sum(jnp.square(weight_v), axis=tuple(range(1, weight_v.ndim)),
                          keepdims=True))


def _weight(weight_g, weight_v):
  return weight_g * weight_v / _norm(weight_v)


def _uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


class WNConv1d(nn.Module):
  """`weight_norm(nn.Conv1d(...))`; `padding` is an int (both sides) or 'same' (stride 1)."""

  in_channels: int
  out_channels: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  padding: int | str = 0
  use_bias: bool = True
  precision: str = "highest"

  @nn.compact
  def __call__(self, x_BxIxT):
    # PyTorch's default Conv1d initialisation: uniform in +-1/sqrt(fan_in).
    bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size)
    weight_v = self.param("weight_v", _uniform(bound),
                          (self.out_channels, self.in_channels, self.kernel_size))
    # `weight_norm` starts g at ||v||, so the initial weight is v itself.
    weight_g = self.param("weight_g", lambda key: _norm(weight_v))
    if self.padding == "same":
      if self.stride != 1:
        raise ValueError(f"padding 'same' needs stride 1, got stride {self.stride}")
      total = self.dilation * (self.kernel_size - 1)
      pads = [(total // 2, total - total // 2)]  # PyTorch puts the odd sample on the right
    else:
      pads = [(self.padding, self.padding)]
    y = jax.lax.conv_general_dilated(
        x_BxIxT, _weight(weight_g, weight_v).astype(x_BxIxT.dtype), (self.stride,), pads,
        rhs_dilation=(self.dilation,), dimension_numbers=("NCH", "OIH", "NCH"),
        precision=self.precision)
    if self.use_bias:
      y = y + self.param("bias", _uniform(bound), (self.out_channels,))[None, :, None]
    return y


class WNConvTranspose1d(nn.Module):
  """`weight_norm(nn.ConvTranspose1d(...))`: output length (T - 1) * stride - 2 * padding + k."""

  in_channels: int
  out_channels: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  precision: str = "highest"

  @nn.compact
  def __call__(self, x_BxIxT):
    # PyTorch computes a transposed convolution's fan-in from weight.shape[1] (out channels).
    bound = 1.0 / math.sqrt(self.out_channels * self.kernel_size)
    weight_v = self.param("weight_v", _uniform(bound),
                          (self.in_channels, self.out_channels, self.kernel_size))
    weight_g = self.param("weight_g", lambda key: _norm(weight_v))
    w_IxOxK = _weight(weight_g, weight_v).astype(x_BxIxT.dtype)
    # The gradient of a strided convolution: dilate the input by the stride, pad by k - 1 - p on
    # each side and correlate with the flipped kernel, in and out swapped.
    w_OxIxK = jnp.flip(jnp.swapaxes(w_IxOxK, 0, 1), axis=-1)
    edge = self.kernel_size - 1 - self.padding
    y = jax.lax.conv_general_dilated(
        x_BxIxT, w_OxIxK, (1,), [(edge, edge)], lhs_dilation=(self.stride,),
        dimension_numbers=("NCH", "OIH", "NCH"), precision=self.precision)
    return y + self.param("bias", _uniform(bound), (self.out_channels,))[None, :, None]


class SnakeBeta(nn.Module):
  """x + 1 / (beta + 1e-9) * sin(alpha x)^2 per channel; alpha and beta stored as logarithms
  when `logscale` (the original's default, the only form Oobleck builds)."""

  channels: int
  logscale: bool = True

  @nn.compact
  def __call__(self, x_BxCxT):
    init = nn.initializers.zeros if self.logscale else nn.initializers.ones
    alpha = self.param("alpha", init, (self.channels,))
    beta = self.param("beta", init, (self.channels,))
    if self.logscale:
      alpha, beta = jnp.exp(alpha), jnp.exp(beta)
    alpha = alpha.astype(x_BxCxT.dtype)[None, :, None]
    beta = beta.astype(x_BxCxT.dtype)[None, :, None]
    return x_BxCxT + (1.0 / (beta + _SNAKE_EPS)) * jnp.square(jnp.sin(x_BxCxT * alpha))


class Elu(nn.Module):
  """The original's `nn.ELU()` (no parameters; a module so it holds a place in a layer list)."""

  @nn.compact
  def __call__(self, x):
    return jax.nn.elu(x)


def activation(use_snake: bool, channels: int) -> nn.Module:
  """The original's `get_activation('snake' if use_snake else 'elu', channels=...)`."""
  return SnakeBeta(channels) if use_snake else Elu()


class ResidualUnit(nn.Module):
  """act, 7-tap dilated conv, act, 1x1 conv, plus the input."""

  channels: int
  dilation: int
  use_snake: bool
  precision: str = "highest"

  def setup(self):
    c = self.channels
    self.layers = [
        activation(self.use_snake, c),
        WNConv1d(c, c, 7, dilation=self.dilation, padding=self.dilation * 3,
                 precision=self.precision),
        activation(self.use_snake, c),
        WNConv1d(c, c, 1, precision=self.precision),
    ]

  def __call__(self, x_BxCxT):
    h = x_BxCxT
    for layer in self.layers:
      h = layer(h)
    return h + x_BxCxT
