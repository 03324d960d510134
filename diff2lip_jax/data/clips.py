"""Per-clip preprocessing: video -> 128x128 JPEG face crops + mel spectrogram, in one .npz.

`process_clip` is what each `prepare` worker runs on one video (spec §4.2, §4.3):

1. decode all frames with `video.read_video` (PyAV), resample to `fps` if the video differs
   (nearest frame in time, as ffmpeg's `fps` filter that upstream runs before extracting JPEGs);
2. decode the audio track with `audio.load_audio` (16 kHz mono) and compute the mel
   spectrogram with `audio.melspectrogram` (stored time-major, [T, 80]);
3. crop the face in every frame and resize it to 128x128 (`crop_lib.crop_faces`, cv2-style
   bilinear):
   * `crop="fixed"`: upstream's VoxCeleb2 crop `my_voxceleb2_crop` of the aligned video, rows
     [0, H - int(2.36/8 H)), columns [int(1.8/8 W), W - int(1.8/8 W)) (158x124 of 224x224);
   * `crop="detect"`: dlib boxes, padded, gap-filled and smoothed over 5 frames (`faces.find_faces`,
     upstream's generic branch);
4. encode every crop as JPEG (quality 95 by default, what `cv2.imwrite` uses for the JPEG
   frames of Wav2Lip's `preprocess.py`), and write everything to one .npz, atomically (temporary
   file + `os.replace`), so a killed run never leaves a half-written clip.

Clips that cannot be used raise `ClipSkipped` with a reason (unreadable or truncated video, no
audio, too short, no face); `prepare` records it and goes on.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from diff2lip_jax.inference import crops as crop_lib
from diff2lip_jax.inference import faces
from diff2lip_jax.media import audio, video
from diff2lip_jax.data import layout as layout_lib
from diff2lip_jax.data import windows

FACE_SIZE = 128  # Side of the stored face crops in pixels (the model's resolution).
NPZ_SUFFIX = ".npz"
SKIP_SUFFIX = ".skipped.txt"


class ClipSkipped(Exception):
  """The clip cannot be used; `category` is a short tag for summaries, the message the detail."""

  def __init__(self, category: str, message: str):
    super().__init__(message)
    self.category = category


@dataclasses.dataclass(frozen=True)
class ProcessOptions:
  """How clips are turned into examples; stored in the work dir so a resumed run matches.

  Attributes:
    crop: "fixed" (VoxCeleb2 crop) or "detect" (dlib boxes, smoothed).
    fps: frame rate of the stored frames; videos at another rate are resampled (nearest
      frame). 0 keeps each video's own rate.
    jpeg_quality: Pillow JPEG quality of the stored crops (1..100).
    pads: (top, bottom, left, right) pixels added to detected boxes (`--pads`, upstream 0).
    detect_upsample: dlib upsampling (0: faces >= ~80 px, 1: >= ~40 px, ~3x slower).
    detect_max_side: detect on a copy downscaled to this longer side (None: full size).
    max_missing_fraction: detect only: skip a clip if more than this fraction of its frames
      has no detected face (missing boxes are interpolated from neighbours).
  """

  crop: str = "fixed"
  fps: float = 25.0
  jpeg_quality: int = 95
  pads: tuple[int, int, int, int] = (0, 0, 0, 0)
  detect_upsample: int = 1
  detect_max_side: int | None = None
  max_missing_fraction: float = 0.5

  def __post_init__(self):
    if self.crop not in ("fixed", "detect"):
      raise ValueError(f'crop must be "fixed" or "detect", got {self.crop!r}')
    if self.fps < 0:
      raise ValueError(f"fps must be >= 0 (0 keeps the video's rate), got {self.fps}")
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
    object.__setattr__(self, "pads", tuple(int(p) for p in self.pads))
    if len(self.pads) != 4:
      raise ValueError(f"pads must be (top, bottom, left, right), got {self.pads}")

  def to_json(self) -> dict[str, Any]:
    """JSON-serialisable dict (tuples as lists)."""
    d = dataclasses.asdict(self)
    d["pads"] = list(self.pads)
    return d


def resample_indices(times: np.ndarray, src_fps: float, fps: float) -> np.ndarray:
  """Source frame for each output frame at `fps`: the one whose time is nearest to i / fps.

  Args:
    times: [N] float64 source frame times in seconds (first frame at 0).
    src_fps: source frame rate (the clip lasts N / src_fps seconds).
    fps: output rate.

  Returns:
    [M] int64 indices into the source frames, M = floor(N / src_fps * fps).
  """
  n = len(times)
  m = int(np.floor(n / src_fps * fps + 1e-6))
  target = np.arange(m, dtype=np.float64) / fps
  right = np.clip(np.searchsorted(times, target), 0, n - 1)
  left = np.clip(right - 1, 0, n - 1)
  pick_left = np.abs(times[left] - target) <= np.abs(times[right] - target)
  return np.where(pick_left, left, right).astype(np.int64)


_DETECTORS: dict[tuple[int, int | None], faces.FaceDetector] = {}


def _detector(options: ProcessOptions) -> faces.FaceDetector:
  """One dlib detector per process and setting (building it loads dlib's model)."""
  key = (options.detect_upsample, options.detect_max_side)
  if key not in _DETECTORS:
    _DETECTORS[key] = faces.make_detector("dlib", upsample=options.detect_upsample,
                                         max_side=options.detect_max_side)
  return _DETECTORS[key]


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  """[H, W, 3] uint8 RGB -> JPEG bytes (Pillow, 4:2:0 chroma as libjpeg/cv2 default)."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
  return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
  """JPEG (or PNG) bytes -> [H, W, 3] uint8 RGB."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def process_clip(task: layout_lib.ClipTask, options: ProcessOptions) -> dict[str, np.ndarray]:
  """Turns one video into the arrays of one dataset example.

  Returns:
    dict of arrays (the .npz content, see `save_clip`):
      jpeg_data [B] uint8 and jpeg_offsets [N+1] int64: the N JPEG-encoded 128x128 crops,
        crop j = jpeg_data[offsets[j]:offsets[j+1]];
      mel [T, 80] float32 in [-4, 4] (80 steps per second, `audio.melspectrogram` transposed);
      boxes [N, 4] int32 crop boxes [x1, y1, x2, y2] in source pixels;
      face_found [N] bool (all True for the fixed crop);
      fps float64 scalar; video_size [2] int32 (H, W) of the source frames;
      speaker_id, clip_id, source: str scalars.

  Raises:
    ClipSkipped: the clip is unusable (the message says why).
  """
  try:
    clip = video.read_video(task.path)
  except video.VideoError as e:
    raise ClipSkipped("unreadable video", str(e)) from e
  frames, fps = clip.frames, clip.fps
  if options.fps and abs(fps - options.fps) > 1e-3:
    frames = frames[resample_indices(clip.times, fps, options.fps)]
    fps = float(options.fps)
  try:
    wav = audio.load_audio(task.path)
    audio.check_duration(wav)
  except audio.AudioError as e:
    raise ClipSkipped("no usable audio", str(e)) from e
  mel = audio.melspectrogram(wav)  # [80, T]
  n = frames.shape[0]
  if windows.valid_window_starts(n, mel.shape[1], fps).size == 0:
    raise ClipSkipped("too short", f"{n} frames at {fps:g} fps with {wav.size / 16000:.2f} s "
                      f"of audio: no {windows.NFRAMES}-frame window with its mel windows and a "
                      "non-overlapping reference window")
  h, w = frames.shape[1:3]
  if options.crop == "fixed":
    boxes = np.tile(crop_lib.voxceleb2_box(h, w), (n, 1))
    found = np.ones((n,), bool)
  else:
    boxes, found = faces.find_faces(frames, _detector(options), pads=options.pads,
                                   progress=False)
    missing = 1.0 - found.mean()
    if not found.any() or missing > options.max_missing_fraction:
      raise ClipSkipped("no face", faces.describe_missing(found) or "no face found")
  crops = crop_lib.crop_faces(frames, boxes, FACE_SIZE)
  encoded = [encode_jpeg(c, options.jpeg_quality) for c in crops]
  offsets = np.concatenate([[0], np.cumsum([len(b) for b in encoded])]).astype(np.int64)
  return dict(
      jpeg_data=np.frombuffer(b"".join(encoded), np.uint8),
      jpeg_offsets=offsets,
      mel=np.ascontiguousarray(mel.T),
      boxes=boxes.astype(np.int32),
      face_found=found,
      fps=np.float64(fps),
      video_size=np.array([h, w], np.int32),
      speaker_id=np.str_(task.speaker_id),
      clip_id=np.str_(task.clip_id),
      source=np.str_(task.key),
  )


def clip_path(work_dir: str | os.PathLike, key: str, suffix: str = NPZ_SUFFIX) -> pathlib.Path:
  """Where the clip with `key` is stored in the work dir: `<work_dir>/clips/<key><suffix>`."""
  return pathlib.Path(work_dir) / "clips" / (key + suffix)


def _atomic_write(path: pathlib.Path, write) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with open(tmp, "wb") as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def save_clip(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes `process_clip`'s arrays to `path` (.npz, uncompressed: the JPEGs are compressed)."""
  _atomic_write(path, lambda f: np.savez(f, **arrays))


def load_clip(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a clip .npz: the arrays of `process_clip`, `frames` as a list of N JPEG bytes and
  the string fields as `str`."""
  with np.load(path, allow_pickle=False) as z:
    out = {k: z[k] for k in z.files}
  data, offsets = out.pop("jpeg_data").tobytes(), out.pop("jpeg_offsets")
  out["frames"] = [data[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
  for k in ("speaker_id", "clip_id", "source"):
    out[k] = str(out[k])
  return out


def save_skip(path: pathlib.Path, category: str, message: str) -> None:
  """Records why a clip was skipped (`<category>: <message>`), atomically."""
  _atomic_write(path, lambda f: f.write(f"{category}: {message}".encode("utf-8")))


def load_skip(path: str | os.PathLike) -> tuple[str, str]:
  """(category, message) written by `save_skip`."""
  category, _, message = pathlib.Path(path).read_text("utf-8").partition(": ")
  return category, message
