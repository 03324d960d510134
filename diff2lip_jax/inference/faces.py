"""Face detection, box padding/smoothing, 128x128 face crops and hard paste-back.

Reproduces the generic (`--is_voxceleb2=False`) face-crop branch of upstream Diff2Lip
(`generate.py::face_detect`, `get_smoothened_boxes` and the paste loop of `generate`;
spec §4.2 and §5 step 4), itself taken from Wav2Lip's `inference.py`:

1. detect one face box per frame;
2. pad it by `--pads top,bottom,left,right` and clip it to the image;
3. smooth the boxes over time with a forward-looking mean of T=5 frames;
4. crop `frame[y1:y2, x1:x2]` and resize it to 128x128 (cv2 bilinear upstream);
5. after generation, resize each 128x128 result back to its box and hard-paste it.

Boxes are `[x1, y1, x2, y2]` integer pixel coordinates with x2/y2 exclusive, i.e. the
crop is `frame[y1:y2, x1:x2]` (upstream's `results.append([x1, y1, x2, y2])` layout).

Differences from upstream, on purpose:
* Detector: upstream uses S3FD (CNN, highest-scoring box above 0.5). Here the default is
  dlib's HOG frontal-face detector (`DlibDetector`, highest-scoring box); upstream's S3FD
  (`diff2lip_jax.inference.s3fd`, Flax, batched on the accelerator) is `make_detector("s3fd", path=...)`.
* Several faces: `detect_all_frames` returns every face, and `diff2lip_jax.inference.tracking` picks one
  and follows it; `finalize_boxes` then pads, gap-fills and smooths within each scene.
* Missing faces: upstream raises `ValueError('Face not detected!')` if any frame has no
  face. `find_faces` instead reports them in a `found` mask (and `missing_ranges`), and
  fills their boxes by interpolating the neighbouring detections, so the caller decides.
* `smooth_boxes` with fewer frames than the window uses all frames (upstream's negative
  slice start would silently use only the last T-N frames).
* Resizing is a NumPy bilinear resize on cv2's `INTER_LINEAR` sampling grid (half-pixel
  centres, edge clamping, no antialiasing) instead of `cv2.resize`; it differs from
  OpenCV only by rounding (OpenCV uses 11-bit fixed-point weights), not by geometry.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "FaceDetector", "DlibDetector", "make_detector", "pad_boxes", "smooth_boxes",
    "find_faces", "missing_ranges", "describe_missing", "as_boxes",
    "DETECTORS", "detect_all_frames", "finalize_boxes",
]

DETECTORS = ("dlib", "s3fd")


@runtime_checkable
class FaceDetector(Protocol):
  """Anything that finds one face box per frame."""

  def detect(self, frames: np.ndarray) -> list[np.ndarray | None]:
    """Finds the best face in each frame.

    Args:
      frames: [B, H, W, 3] uint8 RGB (or a sequence of [H, W, 3] uint8 RGB frames).

    Returns:
      B entries, each an int64 [4] box `[x1, y1, x2, y2]` in pixels (x2/y2 exclusive,
      clipped to the frame) of the largest/most confident face, or None if none was found.
    """
    ...


@dataclasses.dataclass
class DlibDetector:
  """dlib's HOG + linear SVM frontal-face detector (`dlib.get_frontal_face_detector()`).

  Runs on CPU, one frame at a time; of several detections the highest-scoring one is
  returned (as upstream keeps S3FD's highest-scoring box). It finds roughly frontal faces
  of at least ~80/2**upsample pixels; profile faces are often missed.

  Attributes:
    upsample: times dlib upsamples the image (x2 each) before detecting; 1 finds faces
      down to ~40 px but costs ~3x the time of 0 (~0.1 s vs ~0.03 s on a 512x512 frame).
    min_score: detections scoring below this are discarded (dlib's `adjust_threshold`;
      0 is dlib's default, higher values drop weak/false detections).
    max_side: if set and a frame's longer side exceeds it, detection runs on a copy
      downscaled (bilinear, Pillow) so that the longer side equals `max_side`, and the box
      is scaled back to full resolution. Much faster on HD frames (cost grows with the
      pixel count) at the price of missing faces smaller than ~40 px in the small copy
      and a box quantised to the downscale factor. None (default): full resolution.
  """

  upsample: int = 1
  min_score: float = 0.0
  max_side: int | None = None

  def __post_init__(self):
    import dlib  # pylint: disable=g-import-not-at-top
    if self.upsample < 0:
      raise ValueError(f"upsample must be >= 0, got {self.upsample}")
    if self.max_side is not None and self.max_side < 16:
      raise ValueError(f"max_side must be >= 16 or None, got {self.max_side}")
    self._detector = dlib.get_frontal_face_detector()

  def detect_all(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All detections in one frame.

    Args:
      frame: [H, W, 3] uint8 RGB.

    Returns:
      (boxes [K, 4] int64 `[x1, y1, x2, y2]` clipped to the frame, scores [K] float64),
      sorted by decreasing score.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
      raise ValueError(f"frame must be [H, W, 3] uint8 RGB, got {frame.shape} {frame.dtype}")
    h, w = frame.shape[:2]
    scale = 1.0
    img = frame
    if self.max_side is not None and max(h, w) > self.max_side:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      scale = self.max_side / max(h, w)
      small_wh = (max(1, round(w * scale)), max(1, round(h * scale)))
      img = np.asarray(Image.fromarray(frame).resize(small_wh, Image.BILINEAR))
      scale_x, scale_y = w / small_wh[0], h / small_wh[1]
    else:
      scale_x = scale_y = 1.0
    rects, scores, _ = self._detector.run(np.ascontiguousarray(img), self.upsample,
                                          self.min_score)
    if not rects:
      return np.zeros((0, 4), np.int64), np.zeros((0,), np.float64)
    # dlib rectangles are inclusive: right = left + width - 1.
    raw = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects],
                   np.float64)
    raw *= np.array([scale_x, scale_y, scale_x, scale_y])
    boxes = np.rint(raw).astype(np.int64)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], scores[keep]

  def detect(self, frames: np.ndarray) -> list[np.ndarray | None]:
    """See `FaceDetector.detect`: the highest-scoring dlib box per frame, or None."""
    out: list[np.ndarray | None] = []
    for frame in frames:
      boxes, _ = self.detect_all(frame)
      out.append(boxes[0] if len(boxes) else None)
    return out


def make_detector(name: str = "dlib", **kwargs) -> FaceDetector:
  """Builds a face detector by name; the single place where detectors are chosen.

  Args:
    name: "dlib" (HOG, CPU) or "s3fd" (upstream's CNN detector, on the JAX device; needs
      `path=` to its weights, upstream's `s3fd-619a316812.pth` or a converted `.npz`).
    **kwargs: passed to the detector's constructor (e.g. `upsample`, `max_side` for dlib;
      `path`, `batch_size`, `dtype` for S3FD).

  Raises:
    ValueError: unknown name, or S3FD without weights.
  """
  key = name.lower().strip()
  if key == "dlib":
    return DlibDetector(**kwargs)
  if key == "s3fd":
    from diff2lip_jax.inference import s3fd as s3fd_detector  # pylint: disable=g-import-not-at-top
    path = kwargs.pop("path", None)
    if path is None:
      raise ValueError("the S3FD detector needs its weights: pass the path of upstream's "
                       "s3fd-619a316812.pth (or a converted .npz), e.g. --s3fd_path")
    return s3fd_detector.S3FDDetector.from_path(path, **kwargs)
  raise ValueError(f"unknown face detector {name!r}; choose one of: {', '.join(DETECTORS)}")


def as_boxes(boxes: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
  arr = np.asarray(boxes)
  if arr.ndim != 2 or arr.shape[1] != 4:
    raise ValueError(f"boxes must be [N, 4] [x1, y1, x2, y2], got shape {arr.shape}")
  return arr


def pad_boxes(boxes: np.ndarray,
              pads: Sequence[int] = (0, 0, 0, 0),
              frame_hw: tuple[int, int] | None = None) -> np.ndarray:
  """Grows boxes by upstream's `--pads top,bottom,left,right` and clips them to the frame.

  As upstream `face_detect`: y1 -= top, y2 += bottom, x1 -= left, x2 += right, then
  x is clipped to [0, W] and y to [0, H] (upstream clips only the padded side, which is
  the same for boxes already inside the frame). Negative pads shrink the box.

  Args:
    boxes: [N, 4] int `[x1, y1, x2, y2]` (x2/y2 exclusive).
    pads: (top, bottom, left, right) in pixels; upstream Diff2Lip default (0, 0, 0, 0),
      Wav2Lip's (0, 10, 0, 0).
    frame_hw: (H, W) of the frames; None skips clipping.

  Returns:
    [N, 4] int64 padded boxes.
  """
  boxes = as_boxes(boxes).astype(np.int64)
  if len(pads) != 4:
    raise ValueError(f"pads must be (top, bottom, left, right), got {pads!r}")
  top, bottom, left, right = (int(p) for p in pads)
  out = boxes + np.array([-left, -top, right, bottom], np.int64)
  if frame_hw is not None:
    h, w = int(frame_hw[0]), int(frame_hw[1])
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
  return out


def smooth_boxes(boxes: np.ndarray, window: int = 5) -> np.ndarray:
  """Upstream's temporal box smoothing (`get_smoothened_boxes`, Wav2Lip/Diff2Lip).

  A forward-looking mean, computed **in place in integer arithmetic** exactly as upstream
  does on its int array (each mean is truncated toward zero when stored):

      for i in range(N):
        win = boxes[N-T:N] if i + T > N else boxes[i:i+T]
        boxes[i] = mean(win, axis=0)

  Because it is in place, the tail windows `boxes[N-T:N]` include rows that were already
  smoothed. If N < T all N rows form the window (upstream's slice `boxes[N-T:]` would
  wrap around to the last T-N rows only). The input is not modified.

  Args:
    boxes: [N, 4] `[x1, y1, x2, y2]` (any real dtype; rounded to int64 first).
    window: T, the window length in frames (upstream: 5). T <= 1 returns the boxes as is.

  Returns:
    [N, 4] int64 smoothed boxes.
  """
  out = np.rint(as_boxes(boxes)).astype(np.int64)
  n = out.shape[0]
  t = int(window)
  if t <= 1 or n == 0:
    return out
  tail_start = max(n - t, 0)
  for i in range(n):
    win = out[tail_start:] if i + t > n else out[i:i + t]
    out[i] = np.trunc(win.mean(axis=0))
  return out


def _interpolate_missing(boxes: np.ndarray, found: np.ndarray) -> np.ndarray:
  """Fills rows with found == False by linear interpolation between the nearest found
  rows (held constant before the first / after the last); rounded to int64."""
  idx = np.arange(boxes.shape[0])
  good = np.flatnonzero(found)
  out = boxes.astype(np.float64).copy()
  for c in range(4):
    out[:, c] = np.interp(idx, good, boxes[good, c].astype(np.float64))
  return np.rint(out).astype(np.int64)


def find_faces(frames: np.ndarray | Sequence[np.ndarray],
               detector: FaceDetector,
               pads: Sequence[int] = (0, 0, 0, 0),
               batch_size: int = 32,
               smooth_window: int = 5,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Detects, pads, gap-fills and smooths one face box per frame (spec §4.2, generic branch).

  Args:
    frames: [N, H, W, 3] uint8 RGB (all frames the same size).
    detector: a `FaceDetector`, e.g. `make_detector("dlib")`.
    pads: (top, bottom, left, right) pixels added around each detected box, then clipped.
    batch_size: frames passed to `detector.detect` per call.
    smooth_window: T of `smooth_boxes` (upstream always 5; <= 1 disables smoothing).
    progress: show a tqdm progress bar (counts frames).

  Returns:
    boxes: [N, 4] int64 `[x1, y1, x2, y2]` (x2/y2 exclusive) after padding and smoothing.
      Frames without a detection get boxes interpolated from their neighbours before
      smoothing (so they do not disturb it); if no frame has a face, every box is the
      full frame `[0, 0, W, H]`.
    found: [N] bool, True where the detector found a face in that frame.
  """
  n = len(frames)
  if n == 0:
    return np.zeros((0, 4), np.int64), np.zeros((0,), bool)
  h, w = np.asarray(frames[0]).shape[:2]
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  raw = np.zeros((n, 4), np.int64)
  found = np.zeros((n,), bool)
  with tqdm(total=n, desc="face detection", unit="frame", disable=not progress) as bar:
    for start in range(0, n, batch_size):
      batch = frames[start:start + batch_size]
      dets = detector.detect(batch)
      if len(dets) != len(batch):
        raise RuntimeError(f"detector returned {len(dets)} results for {len(batch)} frames")
      for j, box in enumerate(dets):
        if box is not None:
          raw[start + j] = np.asarray(box, np.int64).reshape(4)
          found[start + j] = True
      bar.update(len(batch))
  if not found.any():
    return np.tile(np.array([0, 0, w, h], np.int64), (n, 1)), found
  boxes = pad_boxes(raw, pads, (h, w))
  if not found.all():
    boxes = _interpolate_missing(boxes, found)
  return smooth_boxes(boxes, smooth_window), found


def missing_ranges(found: np.ndarray | Sequence[bool]) -> list[tuple[int, int]]:
  """Inclusive [first, last] frame-index ranges where `found` is False.

  Example: [True, False, False, True, False] -> [(1, 2), (4, 4)].
  """
  f = np.asarray(found, bool).reshape(-1)
  miss = np.concatenate([[False], ~f, [False]]).astype(np.int8)
  edges = np.diff(miss)
  starts = np.flatnonzero(edges == 1)
  ends = np.flatnonzero(edges == -1) - 1
  return [(int(a), int(b)) for a, b in zip(starts, ends)]


def describe_missing(found: np.ndarray | Sequence[bool], limit: int = 8) -> str:
  """Human-readable summary, e.g. "no face found in frames 12-30, 41 (20 of 100 frames)";
  empty string if every frame has a face."""
  ranges = missing_ranges(found)
  if not ranges:
    return ""
  parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
  if len(ranges) > limit:
    parts.append(f"... ({len(ranges) - limit} more ranges)")
  total = len(np.asarray(found).reshape(-1))
  count = sum(b - a + 1 for a, b in ranges)
  return f"no face found in frames {', '.join(parts)} ({count} of {total} frames)"


def detect_all_frames(detector: FaceDetector, frames: np.ndarray | Sequence[np.ndarray]
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Every face in every frame, with whatever the detector offers.

  Uses `detector.detect_all_batch(frames)` if it exists (S3FD: one device call per batch), else
  `detector.detect_all(frame)` per frame (dlib), else `detector.detect` (one box, score 1).

  Args:
    frames: [B, H, W, 3] uint8 RGB.

  Returns:
    B pairs (boxes [K, 4] int64 `[x1, y1, x2, y2]`, scores [K] float64), best first.
  """
  if hasattr(detector, "detect_all_batch"):
    out = list(detector.detect_all_batch(frames))
  elif hasattr(detector, "detect_all"):
    out = [detector.detect_all(frame) for frame in frames]
  else:
    out = [(np.asarray(b, np.int64).reshape(1, 4), np.ones(1)) if b is not None
           else (np.zeros((0, 4), np.int64), np.zeros((0,)))
           for b in detector.detect(frames)]
  if len(out) != len(frames):
    raise RuntimeError(f"detector returned {len(out)} results for {len(frames)} frames")
  return out


def finalize_boxes(raw: np.ndarray, found: np.ndarray, frame_hw: tuple[int, int],
                   pads: Sequence[int] = (0, 0, 0, 0), smooth_window: int = 5,
                   segments: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
  """Pads, gap-fills and smooths per-frame boxes of one tracked face, scene by scene.

  Within each [start, stop) segment (scenes; default the whole video) frames with a face get
  `pad_boxes`, frames without one get boxes interpolated from the nearest found frames of the
  same segment, and the segment is smoothed with `smooth_boxes` (upstream's forward mean of 5).
  A segment without any face gets full-frame boxes (its frames are passed through anyway).

  Args:
    raw: [N, 4] int detected boxes (ignored where `found` is False).
    found: [N] bool.
    frame_hw: (H, W).
    pads: (top, bottom, left, right) pixels.
    smooth_window: T of `smooth_boxes`.
    segments: half-open frame ranges that are smoothed independently.

  Returns:
    [N, 4] int64 boxes inside the frame.
  """
  raw = as_boxes(raw).astype(np.int64)
  found = np.asarray(found, bool)
  n = len(raw)
  h, w = int(frame_hw[0]), int(frame_hw[1])
  out = np.tile(np.array([0, 0, w, h], np.int64), (n, 1))
  for a, b in (segments or [(0, n)]):
    seg_found = found[a:b]
    if not seg_found.any():
      continue
    boxes = pad_boxes(raw[a:b], pads, (h, w))
    if not seg_found.all():
      boxes = _interpolate_missing(boxes, seg_found)
    out[a:b] = smooth_boxes(boxes, smooth_window)
  # A box can only become empty through negative pads.
  bad = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
  out[bad] = np.array([0, 0, w, h])
  return out
