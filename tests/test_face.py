"""Tests for diff2lip_jax.inference (faces, crops): dlib detection, pads, smoothing, crop and paste."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from diff2lip_jax.inference import crops as crop_lib
from diff2lip_jax.inference import faces
from diff2lip_jax.inference.crops import crop_faces, paste_faces, resize_bilinear
from diff2lip_jax.inference.faces import (DlibDetector, FaceDetector, describe_missing, find_faces,
                                          make_detector, missing_ranges, pad_boxes, smooth_boxes)

FACE_PNG = pathlib.Path(__file__).resolve().parents[1] / "examples" / "face.png"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
  """[512, 512, 3] uint8 RGB (examples/face.png, NASA public domain)."""
  return np.asarray(Image.open(FACE_PNG).convert("RGB"))


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
  return make_detector("dlib")


def test_make_detector(detector):
  assert isinstance(detector, DlibDetector)
  assert isinstance(detector, FaceDetector)
  with pytest.raises(ValueError, match="unknown face detector"):
    make_detector("nope")


def test_dlib_finds_astronaut_face(astronaut, detector):
  (box,) = detector.detect(astronaut[None])
  assert box is not None and box.dtype == np.int64 and box.shape == (4,)
  x1, y1, x2, y2 = box.tolist()
  # Measured: [175, 76, 266, 167]; the face is around x 180-260, y 80-170.
  assert 150 <= x1 < x2 <= 300 and 50 <= y1 < y2 <= 250
  assert 60 <= x2 - x1 <= 130 and 60 <= y2 - y1 <= 130
  # The best box is the face, not the weaker detection on the mission patch.
  boxes, scores = detector.detect_all(astronaut)
  np.testing.assert_array_equal(boxes[0], box)
  assert np.all(np.diff(scores) <= 0)
  # Higher threshold / no upsampling: exactly one detection.
  assert len(DlibDetector(upsample=0).detect_all(astronaut)[0]) == 1
  assert len(DlibDetector(min_score=0.5).detect_all(astronaut)[0]) == 1


def test_dlib_downscaled_detection(astronaut, detector):
  (full,) = detector.detect(astronaut[None])
  (small,) = DlibDetector(max_side=256).detect(astronaut[None])
  assert small is not None
  assert np.abs(small - full).max() <= 10  # same face, box in full-res pixels


def test_dlib_no_face():
  blank = np.full((1, 120, 160, 3), 128, np.uint8)
  assert make_detector().detect(blank) == [None]


def test_pad_boxes_clip():
  boxes = np.array([[10, 20, 50, 60], [0, 0, 100, 80], [90, 70, 98, 79]])
  out = pad_boxes(boxes, pads=(5, 10, 15, 20), frame_hw=(80, 100))
  # top 5, bottom 10, left 15, right 20; x in [0, 100], y in [0, 80].
  np.testing.assert_array_equal(out, [[0, 15, 70, 70], [0, 0, 100, 80], [75, 65, 100, 80]])
  assert out.dtype == np.int64
  np.testing.assert_array_equal(pad_boxes(boxes, (0, 0, 0, 0), (80, 100)), boxes)
  np.testing.assert_array_equal(pad_boxes(boxes[:1], (-2, -2, -2, -2)), [[12, 22, 48, 58]])


def test_smooth_boxes_hand_computed():
  # One coordinate moving 0, 10, ..., 60 over N=7 frames, T=5 (upstream in-place, int):
  #   i=0: mean(0,10,20,30,40)=20   i=1: mean(10..50)=30   i=2: mean(20..60)=40
  #   tail, window = rows 2..6 of the partly smoothed array:
  #   i=3: mean(40,30,40,50,60)=44  i=4: mean(40,44,40,50,60)=46.8->46
  #   i=5: mean(40,44,46,50,60)=48  i=6: mean(40,44,46,48,60)=47.6->47
  x = np.arange(7) * 10
  boxes = np.stack([x, x + 1, x + 100, np.full(7, 7)], axis=1)
  before = boxes.copy()
  out = smooth_boxes(boxes, window=5)
  np.testing.assert_array_equal(out[:, 0], [20, 30, 40, 44, 46, 48, 47])
  # x+1: 21, 31, 41, mean(41,31,41,51,61)=45, mean(41,45,41,51,61)=47.8->47,
  #      mean(41,45,47,51,61)=49, mean(41,45,47,49,61)=48.6->48
  np.testing.assert_array_equal(out[:, 1], [21, 31, 41, 45, 47, 49, 48])
  np.testing.assert_array_equal(out[:, 3], 7)
  assert out.dtype == np.int64
  np.testing.assert_array_equal(boxes, before)  # input untouched


def test_smooth_boxes_matches_upstream_loop():
  rng = np.random.default_rng(1)
  boxes = rng.integers(0, 500, (23, 4))
  ref = boxes.copy()  # upstream get_smoothened_boxes, verbatim semantics
  for i in range(len(ref)):
    window = ref[len(ref) - 5:] if i + 5 > len(ref) else ref[i:i + 5]
    ref[i] = np.mean(window, axis=0)
  np.testing.assert_array_equal(smooth_boxes(boxes, 5), ref)


def test_smooth_boxes_short_and_disabled():
  boxes = np.array([[0, 0, 10, 10], [3, 3, 13, 13], [9, 9, 19, 19]])
  # N < T: all rows are the window (in place): 4, mean(4,3,9)=5.33->5, mean(4,5,9)=6
  np.testing.assert_array_equal(smooth_boxes(boxes, 5)[:, 0], [4, 5, 6])
  np.testing.assert_array_equal(smooth_boxes(boxes, 1), boxes)


def test_missing_ranges():
  assert missing_ranges([True, False, True]) == [(1, 1)]
  assert missing_ranges([False, False, True, True, False]) == [(0, 1), (4, 4)]
  assert missing_ranges([True, True]) == []
  assert missing_ranges([False] * 3) == [(0, 2)]
  found = np.ones(40, bool)
  found[12:31] = False
  assert describe_missing(found) == "no face found in frames 12-30 (19 of 40 frames)"
  assert describe_missing([True]) == ""


def test_find_faces_marks_missing(astronaut, detector):
  blank = np.zeros_like(astronaut)
  frames = np.stack([astronaut, blank, astronaut])
  boxes, found = find_faces(frames, detector, pads=(0, 10, 0, 0), batch_size=2,
                            smooth_window=5, progress=False)
  np.testing.assert_array_equal(found, [True, False, True])
  assert missing_ranges(found) == [(1, 1)]
  (ref,) = detector.detect(astronaut[None])
  expected = ref + np.array([0, 0, 0, 10])
  # Middle box interpolated from its neighbours; smoothing of equal boxes is a no-op.
  np.testing.assert_array_equal(boxes, np.tile(expected, (3, 1)))
  assert boxes.dtype == np.int64


class _FakeDetector:
  """Returns preset boxes (None = no face) in order, to test find_faces' bookkeeping."""

  def __init__(self, boxes):
    self.boxes = list(boxes)
    self.calls = []

  def detect(self, frames):
    self.calls.append(len(frames))
    out, self.boxes = self.boxes[:len(frames)], self.boxes[len(frames):]
    return [None if b is None else np.asarray(b) for b in out]


def test_find_faces_interpolates_and_batches():
  frames = np.zeros((6, 100, 100, 3), np.uint8)
  det = _FakeDetector([None, [10, 10, 30, 30], None, None, [40, 10, 60, 30], [40, 10, 60, 30]])
  boxes, found = find_faces(frames, det, batch_size=4, smooth_window=1, progress=False)
  assert det.calls == [4, 2]
  np.testing.assert_array_equal(found, [False, True, False, False, True, True])
  np.testing.assert_array_equal(boxes[:, 0], [10, 10, 20, 30, 40, 40])
  none = find_faces(frames, _FakeDetector([None] * 6), progress=False)
  np.testing.assert_array_equal(none[0], np.tile([0, 0, 100, 100], (6, 1)))
  assert not none[1].any()


def test_resize_bilinear_geometry():
  img = np.arange(16, dtype=np.float32).reshape(4, 4)
  # Upscale x2 on the cv2 grid: src = (d + 0.5) / 2 - 0.5, clamped.
  up = resize_bilinear(img, (8, 8))
  np.testing.assert_allclose(up[0, :4], [0, 0.25, 0.75, 1.25])
  np.testing.assert_allclose(up[0, -1], 3)
  # Downscale x2 of a uint8 image = mean of each 2x2 block (no antialiasing needed).
  u8 = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
  down = resize_bilinear(u8[..., None].repeat(3, -1), (4, 4))
  expected = np.rint(u8.reshape(4, 2, 4, 2).astype(np.float64).mean(axis=(1, 3)))
  np.testing.assert_array_equal(down[..., 0], expected)
  assert down.dtype == np.uint8


def test_crop_faces_shapes(astronaut):
  boxes = np.array([[175, 76, 266, 167], [0, 0, 512, 512]])
  crops = crop_faces(np.stack([astronaut, astronaut]), boxes, size=128)
  assert crops.shape == (2, 128, 128, 3) and crops.dtype == np.uint8
  with pytest.raises(ValueError, match="empty or outside"):
    crop_faces(astronaut[None], np.array([[10, 10, 10, 20]]))


def test_paste_faces_outside_untouched(astronaut):
  rng = np.random.default_rng(0)
  frames = np.stack([astronaut, astronaut[::-1]])
  boxes = np.array([[175, 76, 266, 167], [3, 400, 131, 511]])
  faces = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
  out = paste_faces(frames, faces, boxes)
  assert out.shape == frames.shape and out.dtype == np.uint8
  assert out is not frames and not np.shares_memory(out, frames)
  for i, (x1, y1, x2, y2) in enumerate(boxes):
    inside = np.zeros(frames.shape[1:3], bool)
    inside[y1:y2, x1:x2] = True
    np.testing.assert_array_equal(out[i][~inside], frames[i][~inside])
    np.testing.assert_array_equal(out[i][inside].reshape(y2 - y1, x2 - x1, 3),
                                  resize_bilinear(faces[i], (y2 - y1, x2 - x1)))
  np.testing.assert_array_equal(frames[0], astronaut)  # input untouched


def test_crop_then_paste_is_close(astronaut, detector):
  boxes, _ = find_faces(astronaut[None], detector, progress=False)
  crop = crop_faces(astronaut[None], boxes, size=128)
  out = paste_faces(astronaut[None], crop, boxes)
  x1, y1, x2, y2 = boxes[0]
  diff = np.abs(out[0, y1:y2, x1:x2].astype(np.int16) - astronaut[y1:y2, x1:x2])
  assert diff.mean() < 3.0
  np.testing.assert_array_equal(out[0, :y1], astronaut[:y1])


def test_module_exports():
  for module in (faces, crop_lib):
    for name in module.__all__:
      assert hasattr(module, name)


def test_detect_all_frames_adapts_to_the_detector(astronaut, detector):
  """Detectors with detect_all_batch, detect_all or only detect all give (boxes, scores)."""

  class OnlyDetect:
    def detect(self, frames):
      return [np.array([1, 2, 30, 40]) if i == 0 else None for i in range(len(frames))]

  frames = np.stack([astronaut, np.full_like(astronaut, 128)])
  (b0, s0), (b1, s1) = faces.detect_all_frames(OnlyDetect(), frames)
  np.testing.assert_array_equal(b0, [[1, 2, 30, 40]])
  assert b1.shape == (0, 4) and s1.shape == (0,)
  (boxes, scores), (none, _) = faces.detect_all_frames(detector, frames)
  np.testing.assert_array_equal(boxes, detector.detect_all(astronaut)[0])
  assert len(none) == 0
