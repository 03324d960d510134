"""Diff2Lip's training objective (eq. 9 of the paper; weights from the author, diff2lip #41).

  L = λ_simple (ε-MSE + VLB, masked)  +  λ_sync L_sync(x̂_0)  +  λ_lpips LPIPS(x̂_0, x_0)
      + λ_gan L_GAN(D(x̂_0 clip))

with λ_simple 1, λ_sync 0.1, λ_lpips 0.25, λ_gan 0.5. x̂_0 is the one-step estimate from the
predicted ε, clipped to [-1, 1] and composited with the ground-truth upper half. Unknown in
upstream (spec §3.1) and chosen here: x̂_0 at every sampled t; LPIPS on the full 128² crop; the
GAN on full crops, non-saturating BCE (pix2pix's "vanilla" objective).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def gan_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating generator loss `-log σ(D(fake))`, mean over patches: [B, ...] -> []."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def gan_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """`-log σ(D(real)) - log(1 - σ(D(fake)))`, mean over patches -> []."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def sync_face_input(clips: jax.Array, size: tuple[int, int] = (48, 96)) -> jax.Array:
  """Lower halves of 5-frame clips in the Wav2Lip expert's input layout.

  Args:
    clips: [B, F, S, S, 3] RGB in [-1, 1].
    size: (H, W) of the expert's lower half (Wav2Lip `SyncNet_color`: 48 x 96 of a 96² face).

  Returns:
    [B, H, W, 3F] float32 in [0, 1], BGR, frames stacked frame-major along channels (Wav2Lip
    concatenates the T frames along channels).
  """
  b, f, s, _, _ = clips.shape
  lower = clips[:, :, s // 2:]
  lower = jax.image.resize(lower, (b, f, *size, 3), "bilinear")
  lower = (lower[..., ::-1] + 1.0) / 2.0
  return jnp.moveaxis(lower, 1, 3).reshape(b, *size, 3 * f)


def sync_loss(embed: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
              clips: jax.Array, mel: jax.Array) -> jax.Array:
  """Wav2Lip's expert sync loss: BCE of the audio/video cosine similarity against "in sync".

  Args:
    embed: (faces [B, 48, 96, 15], mel [B, 80, 16]) -> (audio_emb, face_emb), each [B, D]
      L2-normalised (a frozen expert, e.g. `models.syncnet`).
    clips: [B, 5, S, S, 3] generated clips in [-1, 1].
    mel: [B, 80, 16] the clip's mel window.

  Returns:
    [] mean over the batch of `-log(cos(a, v))` (cosine clipped to [1e-7, 1]).
  """
  a, v = embed(sync_face_input(clips), mel)
  cos = jnp.sum(a * v, axis=-1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(v, axis=-1) + 1e-8)
  return jnp.mean(-jnp.log(jnp.clip(cos, 1e-7, 1.0)))
