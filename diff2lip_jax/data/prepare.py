"""CLI: a folder of talking-face videos -> tensorflow-datasets ArrayRecord dataset.

    python -m diff2lip_jax.data.prepare --input_dir /data/vox2 --data_dir ~/tensorflow_datasets
    python -m diff2lip_jax.data.prepare --input_dir /data/lrw/lipread_mp4 --layout lrw \
        --data_dir ~/tensorflow_datasets

Resumable: rerun the same command after an interruption; finished clips are kept. See
`diff2lip_jax.data.build` for what is done and `diff2lip_jax.data.builder` for the features.
Flags are defined in `define_flags()` (called only when run as a program), so importing this
module does not add flags to another program's namespace.
"""

from __future__ import annotations

from absl import app, flags

from diff2lip_jax.data import build, clips


def define_flags() -> None:
  """Defines this CLI's absl flags."""
  flags.DEFINE_string("input_dir", None, "folder of videos (VoxCeleb2 or LRW layout)")
  flags.DEFINE_string("data_dir", None, "tfds data dir to write the dataset to")
  flags.DEFINE_enum("layout", "auto", ["auto", "voxceleb2", "lrw"],
                    "voxceleb2: id/clip/00001.mp4; lrw: WORD/{train,val,test}/WORD_00001.mp4")
  flags.DEFINE_string("dataset_name", None,
                      "tfds name (default diff2lip_voxceleb2 / diff2lip_lrw by layout)")
  flags.DEFINE_string("work_dir", None,
                      "per-clip files (default DATA_DIR/downloads/manual/DATASET_NAME)")
  flags.DEFINE_integer("num_workers", None, "processes (default: CPU count; 0: in-process)")
  flags.DEFINE_enum("crop", "auto", ["auto", "fixed", "detect"],
                    "fixed: upstream VoxCeleb2 crop; detect: dlib boxes; auto: by layout")
  flags.DEFINE_float("fps", 25.0, "frame rate of the stored frames (0: keep each video's)")
  flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the stored 128x128 crops")
  flags.DEFINE_list("pads", ["0", "0", "0", "0"], "detect: top,bottom,left,right box padding")
  flags.DEFINE_integer("detect_upsample", 1, "detect: dlib upsampling (0 is ~3x faster)")
  flags.DEFINE_integer("detect_max_side", None, "detect: detect on frames downscaled to this")
  flags.DEFINE_float("max_missing_fraction", 0.5,
                     "detect: skip clips with more frames than this without a face")
  flags.DEFINE_float("val_fraction", 0.01, "VoxCeleb2: fraction of speakers held out for val")
  flags.DEFINE_float("test_fraction", 0.0,
                     "VoxCeleb2: fraction of speakers held out for test (besides test/ folders)")
  flags.DEFINE_list("val_speakers", [], "VoxCeleb2: speaker ids for val (replaces fractions)")
  flags.DEFINE_list("test_speakers", [], "VoxCeleb2: speaker ids for test (replaces fractions)")
  flags.DEFINE_integer("max_clips", None, "process at most this many new clips in this run")
  flags.DEFINE_boolean("retry_skipped", False, "retry clips an earlier run skipped")
  flags.DEFINE_boolean("overwrite", False, "discard clips prepared with other options")
  flags.DEFINE_boolean("build", True, "build the tfds dataset once all clips are done")
  flags.mark_flags_as_required(["input_dir", "data_dir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  options = clips.ProcessOptions(
      fps=f.fps, jpeg_quality=f.jpeg_quality, pads=tuple(int(p) for p in f.pads),
      detect_upsample=f.detect_upsample, detect_max_side=f.detect_max_side,
      max_missing_fraction=f.max_missing_fraction)
  summary = build.prepare_dataset(
      f.input_dir, f.data_dir, layout=f.layout, dataset_name=f.dataset_name,
      work_dir=f.work_dir, crop=f.crop, options=options, num_workers=f.num_workers,
      val_fraction=f.val_fraction, test_fraction=f.test_fraction,
      val_speakers=f.val_speakers, test_speakers=f.test_speakers, max_clips=f.max_clips,
      retry_skipped=f.retry_skipped, overwrite=f.overwrite, build=f.build)
  print(summary.format(), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
