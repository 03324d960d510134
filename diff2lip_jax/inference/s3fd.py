"""Upstream's S3FD face detector on the accelerator: box decoding, NMS and `S3FDDetector`.

The network and its weights are `diff2lip_jax.models.s3fd`. Upstream (Wav2Lip's
`face_detection/`, spec §4.2): softmax and anchor decoding (`detect.py::batch_detect`,
`bbox.py::decode`), greedy NMS at IoU 0.3 and scores > 0.5 (`sfd_detector.py`), the first
(highest-scoring) box per frame, clipped at 0 and truncated to int (`api.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diff2lip_jax.models.s3fd import BGR_MEAN, S3FD, STRIDES, load_s3fd_params

__all__ = ["S3FDDetector", "preprocess", "decode_outputs", "nms", "decode_detections"]

VARIANCES = (0.1, 0.2)  # centre, size (bbox.py::decode).
SCORE_THRESHOLD = 0.5  # sfd_detector.py: keep boxes scoring > 0.5.
NMS_THRESHOLD = 0.3


def decode_outputs(outputs: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Face scores and decoded boxes of every anchor (upstream `batch_detect` + `batch_decode`).

  Args:
    outputs: the 12 maps of `S3FD.__call__` (NHWC).

  Returns:
    scores [B, A] float32 (softmax face probability) and boxes [B, A, 4] float32
    `[x1, y1, x2, y2]` in input pixels, A = sum of h_i * w_i, ordered by level, row, column.
  """
  all_scores, all_boxes = [], []
  var_c, var_s = VARIANCES
  for i, stride in enumerate(STRIDES):
    cls, reg = outputs[2 * i], outputs[2 * i + 1]
    b, h, w, _ = cls.shape
    score = jax.nn.softmax(cls.astype(jnp.float32), axis=-1)[..., 1]
    anchor = 4.0 * stride
    ax = stride / 2 + jnp.arange(w, dtype=jnp.float32) * stride
    ay = stride / 2 + jnp.arange(h, dtype=jnp.float32) * stride
    reg = reg.astype(jnp.float32)
    cx = ax[None, None, :] + reg[..., 0] * var_c * anchor
    cy = ay[None, :, None] + reg[..., 1] * var_c * anchor
    bw = anchor * jnp.exp(reg[..., 2] * var_s)
    bh = anchor * jnp.exp(reg[..., 3] * var_s)
    x1, y1 = cx - bw / 2, cy - bh / 2
    box = jnp.stack([x1, y1, x1 + bw, y1 + bh], axis=-1)
    all_scores.append(score.reshape(b, h * w))
    all_boxes.append(box.reshape(b, h * w, 4))
  return jnp.concatenate(all_scores, axis=1), jnp.concatenate(all_boxes, axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_THRESHOLD) -> np.ndarray:
  """Greedy non-maximum suppression as upstream `bbox.nms` (areas with the +1 pixel convention).

  Args:
    boxes: [K, 4] `[x1, y1, x2, y2]`.
    scores: [K].
    threshold: a box whose IoU with a kept, higher-scoring box exceeds this is dropped.

  Returns:
    [K'] int64 indices of the kept boxes, by decreasing score.
  """
  if len(boxes) == 0:
    return np.zeros((0,), np.int64)
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = np.argsort(scores, kind="stable")[::-1]
  keep = []
  while order.size > 0:
    i = order[0]
    keep.append(i)
    rest = order[1:]
    w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
    h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
    inter = w * h
    overlap = inter / (areas[i] + areas[rest] - inter)
    order = rest[overlap <= threshold]
  return np.asarray(keep, np.int64)


def decode_detections(scores: np.ndarray, boxes: np.ndarray, frame_hw: tuple[int, int],
                      score_threshold: float = SCORE_THRESHOLD,
                      nms_threshold: float = NMS_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
  """Final detections of one image, as upstream `detect_from_batch` + `get_detections_for_batch`.

  Args:
    scores: [A] anchor scores; boxes: [A, 4] decoded boxes (`decode_outputs`, one image).
    frame_hw: (H, W) of the image, to clip the boxes.
    score_threshold: keep boxes scoring above this (upstream 0.5).
    nms_threshold: NMS IoU threshold (upstream 0.3).

  Returns:
    boxes [K, 4] int64 `[x1, y1, x2, y2]` (upstream's `int()` of the box clipped at 0, then x2/y2
    clipped to the frame; empty boxes dropped) and scores [K] float64, by decreasing score.
  """
  scores = np.asarray(scores)
  boxes = np.asarray(boxes)
  sel = np.flatnonzero(scores > score_threshold)
  if sel.size == 0:
    return np.zeros((0, 4), np.int64), np.zeros((0,), np.float64)
  keep = sel[nms(boxes[sel], scores[sel], nms_threshold)]
  out = np.trunc(np.clip(boxes[keep].astype(np.float64), 0.0, None)).astype(np.int64)
  h, w = int(frame_hw[0]), int(frame_hw[1])
  out[:, [0, 2]] = np.minimum(out[:, [0, 2]], w)
  out[:, [1, 3]] = np.minimum(out[:, [1, 3]], h)
  ok = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
  return out[ok], scores[keep][ok].astype(np.float64)


def preprocess(frames: jax.Array, bgr: bool = True) -> jax.Array:
  """[B, H, W, 3] uint8 RGB -> float32 network input: BGR (Diff2Lip's flip) minus `BGR_MEAN`.

  With `bgr=False` the RGB frames are fed as they are, minus the mean in the same channel order
  (what Wav2Lip's S3FD effectively sees).
  """
  x = frames[..., ::-1] if bgr else frames
  return x.astype(jnp.float32) - jnp.asarray(BGR_MEAN, jnp.float32)


@functools.partial(jax.jit, static_argnames=("dtype", "bgr"))
def _detect_batch(params: Any, frames: jax.Array, dtype: Any = jnp.float32,
                  bgr: bool = True) -> tuple[jax.Array, jax.Array]:
  """[B, H, W, 3] uint8 RGB -> (scores [B, A], boxes [B, A, 4]) on the accelerator."""
  return decode_outputs(S3FD(dtype=dtype).apply({"params": params}, preprocess(frames, bgr)))


@dataclasses.dataclass
class S3FDDetector:
  """Upstream's S3FD as a `faces.FaceDetector`, batched on the default JAX device.

  Attributes:
    params: S3FD params (`load_s3fd_params`).
    batch_size: frames per device call; shorter batches are padded (one compilation per frame
      size).
    score_threshold, nms_threshold: upstream's 0.5 and 0.3.
    dtype: computation dtype (float32 = upstream; bfloat16 is faster on GPU/TPU).
    bgr: feed BGR as Diff2Lip does (True); False feeds RGB as Wav2Lip effectively does.
    device: device to run on (None: JAX's default).
  """

  params: Any
  batch_size: int = 16
  score_threshold: float = SCORE_THRESHOLD
  nms_threshold: float = NMS_THRESHOLD
  dtype: Any = jnp.float32
  bgr: bool = True
  device: Any = None

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if self.device is not None:
      self.params = jax.device_put(self.params, self.device)

  @classmethod
  def from_path(cls, path: str | pathlib.Path, **kwargs) -> "S3FDDetector":
    """Loads weights with `load_s3fd_params` (upstream `.pth` or a converted `.npz`)."""
    return cls(params=load_s3fd_params(path), **kwargs)

  def detect_all_batch(self, frames: np.ndarray | Sequence[np.ndarray]
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """All faces in each frame.

    Args:
      frames: [B, H, W, 3] uint8 RGB (same size).

    Returns:
      B pairs (boxes [K, 4] int64 `[x1, y1, x2, y2]`, scores [K] float64) by decreasing score.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise ValueError(f"frames must be [B, H, W, 3] uint8 RGB, got {frames.shape} {frames.dtype}")
    n = len(frames)
    hw = frames.shape[1:3]
    out = []
    for start in range(0, n, self.batch_size):
      part = frames[start:start + self.batch_size]
      k = len(part)
      if k < self.batch_size:
        part = np.concatenate([part, np.repeat(part[-1:], self.batch_size - k, axis=0)])
      x = jax.device_put(part, self.device) if self.device is not None else part
      scores, boxes = jax.device_get(_detect_batch(self.params, x, dtype=self.dtype,
                                                   bgr=self.bgr))
      for j in range(k):
        out.append(decode_detections(scores[j], boxes[j], hw, self.score_threshold,
                                     self.nms_threshold))
    return out

  def detect_all(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All faces in one [H, W, 3] uint8 RGB frame; see `detect_all_batch`."""
    return self.detect_all_batch(np.asarray(frame)[None])[0]

  def detect(self, frames: np.ndarray) -> list[np.ndarray | None]:
    """`faces.FaceDetector.detect`: upstream's choice, the highest-scoring box, or None."""
    return [b[0] if len(b) else None for b, _ in self.detect_all_batch(frames)]
