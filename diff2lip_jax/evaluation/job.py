"""The evaluation job: generate (or take) lip-synced videos for upstream's file lists and score
them with every metric of the paper (FID, SSIM, PSNR, LMD, LSE-C, LSE-D).

`run(config, workdir)` (the body of `python -m launch.evaluate`), per setting
(`reconstruction`, `cross`; spec §4.4, §6):

1. **Generate** `WORKDIR/<setting>/videos/<name>.mp4` for each pair of the file list
   (`<name>` is upstream's `<audio>_<video>` with `/` -> `.`), unless `config.generated_dir`
   holds another method's videos (`<generated_dir>/<setting>/<name>.mp4` or
   `<generated_dir>/<name>.mp4`). The pieces of `diff2lip_jax.generate.lipsync` are used (face
   boxes, crops, mel windows, the jitted sampler, paste-back), but frames of several clips are
   packed into fixed-size batches split over this host's devices:
   * reconstruction (upstream `--sampling_input_type first_frame --sampling_ref_type
     first_frame`): the clip's first frame is the input and the reference of every output
     frame, driven by the audio clip;
   * cross (`gt`/`gt`): every video frame is its own input and reference, driven by the other
     clip's audio;
   the output has min(#video frames, #audio frames) frames (upstream trims the same way). Face
   boxes: `config.face.crop = "voxceleb2"` is upstream's fixed VoxCeleb2 crop (the default of
   its `generate.py`, spec §4.2), `"detect"` the generic branch (dlib here, S3FD upstream).
2. **Score** each video against its real clip: face crops (the same crop rule, 128x128) of the
   generated and the real frames, PSNR/SSIM (whole crop and mouth region) and LMD in the
   reconstruction setting only (cross has no ground truth), pool3 features for FID (real: the
   driven video's own frames), LSE-C/LSE-D on the generated frames (whole frame resized to
   224, as Wav2Lip's `calculate_scores_LRS.py`) with the driving audio. Per clip:
   `WORKDIR/<setting>/clips/<name>.json` (+ `features/<name>.npz`, float16 pool3 features).
3. **Summarise** into `WORKDIR/summary.json` (per setting: `fid, ssim, psnr, lmd, lse_c,
   lse_d`, plus `ssim_mouth, psnr_mouth`, counts and timings) and `WORKDIR/summary.md`. FID is
   computed over all frames of all scored clips of a setting; the other metrics are means over
   clips of per-clip means.

Resumable: an existing video is not regenerated and an existing clip JSON is not rescored, so
a restarted job continues where it stopped (videos and JSONs are written atomically). A clip
that cannot be processed (missing file, no face) gets a JSON with an `error` and is counted as
failed. With several hosts, each takes every process_count-th pair; process 0 writes the
summary after a barrier (the workdir must be shared).
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
from typing import Any, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diff2lip_jax.media import audio as audio_lib
from diff2lip_jax.inference import checkpoints
from diff2lip_jax.inference import crops, faces
from diff2lip_jax import generate
from diff2lip_jax.media import video as video_lib
from diff2lip_jax.media import encode
from diff2lip_jax.diffusion import make_diffusion
from diff2lip_jax import sharding
from diff2lip_jax.evaluation import debug_data, filelists, landmarks, metrics
from diff2lip_jax.evaluation.fid import InceptionFeatures
from diff2lip_jax.evaluation.lse import SyncScorer
from diff2lip_jax.models.inception import FID_DIM
from diff2lip_jax.inference.sampler import make_sampler

SUMMARY_KEYS = ("fid", "ssim", "psnr", "lmd", "lse_c", "lse_d")
EXTRA_KEYS = ("ssim_mouth", "psnr_mouth")


class EvaluationError(ValueError):
  """The job cannot run as configured; the message says what to set."""


def default_config() -> ml_collections.ConfigDict:
  """Every option of the job with its default (the `configs/eval_*.py` files start from this).

  Paths left "" must be set for a real run; `metrics.syncnet` / `metrics.inception` may be
  "random" for a pipeline check (the scores are then meaningless).
  """
  c = ml_collections.ConfigDict()
  c.method = "diff2lip-jax"          # row name in summary.md
  c.checkpoint = ""                  # checkpoint dir | upstream .pt/.npz | random | random:small
  c.model_flags = ""                 # JSON of upstream flags when `checkpoint` is a state_dict
  c.data_root = ""                   # the file list paths are relative to this folder
  c.filelist_dir = ""                # relative file list names are looked up here
  c.filelists = ml_collections.ConfigDict({"reconstruction": "", "cross": ""})
  c.settings = "reconstruction,cross"  # which of the file lists to evaluate
  c.video_ext = ".mp4"
  c.max_clips = 0                    # per setting; 0: all
  c.generated_dir = ""               # score these videos instead of generating (other methods)
  c.host_workers = 2                 # threads decoding / detecting ahead of the sampler
  c.debug_clips = 0                  # > 0: synthesise that many clips in WORKDIR/debug_data
  c.debug_frames = 10
  c.sampler = ml_collections.ConfigDict(dict(
      timestep_respacing="ddim25", use_ddim=True, eta=0.0, clip_denoised=True, sampling_seed=7,
      batch_frames=160,              # frames per sampler call, split over the local devices
      dtype="auto",                  # auto: bfloat16 on GPU/TPU, float32 on CPU
      face_hide_percentage=0.5))
  c.face = ml_collections.ConfigDict(dict(
      crop="voxceleb2",              # voxceleb2: upstream's fixed crop; detect: dlib boxes
      pads="0,0,0,0", upsample=1, batch_size=64))
  c.metrics = ml_collections.ConfigDict(dict(
      syncnet="",                    # syncnet_python's syncnet_v2.model (or .npz) | random
      inception="",                  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth | random
      vshift=15, lse_batch=20, fid_batch=50, fid_frame_stride=1, crop_size=128, lmd=True))
  return c


# ---------------------------------------------------------------------------------------------
# Files.


def _atomic_write(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _json_dump(obj: Any) -> str:
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

  def video(self, pair: filelists.Pair) -> pathlib.Path:
    return self.videos / f"{pair.name}.mp4"

  def record(self, pair: filelists.Pair) -> pathlib.Path:
    return self.clips / f"{pair.name}.json"

  def feature_file(self, pair: filelists.Pair) -> pathlib.Path:
    return self.features / f"{pair.name}.npz"


def _clip_path(root: pathlib.Path, rel: str, ext: str) -> pathlib.Path:
  return root / f"{rel}{ext}"


def _write_record(paths: SettingPaths, pair: filelists.Pair, record: dict) -> None:
  _atomic_write(paths.record(pair), _json_dump(record))


# ---------------------------------------------------------------------------------------------
# Face boxes (generation and metric crops share the rule).


def voxceleb2_box(height: int, width: int) -> np.ndarray:
  """Upstream's fixed VoxCeleb2 crop (`my_voxceleb2_crop`, spec §4.2) as `[x1, y1, x2, y2]`:
  rows [0, H - int(2.36/8 H)), columns [int(1.8/8 W), W - int(1.8/8 W)); 224x224 -> 158x124."""
  dx = int(1.8 / 8 * width)
  return np.array([dx, 0, width - dx, height - int(2.36 / 8 * height)], np.int64)


class FaceBoxes:
  """Face boxes per frame by `config.face` (`crop`: "voxceleb2" | "detect", `pads`,
  `upsample`, `batch_size`)."""

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.crop = cfg.crop
    if self.crop not in ("voxceleb2", "detect"):
      raise EvaluationError(f"config.face.crop must be 'voxceleb2' or 'detect', got {self.crop!r}")
    self.pads = tuple(int(p) for p in str(cfg.pads).split(","))
    if len(self.pads) != 4:
      raise EvaluationError(f"config.face.pads must be 'top,bottom,left,right', got {cfg.pads!r}")
    self.batch_size = int(cfg.batch_size)
    self.upsample = int(cfg.upsample)
    self._local = threading.local()  # one dlib detector per thread

  def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, H, W, 3] uint8 -> (boxes [N, 4] int64, found [N] bool)."""
    n, h, w = frames.shape[:3]
    if self.crop == "voxceleb2":
      return np.tile(voxceleb2_box(h, w), (n, 1)), np.ones(n, bool)
    if not hasattr(self._local, "detector"):
      self._local.detector = faces.make_detector("dlib", upsample=self.upsample)
    return faces.find_faces(frames, self._local.detector, pads=self.pads,
                               batch_size=self.batch_size, progress=False)


# ---------------------------------------------------------------------------------------------
# Generation.


def load_generator(cfg: ml_collections.ConfigDict, dtype: Any) -> tuple[Any, Any]:
  """(model, params) for `config.checkpoint`: a checkpoint directory, an upstream state_dict
  (`.pt`/`.pth`/`.npz`, architecture from `config.model_flags` JSON or the released flags),
  `"random"` (released architecture, random weights) or `"random:small"` (the small test
  architecture, random weights)."""
  ck = str(cfg.checkpoint)
  if not ck:
    raise EvaluationError("set --config.checkpoint (a checkpoint directory from "
                          "diff2lip_jax.convert, an upstream .pt/.npz, or 'random'), or score "
                          "existing videos with --config.generated_dir")
  loaded = checkpoints.load_model(ck, dtype, model_flags=cfg.model_flags or None)
  return loaded.model, loaded.params


def _dtype(name: str) -> Any:
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


@dataclasses.dataclass
class _Clip:
  """A clip being generated: host-side inputs, and outputs filled batch by batch."""

  pair: filelists.Pair
  out_path: pathlib.Path
  frames: np.ndarray          # [n, H, W, 3] uint8: the source frame of each output frame
  fps: float
  wav: np.ndarray             # [S] float32, the driving audio trimmed to n frames
  faces: np.ndarray           # [n_src, S, S, 3] uint8 crops of the source frames
  boxes: np.ndarray           # [n_src, 4]
  src: np.ndarray             # [n] source frame of each output frame
  mels: np.ndarray            # [n, 80, 16]
  work: np.ndarray            # [m] output frames with a face (the ones generated)
  generated: Optional[np.ndarray] = None
  done: int = 0


def _prepare(pair: filelists.Pair, setting: str, cfg: ml_collections.ConfigDict,
             boxes_fn: FaceBoxes, image_size: int, out_path: pathlib.Path) -> _Clip:
  """Decodes and crops one pair (host work; runs in a worker thread)."""
  root = pathlib.Path(cfg.data_root)
  video = video_lib.read_video(_clip_path(root, pair.video, cfg.video_ext))
  wav = audio_lib.load_audio(_clip_path(root, pair.audio, cfg.video_ext))
  audio_lib.check_duration(wav)
  fps = float(video.fps)
  n = min(audio_lib.num_frames_for_audio(len(wav), fps), video.num_frames)
  if n < 1:
    raise generate.LipsyncError("audio shorter than one frame")
  mels = audio_lib.mel_windows(audio_lib.melspectrogram_for_frames(wav),
                               audio_lib.frame_times(n, fps))
  src = np.zeros(n, np.int64) if setting == "reconstruction" else np.arange(n)
  src_frames = video.frames[:int(src.max()) + 1]
  boxes, found = boxes_fn(src_frames)
  if not found.any():
    raise generate.LipsyncError(f"no face found in {pair.video}")
  work = np.flatnonzero(found[src])
  samples = int(round(n / fps * audio_lib.SAMPLE_RATE))
  wav = np.pad(wav[:samples], (0, max(0, samples - len(wav))))
  return _Clip(pair=pair, out_path=out_path, frames=video.frames[src], fps=fps, wav=wav,
               faces=crops.crop_faces(src_frames, boxes, image_size), boxes=boxes, src=src,
               mels=mels, work=work,
               generated=np.empty((len(work), image_size, image_size, 3), np.uint8))


def _finish(clip: _Clip) -> None:
  frames = clip.frames.copy()
  frames[clip.work] = crops.paste_faces(frames[clip.work], clip.generated,
                                           clip.boxes[clip.src[clip.work]])
  encode.write_video(clip.out_path, frames, clip.fps, clip.wav)


def _prefetch(fn, items: Sequence[Any], workers: int, depth: int) -> Iterator[tuple[Any, Any]]:
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


class Generator:
  """Generates the videos of a setting with the jitted sampler, frames packed across clips
  into fixed-size batches sharded over this host's devices."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    sc = cfg.sampler
    self.cfg = cfg
    self.mesh = mesh
    model, params = load_generator(cfg, _dtype(sc.dtype))
    self.image_size = model.image_size
    self.params = sharding.replicate(params, mesh)
    self.sample = make_sampler(model, make_diffusion(timestep_respacing=sc.timestep_respacing),
                               use_ddim=sc.use_ddim, eta=sc.eta, clip_denoised=sc.clip_denoised,
                               face_hide_percentage=sc.face_hide_percentage)
    key_noise, self.key_steps = jax.random.split(jax.random.key(sc.sampling_seed))
    # One initial noise for every frame of every clip, as upstream (spec §2).
    noise = jax.random.normal(key_noise, (1, self.image_size, self.image_size, 3), jnp.float32)
    self.noise = sharding.replicate(noise, mesh)
    self.stochastic = (not sc.use_ddim) or sc.eta > 0
    self.batch = sharding.round_up(int(sc.batch_frames), mesh.size)
    self.boxes = FaceBoxes(cfg.face)
    self.num_batches = 0
    self.first_batch_seconds = 0.0  # includes the compilation

  def _run_batch(self, rows: list[tuple[_Clip, int, int]]) -> list[_Clip]:
    faces = np.concatenate([c.faces[c.src[c.work[lo:hi]]] for c, lo, hi in rows])
    mels = np.concatenate([c.mels[c.work[lo:hi]] for c, lo, hi in rows])
    count = len(faces)
    faces = sharding.shard_batch(
        sharding.pad_batch(faces.astype(np.float32) / 127.5 - 1.0, self.batch), self.mesh)
    mels = sharding.shard_batch(sharding.pad_batch(mels, self.batch), self.mesh)
    rng = jax.random.fold_in(self.key_steps, self.num_batches) if self.stochastic else None
    start = time.time()
    out = self.sample(self.params, faces, faces, mels, self.noise, rng)
    out = np.clip(np.round((np.asarray(out)[:count] + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if self.num_batches == 0:
      self.first_batch_seconds = time.time() - start
    self.num_batches += 1
    finished, pos = [], 0
    for c, lo, hi in rows:
      c.generated[lo:hi] = out[pos:pos + hi - lo]
      pos += hi - lo
      c.done += hi - lo
      if c.done == len(c.work):
        finished.append(c)
    return finished

  def run(self, setting: str, pairs: Sequence[filelists.Pair], paths: SettingPaths) -> dict:
    """Generates the missing videos of `pairs`; returns counts and timings."""
    todo = [p for p in pairs if not paths.video(p).exists() and not paths.record(p).exists()]
    stats = {"generated_clips": 0, "generated_frames": 0, "failed": 0, "seconds": 0.0,
             "batch_frames": self.batch}
    if not todo:
      return stats
    logging.info("%s: generating %d videos (%d already there)", setting, len(todo),
                 len(pairs) - len(todo))
    start = time.time()
    queue: collections.deque = collections.deque()  # [clip, next row to schedule]
    pending = 0
    writes: collections.deque = collections.deque()  # (clip, future) of paste + encode
    writer = concurrent.futures.ThreadPoolExecutor(1)    # overlapping the sampling

    def fail(pair: filelists.Pair, error: Exception) -> None:
      logging.warning("%s: %s failed: %s", setting, pair.name, error)
      _write_record(paths, pair, {"name": pair.name, "audio": pair.audio, "video": pair.video,
                                  "setting": setting, "error": str(error)})
      stats["failed"] += 1

    def drain(keep: int) -> None:
      """Collects finished writes (in order), waiting while more than `keep` are pending."""
      while writes and (writes[0][1].done() or len(writes) > keep):
        clip, fut = writes.popleft()
        try:
          fut.result()
        except (ValueError, OSError) as e:
          fail(clip.pair, e)
          continue
        stats["generated_clips"] += 1
        stats["generated_frames"] += len(clip.frames)
        logging.info("%s: wrote %s (%d frames)", setting, clip.out_path.name, len(clip.frames))

    def flush(final: bool) -> None:
      nonlocal pending
      while pending >= self.batch or (final and pending > 0):
        rows, room = [], self.batch
        while room and queue:
          entry = queue[0]
          clip, lo = entry
          hi = min(len(clip.work), lo + room)
          rows.append((clip, lo, hi))
          room -= hi - lo
          pending -= hi - lo
          if hi == len(clip.work):
            queue.popleft()
          else:
            entry[1] = hi
        writes.extend((clip, writer.submit(_finish, clip)) for clip in self._run_batch(rows))
        drain(keep=4)

    prepare = lambda p: _prepare(p, setting, self.cfg, self.boxes, self.image_size,
                                 paths.video(p))
    with writer:
      for pair, clip in _prefetch(prepare, todo, self.cfg.host_workers,
                                  2 * self.cfg.host_workers):
        if isinstance(clip, Exception):
          fail(pair, clip)
          continue
        queue.append([clip, 0])
        pending += len(clip.work)
        flush(final=False)
      flush(final=True)
      drain(keep=0)
    stats["seconds"] = time.time() - start
    stats["first_batch_seconds"] = self.first_batch_seconds
    return stats


# ---------------------------------------------------------------------------------------------
# Scoring.


_NETWORKS: dict[tuple, tuple[InceptionFeatures, SyncScorer]] = {}


def _networks(m: ml_collections.ConfigDict,
              mesh: jax.sharding.Mesh) -> tuple[InceptionFeatures, SyncScorer]:
  """The metric networks, built (and compiled) once per process for a given configuration, so
  that several `run` calls (e.g. scoring several methods) share them."""
  key = (str(m.inception), int(m.fid_batch), str(m.syncnet), int(m.lse_batch), int(m.vshift),
         tuple(d.id for d in mesh.devices.flat))
  if key not in _NETWORKS:
    _NETWORKS[key] = (InceptionFeatures(m.inception, batch_size=m.fid_batch, mesh=mesh),
                      SyncScorer(m.syncnet, batch_size=m.lse_batch, vshift=m.vshift, mesh=mesh))
  return _NETWORKS[key]


class Scorer:
  """Scores generated videos against their real clips (see module docstring, step 2)."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    m = cfg.metrics
    self.cfg = cfg
    self.boxes = FaceBoxes(cfg.face)
    self.crop_size = int(m.crop_size)
    for key, what in (("syncnet", "syncnet_python's syncnet_v2.model"),
                      ("inception", "pytorch-fid's pt_inception-2015-12-05-6726825d.pth")):
      if not m[key]:
        raise EvaluationError(f"set --config.metrics.{key} to {what} (or 'random' for a "
                              "pipeline check with meaningless scores)")
    self.inception, self.sync = _networks(m, mesh)
    self.lmd = bool(m.lmd)
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
      raise generate.LipsyncError("no face found in the real frames")
    gen_boxes, gen_found = self.boxes(gen_frames)
    if not gen_found.any():
      gen_boxes = real_boxes[np.zeros(len(real_boxes), np.int64)] \
          if setting == "reconstruction" else real_boxes
      gen_boxes = faces.pad_boxes(gen_boxes, (0, 0, 0, 0), gen_frames.shape[1:3])
    return (crops.crop_faces(gen_frames, gen_boxes, self.crop_size),
            crops.crop_faces(real_frames, real_boxes, self.crop_size),
            float(gen_found.mean()))

  def load(self, setting: str, pair: filelists.Pair, generated: Optional[pathlib.Path]) -> dict:
    """Host half of scoring one clip (decoding, face crops, landmarks; runs in a worker
    thread): returns the partial record and the arrays `finish` needs."""
    if generated is None:
      raise FileNotFoundError(f"no generated video for {pair.name}")
    cfg = self.cfg
    root = pathlib.Path(cfg.data_root)
    gen = video_lib.read_video(generated)
    real = video_lib.read_video(_clip_path(root, pair.video, cfg.video_ext))
    wav = audio_lib.load_audio(_clip_path(root, pair.audio, cfg.video_ext))
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

  def finish(self, setting: str, pair: filelists.Pair, loaded: dict,
             paths: SettingPaths) -> dict:
    """Device half: SSIM/PSNR, pool3 features (written to the features file), LSE; returns
    the complete record."""
    record, crops_gen, crops_real = loaded["record"], loaded["crops_gen"], loaded["crops_real"]
    if setting == "reconstruction":
      im = metrics.image_metrics(crops_real, crops_gen, self.cfg.sampler.face_hide_percentage)
      record.update({k: float(np.mean(v)) for k, v in im.items()})
    stride = max(1, int(self.cfg.metrics.fid_frame_stride))
    feats_real = self.inception(crops_real[::stride])
    feats_gen = self.inception(crops_gen[::stride])
    paths.features.mkdir(parents=True, exist_ok=True)
    tmp = paths.features / f".{pair.name}.{os.getpid()}.tmp.npz"
    np.savez(tmp, real=feats_real.astype(np.float16), fake=feats_gen.astype(np.float16))
    os.replace(tmp, paths.feature_file(pair))
    record["fid_frames"] = int(len(feats_gen))
    lse = self.sync(loaded["gen_frames"], loaded["wav"])
    record.update(lse or {"lse_windows": 0})
    return record

  def run(self, setting: str, pairs: Sequence[filelists.Pair], paths: SettingPaths,
          video_for: Any) -> dict:
    """Scores every pair without a record; returns counts and timings."""
    todo = [p for p in pairs if not paths.record(p).exists()]
    stats = {"scored_clips": 0, "failed": 0, "seconds": 0.0}
    start = time.time()
    load = lambda p: self.load(setting, p, video_for(p))
    workers = self.cfg.host_workers
    for i, (pair, loaded) in enumerate(_prefetch(load, todo, workers, 2 * workers)):
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
      _write_record(paths, pair, record)
      logging.info("%s: scored %d/%d %s", setting, i + 1, len(todo), pair.name)
    stats["seconds"] = time.time() - start
    return stats


# ---------------------------------------------------------------------------------------------
# Summary.


def _mean(values: list) -> Optional[float]:
  vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
  return float(np.mean(vals)) if vals else None


def summarize_setting(pairs: Sequence[filelists.Pair], paths: SettingPaths) -> dict:
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
    f = paths.feature_file(filelists.Pair(r["audio"], r["video"]))
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


# ---------------------------------------------------------------------------------------------
# The job.


def _settings(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
  """{setting: file list path} from the config (or the synthetic debug set)."""
  wanted = [s.strip() for s in str(cfg.settings).split(",") if s.strip()]
  unknown = sorted(set(wanted) - set(filelists.SETTINGS))
  if unknown:
    raise EvaluationError(f"config.settings: unknown {unknown}; choose from "
                          f"{', '.join(filelists.SETTINGS)}")
  if cfg.debug_clips > 0:
    root = workdir / "debug_data"
    lists = debug_data.make_debug_dataset(root, cfg.debug_clips, cfg.debug_frames)
    cfg.data_root = str(root)
    return {s: lists[s] for s in wanted}
  out = {}
  for setting in wanted:
    name = cfg.filelists.get(setting, "")
    if not name:
      continue
    path = pathlib.Path(name)
    if not path.is_absolute() and cfg.filelist_dir:
      path = pathlib.Path(cfg.filelist_dir) / path
    out[setting] = path
  if not out:
    raise EvaluationError("no file list: set --config.filelists.reconstruction and/or "
                          "--config.filelists.cross (upstream's dataset/filelists/*.txt) and "
                          "--config.settings")
  if not cfg.data_root:
    raise EvaluationError("set --config.data_root to the folder the file list paths are "
                          "relative to (e.g. .../vox2_test_mp4/mp4)")
  return out


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Runs the whole job (see module docstring); returns the summary (process 0) or {}."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  cfg = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  lists = _settings(cfg, workdir)
  mesh = sharding.local_mesh()
  logging.info("evaluation on %d local device(s) (%s), process %d/%d", mesh.size,
               jax.default_backend(), jax.process_index(), jax.process_count())
  all_pairs = {}
  for setting, path in lists.items():
    pairs = filelists.read_filelist(path, cfg.video_ext)
    all_pairs[setting] = pairs[:cfg.max_clips] if cfg.max_clips > 0 else pairs
  timings: dict[str, dict] = {}
  generator: Optional[Generator] = None
  scorer: Optional[Scorer] = None
  for setting, pairs in all_pairs.items():
    paths = SettingPaths(workdir / setting)
    mine = sharding.host_shard(pairs)
    if cfg.generated_dir:
      base = pathlib.Path(cfg.generated_dir)

      def video_for(p, base=base, setting=setting):
        for cand in (base / setting / f"{p.name}.mp4", base / f"{p.name}.mp4"):
          if cand.is_file():
            return cand
        return None
      gen_stats = {}
    else:
      if any(not paths.video(p).exists() and not paths.record(p).exists() for p in mine):
        generator = generator or Generator(cfg, mesh)
        gen_stats = generator.run(setting, mine, paths)
      else:
        gen_stats = {}
      video_for = lambda p, paths=paths: paths.video(p) if paths.video(p).exists() else None
    if any(not paths.record(p).exists() for p in mine):
      scorer = scorer or Scorer(cfg, mesh)
      score_stats = scorer.run(setting, mine, paths, video_for)
    else:
      score_stats = {}
    timings[setting] = {"generation": gen_stats, "scoring": score_stats}
    if gen_stats.get("seconds"):
      s = gen_stats
      logging.info("%s: generated %d clips / %d frames in %.1f s (%.3f clips/s, %.2f frames/s)",
                   setting, s["generated_clips"], s["generated_frames"], s["seconds"],
                   s["generated_clips"] / s["seconds"], s["generated_frames"] / s["seconds"])
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("diff2lip_eval_done")
  if jax.process_index() != 0:
    return {}
  summary = {
      "method": cfg.method,
      "checkpoint": str(cfg.checkpoint) if not cfg.generated_dir else None,
      "videos": str(cfg.generated_dir or workdir),
      "settings": {s: summarize_setting(p, SettingPaths(workdir / s))
                   for s, p in all_pairs.items()},
      "timings_this_run": timings,
      "devices": f"{mesh.size} x {jax.devices()[0].device_kind}",
      "config": cfg.to_dict(),
  }
  _atomic_write(workdir / "summary.json", _json_dump(summary))
  _atomic_write(workdir / "summary.md", summary_markdown(summary))
  return summary
