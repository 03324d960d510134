"""The paper's metrics on arrays: PSNR, SSIM, FID (Fréchet distance), LMD, LSE-C / LSE-D.

Everything here is pure array math; the networks and video handling that produce the inputs
live in `fid.py` (InceptionV3 pool3), `lse.py` (SyncNet features) and `landmarks.py` (dlib).

* PSNR / SSIM (`image_metrics`): on 128x128 face crops, RGB in [0, 1], per frame, with dm-pix:
  PSNR `-10 log10(MSE)` (dynamic range 1; +inf for identical images), SSIM with an 11x11
  Gaussian window of σ 1.5, K1 0.01, K2 0.03, 'valid' filtering, averaged over pixels and
  channels (as skimage `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`). Each is reported on the whole crop and on the
  mouth region, defined here as the lower `face_hide_percentage` (0.5) of the crop: exactly the
  rows Diff2Lip regenerates (spec §1.2); the paper's crop is [unknown] (spec §6.1).
* FID (`frechet_distance`, `fid_from_features`, `FeatureStats`): pytorch-fid's
  `calculate_frechet_distance` formula, `|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))`
  with the mean and unbiased covariance of the pool3 features, in float64; tr(sqrtm(S1 S2)) is
  the nuclear norm of R1^T R2 for factors S = R R^T (scipy eigh/svd), equal to pytorch-fid's
  `scipy.linalg.sqrtm` value (tested) but ~5x faster on 2048-d and real-valued by
  construction.
* LMD (`landmark_distance`): mean Euclidean distance between corresponding mouth landmarks
  (dlib 68-point indices 48..67) of real and generated frames, in pixels of the 128x128 face
  crop (normalisation: each frame's face box is scaled to 128 px, so the value does not depend
  on the video's resolution; divide by 128 for a fraction of the face size).
* LSE-D / LSE-C (`sync_distances`, `sync_scores`): syncnet_python `SyncNetInstance.evaluate`
  (`calc_pdist` + the offset search) as Wav2Lip's `evaluation/scores_LSE` uses it: for each
  offset in [-vshift, vshift] (vshift 15) the mean over video windows of the Euclidean distance
  between the window's lip feature and the audio feature shifted by the offset, the audio
  features padded with zero vectors at both ends (upstream's `F.pad`); LSE-D = min over
  offsets, LSE-C = median over offsets - min, AV offset = vshift - argmin.
"""

from __future__ import annotations

import functools
from typing import Optional

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

# SSIM settings (Wang et al. 2004; skimage with gaussian_weights=True).
SSIM_FILTER_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MOUTH_POINTS = slice(48, 68)  # dlib / iBUG 300-W 68-point indices of the mouth (20 points).
LSE_VSHIFT = 15               # Wav2Lip calculate_scores_*.py: --vshift 15.
PAIRWISE_EPS = 1e-6           # torch.nn.functional.pairwise_distance: ||x1 - x2 + eps||_2.


def to_unit_float(images: np.ndarray | jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float input is returned as float32 unchanged."""
  if images.dtype == np.uint8:
    return jnp.asarray(images, jnp.float32) / 255.0
  return jnp.asarray(images, jnp.float32)


def mouth_rows(height: int, face_hide_percentage: float = 0.5) -> slice:
  """Rows of the mouth region of a face crop: `int(H * (1 - p))..H` (the masked rows)."""
  return slice(int(height * (1.0 - face_hide_percentage)), height)


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """[N, H, W, C] float images in [0, 1] -> [N] float32 PSNR in dB (+inf where a == b)."""
  return pix.psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """[N, H, W, C] float images in [0, 1] (H, W >= 11) -> [N] float32 SSIM (Gaussian 11x11,
  σ 1.5, mean over the valid window positions and channels)."""
  return pix.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), max_val=1.0,
                  filter_size=SSIM_FILTER_SIZE, filter_sigma=SSIM_SIGMA, k1=SSIM_K1, k2=SSIM_K2)


@functools.partial(jax.jit, static_argnames=("face_hide_percentage",))
def _image_metrics(real: jax.Array, fake: jax.Array,
                   face_hide_percentage: float) -> dict[str, jax.Array]:
  rows = mouth_rows(real.shape[1], face_hide_percentage)
  return {"psnr": psnr(real, fake), "ssim": ssim(real, fake),
          "psnr_mouth": psnr(real[:, rows], fake[:, rows]),
          "ssim_mouth": ssim(real[:, rows], fake[:, rows])}


def image_metrics(real: np.ndarray, fake: np.ndarray,
                  face_hide_percentage: float = 0.5) -> dict[str, np.ndarray]:
  """Per-frame PSNR and SSIM on the whole crop and on the mouth region.

  Args:
    real, fake: [N, H, W, 3] uint8 (or float in [0, 1]) face crops, frame-aligned.
    face_hide_percentage: lower fraction of the crop that forms the mouth region.

  Returns:
    {"psnr", "ssim", "psnr_mouth", "ssim_mouth"}: [N] float64 each (PSNR in dB).
  """
  if real.shape != fake.shape:
    raise ValueError(f"real {real.shape} and fake {fake.shape} crops differ in shape")
  out = _image_metrics(to_unit_float(real), to_unit_float(fake), float(face_hide_percentage))
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# FID.


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[N, D] features -> (mu [D], sigma [D, D]) in float64; sigma is the unbiased covariance
  (`np.cov(rowvar=False)`, as pytorch-fid). Needs N >= 2."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"need [N >= 2, D] features for a covariance, got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def psd_factor(sigma: np.ndarray) -> np.ndarray:
  """R [D, D] with R R^T = sigma for a symmetric PSD sigma (eigendecomposition; eigenvalues
  below 0 from rounding are clipped), float64."""
  w, v = scipy.linalg.eigh(np.asarray(sigma, np.float64))
  return v * np.sqrt(np.clip(w, 0.0, None))


def trace_sqrt_product(r1: np.ndarray, r2: np.ndarray) -> float:
  """tr(sqrtm(S1 S2)) for S1 = R1 R1^T, S2 = R2 R2^T: the nuclear norm of R1^T R2.

  The eigenvalues of S1 S2 are those of (R1^T R2)(R1^T R2)^T (plus zeros), i.e. the squared
  singular values of R1^T R2, so the trace of the square root is their sum. Exact for PSD
  covariances, real, and much faster than `scipy.linalg.sqrtm` on 2048x2048 matrices.
  """
  m = np.asarray(r1, np.float64).T @ np.asarray(r2, np.float64)
  return float(scipy.linalg.svdvals(m).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64.

  pytorch-fid's formula `|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))`,
  with the trace of the matrix square root computed by `trace_sqrt_product` (pytorch-fid
  calls `scipy.linalg.sqrtm`, adding 1e-6 I when the covariances are singular; the value is
  the same to ~1e-10 relative for well-conditioned covariances, see the tests).

  Raises:
    ValueError: mismatched shapes.
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
  s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs "
                     f"{s2.shape}")
  diff = mu1 - mu2
  tr_covmean = trace_sqrt_product(psd_factor(s1), psd_factor(s2))
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


class FeatureStats:
  """Running mean and covariance of feature rows, added in chunks (e.g. clip by clip).

  Keeps float64 sums (`sum`, `X^T X`); while at most `dim` rows were added it also keeps the
  rows, so that a small set (fewer frames than feature dimensions, e.g. in CI) gets its exact
  low-rank covariance factor without an eigendecomposition.
  """

  def __init__(self, dim: int):
    self.dim = dim
    self.count = 0
    self.sum = np.zeros(dim, np.float64)
    self.outer = np.zeros((dim, dim), np.float64)
    self._rows: Optional[list[np.ndarray]] = []

  def add(self, features: np.ndarray) -> None:
    """Adds [K, dim] rows."""
    f = np.asarray(features, np.float64).reshape(-1, self.dim)
    self.count += len(f)
    self.sum += f.sum(axis=0)
    self.outer += f.T @ f
    if self._rows is not None:
      self._rows.append(f)
      if self.count > self.dim:
        self._rows = None

  @property
  def mean(self) -> np.ndarray:
    return self.sum / self.count

  @property
  def covariance(self) -> np.ndarray:
    """Unbiased covariance [dim, dim] (as `np.cov`)."""
    mu = self.mean
    return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)

  def factor(self) -> np.ndarray:
    """R with R R^T = covariance: [dim, N] from the centred rows when kept, else [dim, dim]."""
    if self.count < 2:
      raise ValueError(f"need >= 2 feature rows for a covariance, got {self.count}")
    if self._rows is not None:
      return (np.concatenate(self._rows) - self.mean).T / np.sqrt(self.count - 1)
    return psd_factor(self.covariance)


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> float:
  """FID between two accumulated feature sets (each with >= 2 rows)."""
  r1, r2 = real.factor(), fake.factor()
  diff = real.mean - fake.mean
  return float(diff @ diff + np.sum(r1 ** 2) + np.sum(r2 ** 2) - 2.0 * trace_sqrt_product(r1, r2))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
  """FID between two sets of pool3 features, [N1, D] and [N2, D] (N1, N2 >= 2)."""
  real, fake = np.asarray(real), np.asarray(fake)
  if real.ndim != 2 or fake.ndim != 2 or min(len(real), len(fake)) < 2:
    raise ValueError(f"need [N >= 2, D] features, got shapes {real.shape}, {fake.shape}")
  stats = []
  for f in (real, fake):
    st = FeatureStats(f.shape[1])
    st.add(f)
    stats.append(st)
  return fid_from_stats(*stats)


# ---------------------------------------------------------------------------------------------
# LMD.


def landmark_distance(real: np.ndarray, fake: np.ndarray,
                      points: Optional[slice] = MOUTH_POINTS) -> float:
  """Mean Euclidean distance between corresponding landmarks.

  Args:
    real, fake: [N, K, 2] landmark (x, y) coordinates, frame-aligned (K = 68 for dlib; NaN
      rows mark frames without landmarks, which are skipped).
    points: which of the K points to use (default the 20 mouth points 48..67); None: all K.

  Returns:
    The mean over frames and points of `||real - fake||_2`, in the coordinates' units (NaN if
    no frame has landmarks in both).
  """
  r = np.asarray(real, np.float64)
  f = np.asarray(fake, np.float64)
  if r.shape != f.shape or r.ndim != 3 or r.shape[-1] != 2:
    raise ValueError(f"landmarks must be two [N, K, 2] arrays of one shape, got {r.shape} and "
                     f"{f.shape}")
  if points is not None:
    r, f = r[:, points], f[:, points]
  d = np.linalg.norm(r - f, axis=-1)            # [N, K]
  valid = np.isfinite(d).all(axis=1)
  return float(d[valid].mean()) if valid.any() else float("nan")


# ---------------------------------------------------------------------------------------------
# LSE-C / LSE-D.


def sync_distances(video_features: np.ndarray, audio_features: np.ndarray,
                   vshift: int = LSE_VSHIFT) -> np.ndarray:
  """syncnet_python `calc_pdist`: distances of every video window to 2*vshift+1 audio windows.

  Args:
    video_features, audio_features: [L, D] SyncNet features of the L aligned 5-frame / 20-MFCC
      windows (window i starts at video frame i).
    vshift: largest offset searched, in frames.

  Returns:
    [L, 2*vshift+1] float64: entry (i, j) = `||v_i - a_{i+j-vshift} + 1e-6||_2`, where audio
    features outside [0, L) are zero vectors (upstream pads them with zeros).
  """
  v = np.asarray(video_features, np.float64)
  a = np.asarray(audio_features, np.float64)
  if v.shape != a.shape or v.ndim != 2:
    raise ValueError(f"features must be two [L, D] arrays of one shape, got {v.shape}, {a.shape}")
  n = v.shape[0]
  padded = np.concatenate([np.zeros((vshift, v.shape[1])), a, np.zeros((vshift, v.shape[1]))])
  idx = np.arange(n)[:, None] + np.arange(2 * vshift + 1)[None, :]       # [L, W]
  return np.linalg.norm(v[:, None, :] - padded[idx] + PAIRWISE_EPS, axis=-1)


def sync_scores(distances: np.ndarray, vshift: Optional[int] = None) -> dict[str, float]:
  """LSE-D, LSE-C and the AV offset from `sync_distances` output [L, 2*vshift+1].

  `mdist` = mean over windows per offset; LSE-D = min(mdist); LSE-C = median(mdist) - min,
  with torch.median's convention (the lower middle value for an even count); offset =
  vshift - argmin (first minimum), in frames (positive: audio leads).
  """
  d = np.asarray(distances, np.float64)
  vshift = (d.shape[1] - 1) // 2 if vshift is None else vshift
  mdist = d.mean(axis=0)
  minidx = int(np.argmin(mdist))
  median = float(np.sort(mdist)[(len(mdist) - 1) // 2])
  return {"lse_d": float(mdist[minidx]), "lse_c": median - float(mdist[minidx]),
          "av_offset": int(vshift - minidx)}
