"""The evaluation job: lip-sync upstream's file lists through the inference core and score the
videos with every metric of the paper (FID, SSIM, PSNR, LMD, LSE-C, LSE-D).

`run(config, workdir)` (the body of `python -m launch.evaluate`), per setting
(`reconstruction`, `cross`; spec §4.4, §6):

1. **Generate** `WORKDIR/<setting>/videos/<name>.mp4` for each pair of the file list
   (`<name>` is upstream's `<audio>_<video>` with `/` -> `.`) with the inference core
   (`inference.pipeline.Lipsyncer`, the same code as `generate`), by default with
   `preset="upstream"` (S3FD boxes, hard paste, float32, upstream's frame count, uint8
   truncation, CRF 23): reconstruction is upstream's `--sampling_input_type first_frame
   --sampling_ref_type first_frame` (the clip's first frame is the input and reference of every
   output frame, driven by the clip's audio), cross is `gt`/`gt` (each video frame its own input
   and reference, driven by the other clip's audio). `config.generated_dir` scores another
   method's videos instead (`<generated_dir>/<setting>/<name>.mp4` or `<generated_dir>/<name>.mp4`).
2. **Score** each video (`scoring.Scorer`) and 3. **summarise** into `WORKDIR/summary.json` and
   `WORKDIR/summary.md` (`scoring.summarize_setting`).

Resumable: an existing video is not regenerated and an existing clip JSON is not rescored
(both written atomically). A clip that cannot be processed (missing file, no face) gets a JSON
with an `error` and is counted as failed. With several hosts, each takes every
process_count-th pair; process 0 writes the summary after a barrier (the workdir must be shared).
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Optional

import jax
import ml_collections
from absl import logging
from ml_collections import config_dict

from diff2lip_jax import sharding
from diff2lip_jax.evaluation import debug_data
from diff2lip_jax.evaluation.scoring import (
    EvaluationError, FaceBoxes, Scorer, SettingPaths, atomic_write, json_dump, resolve_clip,
    summarize_setting, summary_markdown)
from diff2lip_jax.inference import analysis, checkpoints, filelists, pipeline
from diff2lip_jax.inference.options import LipsyncOptions

# LipsyncOptions an evaluation config may set (None: the preset's value).
OPTION_KEYS = {"sampler": str, "steps": int, "timestep_respacing": str, "use_ddim": bool,
               "eta": float, "clip_denoised": bool, "sampling_seed": int, "init_noise": str,
               "sampling_batch_size": int, "dtype": str, "detector": str, "s3fd_path": str,
               "crop": str, "face_det_batch_size": int, "blend": str, "uint8": str, "crf": int,
               "end": str}
SETTING_INPUT = {"reconstruction": "first_frame", "cross": "gt"}


def default_config() -> ml_collections.ConfigDict:
  """Every option of the job with its default (the `configs/eval_*.py` files start from this).

  Paths left "" must be set for a real run; `metrics.syncnet` / `metrics.inception` may be
  "random" for a pipeline check (the scores are then meaningless). `options.*` left None take
  the preset's value (`inference.options.LipsyncOptions`, where every default lives).
  """
  c = ml_collections.ConfigDict()
  c.method = "diff2lip-jax"          # row name in summary.md
  c.checkpoint = ""                  # any model name of inference.checkpoints.load_model
  c.model_flags = ""                 # JSON of upstream flags when `checkpoint` is a state_dict
  c.data_root = ""                   # the file list paths are relative to this folder
  c.filelist_dir = ""                # relative file list names are looked up here
  c.filelists = ml_collections.ConfigDict({"reconstruction": "", "cross": ""})
  c.settings = "reconstruction,cross"  # which of the file lists to evaluate
  c.video_ext = ".mp4"
  c.max_clips = 0                    # per setting; 0: all
  c.generated_dir = ""               # score these videos instead of generating (other methods)
  c.host_workers = 2                 # threads decoding / detecting ahead of the scorer
  c.debug_clips = 0                  # > 0: synthesise that many clips in WORKDIR/debug_data
  c.debug_frames = 10
  c.preset = "upstream"              # inference preset (upstream's generate.py protocol)
  c.options = ml_collections.ConfigDict(
      {k: config_dict.placeholder(t) for k, t in OPTION_KEYS.items()})
  c.options.pads = config_dict.placeholder(str)   # "top,bottom,left,right"
  c.metrics = ml_collections.ConfigDict(dict(
      syncnet="",                    # syncnet_python's syncnet_v2.model (or .npz) | random
      inception="",                  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth | random
      lse_protocol="upstream",       # upstream: the mp4 as syncnet_python reads it; direct
      vshift=15, lse_batch=20, fid_batch=50, fid_frame_stride=1, crop_size=128, lmd=True))
  return c


def options_from_config(cfg: ml_collections.ConfigDict) -> LipsyncOptions:
  """The inference options of an evaluation config (preset + the options it sets).

  Raises:
    ValueError: a bad value.
  """
  overrides = {k: v for k, v in cfg.options.items() if v is not None}
  if "pads" in overrides:
    overrides["pads"] = tuple(int(p) for p in str(overrides["pads"]).split(","))
  return LipsyncOptions.preset(cfg.preset, progress=False, **overrides)


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


def generate_setting(lipsyncer: pipeline.Lipsyncer, options: LipsyncOptions, setting: str,
                     pairs: list[filelists.Pair], paths: SettingPaths,
                     cfg: ml_collections.ConfigDict) -> dict:
  """Generates the missing videos of `pairs` with the inference core; returns counts/timings."""
  todo = [p for p in pairs if not paths.video(p).exists() and not paths.record(p).exists()]
  stats = {"generated_clips": 0, "generated_frames": 0, "failed": 0, "seconds": 0.0}
  if not todo:
    return stats
  logging.info("%s: generating %d videos (%d already there)", setting, len(todo),
               len(pairs) - len(todo))
  opts = options.replace(sampling_input_type=SETTING_INPUT[setting],
                         sampling_ref_type=SETTING_INPUT[setting])
  root = pathlib.Path(cfg.data_root)
  start = time.time()
  for pair in todo:
    try:
      summary = lipsyncer.run(resolve_clip(root, pair.video, cfg.video_ext),
                              resolve_clip(root, pair.audio, cfg.video_ext), paths.video(pair),
                              options=opts)
    except (ValueError, OSError) as e:  # VideoError, AudioError, LipsyncError, missing files
      logging.warning("%s: %s failed: %s", setting, pair.name, e)
      atomic_write(paths.record(pair), json_dump({
          "name": pair.name, "audio": pair.audio, "video": pair.video, "setting": setting,
          "error": str(e)}))
      stats["failed"] += 1
      continue
    stats["generated_clips"] += 1
    stats["generated_frames"] += summary.num_frames
  stats["seconds"] = time.time() - start
  return stats


def _face_boxes(options: LipsyncOptions, lipsyncer: Optional[pipeline.Lipsyncer]) -> FaceBoxes:
  """The metric crops' boxes: the run's crop rule and detector (S3FD from the checkpoint)."""
  s3fd = lipsyncer.loaded.s3fd_path if lipsyncer is not None else None
  return FaceBoxes(options.crop, lambda: analysis.make_detector(options, s3fd),
                   pads=options.pads, batch_size=options.face_det_batch_size)


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
    pairs = filelists.read_filelist(path)
    all_pairs[setting] = pairs[:cfg.max_clips] if cfg.max_clips > 0 else pairs
  options = options_from_config(cfg)
  timings: dict[str, dict] = {}
  lipsyncer: Optional[pipeline.Lipsyncer] = None
  if not cfg.generated_dir:
    if not cfg.checkpoint:
      raise EvaluationError("set --config.checkpoint (a checkpoint directory, a launch.train "
                            "workdir, an upstream .pt/.npz, or 'random'), or score existing "
                            "videos with --config.generated_dir")
    loaded = checkpoints.load_model(cfg.checkpoint, pipeline.resolve_dtype(options.dtype),
                                    model_flags=cfg.model_flags or None)
    lipsyncer = pipeline.Lipsyncer(loaded, options)
    lipsyncer.detector_for(options)  # fails now without the S3FD weights the preset needs
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
        gen_stats = generate_setting(lipsyncer, options, setting, mine, paths, cfg)
      else:
        gen_stats = {}
      video_for = lambda p, paths=paths: paths.video(p) if paths.video(p).exists() else None
    if any(not paths.record(p).exists() for p in mine):
      scorer = scorer or Scorer(cfg, mesh, _face_boxes(options, lipsyncer),
                                options.face_hide_percentage)
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
      "checkpoint": lipsyncer.loaded.source if lipsyncer is not None else None,
      "videos": str(cfg.generated_dir or workdir),
      "settings": {s: summarize_setting(p, SettingPaths(workdir / s))
                   for s, p in all_pairs.items()},
      "timings_this_run": timings,
      "devices": f"{mesh.size} x {jax.devices()[0].device_kind}",
      "config": cfg.to_dict(),
  }
  atomic_write(workdir / "summary.json", json_dump(summary))
  atomic_write(workdir / "summary.md", summary_markdown(summary))
  return summary
