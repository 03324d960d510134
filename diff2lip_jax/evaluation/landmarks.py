"""68-point facial landmarks with dlib's shape predictor, for the LMD metric.

The predictor is `shape_predictor_68_face_landmarks.dat` shipped by the `face_recognition_models`
package (iBUG 300-W markup: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67). It
expects a face rectangle as dlib's HOG detector draws it; on each face crop we use the
detector's best box in that crop (`diff2lip_jax.inference.faces.DlibDetector`) and fall back to the whole
crop when it finds none (the crops are face boxes already).
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from diff2lip_jax.inference import faces

NUM_LANDMARKS = 68


@functools.cache
def _predictor():
  import dlib  # pylint: disable=import-outside-toplevel
  import face_recognition_models  # pylint: disable=import-outside-toplevel
  return dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())


class LandmarkDetector:
  """dlib 68-point landmarks of face crops.

  Attributes:
    detector: finds the face rectangle inside each crop; None uses the whole crop.
  """

  def __init__(self, detector: Optional[faces.DlibDetector] = None, detect: bool = True):
    self.detector = detector if detector is not None or not detect else faces.DlibDetector(
        upsample=1)
    self._predictor = _predictor()

  def __call__(self, crops: np.ndarray) -> np.ndarray:
    """Landmarks of each crop.

    Args:
      crops: [N, S, S, 3] uint8 RGB face crops (e.g. 128x128).

    Returns:
      [N, 68, 2] float64 (x, y) pixel coordinates in the crop (x right, y down, pixel
      centres at integers).
    """
    import dlib  # pylint: disable=import-outside-toplevel
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
      raise ValueError(f"crops must be [N, S, S, 3] uint8 RGB, got {crops.shape} {crops.dtype}")
    out = np.empty((len(crops), NUM_LANDMARKS, 2), np.float64)
    for i, crop in enumerate(crops):
      crop = np.ascontiguousarray(crop)
      h, w = crop.shape[:2]
      box = None
      if self.detector is not None:
        boxes, _ = self.detector.detect_all(crop)
        box = boxes[0] if len(boxes) else None
      x1, y1, x2, y2 = (int(v) for v in box) if box is not None else (0, 0, w, h)
      shape = self._predictor(crop, dlib.rectangle(x1, y1, x2 - 1, y2 - 1))
      out[i] = [(p.x, p.y) for p in shape.parts()]
    return out
