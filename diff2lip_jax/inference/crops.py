"""Upstream's face crop and paste geometry: 128x128 crops of face boxes, and the hard paste back.

Boxes are `[x1, y1, x2, y2]` integer pixels, x2/y2 exclusive: the crop is `frame[y1:y2, x1:x2]`
resized to 128x128 with bilinear interpolation on OpenCV's `INTER_LINEAR` grid (upstream
`cv2.resize`; spec §4.2, §5 step 4), here OpenCV's own resize (opencv-python-headless), so the
crops and pastes are bit-exact with upstream's.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from diff2lip_jax.inference.faces import as_boxes

__all__ = ["resize_bilinear", "crop_faces", "paste_faces", "voxceleb2_box"]


def resize_bilinear(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of one image: OpenCV's `cv2.resize(img, (w, h))` (`INTER_LINEAR`), what
  upstream uses for the 128x128 crop, the paste-back and syncnet_python's 224x224 frames.

  Output pixel d samples source coordinate (d + 0.5) * in/out - 0.5, clamped at the borders; no
  antialiasing when shrinking; uint8 images use OpenCV's 11-bit fixed-point weights, so the
  result is bit-exact with upstream's (checked against `../shared/upstream/e2e_small.npz`).

  Args:
    image: [h, w, C] (or [h, w]) uint8 or float.
    out_hw: (H, W) output size in pixels.

  Returns:
    [H, W, C] (or [H, W]) in the input dtype.

  Raises:
    ValueError: an empty input or output size.
  """
  img = np.asarray(image)
  out_h, out_w = int(out_hw[0]), int(out_hw[1])
  if img.shape[0] < 1 or img.shape[1] < 1 or out_h < 1 or out_w < 1:
    raise ValueError(f"cannot resize {img.shape[:2]} to {(out_h, out_w)}")
  if img.shape[:2] == (out_h, out_w):
    return img.copy()
  dtype = img.dtype
  if dtype not in (np.uint8, np.float32):
    img = img.astype(np.float32)
  out = cv2.resize(np.ascontiguousarray(img), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
  if img.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel axis
    out = out[..., None]
  return out.astype(dtype, copy=False)


def _check_box(box: np.ndarray, h: int, w: int, i: int) -> tuple[int, int, int, int]:
  x1, y1, x2, y2 = (int(v) for v in box)
  if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
    raise ValueError(f"box {i} = {[x1, y1, x2, y2]} is empty or outside the {w}x{h} frame; "
                     "pad/clip boxes with pad_boxes first")
  return x1, y1, x2, y2


def crop_faces(frames: np.ndarray | Sequence[np.ndarray],
               boxes: np.ndarray,
               size: int = 128) -> np.ndarray:
  """Crops `frame[y1:y2, x1:x2]` and resizes it to size x size (upstream: cv2 bilinear to
  128x128, not aspect-preserving).

  Args:
    frames: [N, H, W, 3] uint8 RGB.
    boxes: [N, 4] int `[x1, y1, x2, y2]`, inside the frame.
    size: output side in pixels.

  Returns:
    [N, size, size, 3] uint8 face crops (`resize_bilinear`).
  """
  boxes = as_boxes(boxes)
  if len(frames) != boxes.shape[0]:
    raise ValueError(f"{len(frames)} frames but {boxes.shape[0]} boxes")
  out = np.empty((boxes.shape[0], size, size, 3), np.uint8)
  for i, (frame, box) in enumerate(zip(frames, boxes)):
    frame = np.asarray(frame)
    x1, y1, x2, y2 = _check_box(box, frame.shape[0], frame.shape[1], i)
    out[i] = resize_bilinear(frame[y1:y2, x1:x2], (size, size))
  return out


def paste_faces(frames: np.ndarray | Sequence[np.ndarray],
                faces: np.ndarray,
                boxes: np.ndarray) -> np.ndarray:
  """Hard-pastes generated faces back into copies of the frames (spec §5 step 4).

  Each face is resized (`resize_bilinear`, upstream cv2 bilinear) to its box size
  (y2-y1, x2-x1) and written over `frame[y1:y2, x1:x2]`; no blending or feathering.

  Args:
    frames: [N, H, W, 3] uint8 RGB; not modified.
    faces: [N, h, w, 3] uint8 RGB (e.g. 128x128 generator outputs).
    boxes: [N, 4] int `[x1, y1, x2, y2]` used for the crops.

  Returns:
    [N, H, W, 3] uint8 new frames; pixels outside each box are bit-identical to the input.
  """
  boxes = as_boxes(boxes)
  faces = np.asarray(faces)
  out = np.array(frames, dtype=np.uint8, copy=True)
  if out.ndim != 4 or faces.ndim != 4:
    raise ValueError(f"frames and faces must be [N, H, W, 3], got {out.shape}, {faces.shape}")
  if not out.shape[0] == faces.shape[0] == boxes.shape[0]:
    raise ValueError(f"count mismatch: {out.shape[0]} frames, {faces.shape[0]} faces, "
                     f"{boxes.shape[0]} boxes")
  if faces.dtype != np.uint8:
    raise ValueError(f"faces must be uint8, got {faces.dtype}")
  h, w = out.shape[1:3]
  for i in range(out.shape[0]):
    x1, y1, x2, y2 = _check_box(boxes[i], h, w, i)
    out[i, y1:y2, x1:x2] = resize_bilinear(faces[i], (y2 - y1, x2 - x1))
  return out


def voxceleb2_box(height: int, width: int) -> np.ndarray:
  """Upstream's fixed crop of aligned VoxCeleb2 clips (`my_voxceleb2_crop`, used when
  `--is_voxceleb2`, its generate.py default; spec §4.2) as `[x1, y1, x2, y2]` int64: rows
  [0, H - int(2.36/8 H)), columns [int(1.8/8 W), W - int(1.8/8 W)); 224x224 -> [50, 0, 174, 158]."""
  dx = int(1.8 / 8 * width)
  return np.array([dx, 0, width - dx, height - int(2.36 / 8 * height)], np.int64)
