"""Tests for diff2lip_jax.inference.tracking (face choice, IoU tracking, scene cuts) and faces.finalize_boxes."""

import numpy as np
import pytest

from diff2lip_jax.inference import faces, tracking
from diff2lip_jax.inference.tracking import FaceSelector, parse_face, track_faces

LEFT = np.array([10, 20, 60, 80])    # 50 x 60
RIGHT = np.array([200, 30, 270, 110])  # 70 x 80 (larger)


def _dets(*boxes):
  b = np.array(boxes, np.int64).reshape(-1, 4)
  return b, np.linspace(1.0, 0.5, len(b))


def test_parse_face():
  assert parse_face("largest") == FaceSelector("largest")
  assert parse_face(None) == FaceSelector("largest")
  assert parse_face("1") == FaceSelector("index", index=1)
  assert parse_face(2) == FaceSelector("index", index=2)
  assert parse_face("320,180") == FaceSelector("point", point=(320.0, 180.0))
  assert parse_face("(12.5, 40)") == FaceSelector("point", point=(12.5, 40.0))
  for bad in ("biggest", "-1", "1,2,3", ""):
    with pytest.raises(ValueError, match="--face"):
      parse_face(bad)


def test_selector_choices():
  boxes = np.stack([RIGHT, LEFT])  # detector order: right first
  assert FaceSelector("largest").choose(boxes) == 0
  assert FaceSelector("index", index=0).choose(boxes) == 1  # leftmost
  assert FaceSelector("index", index=1).choose(boxes) == 0
  assert FaceSelector("index", index=5).choose(boxes) == 0  # clamped to the last
  assert FaceSelector("point", point=(30, 50)).choose(boxes) == 1  # inside LEFT
  assert FaceSelector("point", point=(190, 40)).choose(boxes) == 0  # nearest centre
  assert FaceSelector("score").choose(boxes, np.array([0.2, 0.9])) == 1


def test_iou():
  np.testing.assert_allclose(tracking.iou(LEFT, np.stack([LEFT, RIGHT, LEFT + [25, 0, 25, 0]])),
                             [1.0, 0.0, 25 * 60 / (2 * 3000 - 25 * 60)])


def test_tracking_follows_the_chosen_face_not_the_larger_one():
  # The left face drifts right by 4 px per frame; the right face is larger all along.
  dets = [_dets(RIGHT, LEFT + [4 * i, 0, 4 * i, 0]) for i in range(10)]
  dets[3] = _dets(RIGHT)  # left face missed in frame 3
  boxes, found = track_faces(dets, FaceSelector("index", index=0))
  assert found.tolist() == [True] * 3 + [False] + [True] * 6
  for i in (0, 1, 2, 4, 9):
    np.testing.assert_array_equal(boxes[i], LEFT + [4 * i, 0, 4 * i, 0])
  boxes, found = track_faces(dets)  # default: largest
  assert found.all() and np.all(boxes == RIGHT)


def test_tracking_restarts_at_scene_cut_and_after_long_gap():
  dets = [_dets(LEFT)] * 3 + [_dets(RIGHT)] * 3
  # Without a cut the right face does not overlap the tracked left face: lost.
  boxes, found = track_faces(dets, max_gap=10)
  assert found.tolist() == [True] * 3 + [False] * 3
  # With a cut at frame 3, the selector picks again.
  boxes, found = track_faces(dets, cuts=[3])
  assert found.all() and np.all(boxes[3:] == RIGHT)
  # Or after more than max_gap frames without the face.
  boxes, found = track_faces(dets, max_gap=1)
  assert found.tolist() == [True, True, True, False, True, True]


def test_scene_cut_detector():
  rng = np.random.default_rng(0)
  a = np.clip(rng.normal(60, 20, (90, 160, 3)), 0, 255).astype(np.uint8)
  b = np.clip(rng.normal(190, 20, (90, 160, 3)), 0, 255).astype(np.uint8)
  det = tracking.SceneCutDetector()
  flags = [det.update(f) for f in (a, np.roll(a, 5, axis=1), a, b, b)]
  assert flags == [False, False, False, True, False]
  assert tracking.segments_from_cuts(10, [3, 7]) == [(0, 3), (3, 7), (7, 10)]
  assert tracking.segments_from_cuts(4, []) == [(0, 4)]


def test_finalize_boxes_per_scene():
  raw = np.array([LEFT] * 4 + [RIGHT] * 4)
  found = np.array([True, False, True, True, True, True, True, True])
  out = faces.finalize_boxes(raw, found, (240, 320), pads=(0, 10, 0, 0),
                            segments=[(0, 4), (4, 8)])
  # Each scene is padded and smoothed on its own: no mixing of the two faces' boxes.
  np.testing.assert_array_equal(out[:4], np.tile(LEFT + [0, 0, 0, 10], (4, 1)))
  np.testing.assert_array_equal(out[4:], np.tile(RIGHT + [0, 0, 0, 10], (4, 1)))
  mixed = faces.finalize_boxes(raw, found, (240, 320))
  assert not np.array_equal(mixed[:4], out[:4])
  # A scene without any face gets full-frame boxes.
  out = faces.finalize_boxes(raw, np.array([False] * 4 + [True] * 4), (240, 320),
                            segments=[(0, 4), (4, 8)])
  np.testing.assert_array_equal(out[:4], np.tile([0, 0, 320, 240], (4, 1)))
