"""S3FD in Flax: parity with upstream's network outputs, box decoding + NMS, converter, detector."""

import json
import subprocess
import sys
import pathlib

import jax
import numpy as np
import pytest

from diff2lip_jax.models import torch_io
from diff2lip_jax.inference import faces
from diff2lip_jax.inference import s3fd as s3fd_detector
from diff2lip_jax.models import s3fd

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeded(upstream_dir):
  """Upstream's seeded S3FD state_dict (`seeded_weights.py`, no torch needed)."""
  sys.path.insert(0, str(upstream_dir))
  try:
    from seeded_weights import seeded_state_dict  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  keys = json.loads((upstream_dir / "s3fd_keys.json").read_text())
  return seeded_state_dict(keys["state_dict"], keys["seed"])


@pytest.fixture(scope="module")
def params(seeded):
  return s3fd.convert_s3fd_state_dict(seeded)


@pytest.fixture(scope="module")
def io(upstream_dir):
  with np.load(upstream_dir / "s3fd_io.npz") as z:
    return {k: (z[k].transpose(0, 2, 3, 1) if z[k].ndim == 4 else z[k]) for k in z.files}


@pytest.fixture(scope="module")
def outputs(params, io):
  return [np.asarray(o) for o in jax.jit(s3fd.S3FD().apply)({"params": params}, io["image"])]


def test_network_matches_upstream(outputs, io):
  worst = 0.0
  for i, out in enumerate(outputs):
    ref = io[f"out{i}"]
    assert out.shape == ref.shape, (i, out.shape, ref.shape)
    worst = max(worst, float(np.abs(out - ref).max() / np.abs(ref).max()))
  assert worst < 1e-4, worst  # measured 8e-6 (float32)


def _reference_detect(outs, image_hw):
  """Upstream's detect.py / bbox.py / sfd_detector.py post-processing, one anchor at a time."""
  cands = []
  for i in range(6):
    cls, reg = outs[2 * i][0], outs[2 * i + 1][0]  # [h, w, 2], [h, w, 4]
    e = np.exp(cls - cls.max(-1, keepdims=True))
    prob = (e / e.sum(-1, keepdims=True))[..., 1]
    stride = 2 ** (i + 2)
    for hi, wi in zip(*np.where(prob > 0.05)):
      axc, ayc = stride / 2 + wi * stride, stride / 2 + hi * stride
      loc = reg[hi, wi]
      cx, cy = axc + loc[0] * 0.1 * stride * 4, ayc + loc[1] * 0.1 * stride * 4
      w, h = stride * 4 * np.exp(loc[2] * 0.2), stride * 4 * np.exp(loc[3] * 0.2)
      x1, y1 = cx - w / 2, cy - h / 2
      cands.append([x1, y1, x1 + w, y1 + h, prob[hi, wi]])
  dets = np.array(cands, np.float32).reshape(-1, 5)
  keep = s3fd_detector.nms(dets[:, :4], dets[:, 4], 0.3)
  dets = [d for d in dets[keep] if d[-1] > 0.5]
  boxes = [[int(v) for v in np.clip(d, 0, None)[:-1]] for d in dets]
  h, w = image_hw
  boxes = [[min(b[0], w), min(b[1], h), min(b[2], w), min(b[3], h)] for b in boxes]
  # Boxes entirely outside the image (empty after clipping) cannot be cropped: dropped here,
  # where upstream would fail later in cv2.resize.
  return [b for b in boxes if b[2] > b[0] and b[3] > b[1]]


def test_decoding_and_nms_match_upstream_procedure(io):
  # Sharpen upstream's class maps so that many anchors score > 0.5 and NMS has work to do.
  outs = [io[f"out{i}"] * (12.0 if i % 2 == 0 else 1.0) for i in range(12)]
  hw = io["image"].shape[1:3]
  scores, boxes = jax.device_get(s3fd_detector.decode_outputs([np.asarray(o) for o in outs]))
  got, got_scores = s3fd_detector.decode_detections(scores[0], boxes[0], hw)
  want = _reference_detect(outs, hw)
  assert len(want) >= 3
  np.testing.assert_array_equal(got, np.array(want, np.int64).reshape(-1, 4))
  assert np.all(np.diff(got_scores) <= 0) and np.all(got_scores > 0.5)


def test_nms_hand_example():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 9, 10]], np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
  # Box 3 (0.95) suppresses 0 (IoU 0.91) and 1 (IoU ~0.63 with +1 areas); 2 is apart.
  np.testing.assert_array_equal(s3fd_detector.nms(boxes, scores, 0.3), [3, 2])
  assert s3fd_detector.nms(np.zeros((0, 4)), np.zeros(0)).size == 0


def test_converter_names_and_errors(seeded, params, tmp_path):
  flat = {s3fd.s3fd_upstream_name(k): v.shape
          for k, v in __import__("flax").traverse_util.flatten_dict(params).items()}
  assert flat["conv1_1.weight"] == (3, 3, 3, 64)  # OIHW -> HWIO
  assert flat["conv3_3_norm.weight"] == (256,)
  assert set(flat) == set(seeded)
  broken = dict(seeded)
  del broken["fc7.weight"]
  broken["extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(torch_io.ConversionError, match="missing: fc7.weight.*unexpected: extra"):
    s3fd.convert_s3fd_state_dict(broken)
  # An .npz of the upstream state_dict, and the converted .npz, load to the same params.
  np.savez(tmp_path / "upstream.npz", **seeded)
  saved = s3fd.save_s3fd_params(tmp_path / "flax.npz", params)
  for path in (tmp_path / "upstream.npz", saved):
    got = s3fd.load_s3fd_params(path)
    jax.tree.map(np.testing.assert_array_equal, got, params)


def test_converter_cli_adds_s3fd_to_a_checkpoint(seeded, params, small_checkpoint, tmp_path):
  import shutil
  ckpt = tmp_path / "ckpt"
  shutil.copytree(small_checkpoint, ckpt)
  np.savez(tmp_path / "s3fd_state.npz", **seeded)
  r = subprocess.run([sys.executable, "-m", "diff2lip_jax.convert", f"--output_dir={ckpt}",
                      f"--s3fd_checkpoint={tmp_path / 's3fd_state.npz'}"],
                     capture_output=True, text=True, cwd=REPO, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "S3FD" in r.stdout
  jax.tree.map(np.testing.assert_array_equal, s3fd.load_s3fd_params(ckpt / "s3fd.npz"), params)
  r = subprocess.run([sys.executable, "-m", "diff2lip_jax.convert", f"--output_dir={ckpt}",
                      f"--s3fd_checkpoint={tmp_path / 'nope.pth'}"],
                     capture_output=True, text=True, cwd=REPO, check=False)
  assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error:")


def test_preprocess_is_upstream_bgr_minus_mean():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
  want = frames[..., ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32)
  np.testing.assert_array_equal(np.asarray(s3fd_detector.preprocess(frames)), want)
  np.testing.assert_array_equal(np.asarray(s3fd_detector.preprocess(frames, bgr=False)),
                                frames.astype(np.float32) - np.array([104, 117, 123]))


def test_detector_batches_and_pads(params):
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, 64, 96, 3), dtype=np.uint8)
  det = s3fd_detector.S3FDDetector(params, batch_size=2)
  # Batched with padding (3 frames, batches of 2) = one frame at a time.
  all_dets = det.detect_all_batch(frames)
  assert len(all_dets) == 3
  for frame, (boxes, scores) in zip(frames, all_dets):
    b1, _ = det.detect_all(frame)
    np.testing.assert_array_equal(boxes, b1)
    assert boxes.dtype == np.int64 and boxes.shape[1:] == (4,) and len(scores) == len(boxes)
  assert len(det.detect(frames)) == 3
  assert len(faces.detect_all_frames(det, frames)) == 3


def test_make_detector_s3fd(params, tmp_path):
  with pytest.raises(ValueError, match="S3FD detector needs its weights"):
    faces.make_detector("s3fd")
  path = s3fd.save_s3fd_params(tmp_path / "w.npz", params)
  det = faces.make_detector("s3fd", path=path, batch_size=4)
  assert isinstance(det, s3fd_detector.S3FDDetector) and isinstance(det, faces.FaceDetector)
