"""A tiny synthetic evaluation set for the debug job and CI (no dataset download needed).

Clips are short 25-fps videos of the example face (`examples/face.png`, the NASA portrait that
`skimage.data.astronaut()` ships) seen through a window that drifts a few pixels per frame, each
with its own voiced, syllable-modulated synthetic audio track (AAC), laid out like VoxCeleb2
(`idNN/clip/00001.mp4`) with upstream-format reconstruction and cross file lists.
"""

from __future__ import annotations

import pathlib

import numpy as np

from diff2lip_jax.media import video as video_lib
from diff2lip_jax.media import encode
from diff2lip_jax.inference.filelists import Pair, write_filelist

EXAMPLE_FACE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "face.png"
FACE_CENTER_XY = (220, 124)  # dlib's face box on the example is [175, 76, 266, 167].


def _example_face() -> np.ndarray:
  if EXAMPLE_FACE.is_file():
    return video_lib.read_video(EXAMPLE_FACE).frames[0]
  import skimage.data  # pylint: disable=import-outside-toplevel
  return np.asarray(skimage.data.astronaut(), np.uint8)


def synthetic_speech(seconds: float, index: int, sample_rate: int = 16000) -> np.ndarray:
  """[S] float32: a harmonic 'voice' (f0 110 + 30 * index Hz) gated by ~4 Hz syllables."""
  t = np.arange(int(round(seconds * sample_rate))) / sample_rate
  f0 = 110.0 + 30.0 * index
  voice = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
  envelope = np.clip(np.sin(2 * np.pi * (3.5 + 0.5 * index) * t + index), 0, None) ** 2
  rng = np.random.default_rng(index)
  return (0.25 * voice * envelope + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def make_debug_dataset(root: str | pathlib.Path, num_clips: int = 2, num_frames: int = 10,
                       size: int = 160, fps: float = 25.0) -> dict[str, pathlib.Path]:
  """Writes `num_clips` clips under `root` and their file lists; returns {setting: filelist}.

  Reconstruction pairs each clip with itself; cross pairs clip i's audio with clip i+1's video.
  Existing clips are kept (the set is deterministic).
  """
  root = pathlib.Path(root)
  src = _example_face()
  cx, cy = FACE_CENTER_XY
  rels = []
  for c in range(num_clips):
    rel = f"id{c:02d}/clip/00001"
    rels.append(rel)
    path = root / f"{rel}.mp4"
    if path.is_file():
      continue
    frames = []
    for i in range(num_frames):
      dx = int(round(3 * np.sin(0.5 * i + c)))
      dy = int(round(2 * np.cos(0.4 * i))) + 2 * c
      x0, y0 = cx - size // 2 + dx, cy - size // 2 + dy
      frames.append(src[y0:y0 + size, x0:x0 + size])
    wav = synthetic_speech(num_frames / fps, c)
    encode.write_video(path, np.stack(frames), fps, wav)
  recon = [Pair(r, r) for r in rels]
  cross = [Pair(rels[i], rels[(i + 1) % num_clips]) for i in range(num_clips)]
  return {"reconstruction": write_filelist(root / "reconstruction.txt", recon),
          "cross": write_filelist(root / "cross.txt", cross)}
