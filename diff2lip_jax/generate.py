r"""Lip-sync a face video (or a still image) to any speech audio with Diff2Lip.

  python -m diff2lip_jax.generate --video_path face.mp4 --audio_path speech.wav \
      --out_path out.mp4 --checkpoint checkpoints/diff2lip_released --timestep_respacing ddim25

Pipeline (upstream `generate.py`, generic branch, spec §4-5): decode the video (a still image is
repeated; a video shorter than the audio is played back and forth), detect one face per frame
(dlib HOG), pad and smooth the boxes over 5 frames, crop to 128x128, pair every output frame with
its 0.2 s mel window *at the video's own frame rate* (upstream assumes 25 fps), sample the lower
half with the jitted DDIM sampler (one initial noise shared by all frames), paste the crops back
and write an H.264 mp4 with the driving audio. The output has as many frames as the audio
covers, the input's frame rate and resolution. Frames without a face pass through unchanged
(a warning names them).

The Python API `lipsync(...)` is what the CLI and the notebooks call.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

from diff2lip_jax import audio as audio_lib
from diff2lip_jax import checkpoint as ckpt_lib
from diff2lip_jax import face as face_lib
from diff2lip_jax import video as video_lib
from diff2lip_jax.diffusion import make_diffusion
from diff2lip_jax.models import RELEASED_FLAGS, model_from_flags
from diff2lip_jax.sampling import make_sampler

RANDOM_CHECKPOINT = "random"


class LipsyncError(ValueError):
  """The inputs cannot be lip-synced (e.g. no face anywhere); the message says what to do."""


@dataclasses.dataclass
class LipsyncResult:
  """Output of `lipsync`.

  frames: [N, H, W, 3] uint8 RGB at the input's resolution.
  fps: frames per second (the input's; 25 for a still image unless `still_fps` is given).
  audio: [S] float32 16 kHz mono driving audio, S = round(N / fps * 16000).
  no_face: inclusive ranges of output frames passed through unchanged for lack of a face.
  """

  frames: np.ndarray
  fps: float
  audio: np.ndarray
  no_face: list[tuple[int, int]]


def pingpong_indices(num_out: int, num_src: int) -> np.ndarray:
  """Source frame for each output frame: 0..n-1, then back n-2..1, and again. [num_out] int."""
  if num_src == 1:
    return np.zeros(num_out, np.int64)
  period = 2 * (num_src - 1)
  k = np.arange(num_out) % period
  return np.where(k < num_src, k, period - k)


def load_model(checkpoint: str | os.PathLike, dtype: Any = jnp.float32):
  """(model, params) from a checkpoint directory, or the released architecture with random
  weights for `checkpoint == "random"` (a pipeline check: the mouth region comes out as noise).

  Raises:
    CheckpointError: missing or mismatched checkpoint.
  """
  if str(checkpoint) == RANDOM_CHECKPOINT:
    logging.warning("RANDOM WEIGHTS: --checkpoint=random builds the released architecture "
                    "untrained; the lower face will be noise. Convert the official Diff2Lip "
                    "checkpoint for real lip-sync (README, 'Weights').")
    model = model_from_flags(RELEASED_FLAGS, dtype=dtype)
    return model, ckpt_lib.init_params(model, jax.random.key(0))
  return ckpt_lib.load(checkpoint, dtype=dtype)


def _to_unit(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) / 127.5 - 1.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def lipsync(video: str | os.PathLike | video_lib.Video,
            audio: str | os.PathLike | np.ndarray,
            *,
            checkpoint: str | os.PathLike = RANDOM_CHECKPOINT,
            model_and_params: Optional[tuple[Any, Any]] = None,
            timestep_respacing: str = "ddim25",
            use_ddim: bool = True,
            eta: float = 0.0,
            clip_denoised: bool = True,
            sampling_batch_size: int = 32,
            nframes: int = 5,
            face_det_batch_size: int = 64,
            pads: Sequence[int] = (0, 0, 0, 0),
            face_hide_percentage: float = 0.5,
            sampling_seed: int = 7,
            dtype: Any = jnp.float32,
            detector: Optional[face_lib.FaceDetector] = None,
            progress: bool = True) -> LipsyncResult:
  """Regenerates the lower face of every frame to match `audio`.

  Args:
    video: path of a video or still image, or a decoded `Video`.
    audio: path of any audio (or video with an audio track), or [S] float32 16 kHz mono samples.
    checkpoint: checkpoint directory (`python -m diff2lip_jax.convert`), or "random".
    model_and_params: an already loaded (model, params), overriding `checkpoint`.
    timestep_respacing: "ddim25" (upstream), "ddim10", "250", ...
    use_ddim, eta, clip_denoised: sampler settings (upstream: DDIM, 0, True).
    sampling_batch_size: clips of `nframes` frames per model batch (upstream: 32 x 5 = 160).
    nframes: frames per clip (upstream 5); only sets the batch size at inference.
    face_det_batch_size: frames per face-detector call.
    pads: (top, bottom, left, right) pixels added to each face box (upstream `--pads`).
    face_hide_percentage: lower fraction of the crop that is regenerated (upstream 0.5).
    sampling_seed: seed of the initial noise shared by all frames.
    dtype: model computation dtype (jnp.float32 or jnp.bfloat16).
    detector: a `face.FaceDetector`; default dlib HOG.
    progress: tqdm progress bars.

  Returns:
    A `LipsyncResult` with as many frames as the audio covers at the video's frame rate.

  Raises:
    VideoError, AudioError, CheckpointError, LipsyncError (all ValueError): bad inputs, with
    a message that says what to do.
  """
  if not isinstance(video, video_lib.Video):
    video = video_lib.read_video(video)
  wav = audio if isinstance(audio, np.ndarray) else audio_lib.load_audio(audio)
  wav = np.asarray(wav, np.float32)
  audio_lib.check_duration(wav)
  fps = float(video.fps)
  num_out = audio_lib.num_frames_for_audio(len(wav), fps)
  if num_out < 1:
    raise audio_lib.AudioError(f"audio is {len(wav) / audio_lib.SAMPLE_RATE:.2f} s, shorter than "
                               f"one frame at {fps:g} fps; pass a longer recording")

  # Every output frame k at t = k / fps gets the window starting 0.04 s before t; silence
  # appended to the audio gives the last frames a full window.
  padded = np.concatenate([wav, np.zeros(int(audio_lib.MIN_SECONDS * audio_lib.SAMPLE_RATE),
                                         np.float32)])
  mels = audio_lib.mel_windows(audio_lib.melspectrogram(padded),
                               audio_lib.frame_times(num_out, fps))
  assert len(mels) == num_out, (len(mels), num_out)

  model, params = model_and_params or load_model(checkpoint, dtype)
  src = pingpong_indices(num_out, video.num_frames)
  used = int(src.max()) + 1
  src_frames = video.frames[:used]
  detector = detector or face_lib.make_detector("dlib")
  boxes, found = face_lib.find_faces(src_frames, detector, pads=pads,
                                     batch_size=face_det_batch_size, progress=progress)
  if not found.any():
    raise LipsyncError(f"no face found in any of the {used} frames; use a video with a visible, "
                       "roughly frontal face (dlib's HOG detector needs faces of ~80 px or more)")
  out_found = found[src]
  no_face = face_lib.missing_ranges(out_found)
  if no_face:
    logging.warning("%s: those output frames pass through unchanged",
                    face_lib.describe_missing(out_found))

  size = model.image_size
  faces = face_lib.crop_faces(src_frames, boxes, size)          # [used, S, S, 3] uint8
  diffusion = make_diffusion(timestep_respacing=timestep_respacing)
  sample = make_sampler(model, diffusion, use_ddim=use_ddim, eta=eta, clip_denoised=clip_denoised,
                        face_hide_percentage=face_hide_percentage)
  key_noise, key_steps = jax.random.split(jax.random.key(sampling_seed))
  noise = jax.random.normal(key_noise, (1, size, size, 3), jnp.float32)
  stochastic = (not use_ddim) or eta > 0

  work = np.flatnonzero(out_found)
  batch = min(sampling_batch_size * nframes, len(work))
  generated = np.empty((len(work), size, size, 3), np.uint8)
  for start in tqdm(range(0, len(work), batch), desc="sampling", unit="batch",
                    disable=not progress):
    idx = work[start:start + batch]
    take = np.concatenate([idx, np.repeat(idx[-1:], batch - len(idx))])  # fixed shape: 1 compile
    face = _to_unit(faces[src[take]])
    out = sample(params, face, face, mels[take], noise,
                 jax.random.fold_in(key_steps, start) if stochastic else None)
    generated[start:start + len(idx)] = _to_uint8(out)[:len(idx)]

  frames = video.frames[src].copy()
  frames[work] = face_lib.paste_faces(frames[work], generated, boxes[src[work]])
  samples = int(round(num_out / fps * audio_lib.SAMPLE_RATE))
  wav = np.pad(wav[:samples], (0, max(0, samples - len(wav))))
  return LipsyncResult(frames=frames, fps=fps, audio=wav, no_face=no_face)


# ---------------------------------------------------------------------------------------------
# Command line.

_VIDEO = flags.DEFINE_string("video_path", None, "input video, or a still image of a face")
_AUDIO = flags.DEFINE_string("audio_path", None, "driving speech: any audio file or video")
_OUT = flags.DEFINE_string("out_path", None, "output .mp4 (H.264 + AAC)")
_CKPT = flags.DEFINE_string("checkpoint", None,
                            "checkpoint directory from diff2lip_jax.convert, or 'random' for "
                            "the released architecture with random weights (pipeline check)")
_RESPACING = flags.DEFINE_string("timestep_respacing", "ddim25", "sampling steps: ddim25, ddim10, 250...")
_USE_DDIM = flags.DEFINE_boolean("use_ddim", True, "DDIM (True) or ancestral sampling")
_ETA = flags.DEFINE_float("eta", 0.0, "DDIM eta")
_CLIP = flags.DEFINE_boolean("clip_denoised", True, "clamp predicted x0 to [-1, 1] each step")
_BATCH = flags.DEFINE_integer("sampling_batch_size", 32, "clips of --nframes frames per batch")
_NFRAMES = flags.DEFINE_integer("nframes", 5, "frames per clip")
_DET_BATCH = flags.DEFINE_integer("face_det_batch_size", 64, "frames per face-detector call")
_PADS = flags.DEFINE_list("pads", ["0", "0", "0", "0"], "top,bottom,left,right box padding (px)")
_HIDE = flags.DEFINE_float("face_hide_percentage", 0.5, "lower fraction of the face regenerated")
_SEED = flags.DEFINE_integer("sampling_seed", 7, "seed of the shared initial noise")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU")


def _dtype(name: str):
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  try:
    pads = [int(p) for p in _PADS.value]
    if len(pads) != 4:
      raise ValueError
  except ValueError:
    sys.exit(f"error: --pads needs 4 integers top,bottom,left,right; got {','.join(_PADS.value)}")
  out_path = pathlib.Path(_OUT.value)
  if out_path.suffix.lower() not in (".mp4", ".mov", ".mkv"):
    sys.exit(f"error: --out_path {out_path} should end in .mp4")
  try:
    result = lipsync(_VIDEO.value, _AUDIO.value, checkpoint=_CKPT.value,
                     timestep_respacing=_RESPACING.value, use_ddim=_USE_DDIM.value,
                     eta=_ETA.value, clip_denoised=_CLIP.value,
                     sampling_batch_size=_BATCH.value, nframes=_NFRAMES.value,
                     face_det_batch_size=_DET_BATCH.value, pads=pads,
                     face_hide_percentage=_HIDE.value, sampling_seed=_SEED.value,
                     dtype=_dtype(_DTYPE.value))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    video_lib.write_video(out_path, result.frames, result.fps, result.audio)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {out_path}: {len(result.frames)} frames at {result.fps:g} fps"
        + (f"; no face in frames {result.no_face} (passed through)" if result.no_face else ""))


if __name__ == "__main__":
  flags.mark_flags_as_required(["video_path", "audio_path", "out_path", "checkpoint"])
  app.run(main)
