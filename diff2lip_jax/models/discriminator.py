"""Sequence PatchGAN discriminator for Diff2Lip's adversarial loss (λ_gan = 0.5).

The author (diff2lip #27, #11): a PatchGAN discriminator [pix2pix] trained jointly from scratch,
fed all 5 frames of a clip concatenated along channels (15 channels). Layout of pix2pix's
`NLayerDiscriminator` (n_layers=3, ndf=64): Conv4x4/2 -> LReLU(0.2), two Conv4x4/2 -> norm ->
LReLU, Conv4x4/1 -> norm -> LReLU, Conv4x4/1 -> 1 logit per patch (14x14 on 128x128 input).

Deviation (documented): BatchNorm is replaced by GroupNorm(32) so the discriminator has no
running statistics (stateless under sharding and gradient accumulation); upstream's exact
norm is unknown (spec §3.1).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class PatchDiscriminator(nn.Module):
  """clips [B, F, H, W, 3] in [-1, 1] -> patch logits [B, H', W'] float32."""

  ndf: int = 64
  n_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips: jax.Array) -> jax.Array:
    b, f, h, w, c = clips.shape
    x = jnp.moveaxis(clips, 1, 3).reshape(b, h, w, f * c).astype(self.dtype)
    conv = lambda ch, stride: nn.Conv(ch, (4, 4), strides=stride, padding=1, dtype=self.dtype)
    x = nn.leaky_relu(conv(self.ndf, 2)(x), 0.2)
    for i in range(1, self.n_layers + 1):
      ch = self.ndf * min(2 ** i, 8)
      x = conv(ch, 2 if i < self.n_layers else 1)(x)
      x = nn.leaky_relu(nn.GroupNorm(32, dtype=jnp.float32)(x.astype(jnp.float32)), 0.2)
      x = x.astype(self.dtype)
    return conv(1, 1)(x)[..., 0].astype(jnp.float32)
