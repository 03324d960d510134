"""LPIPS (Zhang et al. 2018, v0.1, AlexNet backbone) in Flax, NHWC, for the training loss.

Diff2Lip trains with λ_lpips = 0.25 (author, diff2lip #41) using `lpips_pytorch.LPIPS(net='alex',
version='0.1')` wrapped to return a per-sample value (upstream `guided_diffusion/lpips.py`).

Computation: inputs in [-1, 1] are shifted and scaled per channel (shift [-.030, -.088, -.188],
scale [.458, .448, .450]); torchvision AlexNet `features` give 5 ReLU maps (64, 192, 384, 256,
256 channels); each is unit-normalised along channels; the squared differences are weighted by
the non-negative 1x1 `lin` layers, averaged over space and summed over the 5 layers.

Parameter names follow the `lpips` package's `LPIPS` state_dict (`net.slice{1..5}.{i}`,
`lin{0..4}.model.1`), so `diff2lip_jax.models.torch_io.convert_state_dict` maps them by rule; see
`lpips_state_dict_names`. Weights: `lpips.LPIPS(net='alex').state_dict()` saved with torch.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_SHIFT = jnp.array([-0.030, -0.088, -0.188], jnp.float32)
_SCALE = jnp.array([0.458, 0.448, 0.450], jnp.float32)

# (slice, index in torchvision alexnet.features, out channels, kernel, stride, padding, maxpool before)
_ALEX = (
    (1, 0, 64, 11, 4, 2, False),
    (2, 3, 192, 5, 1, 2, True),
    (3, 6, 384, 3, 1, 1, True),
    (4, 8, 256, 3, 1, 1, False),
    (5, 10, 256, 3, 1, 1, False),
)


def _max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Slice(nn.Module):
  """`net.slice{k}`: one AlexNet conv + ReLU, the conv named by its torchvision index."""
  index: int
  features: int
  kernel: int
  stride: int
  padding: int

  @nn.compact
  def __call__(self, x):
    conv = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                   padding=self.padding, name=str(self.index))
    return nn.relu(conv(x))


class _AlexFeatures(nn.Module):
  """`net`: the 5 ReLU feature maps of torchvision AlexNet `features`."""

  @nn.compact
  def __call__(self, x):
    feats = []
    for k, index, ch, kernel, stride, pad, pool in _ALEX:
      if pool:
        x = _max_pool(x)
      x = _Slice(index, ch, kernel, stride, pad, name=f"slice{k}")(x)
      feats.append(x)
    return feats


class _Conv1x1(nn.Module):
  """`model.1`: the bias-free 1x1 conv of an LPIPS `NetLinLayer` (dropout at index 0)."""

  @nn.compact
  def __call__(self, x):
    return nn.Conv(1, (1, 1), use_bias=False, name="1")(x)


class _Lin(nn.Module):
  @nn.compact
  def __call__(self, x):
    return _Conv1x1(name="model")(x)


class LPIPS(nn.Module):
  """LPIPS distance. `__call__(x, y)`: [N, H, W, 3] in [-1, 1] each -> [N] float32."""

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    net = _AlexFeatures(name="net")
    scale = lambda z: (z.astype(jnp.float32) - _SHIFT) / _SCALE
    unit = lambda f: f / (jnp.sqrt(jnp.sum(f ** 2, axis=-1, keepdims=True)) + 1e-10)
    total = 0.0
    for i, (fx, fy) in enumerate(zip(net(scale(x)), net(scale(y)))):
      w = _Lin(name=f"lin{i}")((unit(fx) - unit(fy)) ** 2)
      total = total + jnp.mean(w[..., 0], axis=(1, 2))
    return total


# Constant buffers of the `lpips` package's ScalingLayer (the shift/scale above).
LPIPS_BUFFERS = ("scaling_layer.shift", "scaling_layer.scale")


def load_lpips_params(path: str | os.PathLike) -> Any:
  """LPIPS params from the `lpips` package's `LPIPS(net='alex', version='0.1')` state_dict.

  Args:
    path: `.pth`/`.pt` (torch) or `.npz` with the state_dict names (`net.slice1.0.weight`, ...,
      `lin0.model.1.weight`, ...). Make it once where torch and `lpips` are installed:
      `torch.save(lpips.LPIPS(net='alex').state_dict(), 'lpips_alex.pth')`.

  Raises:
    diff2lip_jax.models.torch_io.ConversionError: missing/unexpected/mis-shaped tensors.
  """
  from diff2lip_jax.models import torch_io as convert  # pylint: disable=import-outside-toplevel
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  target = jax.eval_shape(LPIPS().init, jax.random.key(0), x, x)["params"]
  return convert.convert_state_dict(convert.load_state_dict(path), target, ignore=LPIPS_BUFFERS)
