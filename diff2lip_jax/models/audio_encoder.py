"""Diff2Lip's convolutional audio encoder (`TFGAudioEncoder` in upstream `unet.py`), NHWC.

A per-frame mel window `[N, 80, 16]` (80 mel bins x 16 mel steps = 0.2 s) becomes a feature
map `[N, 8, 8, 128]`; `TFGModel` pools it into a style vector added to the timestep embedding
("audio_as_style", spec §1.3):

1. a learned constant embedding: `timestep_embedding(0, 32)` through Dense -> SiLU -> Dense,
   fed to every ResBlock (upstream reuses its ResBlocks, which expect an embedding);
2. `input_block`: Conv1d over time (80 mel bins as channels -> 64) -> GroupNorm -> SiLU;
3. the 64 x 16 result is treated as a one-channel image (H = 64 features, W = 16 steps);
   a 3x3 conv to 32 channels, then 4 levels of 2 ResBlocks with channel multipliers
   (1, 2, 3, 4) and a down-ResBlock between levels whose average-pool stride is (2, 1) while
   the feature axis is longer than the time axis and (2, 2) after;
4. a middle ResBlock.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diff2lip_jax.models.layers import GroupNorm32, ResBlock, timestep_embedding

Dtype = Any


class AudioEncoder(nn.Module):
  """`TFGAudioEncoder`: mel windows [N, 80, 16] -> features [N, 8, 8, 128] (released sizes).

  The output has `model_channels * channel_mult[-1]` channels; spatial size depends on
  `init_spatial_dim`, `audio_frames` and `channel_mult` as upstream.
  """

  audio_dim: int = 80
  audio_frames: int = 16
  init_spatial_dim: int = 64
  model_channels: int = 32
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  num_res_blocks: int = 2
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  resblock_updown: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    mc = self.model_channels
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res_kw = dict(dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm, **kw)
    self.time_embed_0 = nn.Dense(mc, param_dtype=self.param_dtype)
    self.time_embed_2 = nn.Dense(mc, param_dtype=self.param_dtype)
    self.input_block_0 = nn.Conv(self.init_spatial_dim, (3,), padding=1, **kw)
    self.input_block_1 = GroupNorm32(out_dtype=self.dtype, param_dtype=self.param_dtype)

    blocks = [[nn.Conv(int(self.channel_mult[0] * mc), (3, 3), padding=1, **kw)]]
    ds = 1
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        blocks.append([ResBlock(int(mult * mc), **res_kw)])
      if level != len(self.channel_mult) - 1:
        if not self.resblock_updown:
          raise NotImplementedError("only resblock_updown=True is implemented (released flags)")
        stride = (2, 1) if self.init_spatial_dim // ds > self.audio_frames else (2, 2)
        blocks.append([ResBlock(int(mult * mc), down=True, down_stride=stride, **res_kw)])
        ds *= 2
    self.encoder_blocks = blocks
    self.middle_block = [ResBlock(int(self.channel_mult[-1] * mc), **res_kw)]

  def __call__(self, mels: jax.Array, deterministic: bool = True) -> jax.Array:
    """Encodes mel windows.

    Args:
      mels: [N, 80, 16] float, mel bins x mel steps (upstream's `indiv_mels` layout).
      deterministic: disables dropout.

    Returns:
      [N, 8, 8, 128] in `dtype` (released sizes): axis 1 is the 64-feature axis pooled to 8,
      axis 2 the 16-step time axis pooled to 8.
    """
    n = mels.shape[0]
    emb = timestep_embedding(jnp.zeros((n,), jnp.int32), self.model_channels)
    emb = self.time_embed_2(nn.silu(self.time_embed_0(emb)))

    h = jnp.swapaxes(mels, 1, 2).astype(self.dtype)          # [N, 16 steps, 80 bins]
    h = nn.silu(self.input_block_1(self.input_block_0(h)))   # [N, 16, 64]
    h = jnp.swapaxes(h, 1, 2)[..., None]                      # [N, 64, 16, 1]
    h = self.encoder_blocks[0][0](h)
    for (block,) in self.encoder_blocks[1:]:
      h = block(h, emb, deterministic)
    return self.middle_block[0](h, emb, deterministic)
