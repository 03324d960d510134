"""The inference core: decode -> faces -> crops -> sampler -> blend -> encode, for every caller.

`Lipsyncer` holds a loaded model (params placed once, samplers compiled once per shape) and runs
any number of videos through two streaming passes, so memory does not grow with a video's length:

1. analysis (`analysis.analyze`): decode once, find, track and smooth the face, lay out the
   output frames on the audio's clock;
2. generation (`_generate`): chunk by chunk (`sampling_batch_size * nframes` frames) decode the
   source frames again, crop the face to 128x128, pair each frame with its mel window, sample the
   lower half with one initial noise shared by all frames (chunks join without a seam), turn it
   into pixels, blend it back, and encode.

Upstream `generate.py` (spec §4-5) is the `preset="upstream"` run of this core; `generate`
(CLI), the filelist batch, `launch.evaluate`, the training loop's evaluator, the app, the
notebook and the benches all call it. `lipsync(...)` returns the frames, `lipsync_to_file(...)`
writes an mp4.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from diff2lip_jax import sharding
from diff2lip_jax.inference import blend, checkpoints, crops, faces
from diff2lip_jax.inference.analysis import LipsyncError, Plan, ProgressFn, analyze, make_detector
from diff2lip_jax.inference.options import LipsyncOptions, load_init_noise
from diff2lip_jax.inference.sampler import build_sampler, lower_face_mask, make_cond_img
from diff2lip_jax.media import audio as audio_lib
from diff2lip_jax.media import encode, pixels
from diff2lip_jax.media import video as video_lib

__all__ = ["Lipsyncer", "LipsyncResult", "LipsyncSummary", "LipsyncError", "lipsync",
           "lipsync_to_file", "resolve_dtype"]


@dataclasses.dataclass
class LipsyncResult:
  """Output of `lipsync`.

  frames: [N, H, W, 3] uint8 RGB at the input's resolution.
  fps: frames per second (the input's nominal rate; 25 for a still image).
  audio: [S] float32 16 kHz mono driving audio, cut to the output's duration.
  no_face: inclusive ranges of output frames passed through unchanged for lack of a face.
  times: [N] float64 output timestamps in seconds.
  scene_cuts: source frame indices where a new scene starts (face tracking restarted).
  """

  frames: np.ndarray
  fps: float
  audio: np.ndarray
  no_face: list[tuple[int, int]]
  times: Optional[np.ndarray] = None
  scene_cuts: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LipsyncSummary:
  """Output of `lipsync_to_file`: what was written (the frames are in the file)."""

  out_path: pathlib.Path
  num_frames: int
  fps: float
  no_face: list[tuple[int, int]]
  times: np.ndarray
  scene_cuts: list[int]


def resolve_dtype(name: str) -> Any:
  """"auto" -> bfloat16 on GPU/TPU, float32 on CPU; else the named dtype."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


_SAMPLERS: dict[tuple, Any] = {}


def _bucket(count: int, cap: int) -> int:
  """Model batch for `count` frames: rounded up to a multiple of 8, at most `cap` (few distinct
  shapes, so few compilations, and at most 7 padded frames)."""
  return max(1, min(int(cap), -(-int(count) // 8) * 8))


class Lipsyncer:
  """A loaded model ready to lip-sync any number of videos (one device, or this host's mesh).

  Args:
    checkpoint: a model name for `checkpoints.load_model` (converted dir, training workdir,
      upstream `.pt`/`.npz`, "random", "random:small"), a `checkpoints.LoadedModel`, or a
      (model, params) pair.
    options: default options of `run` (default: `LipsyncOptions.preset("default")`).
    detector: a `faces.FaceDetector` to use instead of `options.detector` (tests, custom).
    device: run on this JAX device (filelist workers); None: the default device, or all local
      devices as a mesh when there are several.

  A named checkpoint is loaded on the first `run`, after that run's inputs were checked.

  Raises:
    CheckpointError: the model cannot be loaded.
  """

  def __init__(self, checkpoint: Any = checkpoints.RANDOM, options: LipsyncOptions | None = None,
               *, detector: Optional[faces.FaceDetector] = None, device: Any = None):
    self.options = options or LipsyncOptions.preset("default")
    self._checkpoint = checkpoint
    self._loaded: Optional[checkpoints.LoadedModel] = None
    self.device = device
    self.mesh = sharding.local_mesh() if device is None and jax.local_device_count() > 1 else None
    self._detector = detector
    self._detectors: dict[tuple, faces.FaceDetector] = {}
    if not isinstance(checkpoint, str | os.PathLike):
      self._place(checkpoint)

  def _place(self, checkpoint: Any) -> None:
    if isinstance(checkpoint, checkpoints.LoadedModel):
      loaded = checkpoint
    elif isinstance(checkpoint, tuple):
      model, params = checkpoint
      loaded = checkpoints.LoadedModel(model, params, {}, "given (model, params)")
    else:
      loaded = checkpoints.load_model(checkpoint, resolve_dtype(self.options.dtype))
    params = loaded.params
    if self.device is not None or self.mesh is not None:
      params = jax.device_put(params, self.device if self.mesh is None else
                              sharding.replicated(self.mesh))
    self._loaded, self.params = loaded, params

  @property
  def loaded(self) -> checkpoints.LoadedModel:
    """The model, loaded on first use (so that bad inputs fail before a long load)."""
    if self._loaded is None:
      self._place(self._checkpoint)
    return self._loaded

  def model_for(self, options: LipsyncOptions):
    """The model in the options' compute dtype."""
    dtype = resolve_dtype(options.dtype)
    model = self.loaded.model
    return model if model.dtype == dtype else model.clone(dtype=dtype)

  def detector_for(self, options: LipsyncOptions) -> faces.FaceDetector:
    """The face detector of these options (built once per kind)."""
    if self._detector is not None:
      return self._detector
    key = (options.detector, options.s3fd_path, options.face_det_max_side,
           options.face_det_batch_size)
    if key not in self._detectors:
      self._detectors[key] = make_detector(options, self.loaded.s3fd_path, self.loaded.upstream,
                                           self.device)
    return self._detectors[key]

  def sampler_for(self, options: LipsyncOptions):
    """The jitted frame sampler of these options (built, so compiled, once per process and
    setting: Lipsyncers of the same model share it)."""
    model = self.model_for(options)
    key = (model, options.sampler, options.steps, options.timestep_respacing, options.use_ddim,
           float(options.eta), options.clip_denoised, float(options.face_hide_percentage),
           self.mesh)
    if key not in _SAMPLERS:
      _SAMPLERS[key] = build_sampler(
          model, sampler=options.sampler, steps=options.steps,
          timestep_respacing=options.timestep_respacing, use_ddim=options.use_ddim,
          eta=options.eta, clip_denoised=options.clip_denoised,
          face_hide_percentage=options.face_hide_percentage, mesh=self.mesh)
    return _SAMPLERS[key]

  def _start(self, video, audio, out_path, options: LipsyncOptions, audio_sample_rate: int,
             on_progress: Optional[ProgressFn]):
    """Checks and loads everything cheap, then runs the analysis pass."""
    options.validate()
    if out_path is not None:  # a bad destination or audio file fails now, not after sampling
      encode.preflight(out_path, source_audio=_audio_file(audio, options),
                       inputs=_paths(video, audio), pix_fmt=options.pix_fmt)
    wav = audio_lib.as_wav(audio, audio_sample_rate)
    seconds = audio_lib.check_duration(wav)
    source = video_lib.open_source(video)
    # Fails now (not after minutes) without the S3FD weights the options ask for.
    detector = self.detector_for(options) if options.crop == "detect" else None
    init_noise = load_init_noise(options.init_noise, options.sampling_seed,
                                 self.loaded.model.image_size)
    sample = self.sampler_for(options)
    try:
      plan = analyze(source, seconds, len(wav), options, detector, on_progress)
    except BaseException:
      source.close()
      raise
    if plan.num_out < 1:
      source.close()
      raise audio_lib.AudioError(f"audio is {seconds:.2f} s, shorter than one frame at "
                                 f"{plan.fps:g} fps; pass a longer recording")
    if plan.no_face:
      logging.warning("%s: those output frames pass through unchanged",
                      faces.describe_missing(plan.out_found))
    if plan.scene_cuts:
      logging.info("scene cuts at source frames %s: face tracking restarted there",
                   plan.scene_cuts)
    if options.end == "last_full_window":
      mel = audio_lib.melspectrogram(wav)
    else:
      mel = audio_lib.melspectrogram_for_frames(wav)
    out_audio = encode.fit_audio(wav, int(round(plan.duration * audio_lib.SAMPLE_RATE)))
    return source, plan, mel, out_audio, sample, init_noise

  def _generate(self, source: video_lib.FrameSource, plan: Plan, mel: np.ndarray, sample: Any,
                init_noise: Optional[np.ndarray], options: LipsyncOptions,
                trace: Optional[dict], on_progress: Optional[ProgressFn]
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Second pass: yields (frames [c, H, W, 3] uint8, times [c]) chunk by chunk, in order.

    The device works on chunk i while the host decodes and crops chunk i+1. Every frame depends
    only on its own crop, reference, box, mel window and the shared noise, so the output does
    not depend on the chunking.
    """
    size = self.loaded.model.image_size
    key_noise, key_steps = jax.random.split(jax.random.key(options.sampling_seed))
    noise = (jnp.asarray(init_noise) if init_noise is not None else
             jax.random.normal(key_noise, (1, size, size, 3), jnp.float32))
    if self.device is not None or self.mesh is not None:
      noise = jax.device_put(noise, self.device if self.mesh is None else
                             sharding.replicated(self.mesh))
    chunk = max(1, options.frames_per_batch)
    out_found = plan.out_found
    batch = _bucket(int(out_found.sum()), chunk)
    mask = np.asarray(lower_face_mask(size, options.face_hide_percentage))

    def start(c0: int):
      ks = np.arange(c0, min(c0 + chunk, plan.num_out))
      s, r = plan.src[ks], plan.ref_src[ks]
      lo, hi = int(min(s.min(), r.min())), int(max(s.max(), r.max())) + 1
      block = source.read(lo, hi)
      frames = block[s - lo]  # a copy in output order
      wpos = np.flatnonzero(out_found[ks])
      pending = []
      if len(wpos):
        crop = crops.crop_faces(frames[wpos], plan.boxes[s[wpos]], size)
        ref = crop if np.array_equal(r, s) else crops.crop_faces(block[r[wpos] - lo],
                                                                 plan.boxes[r[wpos]], size)
        mels = audio_lib.mel_windows(mel, plan.out_times[ks[wpos]])
        if len(mels) != len(wpos):
          raise LipsyncError(f"the audio has mel windows for {len(mels)} of {len(wpos)} frames")
        if trace is not None:
          _record(trace, crop, ref, mels, plan.out_times[ks[wpos]], mask, np.asarray(noise))
        for b0 in range(0, len(wpos), batch):
          m = min(batch, len(wpos) - b0)
          take = np.arange(b0, b0 + batch).clip(max=b0 + m - 1)  # pad with the last frame
          rng = jax.random.fold_in(key_steps, int(ks[wpos[b0]])) if options.stochastic else None
          pending.append((m, sample(self.params, pixels.to_unit(crop[take]),
                                    pixels.to_unit(ref[take]), mels[take], noise, rng)))
      return ks, s, frames, wpos, pending

    def finish(job):
      ks, s, frames, wpos, pending = job
      if len(wpos):
        generated = np.concatenate([np.asarray(jax.device_get(out))[:m] for m, out in pending])
        pasted = pixels.to_uint8(generated, options.uint8)
        if trace is not None:
          trace.setdefault("generated", []).append(generated)
          trace.setdefault("pasted_crops", []).append(pasted)
        frames[wpos] = blend.blend_faces(
            frames[wpos], pasted, plan.boxes[s[wpos]], mode=options.blend,
            face_hide_percentage=options.face_hide_percentage, feather=options.feather,
            color_match=options.color_match, alpha=plan.alpha[ks[wpos]])
      return frames, plan.out_times[ks]

    job, done = None, 0
    with tqdm(total=plan.num_out, desc="lip-sync", unit="frame",
              disable=not options.progress) as bar:
      for c0 in list(range(0, plan.num_out, chunk)) + [None]:
        nxt = start(c0) if c0 is not None else None
        if job is not None:
          out = finish(job)
          done += len(out[0])
          bar.update(len(out[0]))
          if on_progress:
            on_progress("sampling", done, plan.num_out)
          yield out
        job = nxt

  def run(self, video: Any, audio: Any, out_path: str | os.PathLike | None = None, *,
          options: LipsyncOptions | None = None, audio_sample_rate: int = audio_lib.SAMPLE_RATE,
          trace: Optional[dict] = None, on_progress: Optional[ProgressFn] = None
          ) -> LipsyncResult | LipsyncSummary:
    """Lip-syncs `video` to `audio`: frames in memory (`out_path` None) or an mp4.

    Args:
      video: path of a video or still image, or a decoded `video.Video`.
      audio: path of any audio (or a video with sound), or samples ([S] or [S, C]) at
        `audio_sample_rate` Hz.
      out_path: output `.mp4`: streamed to disk in bounded memory, atomically (nothing is left
        at `out_path` on failure).
      options: this run's options (default: the Lipsyncer's).
      audio_sample_rate: rate of array `audio` in Hz.
      trace: a dict to fill with each stage's arrays (`boxes`, `mel_window_start`,
        `indiv_mels`, `crops`, `cond_img`, `ref_img`, `generated`, `pasted_crops`; `frames_out`
        with `out_path` None) for parity checks.
      on_progress: called as (stage, done, total) for "detection", "sampling", "encoding".

    Raises:
      VideoError, AudioError, CheckpointError, LipsyncError, ValueError: bad inputs, with a
      one-line message that says what to do; found before sampling starts.
    """
    options = options or self.options
    source, plan, mel, out_audio, sample, noise = self._start(video, audio, out_path, options,
                                                              audio_sample_rate, on_progress)
    if trace is not None:
      trace["boxes"] = plan.boxes
    chunks = self._generate(source, plan, mel, sample, noise, options, trace, on_progress)
    try:
      if out_path is None:
        frames = np.empty((plan.num_out, *plan.size_hw, 3), np.uint8)
        pos = 0
        for chunk, _ in chunks:
          frames[pos:pos + len(chunk)] = chunk
          pos += len(chunk)
        if trace is not None:
          _finish_trace(trace, frames)
        return LipsyncResult(frames=frames, fps=plan.fps, audio=out_audio, no_face=plan.no_face,
                             times=plan.out_times, scene_cuts=plan.scene_cuts)
      # The viewer hears the audio file itself (its rate and channels; copied where mp4 takes
      # its codec), cut to the frames; 16 kHz mono was for the mel. Arrays are written as is.
      audio_file = _audio_file(audio, options)
      with encode.VideoWriter(out_path, plan.fps, None if audio_file else out_audio,
                              audio_lib.SAMPLE_RATE, crf=options.crf,
                              preset=options.x264_preset, color=source.color,
                              source_audio=audio_file, audio_duration=plan.duration,
                              pix_fmt=options.pix_fmt, inputs=_paths(video, audio)) as writer:
        for frames, times in chunks:
          writer.write(frames, times if plan.vfr else None)
        if on_progress:
          on_progress("encoding", plan.num_out, plan.num_out)
    finally:
      source.close()
    if trace is not None:
      _finish_trace(trace, None)
    return LipsyncSummary(out_path=pathlib.Path(out_path), num_frames=plan.num_out,
                          fps=plan.fps, no_face=plan.no_face, times=plan.out_times,
                          scene_cuts=plan.scene_cuts)


def _audio_file(audio: Any, options: LipsyncOptions) -> Optional[str | os.PathLike]:
  """The driving audio file whose own sound the output carries (None: write the 16 kHz mono)."""
  is_file = isinstance(audio, (str, os.PathLike))
  return audio if is_file and options.output_audio == "source" else None


def _paths(*items: Any) -> list:
  """The inputs given as files (an output must never replace one)."""
  return [v for v in items if isinstance(v, (str, os.PathLike))]


def _record(trace: dict, crop: np.ndarray, ref: np.ndarray, mels: np.ndarray,
            times: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> None:
  """Appends one chunk's model inputs to `trace` (host copies; for parity tests)."""
  face = pixels.to_unit(crop)
  trace.setdefault("crops", []).append(crop)
  trace.setdefault("ref_img", []).append(pixels.to_unit(ref))
  trace.setdefault("cond_img", []).append(make_cond_img(face, mask, noise))
  trace.setdefault("indiv_mels", []).append(mels)
  trace.setdefault("mel_window_start", []).append(audio_lib.window_start_indices(times))


def _finish_trace(trace: dict, frames: Optional[np.ndarray]) -> None:
  for k, v in list(trace.items()):
    if isinstance(v, list):
      trace[k] = np.concatenate(v) if v else np.zeros((0,))
  if frames is not None:
    trace["frames_out"] = frames


def _split(options: LipsyncOptions | None, preset: str, overrides: dict) -> LipsyncOptions:
  """The options of a call: `options` with `overrides`, or the preset with them."""
  if options is not None:
    return options.replace(**overrides) if overrides else options
  return LipsyncOptions.preset(preset, **overrides)


def lipsync(video: Any, audio: Any, *, checkpoint: Any = checkpoints.RANDOM,
            options: LipsyncOptions | None = None, preset: str = "default",
            detector: Optional[faces.FaceDetector] = None, device: Any = None,
            audio_sample_rate: int = audio_lib.SAMPLE_RATE, trace: Optional[dict] = None,
            **overrides) -> LipsyncResult:
  """Lip-syncs a video (or photo) to speech; returns all frames in memory (short clips).

  `checkpoint` is any model name of `checkpoints.load_model` (or a loaded one), `preset`
  "default" or "upstream", `**overrides` any `LipsyncOptions` field. See `Lipsyncer.run`.
  """
  opts = _split(options, preset, overrides)
  return Lipsyncer(checkpoint, opts, detector=detector, device=device).run(
      video, audio, options=opts, audio_sample_rate=audio_sample_rate, trace=trace)


def lipsync_to_file(video: Any, audio: Any, out_path: str | os.PathLike, *,
                    checkpoint: Any = checkpoints.RANDOM, options: LipsyncOptions | None = None,
                    preset: str = "default", detector: Optional[faces.FaceDetector] = None,
                    device: Any = None, audio_sample_rate: int = audio_lib.SAMPLE_RATE,
                    **overrides) -> LipsyncSummary:
  """`lipsync` streamed into `out_path` (H.264 + AAC mp4) in bounded memory; see
  `Lipsyncer.run`."""
  opts = _split(options, preset, overrides)
  return Lipsyncer(checkpoint, opts, detector=detector, device=device).run(
      video, audio, out_path, options=opts, audio_sample_rate=audio_sample_rate)
