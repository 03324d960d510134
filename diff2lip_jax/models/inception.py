"""The FID InceptionV3 of pytorch-fid in Flax linen (NHWC), pool3 features.

Reproduces `mseitzer/pytorch-fid` `src/pytorch_fid/inception.py` (`InceptionV3` wrapper with
the default output block 3 and `fid_inception_v3()`), i.e. the TensorFlow FID network
`inception-2015-12-05` ported to PyTorch as `pt_inception-2015-12-05-*.pth`:

* input `[N, H, W, 3]` RGB in [0, 1]; bilinearly resized to 299x299 (PyTorch `F.interpolate`,
  `align_corners=False`, no antialiasing) and mapped to [-1, 1] by `2x - 1`;
* torchvision's InceptionV3 stem and Mixed_5b..Mixed_7c, every conv a `BasicConv2d`
  (conv without bias -> BatchNorm eps 0.001 -> ReLU), with the FID patches: the pooling
  branch of the A/C/E blocks averages without counting padded zeros (TF semantics), and the
  last E block (Mixed_7c) max-pools in that branch;
* global average pool -> `[N, 2048]` "pool3" features (the classifier `fc` is not used).

Submodule names are the PyTorch attribute names (`Mixed_6b/branch7x7dbl_3/conv`), so
`inception_torch_name` maps a Flax path to a state_dict name by joining with dots.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diff2lip_jax.models import torch_io as convert
from diff2lip_jax.models import syncnet

Dtype = Any
Precision = Any

FID_SIZE = 299
FID_DIM = 2048
BN_EPS = 1e-3  # torchvision BasicConv2d.


class BasicConv2d(nn.Module):
  """torchvision `BasicConv2d`: conv (no bias) `conv` -> BatchNorm(eps 1e-3) `bn` -> ReLU."""

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Sequence[int] = (0, 0)
  dtype: Dtype = jnp.float32
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, tuple(self.kernel_size), tuple(self.strides),
                padding=[(p, p) for p in self.padding], use_bias=False, dtype=self.dtype,
                precision=self.precision, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=jnp.float32, name="bn")(x)
    return nn.relu(x).astype(self.dtype)


def _avg3_no_pad_count(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool, padding 1, padded zeros not counted (TF / FID patch)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2))


class _Block(nn.Module):
  """Base of the Mixed blocks: `conv(name, features, kernel, strides, padding)` helper."""

  dtype: Dtype = jnp.float32
  precision: Precision = jax.lax.Precision.HIGHEST

  def conv(self, name: str, features: int, kernel: Sequence[int], strides=(1, 1),
           padding=(0, 0)) -> BasicConv2d:
    return BasicConv2d(features, kernel, strides, padding, dtype=self.dtype,
                       precision=self.precision, name=name)


class InceptionA(_Block):
  """Mixed_5b/5c/5d (torchvision InceptionA, FID pooling): 64 + 64 + 96 + pool_features ch."""

  pool_features: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.conv("branch1x1", 64, (1, 1))(x)
    b5 = self.conv("branch5x5_1", 48, (1, 1))(x)
    b5 = self.conv("branch5x5_2", 64, (5, 5), padding=(2, 2))(b5)
    b3 = self.conv("branch3x3dbl_1", 64, (1, 1))(x)
    b3 = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(b3)
    b3 = self.conv("branch3x3dbl_3", 96, (3, 3), padding=(1, 1))(b3)
    bp = self.conv("branch_pool", self.pool_features, (1, 1))(_avg3_no_pad_count(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """Mixed_6a (grid reduction 35 -> 17): 384 + 96 + C_in channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv("branch3x3", 384, (3, 3), strides=(2, 2))(x)
    bd = self.conv("branch3x3dbl_1", 64, (1, 1))(x)
    bd = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(bd)
    bd = self.conv("branch3x3dbl_3", 96, (3, 3), strides=(2, 2))(bd)
    return jnp.concatenate([b3, bd, _max3_s2(x)], axis=-1)


class InceptionC(_Block):
  """Mixed_6b..6e (factorised 7x7, FID pooling): 4 x 192 channels."""

  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = self.conv("branch1x1", 192, (1, 1))(x)
    b7 = self.conv("branch7x7_1", c7, (1, 1))(x)
    b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
    bd = self.conv("branch7x7dbl_1", c7, (1, 1))(x)
    bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
    bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
    bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
    bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
    bp = self.conv("branch_pool", 192, (1, 1))(_avg3_no_pad_count(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """Mixed_7a (grid reduction 17 -> 8): 320 + 192 + C_in channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv("branch3x3_1", 192, (1, 1))(x)
    b3 = self.conv("branch3x3_2", 320, (3, 3), strides=(2, 2))(b3)
    b7 = self.conv("branch7x7x3_1", 192, (1, 1))(x)
    b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
    b7 = self.conv("branch7x7x3_4", 192, (3, 3), strides=(2, 2))(b7)
    return jnp.concatenate([b3, b7, _max3_s2(x)], axis=-1)


class InceptionE(_Block):
  """Mixed_7b / 7c (expanded filter bank): 320 + 768 + 768 + 192 = 2048 channels.

  `max_pool_branch`: the FID network's Mixed_7c max-pools in the pooling branch (pytorch-fid
  `FIDInceptionE_2`); Mixed_7b averages without counting padding (`FIDInceptionE_1`).
  """

  max_pool_branch: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.conv("branch1x1", 320, (1, 1))(x)
    b3 = self.conv("branch3x3_1", 384, (1, 1))(x)
    b3 = jnp.concatenate([self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                          self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3)], axis=-1)
    bd = self.conv("branch3x3dbl_1", 448, (1, 1))(x)
    bd = self.conv("branch3x3dbl_2", 384, (3, 3), padding=(1, 1))(bd)
    bd = jnp.concatenate([self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                          self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd)], axis=-1)
    if self.max_pool_branch:
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg3_no_pad_count(x)
    bp = self.conv("branch_pool", 192, (1, 1))(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_for_inception(images: jax.Array, size: int = FID_SIZE) -> jax.Array:
  """[N, H, W, C] -> [N, size, size, C] float32, bilinear with half-pixel centres and no
  antialiasing (PyTorch `F.interpolate(mode="bilinear", align_corners=False)`)."""
  images = images.astype(jnp.float32)
  if images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear",
                          antialias=False)


class FIDInceptionV3(nn.Module):
  """pytorch-fid `InceptionV3(output_blocks=[3])` with the FID weights: images -> pool3.

  `__call__(images) -> [N, 2048] float32`, images `[N, H, W, 3]` RGB float in [0, 1] (any
  size when `resize_input`, which is pytorch-fid's default).
  """

  resize_input: bool = True
  normalize_input: bool = True
  dtype: Dtype = jnp.float32
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    x = resize_for_inception(images) if self.resize_input else images.astype(jnp.float32)
    if self.normalize_input:
      x = 2.0 * x - 1.0
    x = x.astype(self.dtype)
    # Block 0 (to maxpool1) and block 1 (to maxpool2).
    x = BasicConv2d(32, (3, 3), (2, 2), name="Conv2d_1a_3x3", **kw)(x)            # 149
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3", **kw)(x)                     # 147
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3", **kw)(x)
    x = _max3_s2(x)                                                                # 73
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1", **kw)(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3", **kw)(x)                    # 71
    x = _max3_s2(x)                                                                # 35
    # Block 2 (to the aux classifier) and block 3 (to the final average pool).
    x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x)                     # 256
    x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x)                     # 288
    x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x)                     # 288
    x = InceptionB(name="Mixed_6a", **kw)(x)                                       # 17, 768
    x = InceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x)
    x = InceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x)
    x = InceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x)
    x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x)
    x = InceptionD(name="Mixed_7a", **kw)(x)                                       # 8, 1280
    x = InceptionE(name="Mixed_7b", **kw)(x)                                       # 2048
    x = InceptionE(max_pool_branch=True, name="Mixed_7c", **kw)(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def inception_torch_name(collection: str, path: tuple[str, ...]) -> str:
  """Flax path -> pytorch-fid state_dict name: `('Mixed_5b', 'branch1x1', 'conv', 'kernel')`
  -> `Mixed_5b.branch1x1.conv.weight`; `bn` `mean`/`var` -> `running_mean`/`running_var`.
  (No `_N` rule here: the PyTorch attribute names themselves contain `_1a`, `_3`.)"""
  leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean",
          "var": "running_var"}.get(path[-1], path[-1])
  return ".".join((*path[:-1], leaf))


def init_fid_inception(model: FIDInceptionV3, rng: jax.Array) -> dict:
  """Random variables (`params`, `batch_stats`) of `model`."""
  return dict(jax.jit(model.init)(rng, jnp.zeros((1, FID_SIZE, FID_SIZE, 3), jnp.float32)))


def fid_inception_variables(state_dict: Mapping[str, Any],
                            model: FIDInceptionV3 | None = None) -> dict:
  """Converts a pytorch-fid `pt_inception-2015-12-05` state_dict (the classifier `fc.*` is
  ignored) to `FIDInceptionV3` variables (float32 numpy)."""
  model = model or FIDInceptionV3()
  abstract = jax.eval_shape(lambda: init_fid_inception(model, jax.random.key(0)))
  return syncnet.convert_torch_variables(state_dict, abstract, name_fn=inception_torch_name,
                                         ignore=lambda name: name.startswith("fc."))


def load_fid_inception(path: str | os.PathLike, dtype: Dtype = jnp.float32,
                       ) -> tuple[FIDInceptionV3, dict]:
  """(model, variables) from pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (needs
  torch) or an `.npz` of that state_dict. Raises `convert.ConversionError` on a missing file
  or mismatched weights."""
  model = FIDInceptionV3(dtype=dtype)
  return model, fid_inception_variables(convert.load_state_dict(path), model)
