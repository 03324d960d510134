"""Tests for diff2lip_jax.inference.blend: feathered paste with colour matching vs upstream's hard paste."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from diff2lip_jax.inference import blend
from diff2lip_jax.inference.crops import crop_faces, paste_faces

FACE_PNG = pathlib.Path(__file__).resolve().parents[1] / "examples" / "face.png"
BOX = np.array([165, 66, 276, 187])  # dlib's box on face.png, padded by 10 px (111 x 121 px)
SEAM_THRESHOLD = 2.0  # grey levels: allowed rise of the mean step across the box border


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
  return np.asarray(Image.open(FACE_PNG).convert("RGB"))


@pytest.fixture(scope="module")
def drifted(frame) -> np.ndarray:
  """A 128x128 'generation' whose lower half drifted in colour (+25 R, -15 G, +10 B) plus noise,
  the failure that shows as a box around the mouth."""
  crop = crop_faces(frame[None], BOX[None], 128)[0].astype(np.float32)
  rng = np.random.default_rng(0)
  crop[64:] += np.array([25.0, -15.0, 10.0]) + rng.normal(0, 4, crop[64:].shape)
  return np.clip(np.rint(crop), 0, 255).astype(np.uint8)


def _outside(shape, box):
  x1, y1, x2, y2 = box
  m = np.ones(shape[:2], bool)
  m[y1:y2, x1:x2] = False
  return m


def test_feather_mask_shape_and_borders():
  h, w = 121, 111
  m = blend.feather_mask((h, w), 0.5, 0.1)
  f = blend.feather_width((h, w), 0.1)
  assert m.shape == (h, w) and m.dtype == np.float32
  assert m.min() == 0.0 and m.max() == 1.0
  assert np.all(m[:, 0] == 0) and np.all(m[:, -1] == 0) and np.all(m[-1] == 0)
  top = int(np.floor((1 - 0.5) * h - f / 2))
  assert np.all(m[:top] == 0)  # the upper face is never touched
  core = m[int(0.5 * h + f):h - int(f) - 1, int(f) + 1:w - int(f) - 1]
  assert np.all(core == 1.0)
  # Monotone ramps: up from the left edge, down to the bottom edge.
  row = m[int(0.8 * h)]
  assert np.all(np.diff(row[:w // 2]) >= 0) and np.all(np.diff(row[w // 2:]) <= 0)
  col = m[:, w // 2]
  assert np.all(np.diff(col[h // 2 + int(f):]) <= 0)


@pytest.mark.parametrize("mode", ["feather", "hard"])
def test_pixels_outside_box_untouched(frame, drifted, mode):
  out = blend.blend_face(frame, drifted, BOX, mode=mode)
  outside = _outside(frame.shape, BOX)
  np.testing.assert_array_equal(out[outside], frame[outside])
  assert out.dtype == np.uint8 and out.shape == frame.shape
  assert not np.array_equal(out, frame)


def test_hard_is_upstream_paste(frame, drifted):
  out = blend.blend_face(frame, drifted, BOX, mode="hard")
  np.testing.assert_array_equal(out, paste_faces(frame[None], drifted[None], BOX[None])[0])


def test_feather_leaves_no_seam(frame, drifted):
  assert blend.seam_step(frame, frame, BOX) == 0.0
  hard = blend.seam_step(blend.blend_face(frame, drifted, BOX, mode="hard"), frame, BOX)
  soft = blend.seam_step(blend.blend_face(frame, drifted, BOX, mode="feather"), frame, BOX)
  assert hard > 10.0, hard  # upstream's visible rectangle
  assert soft <= SEAM_THRESHOLD, soft
  # Inside the box the change ramps in from 0 at the border over the feather width: the mean
  # |output - input| per column of the lower face rises in small steps.
  out = blend.blend_face(frame, drifted, BOX, mode="feather", color_match=False)
  x1, y1, x2, y2 = BOX
  delta = np.abs(out.astype(np.float32) - frame)[y1 + (y2 - y1) // 2:y2 - 12, x1:x2].mean((0, 2))
  ramp = int(np.ceil(blend.feather_width((y2 - y1, x2 - x1), 0.1)))
  assert delta[0] == 0.0
  assert np.all(np.diff(delta[:ramp + 1]) < 0.35 * delta[ramp + 1: ramp + 6].mean()), delta[:15]


def test_color_match_pulls_generation_to_skin(frame, drifted):
  x1, y1, x2, y2 = BOX
  lower = (slice(y1 + (y2 - y1) // 2, y2), slice(x1, x2))
  plain = blend.blend_face(frame, drifted, BOX, color_match=False)[lower].astype(np.float32)
  matched = blend.blend_face(frame, drifted, BOX, color_match=True)[lower].astype(np.float32)
  ref = frame[lower].astype(np.float32)
  err_plain = np.abs(plain.mean((0, 1)) - ref.mean((0, 1))).max()
  err_matched = np.abs(matched.mean((0, 1)) - ref.mean((0, 1))).max()
  assert err_matched < 0.5 * err_plain, (err_plain, err_matched)


def test_match_color_statistics():
  rng = np.random.default_rng(1)
  orig = rng.normal(120, 10, (40, 40, 3))
  gen = rng.normal(150, 12, (40, 40, 3)).astype(np.float32)
  band = np.zeros((40, 40), bool)
  band[:, :10] = True
  out = blend.match_color(gen, orig, band)
  np.testing.assert_allclose(out[band].mean(0), orig[band].mean(0), atol=1e-3)
  assert np.array_equal(blend.match_color(gen, orig, np.zeros((40, 40), bool)), gen)


def test_alpha_crossfade(frame, drifted):
  np.testing.assert_array_equal(blend.blend_face(frame, drifted, BOX, alpha=0.0), frame)
  full = blend.blend_face(frame, drifted, BOX, mode="hard").astype(np.float32)
  half = blend.blend_face(frame, drifted, BOX, mode="hard", alpha=0.5).astype(np.float32)
  np.testing.assert_allclose(half, (full + frame) / 2, atol=1.0)
  batch = blend.blend_faces(np.stack([frame] * 2), np.stack([drifted] * 2),
                            np.stack([BOX] * 2), alpha=[1.0, 0.0])
  np.testing.assert_array_equal(batch[1], frame)
  np.testing.assert_array_equal(batch[0], blend.blend_face(frame, drifted, BOX))


def test_bad_arguments(frame, drifted):
  with pytest.raises(ValueError, match="blend mode"):
    blend.blend_face(frame, drifted, BOX, mode="soft")
  with pytest.raises(ValueError, match="outside"):
    blend.blend_face(frame, drifted, [0, 0, 600, 10])
