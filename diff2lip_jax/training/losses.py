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

from diff2lip_jax.models import syncnet


def gan_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating generator loss `-log σ(D(fake))`, mean over patches: [B, ...] -> []."""
  return jnp.mean(gan_generator_loss_per_clip(fake_logits))


def gan_generator_loss_per_clip(fake_logits: jax.Array) -> jax.Array:
  """`gan_generator_loss` of each clip: [B, ...] patch logits -> [B] (mean over its patches)."""
  return jnp.mean(jax.nn.softplus(-fake_logits).reshape(fake_logits.shape[0], -1), axis=1)


def gan_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """`-log σ(D(real)) - log(1 - σ(D(fake)))`, mean over patches -> []."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def sync_face_input(clips: jax.Array, size: int = 96) -> jax.Array:
  """5-frame clips -> the Wav2Lip expert's face input, as Wav2Lip feeds it: each crop resized to
  `size`² (96 for `SyncNet_color`), then `syncnet.stack_faces` (lower half, BGR, frames stacked
  frame-major along channels).

  Args:
    clips: [B, F, S, S, 3] RGB in [-1, 1].

  Returns:
    [B, size / 2, size, 3F] float32 in [0, 1].
  """
  b, f = clips.shape[:2]
  faces = (clips.astype(jnp.float32) + 1.0) / 2.0
  if clips.shape[2:4] != (size, size):
    faces = jax.image.resize(faces, (b, f, size, size, 3), "bilinear")
  return syncnet.stack_faces(faces)


def sync_loss(embed: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
              clips: jax.Array, mel: jax.Array) -> jax.Array:
  """Wav2Lip's expert sync loss: BCE of the audio/video sync probability against "in sync".

  Args:
    embed: (faces [B, 48, 96, 15], mel [B, 80, 16]) -> (audio_emb, face_emb), each [B, D]
      (a frozen expert, e.g. `models.syncnet.Wav2LipSyncNet`).
    clips: [B, 5, S, S, 3] generated clips in [-1, 1].
    mel: [B, 80, 16] the clip's mel window.

  Returns:
    [] mean over the batch of `-log p`, p = `syncnet.sync_probability` (the cosine similarity).
  """
  return jnp.mean(sync_loss_per_clip(embed, clips, mel))


def sync_loss_per_clip(embed: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
                       clips: jax.Array, mel: jax.Array) -> jax.Array:
  """`sync_loss` of each clip: [B] `-log p` (arguments as `sync_loss`)."""
  p = syncnet.sync_probability(*embed(sync_face_input(clips), mel))
  return syncnet.sync_bce(p, jnp.ones_like(p))
