"""LSE-D / LSE-C of a video and its audio with syncnet_python's SyncNet (spec §6.1).

What syncnet_python's `SyncNetInstance.evaluate` does (in Wav2Lip's `evaluation/scores_LSE`
variant, which resizes every frame to 224x224), reproduced on arrays:

1. frames: BGR uint8 (cv2), resized to 224x224 (cv2 bilinear grid: `crops.resize_bilinear`),
   as float in [0, 255]; upstream reads them back from JPEGs that ffmpeg extracted, here they
   are used as decoded (no JPEG round trip);
2. audio: 16 kHz mono 16-bit PCM (ffmpeg `-ac 1 -ar 16000 -acodec pcm_s16le`), MFCC with
   `python_speech_features.mfcc(signal, 16000)` defaults on the int16-scaled samples
   (25 ms windows every 10 ms, 13 cepstra, 26 filters, nfft 512, pre-emphasis 0.97,
   lifter 22, log-energy as c0) -> [13, T], i.e. 4 MFCC steps per 25-fps video frame;
3. `min_length = min(#frames, floor(#samples / 640))`; windows i = 0 .. min_length - 6
   (upstream's `range(0, min_length - 5)`): video frames i..i+4 and MFCC steps 4i..4i+19;
4. lip and audio features of every window (`forward_lip`, `forward_aud`), then the offset
   search of `metrics.sync_distances` / `metrics.sync_scores` (vshift 15).

The video is assumed to be at 25 fps (VoxCeleb2, LRW and LRS are).
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import python_speech_features
from absl import logging

from diff2lip_jax.inference import crops
from diff2lip_jax import sharding
from diff2lip_jax.evaluation import metrics
from diff2lip_jax.models import syncnet

RANDOM = "random"
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640      # 16000 / 25.
MFCC_PER_FRAME = 4           # 100 Hz MFCC / 25 fps.
WINDOW_FRAMES = 5
WINDOW_MFCC = 20
FRAME_SIZE = 224


def mfcc(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """[S] float waveform in [-1, 1] -> [13, T] float32 MFCC as syncnet_python computes it
  (on 16-bit integer sample values, as `scipy.io.wavfile.read` returns them)."""
  pcm = np.clip(np.round(np.asarray(wav, np.float64) * 32768.0), -32768, 32767).astype(np.int16)
  return np.asarray(python_speech_features.mfcc(pcm, sample_rate), np.float32).T


def prepare_frames(frames: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
  """[N, H, W, 3] uint8 RGB -> [N, size, size, 3] uint8 BGR (cv2-style bilinear resize)."""
  frames = np.asarray(frames)
  out = np.empty((len(frames), size, size, 3), np.uint8)
  for i, f in enumerate(frames):
    out[i] = crops.resize_bilinear(f, (size, size))[..., ::-1]
  return out


def num_windows(num_frames: int, num_samples: int) -> int:
  """Number of 5-frame windows syncnet_python scores: min(#frames, #samples // 640) - 5."""
  return max(0, min(num_frames, num_samples // SAMPLES_PER_FRAME) - WINDOW_FRAMES)


def load_syncnet(path: str | os.PathLike) -> tuple[syncnet.SyncNetV2, dict]:
  """(model, variables) from `syncnet_v2.model`, or random weights for `"random"` (a
  pipeline check only: LSE values are then meaningless, and a warning says so)."""
  if str(path) == RANDOM:
    logging.warning("RANDOM WEIGHTS for SyncNet (LSE-C/LSE-D): values are meaningless. Pass "
                    "syncnet_python's syncnet_v2.model for real scores.")
    model = syncnet.SyncNetV2()
    abstract = jax.eval_shape(lambda: syncnet.init_syncnet_v2(model, jax.random.key(0)))
    return model, syncnet.random_variables(abstract)
  return syncnet.load_syncnet_v2(path)


class SyncScorer:
  """Callable: (frames [N, H, W, 3] uint8 RGB at 25 fps, wav [S] float32 16 kHz) ->
  {"lse_d", "lse_c", "av_offset", "lse_windows"}, or None when the clip has fewer than 6
  frames' worth of video and audio."""

  def __init__(self, weights: str | os.PathLike = RANDOM, batch_size: int = 20,
               vshift: int = metrics.LSE_VSHIFT, mesh: Optional[jax.sharding.Mesh] = None):
    self.model, variables = load_syncnet(weights)
    self.mesh = mesh or sharding.local_mesh()
    self.variables = sharding.replicate(variables, self.mesh)
    self.batch_size = sharding.round_up(batch_size, self.mesh.size)
    self.vshift = vshift
    model = self.model
    self._lips = jax.jit(lambda v, x: model.apply(v, x.astype(jnp.float32),
                                                  method=syncnet.SyncNetV2.embed_lips))
    self._audio = jax.jit(lambda v, x: model.apply(v, x, method=syncnet.SyncNetV2.embed_audio))

  def features(self, frames_bgr: np.ndarray, cepstra: np.ndarray,
               count: int) -> tuple[np.ndarray, np.ndarray]:
    """Lip and audio features [count, 1024] of windows 0..count-1.

    Args:
      frames_bgr: [N, 224, 224, 3] uint8 BGR (`prepare_frames`).
      cepstra: [13, T] MFCC (`mfcc`).
      count: number of windows (`num_windows`).
    """
    lips, auds = [], []
    b = self.batch_size
    for start in range(0, count, b):
      idx = np.arange(start, min(start + b, count))
      vid = np.stack([frames_bgr[i:i + WINDOW_FRAMES] for i in idx])           # [n, 5, 224, 224, 3]
      aud = np.stack([cepstra[:, MFCC_PER_FRAME * i:MFCC_PER_FRAME * i + WINDOW_MFCC]
                      for i in idx])[..., None]                                 # [n, 13, 20, 1]
      lips.append(np.asarray(self._lips(self.variables, sharding.shard_batch(
          sharding.pad_batch(vid, b), self.mesh)))[:len(idx)])
      auds.append(np.asarray(self._audio(self.variables, sharding.shard_batch(
          sharding.pad_batch(aud.astype(np.float32), b), self.mesh)))[:len(idx)])
    return np.concatenate(lips), np.concatenate(auds)

  def __call__(self, frames: np.ndarray, wav: np.ndarray) -> Optional[dict]:
    count = num_windows(len(frames), len(wav))
    if count < 1:
      return None
    used = count + WINDOW_FRAMES - 1
    v, a = self.features(prepare_frames(frames[:used]), mfcc(wav), count)
    scores = metrics.sync_scores(metrics.sync_distances(v, a, self.vshift), self.vshift)
    return {**scores, "lse_windows": count}
