"""Whole-pipeline parity with upstream's own `generate.py` (../shared/upstream/e2e_small.npz).

Upstream ran end to end with the small model (cross mode, pads 0, ddim25, clip_denoised, seed-7
noise) on 20 frames of a face moving 1 px per frame, with S3FD's raw output replaced by known
boxes. The inference core with `preset="upstream"`, those boxes as the detector's output and that
noise must reproduce it stage by stage.
"""

import numpy as np
import pytest

from diff2lip_jax.inference import checkpoints, faces
from diff2lip_jax.inference.options import LipsyncOptions
from diff2lip_jax.inference.pipeline import lipsync
from diff2lip_jax.media.video import Video


class _InjectedDetector:
  """Returns upstream's injected raw S3FD boxes (score 0.99), frame after frame in scan order."""

  def __init__(self, raw_boxes: np.ndarray):
    self.raw = np.asarray(raw_boxes, np.int64)
    self.next = 0

  def detect_all(self, frame):
    del frame
    box = self.raw[self.next]
    self.next += 1
    return box[None], np.array([0.99])


@pytest.fixture(scope="module")
def e2e(upstream_dir):
  with np.load(upstream_dir / "e2e_small.npz") as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def run(e2e, small_model_params):
  model, params = small_model_params
  n = len(e2e["frames_in"])
  video = Video(frames=e2e["frames_in"], fps=float(e2e["fps"]),
                times=np.arange(n) / float(e2e["fps"]))
  trace = {}
  result = lipsync(video, e2e["audio_16k"],
                   checkpoint=checkpoints.LoadedModel(model, params, {}, "tfg_small"),
                   preset="upstream", init_noise=e2e["init_noise"], progress=False,
                   detector=_InjectedDetector(e2e["raw_boxes"]), trace=trace)
  return result, trace


def test_smoothing_probe_is_upstream(e2e):
  np.testing.assert_array_equal(faces.smooth_boxes(e2e["smooth_probe_in"]),
                                e2e["smooth_probe_out"])


def test_boxes_frame_count_and_mel_windows(e2e, run):
  result, trace = run
  np.testing.assert_array_equal(trace["boxes"], e2e["boxes"])
  assert len(result.frames) == len(e2e["frames_out"]) == 17
  np.testing.assert_array_equal(trace["mel_window_start"], e2e["mel_window_start"])
  err = np.abs(trace["indiv_mels"] - e2e["indiv_mels"]).max()
  print(f"indiv_mels max abs error {err:.2e}")
  assert err <= 1e-4
  np.testing.assert_array_equal(result.audio, e2e["audio_out"])


def test_crops_and_model_inputs(e2e, run):
  _, trace = run
  crop_err = np.abs(trace["crops"].astype(int) - e2e["crops"].astype(int))
  nchw = lambda x: np.asarray(x).transpose(0, 3, 1, 2)
  cond_err = np.abs(nchw(trace["cond_img"]) - e2e["model_input_cond"]) * 127.5
  ref_err = np.abs(nchw(trace["ref_img"]) - e2e["model_input_ref"]) * 127.5
  print(f"crops: max {crop_err.max()} grey levels, {np.mean(crop_err == 0):.4%} equal; "
        f"cond max {cond_err.max():.3f}, ref max {ref_err.max():.3f} grey levels")
  # The issue asks <= 1 grey level; OpenCV's own resize makes the crops exact (seen: 0).
  assert crop_err.max() == 0 and cond_err.max() <= 1e-3 and ref_err.max() <= 1e-3


def test_generated_pasted_and_output_frames(e2e, run):
  result, trace = run
  lower = slice(64, None)  # the sampled rows; the top half is the input crop (checked above)
  same_sign = np.mean(np.sign(trace["generated"][:, lower]) ==
                      np.sign(e2e["generated"][:, lower]))
  pasted = np.abs(trace["pasted_crops"].astype(int) - e2e["pasted_crops"].astype(int))
  frames = np.abs(result.frames.astype(int) - e2e["frames_out"].astype(int))
  print(f"generated: {same_sign:.4%} equal signs; pasted crops {np.mean(pasted == 0):.4%} equal "
        f"(max {pasted.max()}); frames_out {np.mean(frames == 0):.4%} equal (max {frames.max()})")
  # Asked: >= 99.9 % equal signs; >= 99 % equal pixels, none off by > 2. Seen: 100 % signs,
  # pasted 99.9999 % (max 1), frames_out 100 %.
  assert same_sign >= 0.9999
  assert np.mean(frames == 0) >= 0.9999 and frames.max() <= 2
  assert np.mean(pasted == 0) >= 0.9999 and pasted.max() <= 2


def test_upstream_preset_needs_s3fd_weights(e2e, small_model_params):
  model, params = small_model_params
  video = Video(frames=e2e["frames_in"][:6], fps=25.0, times=np.arange(6) / 25)
  with pytest.raises(ValueError, match="S3FD face detection needs its weights"):
    lipsync(video, e2e["audio_16k"], checkpoint=(model, params), preset="upstream",
            init_noise=e2e["init_noise"], progress=False)


def test_upstream_options():
  opts = LipsyncOptions.preset("upstream")
  assert (opts.detector, opts.blend, opts.dtype, opts.end, opts.uint8, opts.crf) == (
      "s3fd", "hard", "float32", "last_full_window", "truncate", 23)
  with pytest.raises(ValueError, match="unknown preset"):
    LipsyncOptions.preset("fast")
  with pytest.raises(ValueError, match="blend must be one of"):
    LipsyncOptions.preset("default", blend="soft")
