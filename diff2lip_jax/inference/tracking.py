"""Choosing one face among several and following it through a video; scene-cut detection.

Upstream Diff2Lip keeps S3FD's highest-scoring box in every frame independently (spec §4.2), so
with two people the crop can jump from one to the other, and it aborts on any frame without a face.
Here:

* `FaceSelector` says which face to sync: the largest (default), the i-th from the left, or the
  one at a point (x, y) of the first frame (the face whose box contains it, else the nearest);
* `track_faces` applies the selector on the first frame with a face, then follows that face from
  frame to frame by box overlap (highest IoU with the last box, at least `iou_threshold`);
  frames where it is not found are reported as missing; after a scene cut, or when the face has
  been lost for more than `max_gap` frames, the selector picks again;
* `SceneCutDetector` flags a cut when the colour histograms of consecutive frames differ by more
  than a threshold (half the L1 distance of normalised 3 x 16-bin RGB histograms, in [0, 1]).

All boxes are `[x1, y1, x2, y2]` integer pixels, x2/y2 exclusive.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

__all__ = ["FaceSelector", "parse_face", "iou", "track_faces", "SceneCutDetector",
           "segments_from_cuts"]

Detections = tuple[np.ndarray, np.ndarray]  # boxes [K, 4] int64, scores [K]


@dataclasses.dataclass(frozen=True)
class FaceSelector:
  """Which face to lip-sync when a frame has several.

  Attributes:
    mode: "largest" (box area), "index" (0 = leftmost box centre, 1 = next, ...; the last one
      if fewer faces), "point" (the box containing (x, y) in frame pixels, else the box whose
      centre is nearest), or "score" (highest detector score, upstream's choice).
    index: for mode "index".
    point: (x, y) for mode "point".
  """

  mode: str = "largest"
  index: int = 0
  point: tuple[float, float] = (0.0, 0.0)

  def choose(self, boxes: np.ndarray, scores: np.ndarray | None = None) -> int:
    """Index into `boxes` [K >= 1, 4] of the selected face."""
    boxes = np.asarray(boxes, np.float64)
    if len(boxes) == 0:
      raise ValueError("no boxes to choose from")
    if self.mode == "largest":
      area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
      return int(np.argmax(area))
    if self.mode == "score":
      return 0 if scores is None else int(np.argmax(scores))
    if self.mode == "index":
      order = np.argsort((boxes[:, 0] + boxes[:, 2]) / 2, kind="stable")
      return int(order[min(self.index, len(order) - 1)])
    if self.mode == "point":
      x, y = self.point
      inside = (boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3])
      cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
      dist = np.hypot(cx - x, cy - y)
      if inside.any():
        return int(np.flatnonzero(inside)[np.argmin(dist[inside])])
      return int(np.argmin(dist))
    raise ValueError(f"unknown face selector mode {self.mode!r}")

  def __str__(self) -> str:
    if self.mode == "index":
      return f"face {self.index} from the left"
    if self.mode == "point":
      return f"the face at ({self.point[0]:g}, {self.point[1]:g})"
    return f"the {self.mode} face" if self.mode == "largest" else "the highest-scoring face"


def parse_face(spec: str | int | FaceSelector | None) -> FaceSelector:
  """Parses `--face`: "largest", "score", an index "0", "1", ... or a point "x,y" (pixels).

  Raises:
    ValueError: anything else, with the accepted forms.
  """
  if spec is None:
    return FaceSelector()
  if isinstance(spec, FaceSelector):
    return spec
  if isinstance(spec, (int, np.integer)):
    if spec < 0:
      raise ValueError(f"--face index must be >= 0, got {spec}")
    return FaceSelector("index", index=int(spec))
  text = str(spec).strip().lower()
  if text in ("largest", "score"):
    return FaceSelector(text)
  if re.fullmatch(r"\d+", text):
    return FaceSelector("index", index=int(text))
  m = re.fullmatch(r"\(?\s*(-?[\d.]+)\s*[, ]\s*(-?[\d.]+)\s*\)?", text)
  if m:
    return FaceSelector("point", point=(float(m.group(1)), float(m.group(2))))
  raise ValueError(f"--face {spec!r}: use 'largest', an index (0 = leftmost face) or a point "
                   "'x,y' in pixels of the first frame")


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Intersection over union of one box [4] with boxes [K, 4] -> [K] float64."""
  box = np.asarray(box, np.float64)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
  h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
  inter = w * h
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  union = area(box) + area(boxes) - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def track_faces(detections: Sequence[Detections], selector: FaceSelector | None = None,
                cuts: Sequence[int] = (), iou_threshold: float = 0.3,
                max_gap: int = 25) -> tuple[np.ndarray, np.ndarray]:
  """Follows one face through a video.

  Args:
    detections: per frame, (boxes [K, 4], scores [K]) of every face found (K may be 0).
    selector: which face to take where tracking (re)starts; default the largest.
    cuts: frame indices that start a new scene (tracking restarts there).
    iou_threshold: minimum IoU with the last box of the tracked face for a detection to continue
      the track.
    max_gap: after this many consecutive frames without the tracked face, the selector picks
      again (among the faces of the next frame with any).

  Returns:
    boxes [N, 4] int64 (zeros where not found) and found [N] bool.
  """
  selector = selector or FaceSelector()
  n = len(detections)
  boxes = np.zeros((n, 4), np.int64)
  found = np.zeros((n,), bool)
  cut_set = set(int(c) for c in cuts)
  last = None
  missing = 0
  for i, (det_boxes, det_scores) in enumerate(detections):
    if i in cut_set or missing >= max_gap:
      last = None
    det_boxes = np.asarray(det_boxes).reshape(-1, 4)
    j = None
    if len(det_boxes) and last is None:
      j = selector.choose(det_boxes, det_scores)
    elif len(det_boxes):
      overlaps = iou(last, det_boxes)
      j = int(np.argmax(overlaps))
      if overlaps[j] < iou_threshold:
        j = None
    if j is None:
      missing += 1
      continue
    boxes[i] = det_boxes[j]
    found[i] = True
    last = det_boxes[j]
    missing = 0
  return boxes, found


def segments_from_cuts(num_frames: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
  """Half-open [start, stop) frame ranges between scene cuts (a cut starts a segment)."""
  edges = sorted({0, num_frames, *(int(c) for c in cuts if 0 < int(c) < num_frames)})
  return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class SceneCutDetector:
  """Flags hard cuts between consecutive frames from their colour histograms.

  `update(frame)` returns True when `frame` starts a new scene: half the L1 distance between
  the normalised 16-bin-per-channel RGB histograms of this and the previous frame (computed on
  every 4th pixel in each direction) exceeds `threshold` (0 = identical colours, 1 = disjoint).

  Attributes:
    threshold: 0.5 by default; fades and fast pans stay well below it, a cut between two
      different shots is usually above 0.6. Set > 1 to disable.
  """

  def __init__(self, threshold: float = 0.5, bins: int = 16):
    self.threshold = float(threshold)
    self.bins = int(bins)
    self._prev: np.ndarray | None = None

  def histogram(self, frame: np.ndarray) -> np.ndarray:
    """[3 * bins] float64 normalised RGB histogram of a [H, W, 3] uint8 frame."""
    small = np.asarray(frame)[::4, ::4].reshape(-1, 3)
    idx = (small.astype(np.int64) * self.bins) >> 8  # [P, 3] in 0..bins-1
    hist = np.concatenate([np.bincount(idx[:, c], minlength=self.bins) for c in range(3)])
    return hist / max(1, len(small))

  def update(self, frame: np.ndarray) -> bool:
    hist = self.histogram(frame)
    prev, self._prev = self._prev, hist
    if prev is None:
      return False
    return bool(0.5 * np.abs(hist - prev).sum() / 3.0 > self.threshold)
