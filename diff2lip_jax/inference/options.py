"""Every option of a lip-sync run, with its default in one place, and the presets.

`LipsyncOptions` is what the inference core (`diff2lip_jax.inference.pipeline`) takes; the
`generate` CLI, the filelist batch, the evaluation job, the training loop's evaluator, the
notebook and the benches all build one (`LipsyncOptions.preset(name, **overrides)`).

Presets:
* `"default"`: what a user dubbing a video wants: faces tracked (dlib, or the checkpoint's S3FD
  when it has one), feathered blend with colour matching, frames up to the end of the audio
  (0.2 s of padded silence gives the last frames full mel windows), uint8 by rounding, CRF 18,
  bfloat16 on GPU/TPU.
* `"upstream"`: upstream `generate.py` as its scripts run it (spec §4-5), for evaluation and
  parity: S3FD boxes (highest score per frame, no tracking or scene cuts), pads 0, the 5-frame box
  smoothing, hard paste, float32, frames up to the last full 16-step window of the *unpadded*
  mel (N = min(#frames, #windows)), uint8 by truncation, libx264 CRF 23 and the 16 kHz mono audio
  (torchvision's `write_video` as upstream calls it), upstream's initial-noise rule (`init_noise="torch"`:
  `torch.manual_seed(seed); torch.randn(1, 3, 128, 128)`; JAX noise with a warning where torch is
  not installed) unless a noise is given.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging

PRESETS = ("default", "upstream")
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "unipc")
DETECTORS = ("auto", "dlib", "s3fd")
INPUT_TYPES = ("gt", "first_frame")   # upstream --sampling_input_type / --sampling_ref_type
CROPS = ("detect", "voxceleb2")       # detected boxes, or upstream's fixed VoxCeleb2 crop
ENDS = ("padded", "last_full_window")
UINT8 = ("round", "truncate")
OUTPUT_AUDIO = ("source", "16k_mono")
BLENDS = ("feather", "hard")
AUDIO_LONGER = ("pingpong", "trim")


@dataclasses.dataclass
class LipsyncOptions:
  """Options of one lip-sync run (upstream's flag names where it has the option).

  Sampling:
    sampler: "ddim" (upstream), "ddpm", "dpmpp_2m", "unipc".
    steps: solver steps for dpmpp_2m/unipc; for ddim/ddpm 0 means `timestep_respacing`, and ddim
      with steps N > 0 samples the trailing grid t = 1000k/N - 1 (distilled students).
    timestep_respacing: upstream's "ddim25", "250", "10,10,5", ...
    use_ddim: upstream flag (sampler "ddpm" is use_ddim=False).
    eta: DDIM η (0: deterministic).
    clip_denoised: clamp x̂_0 to [-1, 1] each step.
    sampling_seed: seed of the initial noise shared by every frame of a video.
    init_noise: None (JAX noise from `sampling_seed`), "torch" (upstream's rule, needs torch),
      a `.npy` path or an array [1, 3, S, S] (NCHW, as upstream) or [1, S, S, 3].
    face_hide_percentage: regenerated lower fraction of the 128x128 crop (upstream 0.5).
    sampling_batch_size, nframes: frames per model batch = sampling_batch_size * nframes
      (upstream 32 x 5); also the frames decoded and held at a time.
    dtype: "auto" (bfloat16 on GPU/TPU, float32 on CPU), "float32", "bfloat16".
  Faces:
    detector: "auto" (the checkpoint's S3FD if it has one, else dlib HOG), "dlib", "s3fd".
    s3fd_path: S3FD weights (`.pth` or converted `.npz`), overriding the checkpoint's.
    crop: "detect" (detected, smoothed boxes) or "voxceleb2" (upstream's fixed crop of aligned
      VoxCeleb2 clips, `--is_voxceleb2`).
    pads: (top, bottom, left, right) pixels around each box (upstream `--pads`).
    face: which face with several: "largest", "score" (upstream), an index, "x,y".
    face_det_batch_size, face_det_max_side: detector batch; dlib downscale (0: full size).
    scene_cut_threshold: histogram distance of a scene cut (restarts tracking); > 1 disables.
    smooth_window: frames of upstream's forward box mean (5).
  Timeline:
    sampling_input_type, sampling_ref_type: "gt" (each frame is its own input / reference,
      upstream's cross mode) or "first_frame" (the first frame for every output frame:
      upstream's reconstruction mode).
    audio_longer: audio longer than the video: "pingpong" the video, or "trim" the audio.
    end: "padded" (frames to the audio's end) or "last_full_window" (upstream's frame count).
    crossfade_frames: fade generated faces in/out next to frames without a face.
  Output:
    blend: "feather" or "hard" (upstream); feather: ramp as a fraction of the box's side;
    color_match: match the generated lower face's colour statistics (feather).
    uint8: "round" or "truncate" (upstream) when the [-1, 1] crop becomes pixels.
    crf, x264_preset: libx264 quality (upstream's writer: CRF 23, medium).
    pix_fmt: output pixel format (yuv420p plays everywhere; odd sizes get one edge pixel).
    output_audio: "source" (the driving audio file's own sound, its rate and channels) or
      "16k_mono" (the 16 kHz mono resample the mel is computed from, as upstream writes).
    progress: tqdm bars.
  """

  sampler: str = "ddim"
  steps: int = 0
  timestep_respacing: str = "ddim25"
  use_ddim: bool = True
  eta: float = 0.0
  clip_denoised: bool = True
  sampling_seed: int = 7
  init_noise: Any = None
  face_hide_percentage: float = 0.5
  sampling_batch_size: int = 32
  nframes: int = 5
  dtype: str = "auto"
  detector: str = "auto"
  s3fd_path: Optional[str] = None
  crop: str = "detect"
  pads: Sequence[int] = (0, 0, 0, 0)
  face: Any = "largest"
  face_det_batch_size: int = 64
  face_det_max_side: int = 0
  scene_cut_threshold: float = 0.5
  smooth_window: int = 5
  sampling_input_type: str = "gt"
  sampling_ref_type: str = "gt"
  audio_longer: str = "pingpong"
  end: str = "padded"
  crossfade_frames: int = 3
  blend: str = "feather"
  feather: float = 0.1
  color_match: bool = True
  uint8: str = "round"
  crf: int = 18
  x264_preset: str = "medium"
  output_audio: str = "source"
  pix_fmt: str = "yuv420p"
  progress: bool = True

  @classmethod
  def preset(cls, name: str = "default", **overrides) -> "LipsyncOptions":
    """The options of a preset ("default" or "upstream") with `overrides` applied.

    Raises:
      ValueError: unknown preset or option, or an invalid value.
    """
    if name not in PRESETS:
      raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = {}
    if name == "upstream":
      base = dict(detector="s3fd", pads=(0, 0, 0, 0), face="score", scene_cut_threshold=2.0,
                  blend="hard", dtype="float32", end="last_full_window", audio_longer="trim",
                  uint8="truncate", crf=23, crossfade_frames=0, init_noise="torch",
                  output_audio="16k_mono")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(f"unknown lip-sync options {unknown}")
    opts = cls(**{**base, **overrides})
    opts.validate()
    return opts

  def validate(self) -> None:
    """Raises ValueError (one line, what to do) for an invalid combination."""
    for name, allowed in (("sampler", SAMPLERS), ("detector", DETECTORS), ("crop", CROPS),
                          ("sampling_input_type", INPUT_TYPES),
                          ("sampling_ref_type", INPUT_TYPES), ("end", ENDS), ("uint8", UINT8),
                          ("blend", BLENDS), ("audio_longer", AUDIO_LONGER),
                          ("output_audio", OUTPUT_AUDIO),
                          ("dtype", ("auto", "float32", "bfloat16"))):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got "
                         f"{getattr(self, name)!r}")
    if len(tuple(self.pads)) != 4:
      raise ValueError(f"pads needs 4 integers top,bottom,left,right; got {self.pads!r}")
    if self.sampler in ("dpmpp_2m", "unipc") and self.steps < 1:
      raise ValueError(f"sampler {self.sampler} needs --steps N (e.g. 10)")
    if self.sampling_batch_size < 1 or self.nframes < 1:
      raise ValueError("sampling_batch_size and nframes must be >= 1")
    if not 0.0 < self.face_hide_percentage < 1.0:
      raise ValueError(f"face_hide_percentage must be in (0, 1); got {self.face_hide_percentage}")

  @property
  def frames_per_batch(self) -> int:
    """Frames per sampler call (and per decoded chunk): upstream's 32 x 5 = 160."""
    return self.sampling_batch_size * self.nframes

  @property
  def stochastic(self) -> bool:
    """Whether sampling draws noise at every step (DDPM, or DDIM with η > 0)."""
    return self.sampler == "ddpm" or (self.sampler == "ddim" and (not self.use_ddim or
                                                                 self.eta > 0))

  def replace(self, **changes) -> "LipsyncOptions":
    """A copy with `changes` (validated)."""
    out = dataclasses.replace(self, **changes)
    out.validate()
    return out


def load_init_noise(spec: Any, seed: int, size: int) -> Optional[np.ndarray]:
  """The initial noise as [1, S, S, 3] float32, or None for JAX noise from the seed.

  Args:
    spec: None, "torch" (upstream: `torch.manual_seed(seed); torch.randn(1, 3, S, S)`; without
      torch installed: None, with a warning), a `.npy` path, or an array [1, 3, S, S] (NCHW) /
      [1, S, S, 3] (NHWC).
    seed: upstream's `--sampling_seed`.
    size: the model's image size S.

  Raises:
    ValueError: an unreadable file or a wrong shape.
  """
  if spec is None:
    return None
  if isinstance(spec, str) and spec == "torch":
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      logging.warning("torch is not installed: the initial noise comes from JAX's generator "
                      "(seed %d), not upstream's torch.randn; `pip install torch` or pass "
                      "--init_noise FILE.npy for upstream's noise", seed)
      return None
    gen = torch.Generator().manual_seed(int(seed))
    arr = torch.randn((1, 3, size, size), generator=gen).numpy()
  elif isinstance(spec, (str, os.PathLike)):
    try:
      arr = np.load(spec)
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read --init_noise {spec}: {e}") from None
  else:
    arr = np.asarray(spec)
  arr = np.asarray(arr, np.float32)
  if arr.shape == (1, 3, size, size):
    arr = arr.transpose(0, 2, 3, 1)
  if arr.shape != (1, size, size, 3):
    raise ValueError(f"init_noise must be [1, 3, {size}, {size}] or [1, {size}, {size}, 3]; "
                     f"got {arr.shape}")
  return np.ascontiguousarray(arr)
