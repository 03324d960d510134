"""Known-answer tests of every metric: PSNR, SSIM, FID, LMD, LSE-C/LSE-D."""

import pathlib

import numpy as np
import pytest
import scipy.linalg
import skimage.metrics

import python_speech_features
from diff2lip_jax.inference import crops
from diff2lip_jax.media import video as video_lib
from diff2lip_jax import sharding
from diff2lip_jax.evaluation import lse, metrics
from diff2lip_jax.evaluation.landmarks import LandmarkDetector

RNG = np.random.default_rng(0)
FACE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "face.png"
FACE_BOX = (175, 76, 266, 167)  # dlib's box on examples/face.png (examples/README.md)


# --- PSNR / SSIM ------------------------------------------------------------------------------


def test_psnr_known_values_and_skimage():
  a = RNG.uniform(0.2, 0.8, (2, 32, 32, 3)).astype(np.float32)
  assert np.all(np.isinf(metrics.psnr(a, a)))
  np.testing.assert_allclose(metrics.psnr(a, a + 0.1), 20.0, rtol=1e-4)  # MSE 0.01
  b = np.clip(a + RNG.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
  want = [skimage.metrics.peak_signal_noise_ratio(x, y, data_range=1.0) for x, y in zip(a, b)]
  np.testing.assert_allclose(metrics.psnr(a, b), want, rtol=1e-5)


def test_ssim_known_values_and_skimage():
  a = RNG.uniform(size=(2, 40, 36, 3)).astype(np.float32)
  np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-6)
  # Two constant images: only the luminance term, (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1).
  c1 = 0.01 ** 2
  want = (2 * 0.2 * 0.4 + c1) / (0.2 ** 2 + 0.4 ** 2 + c1)
  np.testing.assert_allclose(metrics.ssim(np.full((1, 16, 16, 3), 0.2), np.full((1, 16, 16, 3),
                                                                                0.4)), want,
                             rtol=1e-5)
  b = np.clip(a + RNG.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
  want = [skimage.metrics.structural_similarity(x, y, channel_axis=-1, data_range=1.0,
                                                gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False)
          for x, y in zip(a.astype(np.float64), b.astype(np.float64))]
  np.testing.assert_allclose(metrics.ssim(a, b), want, atol=2e-5)


def test_image_metrics_mouth_region():
  real = RNG.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
  fake = real.copy()
  fake[:, :64] = 255 - fake[:, :64]          # only the upper half differs
  m = metrics.image_metrics(real, fake)
  assert np.all(np.isinf(m["psnr_mouth"])) and np.allclose(m["ssim_mouth"], 1.0, atol=1e-6)
  assert np.all(m["psnr"] < 20) and np.all(m["ssim"] < 0.9)
  assert metrics.mouth_rows(128) == slice(64, 128)


# --- FID --------------------------------------------------------------------------------------


def _pytorch_fid_reference(mu1, s1, mu2, s2, eps=1e-6):
  """pytorch-fid `calculate_frechet_distance` in float64, with scipy.linalg.sqrtm."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  covmean = covmean[0] if isinstance(covmean, tuple) else covmean
  if not np.isfinite(covmean).all():
    off = np.eye(len(s1)) * eps
    covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
  covmean = np.real(covmean)
  return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_frechet_distance_known_answers():
  mu = RNG.normal(size=6)
  a, b = RNG.uniform(0.5, 2, 6), RNG.uniform(0.5, 2, 6)
  # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2.
  want = np.sum(mu ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(metrics.frechet_distance(np.zeros(6), np.diag(a), mu, np.diag(b)),
                             want, rtol=1e-10)
  assert abs(metrics.frechet_distance(mu, np.diag(a), mu, np.diag(a))) < 1e-10


@pytest.mark.parametrize("n,d", [(60, 24), (200, 64)])
def test_fid_matches_scipy_sqrtm_reference(n, d):
  x = RNG.normal(size=(n, d))
  y = RNG.normal(size=(n + 7, d)) @ RNG.normal(size=(d, d)) * 0.3 + 0.2
  mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
  mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
  want = _pytorch_fid_reference(mu1, s1, mu2, s2)
  np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-9)
  np.testing.assert_allclose(metrics.fid_from_features(x, y), want, rtol=1e-9)


def test_feature_stats_accumulate_in_chunks():
  x = RNG.normal(size=(30, 8)) * 2 + 1
  for chunks in ([30], [3, 27], [5, 5, 20]):     # rows kept until > 8, then sums only
    st = metrics.FeatureStats(8)
    start = 0
    for c in chunks:
      st.add(x[start:start + c])
      start += c
    np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.covariance, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    r = st.factor()
    np.testing.assert_allclose(r @ r.T, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
  small = metrics.FeatureStats(8)
  small.add(x[:5])                                 # fewer rows than dims: exact data factor
  assert small.factor().shape == (8, 5)


def test_fid_from_features_identical_shifted_and_singular():
  f = RNG.normal(size=(50, 16)).astype(np.float32)
  assert abs(metrics.fid_from_features(f, f)) < 1e-9
  shift = RNG.normal(size=16).astype(np.float32)
  np.testing.assert_allclose(metrics.fid_from_features(f, f + shift),
                             np.sum(shift.astype(np.float64) ** 2), rtol=1e-5)
  few = RNG.normal(size=(5, 32))  # N < D: singular covariances
  assert abs(metrics.fid_from_features(few, few)) < 1e-9
  np.testing.assert_allclose(metrics.fid_from_features(few, few + 1.0), 32.0, rtol=1e-9)
  with pytest.raises(ValueError, match="N >= 2"):
    metrics.fid_from_features(f[:1], f)


# --- LMD --------------------------------------------------------------------------------------


def test_landmark_distance_known_shift_and_missing_frames():
  pts = RNG.uniform(0, 128, (4, 68, 2))
  moved = pts.copy()
  moved[:, 48:68] += [3.0, 4.0]           # mouth moved by 5 px; the rest moved elsewhere too
  moved[:, :48] += 100.0
  assert metrics.landmark_distance(pts, moved) == pytest.approx(5.0)
  assert metrics.landmark_distance(pts, pts) == 0.0
  moved[1] = np.nan                      # a frame without landmarks is skipped
  assert metrics.landmark_distance(pts, moved) == pytest.approx(5.0)


@pytest.fixture(scope="module")
def face_crop():
  frame = video_lib.read_video(FACE).frames
  return crops.crop_faces(frame, np.array([FACE_BOX]), 128)


def test_dlib_mouth_landmarks_on_a_real_face(face_crop):
  lm = LandmarkDetector()(face_crop)
  assert lm.shape == (1, 68, 2)
  mouth = lm[0, 48:68]
  assert np.all(mouth[:, 1] > 64) and np.all(mouth[:, 1] < 128)   # lower half of the crop
  assert np.all(mouth[:, 0] > 16) and np.all(mouth[:, 0] < 112)
  assert metrics.landmark_distance(lm, LandmarkDetector()(face_crop)) == 0.0
  # Content shifted 4 px right under a fixed face rectangle: the mouth follows (~4 px).
  fixed = LandmarkDetector(detect=False)
  shifted = np.roll(face_crop, 4, axis=2)
  d = metrics.landmark_distance(fixed(face_crop), fixed(shifted))
  assert 2.5 < d < 5.5, d


# --- LSE --------------------------------------------------------------------------------------


def _calc_pdist_reference(v, a, vshift):
  """syncnet_python calc_pdist, written as the loop it is."""
  win = 2 * vshift + 1
  padded = np.concatenate([np.zeros((vshift, a.shape[1])), a, np.zeros((vshift, a.shape[1]))])
  out = np.zeros((len(v), win))
  for i in range(len(v)):
    for j in range(win):
      out[i, j] = np.sqrt(np.sum((v[i] - padded[i + j] + 1e-6) ** 2))
  return out


def test_sync_distances_match_calc_pdist():
  v, a = RNG.normal(size=(12, 8)), RNG.normal(size=(12, 8))
  np.testing.assert_allclose(metrics.sync_distances(v, a, 3), _calc_pdist_reference(v, a, 3),
                             rtol=1e-12)


@pytest.mark.parametrize("k", [-2, 0, 3])
def test_sync_scores_find_a_constructed_shift(k):
  n, vshift = 40, 5
  v = RNG.normal(size=(n, 16))
  a = np.roll(v, k, axis=0)              # audio window i + k matches video window i
  d = metrics.sync_distances(v, a, vshift)
  s = metrics.sync_scores(d, vshift)
  assert s["av_offset"] == -k
  mdist = d.mean(0)
  assert s["lse_d"] == pytest.approx(mdist.min())
  assert s["lse_c"] == pytest.approx(np.median(mdist) - mdist.min())
  assert s["lse_c"] > 1.0


def test_sync_scores_median_convention():
  s = metrics.sync_scores(np.array([[3.0, 1.0, 2.0]]))
  assert s == {"lse_d": 1.0, "lse_c": 1.0, "av_offset": 0}
  s = metrics.sync_scores(np.array([[4.0, 1.0, 2.0, 3.0]]), vshift=1)  # even: lower middle
  assert s["lse_c"] == pytest.approx(1.0) and s["av_offset"] == 0


def test_mfcc_is_python_speech_features_on_int16():
  t = np.arange(6400) / 16000
  wav = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
  m = lse.mfcc(wav)
  assert m.shape == (13, 1 + int(np.ceil((6400 - 400) / 160)))
  pcm = np.round(wav.astype(np.float64) * 32768).astype(np.int16)
  np.testing.assert_allclose(m, python_speech_features.mfcc(pcm, 16000).T, rtol=1e-5, atol=1e-4)
  assert lse.num_windows(10, 6400) == 5 and lse.num_windows(10, 3000) == 0


def test_lse_windows_align_video_frames_with_mfcc_steps(monkeypatch):
  """Window i pairs frames i..i+4 with MFCC steps 4i..4i+19: with features that encode the
  window position, distances vanish at offset 0."""
  n_frames, n_samples = 16, 16 * 640
  monkeypatch.setattr(lse, "mfcc", lambda wav: np.tile(np.arange(70, dtype=np.float32), (13, 1)))
  scorer = object.__new__(lse.SyncScorer)
  scorer.mesh, scorer.batch_size, scorer.vshift = sharding.local_mesh(), 4, 3
  scorer.variables = None
  mean = lambda x: np.asarray(x).reshape(len(x), -1).mean(1, keepdims=True)
  scorer._lips = lambda v, x: mean(x)                        # frames i..i+4: i + 2
  scorer._audio = lambda v, x: (mean(x) - 9.5) / 4 + 2       # MFCC steps 4i..4i+19: i + 2
  frames = np.repeat(np.arange(n_frames, dtype=np.uint8)[:, None, None, None], 3, axis=3)
  frames = np.broadcast_to(frames, (n_frames, 32, 32, 3)).copy()
  s = scorer(frames, np.zeros(n_samples, np.float32))
  assert s["lse_windows"] == 11 and s["av_offset"] == 0
  assert s["lse_d"] < 1e-5


def test_prepare_frames_bgr_224():
  rgb = np.zeros((2, 50, 60, 3), np.uint8)
  rgb[..., 0] = 200  # red
  out = lse.prepare_frames(rgb)
  assert out.shape == (2, 224, 224, 3) and np.all(out[..., 2] == 200) and np.all(out[..., 0] == 0)
