"""Benchmarks end-to-end lip-sync (`diff2lip_jax.inference.pipeline.lipsync`, the inference core)
on an in-memory video.

Figure `lipsync`: output frames per second of one whole `lipsync` call: the analysis pass
(face boxes, tracking), mel windows, cropping, DDIM sampling in chunks of
`--sampling_batch_size` x 5 frames with host work overlapped, and blending back; no file I/O
(the video is decoded frames in memory, the audio a float array, nothing is encoded). Face
detection is a fixed box (`--detector fixed`, the default) so that the figure is the pipeline's
and not dlib's; `--detector dlib` times dlib too.

The video is `examples/face.png` drifting sideways, `--batch` frames (default 250 = 10 s at
25 fps) at `--fps`, driven by a synthetic voiced tone. Random weights (speed does not depend on
them). FLOPs per frame: DDIM steps x 157.4 GFLOP (released), the model only.

Needs the inference dependencies (librosa, av, soxr, PIL, scipy, tqdm); see bench/README.md
for carrying them to the device machine as wheels.

  python bench/generate.py                     # released model, bf16, DDIM-25, 250 frames
  python bench/generate.py --smoke             # CPU check, seconds
"""

from __future__ import annotations

import argparse

import common  # pylint: disable=g-bad-import-order  (bench/ is sys.path[0])
import jax
import numpy as np
from PIL import Image

from bench import flops
from diff2lip_jax.inference.pipeline import lipsync
from diff2lip_jax.media import video as video_lib
from diff2lip_jax.diffusion import make_diffusion

FACE = common.REPO / "examples" / "face.png"
FACE_BOX = (175, 76, 266, 167)  # dlib's box on examples/face.png (x1, y1, x2, y2)


class FixedDetector:
  """`faces.FaceDetector` that returns the example face's box (shifted with the frame)."""

  def __init__(self, boxes: np.ndarray):
    self.boxes = boxes
    self.calls = 0

  def detect(self, frames):
    out = [self.boxes[(self.calls + i) % len(self.boxes)].copy() for i in range(len(frames))]
    self.calls += len(frames)
    return out


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  common.add_common_args(p, batch=250, iters=10, warmup=1)
  p.add_argument("--fps", type=float, default=25.0)
  p.add_argument("--timestep_respacing", default="ddim25")
  p.add_argument("--sampling_batch_size", type=int, default=32,
                 help="clips of 5 frames per model call (upstream's 32 -> 160 frames)")
  p.add_argument("--detector", choices=("fixed", "dlib"), default="fixed")
  args = p.parse_args(argv)
  return common.apply_smoke(args, batch=6, timestep_respacing="ddim2", sampling_batch_size=1,
                            iters=2)


def make_video(frames: int, fps: float) -> tuple[video_lib.Video, np.ndarray]:
  """`frames` 320x320 RGB frames of the example face drifting 1 px per frame, and the box of
  the face in each. """
  src = np.asarray(Image.open(FACE).convert("RGB"))
  shifts = np.arange(frames) % 32
  video = np.stack([np.roll(src, int(s), axis=1)[16:336, 80:400] for s in shifts])
  x1, y1, x2, y2 = FACE_BOX
  boxes = np.stack([[x1 + s - 80, y1 - 16, x2 + s - 80, y2 - 16] for s in shifts]).astype(np.int64)
  times = np.arange(frames) / fps
  return video_lib.Video(frames=video, fps=fps, times=times), boxes


def main(argv=None) -> list[dict]:
  args = parse(argv)
  model, params = common.model_and_params(args)
  params = jax.device_put(params)
  video, boxes = make_video(args.batch, args.fps)
  t = np.arange(int(round(args.batch / args.fps * 16000))) / 16000  # as long as the video
  wav = (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2).astype(np.float32)
  if args.detector == "fixed":
    make_detector = lambda: FixedDetector(boxes)
  else:
    from diff2lip_jax.inference import faces  # pylint: disable=import-outside-toplevel
    make_detector = lambda: faces.make_detector("dlib")

  def call():
    out = lipsync(video, wav, checkpoint=(model, params), dtype=args.dtype,
                           timestep_respacing=args.timestep_respacing,
                           sampling_batch_size=args.sampling_batch_size,
                           detector=make_detector(), progress=False)
    assert len(out.frames) == args.batch, (len(out.frames), args.batch)
    return out.frames

  times, compile_s = common.time_calls(call, args.warmup, args.iters, args.profile_dir)
  steps = int(make_diffusion(timestep_respacing=args.timestep_respacing).num_timesteps)
  return [common.emit("lipsync", args, times, compile_s, steps * flops.model_forward_flops(model),
                      None, timestep_respacing=args.timestep_respacing, sampler_steps=steps,
                      sampling_batch_size=args.sampling_batch_size, detector=args.detector,
                      fps=args.fps, frame_size=list(video.frames.shape[1:3]))]


if __name__ == "__main__":
  main()
