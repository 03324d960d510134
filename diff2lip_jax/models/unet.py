"""Diff2Lip's TFG UNet (`TFGModel` in upstream `guided-diffusion/guided_diffusion/unet.py`), NHWC.

A guided-diffusion UNet applied to every frame independently. Per frame:

  x = x_t * mask + (1 - mask) * cond_img             # upper half: clean ground truth
  x = concat([x, cond_img, ref_img], channels)       # 3 + 3 + 3 * nrefer channels
  emb = MLP(timestep_embedding(t)) + audio_style(indiv_mels)
  out = UNet(x, emb)                                 # [eps (3), variance value v (3)]

(spec §1.2-1.3). Parameter names follow upstream's state_dict (see `layers.py`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diff2lip_jax.models.audio_encoder import AudioEncoder
from diff2lip_jax.models.layers import AttentionBlock, GroupNorm32, ResBlock, timestep_embedding

Dtype = Any


class TFGModel(nn.Module):
  """The Diff2Lip denoiser. Defaults are the released checkpoint's architecture (101.7 M params).

  Attributes:
    image_size: side of the square crops it was built for (sets no weights; upstream's
      channel multipliers depend on it).
    model_channels: base width (`--num_channels`).
    out_channels: 6 with learned variance (`--learn_sigma`), else 3.
    num_res_blocks: ResBlocks per level.
    attention_ds: downsample factors with attention (`image_size // r` for each r in
      `--attention_resolutions`): (4, 8, 16) = 32, 16 and 8 pixels at 128.
    channel_mult: width multipliers per level; upstream hard-codes (1, 1, 2, 3, 4) at 128.
    num_heads, num_head_channels, num_heads_upsample: as upstream; a `num_head_channels`
      other than -1 fixes the head width and overrides the head counts.
    nrefer: reference frames per frame (`use_ref`); 0 disables the reference input.
    audio: keyword arguments of `AudioEncoder` (upstream `audio_encoder_kwargs`) as a tuple of
      (name, value) pairs, so that the module stays hashable (a dict works but is unhashable).
    dtype: computation dtype of convolutions and attention (bfloat16 for speed); the timestep
      MLP, normalisation statistics, softmax and the output head stay float32.
    param_dtype: parameter dtype.
  """

  image_size: int = 128
  model_channels: int = 128
  out_channels: int = 6
  num_res_blocks: int = 2
  attention_ds: Sequence[int] = (4, 8, 16)
  channel_mult: Sequence[int] = (1, 1, 2, 3, 4)
  num_heads: int = 4
  num_head_channels: int = 64
  num_heads_upsample: int = -1
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  resblock_updown: bool = True
  nrefer: int = 1
  audio: Optional[Any] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _heads(self, channels: int, num_heads: int) -> int:
    if self.num_head_channels == -1:
      return num_heads
    if channels % self.num_head_channels:
      raise ValueError(f"{channels} channels not divisible by num_head_channels "
                       f"{self.num_head_channels}")
    return channels // self.num_head_channels

  def setup(self):
    if not self.resblock_updown:
      raise NotImplementedError("only resblock_updown=True is implemented (released flags)")
    mc = self.model_channels
    emb_dim = 4 * mc
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res_kw = dict(dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm, **kw)
    heads_up = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample

    self.time_embed_0 = nn.Dense(emb_dim, param_dtype=self.param_dtype)
    self.time_embed_2 = nn.Dense(emb_dim, param_dtype=self.param_dtype)

    ch = int(self.channel_mult[0] * mc)
    input_blocks = [[nn.Conv(ch, (3, 3), padding=1, **kw)]]
    skip_chans = [ch]
    ds = 1
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        ch = int(mult * mc)
        layers = [ResBlock(ch, **res_kw)]
        if ds in self.attention_ds:
          layers.append(AttentionBlock(self._heads(ch, self.num_heads), **kw))
        input_blocks.append(layers)
        skip_chans.append(ch)
      if level != len(self.channel_mult) - 1:
        input_blocks.append([ResBlock(ch, down=True, **res_kw)])
        skip_chans.append(ch)
        ds *= 2
    self.input_blocks = input_blocks

    self.middle_block = [ResBlock(ch, **res_kw),
                         AttentionBlock(self._heads(ch, self.num_heads), **kw),
                         ResBlock(ch, **res_kw)]

    output_blocks = []
    for level, mult in list(enumerate(self.channel_mult))[::-1]:
      for i in range(self.num_res_blocks + 1):
        skip_chans.pop()
        ch = int(mult * mc)
        layers = [ResBlock(ch, **res_kw)]
        if ds in self.attention_ds:
          layers.append(AttentionBlock(self._heads(ch, heads_up), **kw))
        if level and i == self.num_res_blocks:
          layers.append(ResBlock(ch, up=True, **res_kw))
          ds //= 2
        output_blocks.append(layers)
    self.output_blocks = output_blocks

    self.out_0 = GroupNorm32(param_dtype=self.param_dtype)
    self.out_2 = nn.Conv(self.out_channels, (3, 3), padding=1, param_dtype=self.param_dtype)

    self.audio_encoder = AudioEncoder(dropout=self.dropout,
                                      use_scale_shift_norm=self.use_scale_shift_norm,
                                      resblock_updown=self.resblock_updown,
                                      **kw, **dict(self.audio or ()))
    self.audio_encoder_to_style_0 = GroupNorm32(out_dtype=self.dtype, param_dtype=self.param_dtype)
    self.audio_encoder_to_style_3 = nn.Conv(emb_dim, (1, 1), **kw)

  def audio_style(self, indiv_mels: jax.Array, deterministic: bool = True) -> jax.Array:
    """Audio style vector added to the timestep embedding.

    Args:
      indiv_mels: [N, 80, 16] per-frame mel windows in [-4, 4].

    Returns:
      [N, 4 * model_channels] float32. It does not depend on the timestep: samplers compute it
      once per batch.
    """
    a = self.audio_encoder(indiv_mels, deterministic)
    a = nn.silu(self.audio_encoder_to_style_0(a))
    a = jnp.mean(a.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    return self.audio_encoder_to_style_3(a)[:, 0, 0, :].astype(jnp.float32)

  def _first_conv(self, x: jax.Array, channels: slice, bias: bool) -> jax.Array:
    """The first conv (`input_blocks_0_0`) restricted to input `channels`, float32 output.

    The first conv sees `concat([x, cond_img, ref_img])` and is linear (zero padding
    included), so it splits into a part over the 3 x_t-dependent channels and a part over the
    constant conditioning channels; both read the unchanged `[3, 3, 3 + 3 + 3 * nrefer, C]`
    kernel, so parameter names and shapes (hence checkpoints and the converter) are unchanged.
    """
    p = self.variables["params"]["input_blocks_0_0"]
    kernel = jnp.asarray(p["kernel"])[:, :, channels, :].astype(self.dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel, (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
    return y + jnp.asarray(p["bias"], jnp.float32) if bias else y

  def cond_conv(self, cond_img: jax.Array, ref_img: Optional[jax.Array] = None) -> jax.Array:
    """The first conv's response to the constant conditioning channels, bias included.

    `__call__(..., cond_conv=self.cond_conv(cond_img, ref_img))` equals `__call__(...)`; a
    sampler computes it once per batch instead of once per step (it does not depend on x_t or
    t). It saves 2/3 of the first conv (0.14 % of the model's FLOPs at the released
    size) and the 9-channel concatenation per step.

    Args:
      cond_img: [N, H, W, 3] as in `__call__`.
      ref_img: [N, H, W, 3 * nrefer]; required when nrefer > 0.

    Returns:
      [N, H, W, model_channels * channel_mult[0]] float32.

    Raises:
      ValueError: `ref_img` missing although nrefer > 0.
    """
    if self.nrefer and ref_img is None:
      raise ValueError(f"ref_img is required (nrefer={self.nrefer})")
    parts = [cond_img] + ([ref_img] if self.nrefer else [])
    return self._first_conv(jnp.concatenate(parts, axis=-1), slice(3, None), bias=True)

  def __call__(self, x_t: jax.Array, timesteps: jax.Array, cond_img: jax.Array,
               mask: jax.Array, ref_img: Optional[jax.Array] = None,
               indiv_mels: Optional[jax.Array] = None, *,
               audio_style: Optional[jax.Array] = None,
               cond_conv: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    """Predicts noise and variance values for a batch of frames.

    Args:
      x_t: [N, H, W, 3] noisy frames in (about) [-1, 1].
      timesteps: [N] int, on the original 1000-step grid.
      cond_img: [N, H, W, 3] ground-truth frame whose masked region holds noise, in [-1, 1].
      mask: [N, H, W, 1] float, 1 where the face is regenerated (lower half).
      ref_img: [N, H, W, 3 * nrefer] reference frame(s) in [-1, 1]; required when nrefer > 0.
      indiv_mels: [N, 80, 16] mel windows; ignored when `audio_style` is given.
      audio_style: [N, 4 * model_channels] precomputed `self.audio_style(indiv_mels)`.
      cond_conv: precomputed `self.cond_conv(cond_img, ref_img)`; then `cond_img` only fills
        the unmasked rows of x_t and `ref_img` is ignored.
      deterministic: disables dropout.

    Returns:
      [N, H, W, out_channels] float32: eps (3 channels), then the variance interpolation
      values v in [-1, 1] (3 channels) when learned.
    """
    x = x_t * mask + (1.0 - mask) * cond_img
    if cond_conv is None:
      parts = [x, cond_img] + ([ref_img] if self.nrefer else [])
      h = jnp.concatenate(parts, axis=-1).astype(self.dtype)
    else:
      h = (self._first_conv(x, slice(0, 3), bias=False) + cond_conv).astype(self.dtype)

    emb = timestep_embedding(timesteps, self.model_channels)
    emb = self.time_embed_2(nn.silu(self.time_embed_0(emb)))
    if audio_style is None:
      audio_style = self.audio_style(indiv_mels, deterministic)
    emb = emb + audio_style

    skips = []
    for i, layers in enumerate(self.input_blocks):
      if i or cond_conv is None:
        h = self._apply(layers, h, emb, deterministic)
      skips.append(h)
    h = self._apply(self.middle_block, h, emb, deterministic)
    for layers in self.output_blocks:
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = self._apply(layers, h, emb, deterministic)
    h = nn.silu(self.out_0(h.astype(jnp.float32)))
    return self.out_2(h)

  @staticmethod
  def _apply(layers, h, emb, deterministic):
    for layer in layers:
      h = layer(h, emb, deterministic) if isinstance(layer, ResBlock) else layer(h)
    return h
