r"""Lip-sync a face video (or a photo) to any speech: the command line of the inference core.

  python -m diff2lip_jax.generate --video_path face.mp4 --audio_path speech.wav \
      --out_path out.mp4 --checkpoint checkpoints/diff2lip_released
  python -m diff2lip_jax.generate ... --checkpoint runs/my_training_workdir
  python -m diff2lip_jax.generate ... --preset upstream --init_noise noise.npy
  python -m diff2lip_jax.generate --filelist pairs.txt --data_root videos/ \
      --sample_path outputs/ --checkpoint checkpoints/diff2lip_released

`--checkpoint` names a model any way `inference.checkpoints.load_model` takes (a converted or
exported directory, a `launch.train` workdir or `WORKDIR/checkpoints/STEP`, an upstream `.pt` or
`.npz`, `random`). `--preset` picks the defaults (`default`, or `upstream`: upstream
generate.py's behaviour); every other flag given overrides one option
(`inference.options.LipsyncOptions`, where each default lives). Flag names are upstream's where
upstream has the option.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import threading
from typing import Any

import jax
from absl import app, flags, logging

from diff2lip_jax.inference import batch as batch_lib
from diff2lip_jax.inference import checkpoints, options as options_lib, pipeline

_VIDEO = flags.DEFINE_string("video_path", None, "input video, or a still image of a face")
_AUDIO = flags.DEFINE_string("audio_path", None, "driving speech: any audio file or video")
_OUT = flags.DEFINE_string("out_path", None, "output .mp4 (H.264 + AAC)")
_CKPT = flags.DEFINE_string("checkpoint", None,
                            "model: a converted/exported checkpoint directory, a launch.train "
                            "workdir (best validation EMA params) or WORKDIR/checkpoints/STEP, an "
                            "upstream .pt/.npz, or 'random' (released architecture, untrained)")
_MODEL_FLAGS = flags.DEFINE_string("model_flags", None, "JSON of upstream model flags for an "
                                   "upstream .pt/.npz --checkpoint (default: released)")
_PRESET = flags.DEFINE_enum("preset", "default", list(options_lib.PRESETS),
                            "default: tracking, feathered blend, padded end; upstream: "
                            "upstream generate.py (S3FD, hard paste, float32, upstream frame "
                            "count, uint8 truncation, CRF 23, torch seed noise)")
# Options: each flag overrides the preset only when given.
flags.DEFINE_enum("sampler", None, list(options_lib.SAMPLERS), "sampler (default ddim)")
flags.DEFINE_integer("steps", None, "solver steps for dpmpp_2m/unipc; ddim with steps N: "
                     "the trailing N-step grid of distilled students")
flags.DEFINE_string("timestep_respacing", None, "ddim/ddpm steps: ddim25 (default), ddim10, 250")
flags.DEFINE_boolean("use_ddim", None, "DDIM (True) or ancestral sampling")
flags.DEFINE_float("eta", None, "DDIM eta (default 0)")
flags.DEFINE_boolean("clip_denoised", None, "clamp predicted x0 to [-1, 1] each step")
flags.DEFINE_integer("sampling_seed", None, "seed of the shared initial noise (default 7)")
flags.DEFINE_string("init_noise", None, "initial noise: a .npy [1,3,S,S] or [1,S,S,3], or "
                    "'torch' (upstream: torch.manual_seed(seed); torch.randn)")
flags.DEFINE_float("face_hide_percentage", None, "lower fraction of the face regenerated (0.5)")
flags.DEFINE_integer("sampling_batch_size", None, "clips of --nframes frames per batch (32)")
flags.DEFINE_integer("nframes", None, "frames per clip (5)")
flags.DEFINE_enum("dtype", None, ["auto", "float32", "bfloat16"],
                  "compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU")
flags.DEFINE_enum("detector", None, list(options_lib.DETECTORS),
                  "face detector; auto: the checkpoint's S3FD if it has one, else dlib")
flags.DEFINE_string("s3fd_path", None, "upstream S3FD weights (s3fd-619a316812.pth or .npz)")
flags.DEFINE_boolean("is_voxceleb2", None, "upstream's fixed crop of aligned VoxCeleb2 clips "
                     "instead of detected faces")
flags.DEFINE_list("pads", None, "top,bottom,left,right box padding in pixels (0,0,0,0)")
flags.DEFINE_string("face", None, "which face with several: largest, score, an index "
                    "(0 = leftmost) or a point x,y in the first frame; it is tracked")
flags.DEFINE_integer("face_det_batch_size", None, "frames per face-detector call (64)")
flags.DEFINE_integer("face_det_max_side", None, "dlib: detect on a copy downscaled to this "
                     "longer side (faster on HD video); 0: full size")
flags.DEFINE_float("scene_cut_threshold", None, "histogram distance of a scene cut (restarts "
                   "face tracking); >1 disables")
flags.DEFINE_enum("sampling_input_type", None, list(options_lib.INPUT_TYPES),
                  "gt: each frame is its own input; first_frame: the first frame for all")
flags.DEFINE_enum("sampling_ref_type", None, list(options_lib.INPUT_TYPES),
                  "gt: each frame is its own reference; first_frame: the first frame")
flags.DEFINE_enum("audio_longer", None, list(options_lib.AUDIO_LONGER),
                  "audio longer than the video: play the video back and forth, or trim")
flags.DEFINE_enum("end", None, list(options_lib.ENDS), "padded: frames to the audio's end; "
                  "last_full_window: upstream's frame count")
flags.DEFINE_integer("crossfade_frames", None, "frames of cross-fade next to frames without a "
                     "face (3)")
flags.DEFINE_enum("blend", None, list(options_lib.BLENDS), "feather: soft mask + colour "
                  "matching; hard: upstream's rectangle")
flags.DEFINE_float("feather", None, "feather ramp, fraction of the face box's side (0.1)")
flags.DEFINE_boolean("color_match", None, "match the generated lower face's colour to the skin")
flags.DEFINE_enum("uint8", None, list(options_lib.UINT8), "round (default) or truncate "
                  "(upstream) when the generated crop becomes pixels")
flags.DEFINE_integer("crf", None, "libx264 CRF (18; upstream's writer 23)")
flags.DEFINE_string("x264_preset", None, "libx264 preset (medium)")
flags.DEFINE_string("pix_fmt", None, "output pixel format (yuv420p: plays everywhere)")
flags.DEFINE_enum("output_audio", None, list(options_lib.OUTPUT_AUDIO), "source: the audio "
                  "file's own sound (default); 16k_mono: the mel's resample (upstream)")
_FILELIST = flags.DEFINE_string("filelist", None, "batch mode: '<audio> <video>' per line, "
                                "relative to --data_root (upstream's filelist format)")
_DATA_ROOT = flags.DEFINE_string("data_root", ".", "folder the --filelist paths are relative to")
_SAMPLE_PATH = flags.DEFINE_string("sample_path", "outputs", "batch mode: output folder")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "batch mode: redo finished outputs")
_DISTRIBUTED = flags.DEFINE_boolean("distributed", False, "call jax.distributed.initialize() "
                                    "(multi-host batch runs)")

_OPTION_FLAGS = [f.name for f in dataclasses.fields(options_lib.LipsyncOptions)
                 if f.name in flags.FLAGS and f.name != "progress"]


def options_from_flags() -> options_lib.LipsyncOptions:
  """The preset with every option flag that was given on the command line.

  Raises:
    ValueError: a bad value (one line).
  """
  overrides: dict[str, Any] = {}
  for name in _OPTION_FLAGS:
    if flags.FLAGS[name].present:
      overrides[name] = flags.FLAGS[name].value
  if "pads" in overrides:
    try:
      overrides["pads"] = tuple(int(p) for p in overrides["pads"])
    except ValueError:
      raise ValueError(f"--pads needs 4 integers top,bottom,left,right; got "
                       f"{','.join(overrides['pads'])}") from None
  if flags.FLAGS["is_voxceleb2"].present:
    overrides["crop"] = "voxceleb2" if flags.FLAGS.is_voxceleb2 else "detect"
  if "face" in overrides:
    from diff2lip_jax.inference import tracking  # pylint: disable=import-outside-toplevel
    overrides["face"] = tracking.parse_face(overrides["face"])
  return options_lib.LipsyncOptions.preset(_PRESET.value, **overrides)


def _model(options: options_lib.LipsyncOptions) -> Any:
  """The model name, or (for an upstream state_dict with --model_flags) the loaded model."""
  if _MODEL_FLAGS.value:
    return checkpoints.load_model(_CKPT.value, pipeline.resolve_dtype(options.dtype),
                                  model_flags=_MODEL_FLAGS.value)
  return _CKPT.value


def _run_filelist(options: options_lib.LipsyncOptions) -> None:
  devices = jax.local_devices()
  lock = threading.Lock()
  loaded: list[checkpoints.LoadedModel] = []  # loaded once, when the first pair needs it
  workers: dict[Any, pipeline.Lipsyncer] = {}
  quiet = options.replace(progress=len(devices) == 1)

  def run_one(video, audio, out, device):
    with lock:
      if not loaded:
        model = _model(options)
        loaded.append(model if isinstance(model, checkpoints.LoadedModel) else
                      checkpoints.load_model(model, pipeline.resolve_dtype(options.dtype)))
      if device not in workers:
        workers[device] = pipeline.Lipsyncer(loaded[0], quiet,
                                             device=device if len(devices) > 1 else None)
    workers[device].run(video, audio, out)

  report = batch_lib.run_filelist(_FILELIST.value, _DATA_ROOT.value, _SAMPLE_PATH.value,
                                  run_one, overwrite=_OVERWRITE.value, devices=devices)
  print(f"filelist: {len(report.done)} written, {len(report.skipped)} already done, "
        f"{len(report.failed)} failed (host {jax.process_index()} of {jax.process_count()}, "
        f"{len(devices)} device(s), {report.total} items in all)")
  if report.failed:
    for item, message in report.failed:
      print(f"  line {item.line}: {item.audio} {item.video}: {message}", file=sys.stderr)
    sys.exit(f"error: {len(report.failed)} item(s) failed; fix them and rerun (finished outputs "
             "are skipped)")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  if _CKPT.value is None:
    sys.exit("error: --checkpoint is required (a converted checkpoint directory, a training "
             "workdir, an upstream .pt, or 'random')")
  try:
    options = options_from_flags()
    if _FILELIST.value:
      _run_filelist(options)
      return
    missing = [f"--{n}" for n in ("video_path", "audio_path", "out_path")
               if flags.FLAGS[n].value is None]
    if missing:
      sys.exit(f"error: {', '.join(missing)} required (or --filelist for batch mode)")
    out_path = pathlib.Path(_OUT.value)
    if out_path.suffix.lower() not in (".mp4", ".mov", ".mkv"):
      sys.exit(f"error: --out_path {out_path} should end in .mp4")
    lipsyncer = pipeline.Lipsyncer(_model(options), options)
    summary = lipsyncer.run(_VIDEO.value, _AUDIO.value, out_path)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {out_path}: {summary.num_frames} frames at {summary.fps:g} fps"
        + (f"; no face in frames {summary.no_face} (passed through)" if summary.no_face else "")
        + f" (model: {lipsyncer.loaded.source})")


if __name__ == "__main__":
  app.run(main)
