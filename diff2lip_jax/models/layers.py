"""Building blocks of the guided-diffusion UNet that Diff2Lip uses, in Flax linen, NHWC.

Reproduces `guided-diffusion/guided_diffusion/{nn,unet}.py` as modified by Diff2Lip
(soumik-kanad/diff2lip): GroupNorm(32) with eps 1e-5 computed in float32, the `[cos, sin]`
sinusoidal timestep embedding, ResBlocks with an additive (or scale-shift) embedding and
optional nearest-up / average-pool-down resampling, and self-attention with the legacy
"split heads, then q/k/v" channel layout.

Submodule names mirror upstream's state_dict names with the dots of numbered children written
as underscores (`in_layers.2` -> `in_layers_2`), so that `diff2lip_jax.convert` maps the two by a
rule rather than a table.

Mixed precision: convolutions and dense layers compute in `dtype` (e.g. bfloat16) with
`param_dtype` parameters; normalisation statistics and the attention softmax are float32.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

GROUPNORM_GROUPS = 32
GROUPNORM_EPS = 1e-5  # PyTorch's default; Flax's is 1e-6.


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps, `[cos, sin]` order.

  Source: guided-diffusion `nn.timestep_embedding`.

  Args:
    timesteps: [N] int or float timesteps on the 1000-step grid.
    dim: embedding size (even).
    max_period: the lowest frequency is 1 / max_period.

  Returns:
    [N, dim] float32: `cos(t * f_i)` for i < dim/2, then `sin(t * f_i)`,
    `f_i = exp(-ln(max_period) * i / (dim/2))`.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class GroupNorm32(nn.GroupNorm):
  """GroupNorm with 32 groups and eps 1e-5, statistics in float32, output cast to `out_dtype`.

  Input `[N, ..., C]`; the groups split the last axis. Parameters `scale`, `bias` [C].
  Source: guided-diffusion `nn.GroupNorm32` (`super().forward(x.float()).type(x.dtype)`).
  """

  num_groups: int = GROUPNORM_GROUPS
  epsilon: float = GROUPNORM_EPS
  dtype: Dtype = jnp.float32
  out_dtype: Dtype = jnp.float32

  def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
    return super().__call__(x.astype(jnp.float32), *args, **kwargs).astype(self.out_dtype)


def avg_pool(x: jax.Array, stride: Sequence[int]) -> jax.Array:
  """Average pooling with window = stride, no padding: [N, H, W, C] -> [N, H/sh, W/sw, C]."""
  return nn.avg_pool(x, tuple(stride), strides=tuple(stride), padding="VALID")


def upsample_nearest(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling: [N, H, W, C] -> [N, 2H, 2W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
  """guided-diffusion ResBlock (`unet.ResBlock`), NHWC.

  `h = conv(SiLU(GN(x)))` (resampling of both `h` and `x` between the SiLU and the conv when
  `up`/`down`), the embedding projected by `SiLU -> Dense` is added to `h` (or applied as
  `GN(h) * (1 + scale) + shift` with `use_scale_shift_norm`), then
  `h = conv(dropout(SiLU(GN(h))))` and the output is `skip(x) + h`, where `skip` is a 1x1 conv
  only when the channel count changes.

  Inputs: `x` [N, H, W, C_in] and `emb` [N, E]. Output [N, H', W', out_channels].
  """

  out_channels: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  up: bool = False
  down: bool = False
  down_stride: Sequence[int] = (2, 2)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, deterministic: bool = True) -> jax.Array:
    conv = lambda features, kernel, name: nn.Conv(
        features, (kernel, kernel), padding=kernel // 2, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    norm = lambda name: GroupNorm32(out_dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    h = nn.silu(norm("in_layers_0")(x))
    if self.up:
      h, x = upsample_nearest(h), upsample_nearest(x)
    elif self.down:
      h, x = avg_pool(h, self.down_stride), avg_pool(x, self.down_stride)
    h = conv(self.out_channels, 3, "in_layers_2")(h)

    emb_out = nn.Dense(
        2 * self.out_channels if self.use_scale_shift_norm else self.out_channels,
        dtype=self.dtype, param_dtype=self.param_dtype, name="emb_layers_1")(nn.silu(emb))
    emb_out = emb_out[:, None, None, :].astype(h.dtype)
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = norm("out_layers_0")(h) * (1 + scale) + shift
    else:
      h = norm("out_layers_0")(h + emb_out)
    h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=deterministic)
    h = conv(self.out_channels, 3, "out_layers_3")(h)

    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, "skip_connection")(x)
    return x.astype(h.dtype) + h


class AttentionBlock(nn.Module):
  """Spatial self-attention (`unet.AttentionBlock` with `QKVAttentionLegacy`), NHWC.

  `qkv = Dense(3C)(GN(x))`; the 3C channels are laid out head-major: head `i` owns channels
  `[i*3d, (i+1)*3d)`, split into q, k, v of `d = C / heads` each (the legacy order). Attention
  uses scale `1/sqrt(d)` (upstream scales q and k by `d**-1/4` each), softmax in float32, and
  `jax.nn.dot_product_attention` with the implementation named by the environment variable
  `DIFF2LIP_ATTENTION` at trace time: unset = JAX's default (the XLA implementation in jax
  0.10/0.11), "cudnn" = cuDNN fused (flash) attention (GPU, bf16/fp16 only), "xla". Output
  `x + Dense(C)(attention)`.

  Input/output: [N, H, W, C].
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    head_dim = c // self.num_heads
    tokens = x.reshape(n, h * w, c)
    normed = GroupNorm32(out_dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(tokens)
    qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(normed)
    qkv = qkv.reshape(n, h * w, self.num_heads, 3, head_dim)
    q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    a = jax.nn.dot_product_attention(  # [N, T, heads, d]
        q, k, v, implementation=os.environ.get("DIFF2LIP_ATTENTION") or None)
    a = a.reshape(n, h * w, c)
    out = nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="proj_out")(a)
    return (tokens.astype(out.dtype) + out).reshape(n, h, w, c)
