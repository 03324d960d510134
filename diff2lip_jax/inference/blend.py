"""Pasting generated face crops back into frames: upstream's hard paste, or a feathered blend.

Upstream Diff2Lip (`generate.py`, paste loop; spec §5 step 4) resizes each 128x128 result to its
face box (cv2 bilinear) and overwrites the whole box: the regenerated lower half often differs a
little in colour and sharpness from the frame around it, which shows as a rectangle around the
mouth (diff2lip #13, Wav2Lip #410). `mode="hard"` reproduces that paste.

`mode="feather"` (the default) instead

1. builds a soft mask in box coordinates (`feather_mask`): 1 on the regenerated lower part of
   the box, falling smoothly (smoothstep) to exactly 0 on the box's left, right and bottom border
   pixels, and across the line where the crop's masked rows begin (`face_hide_percentage`);
2. matches the colour statistics (per-channel mean and standard deviation, RGB) of the generated
   pixels to those of the original frame over the feather band of the lower face, which is
   mostly cheek and chin skin (`match_color`);
3. composites `frame + mask * (generated - frame)` inside the box.

Pixels outside the box are never written (and the box's outermost rows/columns of the lower part
keep their input values), so there is no step at the box border; the frame keeps every pixel above
the regenerated rows too, apart from the half-ramp just above them.

An extra per-frame weight `alpha` in [0, 1] scales the mask (cross-fades into and out of runs of
frames without a face: alpha = 0 leaves the frame bit-identical).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from diff2lip_jax.inference.crops import resize_bilinear

__all__ = ["BLEND_MODES", "feather_mask", "match_color", "blend_face", "blend_faces",
           "seam_step"]

BLEND_MODES = ("feather", "hard")
BlendMode = Literal["feather", "hard"]

# Gain bounds of the colour transfer: a noisy or washed-out generation must not be amplified
# (or flattened) beyond this factor.
_GAIN_RANGE = (0.75, 1.0 / 0.75)
_MIN_BAND_PIXELS = 16


def _smoothstep(d: np.ndarray) -> np.ndarray:
  """3d^2 - 2d^3 of d clipped to [0, 1]: 0 -> 0, 1 -> 1, zero slope at both ends."""
  d = np.clip(d, 0.0, 1.0)
  return d * d * (3.0 - 2.0 * d)


def feather_width(box_hw: tuple[int, int], feather: float) -> float:
  """Ramp width in pixels: `feather` x the box's shorter side, at least 1 pixel."""
  return max(1.0, float(feather) * min(int(box_hw[0]), int(box_hw[1])))


def feather_mask(box_hw: tuple[int, int], face_hide_percentage: float = 0.5,
                 feather: float = 0.1) -> np.ndarray:
  """Soft paste mask of one face box.

  With f = `feather_width(box_hw, feather)` pixels and the regenerated part beginning at row
  ys = (1 - face_hide_percentage) * h (the crop's masked rows, scaled to the box), the mask is
  the product of four smoothsteps: up from 0 at the left/right/bottom border pixels to 1 at f
  pixels inside, and up from 0 at ys - f/2 to 1 at ys + f/2.

  Args:
    box_hw: (h, w) of the face box in frame pixels.
    face_hide_percentage: lower fraction of the crop that the model regenerates (upstream 0.5).
    feather: ramp width as a fraction of the box's shorter side (0.1: 10 px on a 100 px box).

  Returns:
    [h, w] float32 in [0, 1]; exactly 0 on the left, right and bottom border pixels and on every
    row above ys - f/2.
  """
  h, w = int(box_hw[0]), int(box_hw[1])
  if h < 1 or w < 1:
    raise ValueError(f"box size must be positive, got {box_hw}")
  if not 0.0 < face_hide_percentage <= 1.0:
    raise ValueError(f"face_hide_percentage must be in (0, 1], got {face_hide_percentage}")
  f = feather_width((h, w), feather)
  y = np.arange(h, dtype=np.float64)
  x = np.arange(w, dtype=np.float64)
  ys = (1.0 - face_hide_percentage) * h
  rows = _smoothstep((y + 0.5 - (ys - f / 2)) / f) * _smoothstep((h - 1 - y) / f)
  cols = _smoothstep(x / f) * _smoothstep((w - 1 - x) / f)
  return (rows[:, None] * cols[None, :]).astype(np.float32)


def match_color(generated: np.ndarray, original: np.ndarray, band: np.ndarray) -> np.ndarray:
  """Per-channel mean/std transfer of `generated` to the statistics of `original` on `band`.

  `out = (generated - mean_g) * gain + mean_o` with `gain = std_o / std_g` clipped to
  [0.75, 1.33], the statistics taken over the pixels where `band` is True.

  Args:
    generated: [h, w, 3] float32 (0..255) generated pixels of the box.
    original: [h, w, 3] uint8 or float frame pixels of the same box.
    band: [h, w] bool, pixels of skin around the regenerated region (e.g. the feather band).

  Returns:
    [h, w, 3] float32; `generated` unchanged if the band has fewer than 16 pixels.
  """
  if int(band.sum()) < _MIN_BAND_PIXELS:
    return generated
  g = generated[band].astype(np.float64)  # [K, 3]
  o = original[band].astype(np.float64)
  mean_g, mean_o = g.mean(0), o.mean(0)
  std_g, std_o = g.std(0), o.std(0)
  gain = np.clip(std_o / np.maximum(std_g, 1.0), *_GAIN_RANGE)
  return ((generated - mean_g) * gain + mean_o).astype(np.float32)


def _check_box(box: Sequence[int], h: int, w: int) -> tuple[int, int, int, int]:
  x1, y1, x2, y2 = (int(v) for v in box)
  if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
    raise ValueError(f"box {[x1, y1, x2, y2]} is empty or outside the {w}x{h} frame")
  return x1, y1, x2, y2


def blend_face(frame: np.ndarray, face: np.ndarray, box: Sequence[int], *,
               mode: BlendMode = "feather", face_hide_percentage: float = 0.5,
               feather: float = 0.1, color_match: bool = True,
               alpha: float = 1.0) -> np.ndarray:
  """Pastes one generated crop into a copy of its frame.

  Args:
    frame: [H, W, 3] uint8 RGB; not modified.
    face: [S, S, 3] uint8 RGB generated crop (e.g. 128x128).
    box: `[x1, y1, x2, y2]` the crop was taken from (x2/y2 exclusive).
    mode: "feather" (soft mask + colour matching) or "hard" (upstream: overwrite the box).
    face_hide_percentage: lower fraction of the crop the model regenerated (feather mask).
    feather: ramp width as a fraction of the box's shorter side (feather mode).
    color_match: match mean/std of the generated lower face to the frame (feather mode).
    alpha: overall weight of the generated face in [0, 1] (cross-fades); 0 returns the frame.

  Returns:
    [H, W, 3] uint8; pixels outside the box are bit-identical to `frame`.
  """
  if mode not in BLEND_MODES:
    raise ValueError(f"unknown blend mode {mode!r}; choose one of {', '.join(BLEND_MODES)}")
  out = np.array(frame, dtype=np.uint8, copy=True)
  alpha = float(np.clip(alpha, 0.0, 1.0))
  if alpha == 0.0:
    return out
  x1, y1, x2, y2 = _check_box(box, out.shape[0], out.shape[1])
  h, w = y2 - y1, x2 - x1
  orig = out[y1:y2, x1:x2]
  if mode == "hard" and alpha == 1.0:
    out[y1:y2, x1:x2] = resize_bilinear(np.asarray(face, np.uint8), (h, w))
    return out
  gen = resize_bilinear(np.asarray(face, np.uint8).astype(np.float32), (h, w))
  if mode == "hard":
    mask = np.ones((h, w), np.float32)
  else:
    mask = feather_mask((h, w), face_hide_percentage, feather)
    if color_match:
      lower = np.arange(h)[:, None] >= (1.0 - face_hide_percentage) * h
      band = (mask > 0.0) & (mask < 1.0) & lower
      gen = match_color(gen, orig, band)
  weight = (alpha * mask)[..., None]
  mixed = orig.astype(np.float32) + weight * (gen - orig.astype(np.float32))
  out[y1:y2, x1:x2] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
  return out


def blend_faces(frames: np.ndarray, faces: np.ndarray, boxes: np.ndarray, *,
                mode: BlendMode = "feather", face_hide_percentage: float = 0.5,
                feather: float = 0.1, color_match: bool = True,
                alpha: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
  """`blend_face` over a batch.

  Args:
    frames: [N, H, W, 3] uint8 RGB; not modified.
    faces: [N, S, S, 3] uint8 generated crops.
    boxes: [N, 4] int `[x1, y1, x2, y2]`.
    mode, face_hide_percentage, feather, color_match: see `blend_face`.
    alpha: [N] per-frame weights in [0, 1] (None: all 1).

  Returns:
    [N, H, W, 3] uint8 new frames.
  """
  frames = np.asarray(frames)
  n = len(frames)
  if not n == len(faces) == len(boxes):
    raise ValueError(f"count mismatch: {n} frames, {len(faces)} faces, {len(boxes)} boxes")
  alpha = np.ones(n) if alpha is None else np.asarray(alpha, np.float64)
  out = np.empty_like(frames, dtype=np.uint8)
  for i in range(n):
    out[i] = blend_face(frames[i], faces[i], boxes[i], mode=mode,
                        face_hide_percentage=face_hide_percentage, feather=feather,
                        color_match=color_match, alpha=alpha[i])
  return out


def seam_step(frame: np.ndarray, reference: np.ndarray, box: Sequence[int],
              face_hide_percentage: float = 0.5) -> float:
  """How much a paste raised the intensity step across the border of a box's lower part.

  For every pixel pair straddling the left, right and bottom edges of the lower
  `face_hide_percentage` of the box (the box's border pixel and its outside neighbour), takes the
  step `inside - outside` in `frame` and in `reference` (the input frame) and averages
  |step_frame - step_reference| over the pairs and the RGB channels. 0: the border looks exactly as
  in the input; a hard paste of a crop whose colour drifted by d levels scores about d.

  Args:
    frame: [H, W, 3] uint8, the blended frame.
    reference: [H, W, 3] uint8, the input frame.
    box: `[x1, y1, x2, y2]`, with a one-pixel margin inside the frame on each side.
    face_hide_percentage: fraction of the box height measured from the bottom.

  Returns:
    The mean added step in grey levels (0..255).
  """
  f = np.asarray(frame, np.float32)
  r = np.asarray(reference, np.float32)
  x1, y1, x2, y2 = _check_box(box, f.shape[0], f.shape[1])
  if x1 < 1 or y1 < 1 or x2 > f.shape[1] - 1 or y2 > f.shape[0] - 1:
    raise ValueError("seam_step needs a one-pixel margin around the box")
  top = y1 + int(np.ceil((1.0 - face_hide_percentage) * (y2 - y1)))
  pairs = [((slice(top, y2), x1), (slice(top, y2), x1 - 1)),
           ((slice(top, y2), x2 - 1), (slice(top, y2), x2)),
           ((y2 - 1, slice(x1, x2)), (y2, slice(x1, x2)))]
  steps = [np.abs((f[a] - f[b]) - (r[a] - r[b])).reshape(-1) for a, b in pairs]
  return float(np.concatenate(steps).mean())
