"""Scoring lip-synced videos against their real clips, and summarising a setting.

For each generated video (`Scorer`): face crops (128x128, the same crop rule for generated and
real frames: upstream's fixed VoxCeleb2 crop or the run's face detector), PSNR/SSIM (whole crop
and mouth region) and LMD in the reconstruction setting only (cross has no ground truth), pool3
features for FID (real: the driven video's own frames), and LSE-C/LSE-D (syncnet_python's
SyncNet, spec §6.1). Per clip: `<setting>/clips/<name>.json` (+ `features/<name>.npz`, float16
pool3 features). `summarize_setting` aggregates: FID over all frames of all scored clips of a
setting, the other metrics as means over clips of per-clip means.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import pathlib
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from diff2lip_jax.evaluation import landmarks, lse, metrics
from diff2lip_jax.evaluation.fid import InceptionFeatures
from diff2lip_jax.inference import crops, faces
from diff2lip_jax.inference.analysis import LipsyncError
from diff2lip_jax.inference.filelists import Pair
from diff2lip_jax.media import audio as audio_lib
from diff2lip_jax.media import video as video_lib
from diff2lip_jax.models.inception import FID_DIM

SUMMARY_KEYS = ("fid", "ssim", "psnr", "lmd", "lse_c", "lse_d")
EXTRA_KEYS = ("ssim_mouth", "psnr_mouth")
# upstream: the written mp4 as Wav2Lip's scores_LSE feeds syncnet_python (JPEG round trip, the
# mp4's own audio track); direct: the decoded frames and the driving audio.
LSE_PROTOCOLS = ("upstream", "direct")


class EvaluationError(ValueError):
  """The job cannot run as configured; the message says what to set."""


def atomic_write(path: pathlib.Path, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename (never a partial file)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def json_dump(obj: Any) -> str:
  return json.dumps(obj, indent=1, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class SettingPaths:
  """Where one setting's outputs live under the workdir."""

  root: pathlib.Path

  @property
  def videos(self) -> pathlib.Path:
    return self.root / "videos"

  @property
  def clips(self) -> pathlib.Path:
    return self.root / "clips"

  @property
  def features(self) -> pathlib.Path:
    return self.root / "features"

  def video(self, pair: Pair) -> pathlib.Path:
    return self.videos / f"{pair.name}.mp4"

  def record(self, pair: Pair) -> pathlib.Path:
    return self.clips / f"{pair.name}.json"

  def feature_file(self, pair: Pair) -> pathlib.Path:
    return self.features / f"{pair.name}.npz"


class FaceBoxes:
  """Face boxes of the metric crops: upstream's fixed VoxCeleb2 crop (`crop="voxceleb2"`) or
  the given detector (padded and smoothed as the inference core does). Thread-safe: a detector
  factory is called once per worker thread (dlib is not thread-safe)."""

  def __init__(self, crop: str, make_detector: Callable[[], faces.FaceDetector],
               pads: Sequence[int] = (0, 0, 0, 0), batch_size: int = 64):
    self.crop, self.pads, self.batch_size = crop, tuple(pads), batch_size
    self._make = make_detector
    self._local = threading.local()

  def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, H, W, 3] uint8 -> (boxes [N, 4] int64, found [N] bool)."""
    n, h, w = frames.shape[:3]
    if self.crop == "voxceleb2":
      return np.tile(crops.voxceleb2_box(h, w), (n, 1)), np.ones(n, bool)
    if not hasattr(self._local, "detector"):
      self._local.detector = self._make()
    return faces.find_faces(frames, self._local.detector, pads=self.pads,
                            batch_size=self.batch_size, progress=False)


def prefetch(fn, items: Sequence[Any], workers: int, depth: int) -> Iterator[tuple[Any, Any]]:
  """Yields (item, fn(item) or the exception it raised) in order, computing ahead in threads."""
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    queue = collections.deque()
    it = iter(items)
    for item in it:
      queue.append((item, pool.submit(fn, item)))
      if len(queue) >= depth:
        break
    while queue:
      item, fut = queue.popleft()
      nxt = next(it, None)
      if nxt is not None:
        queue.append((nxt, pool.submit(fn, nxt)))
      try:
        result = fut.result()
      except (ValueError, OSError) as e:  # VideoError, AudioError, LipsyncError, missing files
        result = e
      yield item, result


_NETWORKS: dict[tuple, tuple[InceptionFeatures, lse.SyncScorer]] = {}


def _networks(m: ml_collections.ConfigDict,
              mesh: jax.sharding.Mesh) -> tuple[InceptionFeatures, lse.SyncScorer]:
  """The metric networks, built (and compiled) once per process for a given configuration, so
  that several `run` calls (e.g. scoring several methods) share them."""
  key = (str(m.inception), int(m.fid_batch), str(m.syncnet), int(m.lse_batch), int(m.vshift),
         tuple(d.id for d in mesh.devices.flat))
  if key not in _NETWORKS:
    _NETWORKS[key] = (InceptionFeatures(m.inception, batch_size=m.fid_batch, mesh=mesh),
                      lse.SyncScorer(m.syncnet, batch_size=m.lse_batch, vshift=m.vshift, mesh=mesh))
  return _NETWORKS[key]


class Scorer:
  """Scores generated videos against their real clips (see module docstring, step 2)."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               boxes: FaceBoxes, face_hide_percentage: float = 0.5):
    m = cfg.metrics
    self.cfg = cfg
    self.boxes = boxes
    self.face_hide_percentage = face_hide_percentage
    self.crop_size = int(m.crop_size)
    for key, what in (("syncnet", "syncnet_python's syncnet_v2.model"),
                      ("inception", "pytorch-fid's pt_inception-2015-12-05-6726825d.pth")):
      if not m[key]:
        raise EvaluationError(f"set --config.metrics.{key} to {what} (or 'random' for a "
                              "pipeline check with meaningless scores)")
    self.inception, self.sync = _networks(m, mesh)
    self.lmd = bool(m.lmd)
    if m.lse_protocol not in LSE_PROTOCOLS:
      raise EvaluationError(f"config.metrics.lse_protocol must be one of {LSE_PROTOCOLS}, got "
                            f"{m.lse_protocol!r}")
    self._local = threading.local()  # one dlib landmark detector per worker thread

  def landmarks(self, crops: np.ndarray) -> np.ndarray:
    """dlib 68-point landmarks [N, 68, 2] of [N, S, S, 3] uint8 crops (thread-safe)."""
    if not hasattr(self._local, "landmarks"):
      self._local.landmarks = landmarks.LandmarkDetector()
    return self._local.landmarks(crops)

  def _crops(self, gen_frames: np.ndarray, real_frames: np.ndarray,
             setting: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Face crops of the generated and the real frames, and the fraction of generated frames
    whose face the detector found. Where it finds none in any generated frame (e.g. a
    method that leaves noise in the mouth region), the real boxes are used: frame 0's for
    reconstruction (generated from the first frame), each frame's own for cross."""
    real_boxes, real_found = self.boxes(real_frames)
    if not real_found.any():
      raise LipsyncError("no face found in the real frames")
    gen_boxes, gen_found = self.boxes(gen_frames)
    if not gen_found.any():
      gen_boxes = real_boxes[np.zeros(len(real_boxes), np.int64)] \
          if setting == "reconstruction" else real_boxes
      gen_boxes = faces.pad_boxes(gen_boxes, (0, 0, 0, 0), gen_frames.shape[1:3])
    return (crops.crop_faces(gen_frames, gen_boxes, self.crop_size),
            crops.crop_faces(real_frames, real_boxes, self.crop_size),
            float(gen_found.mean()))

  def load(self, setting: str, pair: Pair, generated: Optional[pathlib.Path]) -> dict:
    """Host half of scoring one clip (decoding, face crops, landmarks; runs in a worker
    thread): returns the partial record and the arrays `finish` needs."""
    if generated is None:
      raise FileNotFoundError(f"no generated video for {pair.name}")
    cfg = self.cfg
    root = pathlib.Path(cfg.data_root)
    gen = video_lib.read_video(generated)
    real = video_lib.read_video(resolve_clip(root, pair.video, cfg.video_ext))
    wav = audio_lib.load_audio(resolve_clip(root, pair.audio, cfg.video_ext))
    # Generated videos have min(#video, #audio) frames; the real set of a cross clip is the
    # driven video's own frames.
    n = min(gen.num_frames, real.num_frames)
    gen_frames, real_frames = gen.frames[:n], real.frames[:n]
    record: dict[str, Any] = {"name": pair.name, "audio": pair.audio, "video": pair.video,
                              "setting": setting, "frames": int(n), "fps": float(gen.fps),
                              "generated": str(generated)}
    crops_gen, crops_real, record["face_found"] = self._crops(gen_frames, real_frames, setting)
    if setting == "reconstruction" and self.lmd:
      record["lmd"] = metrics.landmark_distance(self.landmarks(crops_real),
                                                self.landmarks(crops_gen))
    if abs(gen.fps - 25.0) > 0.01:
      logging.warning("%s: %g fps; SyncNet assumes 25 fps", pair.name, gen.fps)
    samples = int(round(n / gen.fps * audio_lib.SAMPLE_RATE))
    wav = np.pad(wav[:samples], (0, max(0, samples - len(wav))))
    return {"record": record, "gen_frames": gen_frames, "wav": wav, "crops_gen": crops_gen,
            "crops_real": crops_real}

  def finish(self, setting: str, pair: Pair, loaded: dict,
             paths: SettingPaths) -> dict:
    """Device half: SSIM/PSNR, pool3 features (written to the features file), LSE; returns
    the complete record."""
    record, crops_gen, crops_real = loaded["record"], loaded["crops_gen"], loaded["crops_real"]
    if setting == "reconstruction":
      im = metrics.image_metrics(crops_real, crops_gen, self.face_hide_percentage)
      record.update({k: float(np.mean(v)) for k, v in im.items()})
    stride = max(1, int(self.cfg.metrics.fid_frame_stride))
    feats_real = self.inception(crops_real[::stride])
    feats_gen = self.inception(crops_gen[::stride])
    paths.features.mkdir(parents=True, exist_ok=True)
    tmp = paths.features / f".{pair.name}.{os.getpid()}.tmp.npz"
    np.savez(tmp, real=feats_real.astype(np.float16), fake=feats_gen.astype(np.float16))
    os.replace(tmp, paths.feature_file(pair))
    record["fid_frames"] = int(len(feats_gen))
    if self.cfg.metrics.lse_protocol == "upstream":  # the mp4 as syncnet_python reads it
      sync = self.sync.score_file(record["generated"])
    else:                                            # the decoded frames and driving audio
      sync = self.sync(loaded["gen_frames"], loaded["wav"])
    record.update(sync or {"lse_windows": 0})
    return record

  def run(self, setting: str, pairs: Sequence[Pair], paths: SettingPaths,
          video_for: Any) -> dict:
    """Scores every pair without a record; returns counts and timings."""
    todo = [p for p in pairs if not paths.record(p).exists()]
    stats = {"scored_clips": 0, "failed": 0, "seconds": 0.0}
    start = time.time()
    load = lambda p: self.load(setting, p, video_for(p))
    workers = self.cfg.host_workers
    for i, (pair, loaded) in enumerate(prefetch(load, todo, workers, 2 * workers)):
      try:
        if isinstance(loaded, Exception):
          raise loaded
        record = self.finish(setting, pair, loaded, paths)
        stats["scored_clips"] += 1
      except (ValueError, OSError) as e:
        logging.warning("%s: scoring %s failed: %s", setting, pair.name, e)
        record = {"name": pair.name, "audio": pair.audio, "video": pair.video,
                  "setting": setting, "error": str(e)}
        stats["failed"] += 1
      atomic_write(paths.record(pair), json_dump(record))
      logging.info("%s: scored %d/%d %s", setting, i + 1, len(todo), pair.name)
    stats["seconds"] = time.time() - start
    return stats


def _mean(values: list) -> Optional[float]:
  vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
  return float(np.mean(vals)) if vals else None


def summarize_setting(pairs: Sequence[Pair], paths: SettingPaths) -> dict:
  """Aggregates the clip records and features of one setting (see module docstring)."""
  records = []
  for p in pairs:
    if paths.record(p).exists():
      records.append(json.loads(paths.record(p).read_text()))
  ok = [r for r in records if "error" not in r]
  out: dict[str, Any] = {"clips": len(pairs), "scored": len(ok),
                         "failed": len(records) - len(ok),
                         "missing": len(pairs) - len(records)}
  for key in ("ssim", "psnr", "lmd", "lse_c", "lse_d", *EXTRA_KEYS):
    out[key] = _mean([r.get(key) for r in ok])
  real, fake = metrics.FeatureStats(FID_DIM), metrics.FeatureStats(FID_DIM)
  for r in ok:
    f = paths.feature_file(Pair(r["audio"], r["video"]))
    if f.exists():
      with np.load(f) as z:
        real.add(z["real"])
        fake.add(z["fake"])
  out["fid_frames"] = int(fake.count)
  out["fid"] = metrics.fid_from_stats(real, fake) if min(real.count, fake.count) >= 2 else None
  return out


def _fmt(v: Optional[float]) -> str:
  if v is None:
    return "–"
  return "∞" if math.isinf(v) else f"{v:.3f}"


def summary_markdown(summary: dict) -> str:
  """A table like the paper's: one row per setting."""
  head = ("| setting | clips | FID ↓ | SSIM ↑ | PSNR ↑ | LMD ↓ | LSE-C ↑ | LSE-D ↓ | "
          "SSIM mouth ↑ | PSNR mouth ↑ |")
  lines = [f"# Evaluation: {summary['method']}", "",
           f"checkpoint: `{summary['checkpoint']}`  ", f"videos: `{summary['videos']}`", "",
           head, "|" + "---|" * 10]
  for setting, s in summary["settings"].items():
    lines.append(f"| {setting} | {s['scored']}/{s['clips']} | " + " | ".join(
        _fmt(s[k]) for k in ("fid", "ssim", "psnr", "lmd", "lse_c", "lse_d", *EXTRA_KEYS)) + " |")
  lines += ["", "SSIM/PSNR (dB) on 128x128 face crops (mouth: lower half), LMD in pixels of the "
            "128x128 crop (dlib mouth points 48-67), FID on the crops (pytorch-fid InceptionV3), "
            "LSE-C/LSE-D with syncnet_python's SyncNet (vshift 15). SSIM/PSNR/LMD need ground "
            "truth: reconstruction only.", ""]
  return "\n".join(lines)




def resolve_clip(root: pathlib.Path, rel: str, ext: str) -> pathlib.Path:
  """`root/rel` + `ext` unless `rel` already names a file (the filelists' convention)."""
  path = root / rel
  return path if path.is_file() else root / f"{rel}{ext}"
