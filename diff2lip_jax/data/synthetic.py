"""Synthetic talking-face clips in the VoxCeleb2 layout, for tests and debug training.

No downloads: every clip is made from `examples/face.png` (public-domain NASA portrait, 512x512,
see `examples/README.md`) and synthetic audio.

* **Framing.** A square window of the portrait is resized to 224x224 so that, as in VoxCeleb2's
  face-centred clips, upstream's fixed crop (`crops.voxceleb2_box`, rows 0..157, columns
  50..173) spans forehead to chin with the mouth in the lower half of the 128x128 crop. The
  window is shifted (up to +-4 px) and scaled (+-3 %) per clip; each identity gets its own
  colour gains.
* **Audio.** 16 kHz voiced sound: a harmonic source (f0 100..220 Hz per clip, slow vibrato,
  1/k harmonic amplitudes) times a syllable envelope of raised-cosine bumps (0.12..0.32 s long,
  gaps 0.04..0.2 s, some longer pauses; about 3-4 syllables per second, random per clip).
* **Mouth.** A dark ellipse over the mouth whose height follows the same envelope at each
  frame's time (j / fps): the lips are open exactly when the sound is loud, so lip motion truly
  correlates with the audio and a model can learn synchronisation from it.

Facial geometry of `face.png`, measured once with dlib's 68-point shape predictor
(`face_recognition_models`) inside the HOG box [175, 76, 266, 167]: mouth corners at x 201 and
246, lips y 139..156 (centre (223.5, 147.5)), brows y ~88, chin y 178.

    python -m diff2lip_jax.data.synthetic --out_dir data/synthetic_vox
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import string

import numpy as np
from PIL import Image

from diff2lip_jax.inference import crops
from diff2lip_jax.media import audio
from diff2lip_jax.media import encode

SAMPLE_RATE = audio.SAMPLE_RATE
FACE_IMAGE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "face.png"
_WINDOW = (127, 47, 196)  # x0, y0, side of the portrait window that becomes the 224 frame.
_MOUTH_CENTER = (223.5, 147.5)  # In portrait pixels (see module docstring).
_MOUTH_WIDTH = 45.0  # Corner to corner, portrait pixels.
_MOUTH_RGB = np.array([55.0, 18.0, 22.0], np.float32)


@dataclasses.dataclass
class SyntheticClip:
  """One generated clip.

  Attributes:
    frames: [N, size, size, 3] uint8 RGB.
    audio: [S] float32 mono at 16 kHz in [-1, 1], S = N / fps * 16000.
    mouth_opening: [N] float32 in [0, 1], the envelope value drawn in each frame.
    envelope: [S] float32 in [0, 1], the syllable envelope of the audio.
    fps: frame rate.
  """

  frames: np.ndarray
  audio: np.ndarray
  mouth_opening: np.ndarray
  envelope: np.ndarray
  fps: float


def load_face(path: str | os.PathLike | None = None) -> np.ndarray:
  """[512, 512, 3] uint8 RGB portrait (default `examples/face.png`)."""
  path = pathlib.Path(path or FACE_IMAGE)
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: pass face_image=, or run from a checkout "
                            "of the repository (examples/face.png)")
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def syllable_envelope(num_samples: int, rng: np.random.Generator,
                      sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """[num_samples] float32 in [0, 1]: non-overlapping raised-cosine syllables with pauses."""
  env = np.zeros(num_samples, np.float32)
  t = rng.uniform(0.05, 0.25)
  seconds = num_samples / sample_rate
  while t < seconds:
    dur = rng.uniform(0.12, 0.32)
    a, length = int(t * sample_rate), int(dur * sample_rate)
    b = min(a + length, num_samples)
    if b > a:
      env[a:b] = rng.uniform(0.5, 1.0) * np.hanning(length)[:b - a]
    gap = rng.uniform(0.3, 0.6) if rng.random() < 0.15 else rng.uniform(0.04, 0.2)
    t += dur + gap
  return env


def voiced_audio(envelope: np.ndarray, rng: np.random.Generator,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """[S] float32 harmonic 'voice' amplitude-modulated by `envelope`, peak 0.8, plus faint noise."""
  n = envelope.shape[0]
  t = np.arange(n) / sample_rate
  f0 = rng.uniform(100.0, 220.0) * (1 + 0.06 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t
                                                       + rng.uniform(0, 2 * np.pi)))
  phase = 2 * np.pi * np.cumsum(f0) / sample_rate
  source = np.zeros(n)
  for k in range(1, int(4000 // f0.max()) + 1):
    source += np.sin(k * phase) / k
  wav = envelope * source
  wav = 0.8 * wav / max(np.abs(wav).max(), 1e-6) + 0.002 * rng.standard_normal(n)
  return np.clip(wav, -1, 1).astype(np.float32)


def _draw_mouth(frame: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> None:
  """Blends a dark anti-aliased ellipse into `frame` [H, W, 3] uint8, in place."""
  y0, y1 = max(int(cy - ry - 2), 0), min(int(cy + ry + 3), frame.shape[0])
  x0, x1 = max(int(cx - rx - 2), 0), min(int(cx + rx + 3), frame.shape[1])
  yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
  r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
  alpha = np.clip((1.0 - r) * min(rx, ry) + 0.5, 0.0, 1.0)[..., None]
  patch = frame[y0:y1, x0:x1].astype(np.float32)
  frame[y0:y1, x0:x1] = np.rint(patch * (1 - alpha) + _MOUTH_RGB * alpha).astype(np.uint8)


def make_clip(seed: int, seconds: float = 2.0, fps: float = 25.0, size: int = 224,
              color_gain: tuple[float, float, float] = (1.0, 1.0, 1.0),
              face_image: np.ndarray | None = None) -> SyntheticClip:
  """Generates one clip (see the module docstring); deterministic given the arguments."""
  rng = np.random.default_rng(seed)
  portrait = load_face() if face_image is None else face_image
  n = int(round(seconds * fps))
  num_samples = int(round(n / fps * SAMPLE_RATE))
  envelope = syllable_envelope(num_samples, rng)
  wav = voiced_audio(envelope, rng)

  x0, y0, side = _WINDOW
  side = int(round(side * rng.uniform(0.97, 1.03)))
  x0 += int(rng.integers(-4, 5)) - (side - _WINDOW[2]) // 2
  y0 += int(rng.integers(-4, 5)) - (side - _WINDOW[2]) // 2
  base = crops.resize_bilinear(portrait[y0:y0 + side, x0:x0 + side], (size, size))
  base = np.clip(base * np.asarray(color_gain, np.float32), 0, 255).astype(np.uint8)
  scale = size / side
  cx, cy = (_MOUTH_CENTER[0] - x0) * scale, (_MOUTH_CENTER[1] - y0) * scale
  rx = 0.42 * _MOUTH_WIDTH * scale

  frame_samples = np.minimum((np.arange(n) / fps * SAMPLE_RATE).astype(np.int64),
                             num_samples - 1)
  opening = envelope[frame_samples]
  frames = np.repeat(base[None], n, axis=0)
  for j in range(n):
    _draw_mouth(frames[j], cx, cy, rx, (1.2 + 11.0 * float(opening[j])) * size / 224)
  return SyntheticClip(frames=frames, audio=wav, mouth_opening=opening.astype(np.float32),
                       envelope=envelope, fps=float(fps))


def make_synthetic_dataset(out_dir: str | os.PathLike, num_ids: int = 3, clips_per_id: int = 2,
                           seconds: float = 2.0, seed: int = 0, fps: float = 25.0,
                           size: int = 224,
                           face_image: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """Writes `num_ids` x `clips_per_id` synthetic clips as `<out_dir>/idNNNNN/<11 chars>/00001.mp4`.

  Each mp4 is H.264 (yuv420p) + mono AAC at 16 kHz, written with `encode.write_video`.

  Args:
    out_dir: root of the VoxCeleb2-style tree (created).
    num_ids: speakers (`id00001`, `id00002`, ...), each with its own colour gains.
    clips_per_id: clips per speaker, each with its own audio, syllables and framing jitter.
    seconds: clip length.
    seed: everything is deterministic given it.
    fps: frame rate.
    size: frame side in pixels (VoxCeleb2: 224).
    face_image: portrait to use instead of `examples/face.png` (framing assumes that image).

  Returns:
    The written paths, sorted.
  """
  out = pathlib.Path(out_dir)
  portrait = load_face(face_image)
  rng = np.random.default_rng(seed)
  alphabet = np.array(list(string.ascii_letters + string.digits + "-_"))
  paths = []
  for i in range(num_ids):
    gain = tuple(float(g) for g in rng.uniform(0.85, 1.15, size=3))
    for _ in range(clips_per_id):
      yt_id = "".join(rng.choice(alphabet, 11))
      clip = make_clip(int(rng.integers(2**31)), seconds, fps, size, gain, portrait)
      path = out / f"id{i + 1:05d}" / yt_id / "00001.mp4"
      encode.write_video(path, clip.frames, fps, clip.audio, SAMPLE_RATE, preset="fast")
      paths.append(path)
  return sorted(paths)


def _main() -> None:
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("out_dir", None, "root folder to write idNNNNN/<clip>/00001.mp4 to")
  flags.DEFINE_integer("num_ids", 3, "speakers")
  flags.DEFINE_integer("clips_per_id", 2, "clips per speaker")
  flags.DEFINE_float("seconds", 2.0, "clip length")
  flags.DEFINE_integer("seed", 0, "random seed")
  flags.mark_flag_as_required("out_dir")

  def main(argv):
    del argv
    f = flags.FLAGS
    paths = make_synthetic_dataset(f.out_dir, f.num_ids, f.clips_per_id, f.seconds, f.seed)
    print(f"wrote {len(paths)} clips to {f.out_dir}")

  app.run(main)


if __name__ == "__main__":
  _main()
