"""The evaluation job end to end on the synthetic debug set: CLI, outputs, resume, scoring
another method's videos, file lists, failures."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import eval_debug, eval_voxceleb2
from diff2lip_jax.media import video as video_lib
from diff2lip_jax.evaluation import job, lse, scoring
from diff2lip_jax.inference import checkpoints, crops, filelists
from diff2lip_jax.inference.pipeline import lipsync_to_file

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_cli(workdir, *extra):
  return subprocess.run([sys.executable, "-m", "launch.evaluate", "--config",
                         "configs/eval_debug.py", f"--workdir={workdir}", *extra],
                        capture_output=True, text=True, check=False, cwd=REPO)


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
  """(workdir, summary) of one debug job, run in this process (its metric networks are then
  reused by the other tests here)."""
  workdir = tmp_path_factory.mktemp("eval") / "run"
  summary = job.run(eval_debug.get_config(), workdir)
  return workdir, summary


def test_filelist_format(tmp_path):
  path = tmp_path / "list.txt"
  path.write_text("# comment\nid1/a/00001 id1/a/00001\n\nid2/b/00002.mp4  id3/c/00003\n")
  pairs = filelists.read_filelist(path)
  assert pairs == [filelists.Pair("id1/a/00001", "id1/a/00001"),
                   filelists.Pair("id2/b/00002.mp4", "id3/c/00003")]
  assert [p.line for p in pairs] == [2, 4]
  assert pairs[1].name == "id2.b.00002_id3.c.00003"  # upstream's output name
  path.write_text("only_one_path\n")
  with pytest.raises(filelists.FilelistError, match="list.txt:1"):
    filelists.read_filelist(path)


def test_voxceleb2_crop_is_upstreams():
  np.testing.assert_array_equal(crops.voxceleb2_box(224, 224), [50, 0, 174, 158])  # 158 x 124


def test_debug_job_writes_every_metric(debug_run):
  workdir, returned = debug_run
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["settings"] == returned["settings"]
  assert set(summary["settings"]) == {"reconstruction", "cross"}
  rec, cross = summary["settings"]["reconstruction"], summary["settings"]["cross"]
  for s in (rec, cross):
    assert set(scoring.SUMMARY_KEYS) <= set(s)
    assert s["scored"] == s["clips"] == 2 and s["failed"] == 0
    for key in ("fid", "lse_c", "lse_d"):
      assert isinstance(s[key], float) and np.isfinite(s[key]), key
  for key in ("ssim", "psnr", "lmd", "ssim_mouth", "psnr_mouth"):
    assert isinstance(rec[key], float) and np.isfinite(rec[key]), key
    assert cross[key] is None, key  # no ground truth in the cross setting
  assert 0 < rec["ssim_mouth"] < rec["ssim"] < 1
  # Upstream's frame count: 16 frames of 0.64 s audio have 13 full mel windows; FID takes
  # every 2nd frame of 2 x 13.
  assert rec["fid_frames"] == cross["fid_frames"] == 14
  assert "| reconstruction | 2/2 |" in (workdir / "summary.md").read_text()
  timing = summary["timings_this_run"]["cross"]["generation"]
  assert timing["generated_clips"] == 2 and timing["generated_frames"] == 26
  clip = json.loads((workdir / "reconstruction" / "clips" /
                     "id00.clip.00001_id00.clip.00001.json").read_text())
  # LSE reads the mp4 as syncnet_python does: windows = min(frames, 16 kHz samples // 640) - 5.
  _, wav = lse.load_upstream_inputs(workdir / "reconstruction" / "videos" /
                                    "id00.clip.00001_id00.clip.00001.mp4")
  assert clip["frames"] == 13 and clip["face_found"] >= 0
  assert clip["lse_windows"] == lse.num_windows(13, len(wav)) >= 7
  video = video_lib.read_video(workdir / "cross" / "videos" / "id00.clip.00001_id01.clip.00001.mp4")
  assert video.num_frames == 13 and video.fps == 25.0 and video.frames.shape[1:] == (160, 160, 3)
  # Reconstruction drives the first frame: the upper face is the same in every output frame.
  recon = video_lib.read_video(workdir / "reconstruction" / "videos" /
                               "id01.clip.00001_id01.clip.00001.mp4").frames.astype(int)
  assert np.abs(recon[-1, :40] - recon[0, :40]).mean() < 2.0


def test_cli_rerun_resumes_without_redoing_work(debug_run):
  """`python -m launch.evaluate` on a finished workdir: nothing is regenerated or rescored."""
  workdir, _ = debug_run
  files = sorted(p for p in workdir.rglob("*") if p.is_file() and "debug_data" not in p.parts
                 and not p.name.startswith("summary"))
  stamps = {p: p.stat().st_mtime_ns for p in files}
  before = json.loads((workdir / "summary.json").read_text())["settings"]
  r = _run_cli(workdir)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "generating" not in r.stderr and "scored" not in r.stderr
  assert "| reconstruction | 2/2 |" in r.stdout
  assert {p: p.stat().st_mtime_ns for p in files} == stamps
  assert json.loads((workdir / "summary.json").read_text())["settings"] == before


def test_scores_another_methods_videos(debug_run, tmp_path):
  """A folder of `<name>.mp4` from any method is scored like our own videos; a pair whose
  clip is missing is recorded as failed."""
  workdir, _ = debug_run
  other = tmp_path / "other_method"
  other.mkdir()
  name = "id00.clip.00001_id00.clip.00001"
  shutil.copy(workdir / "reconstruction" / "videos" / f"{name}.mp4", other / f"{name}.mp4")
  lst = filelists.write_filelist(tmp_path / "list.txt", [
      filelists.Pair("id00/clip/00001", "id00/clip/00001"),
      filelists.Pair("id09/missing/00001", "id09/missing/00001")])
  cfg = eval_debug.get_config()
  cfg.debug_clips = 0
  cfg.data_root = str(workdir / "debug_data")
  cfg.filelists.reconstruction = str(lst)
  cfg.settings = "reconstruction"
  cfg.generated_dir = str(other)
  cfg.method = "other"
  summary = job.run(cfg, tmp_path / "scores")
  s = summary["settings"]["reconstruction"]
  assert s["scored"] == 1 and s["failed"] == 1 and summary["checkpoint"] is None
  ours = json.loads((workdir / "reconstruction" / "clips" / f"{name}.json").read_text())
  scores = tmp_path / "scores" / "reconstruction" / "clips"
  theirs = json.loads((scores / f"{name}.json").read_text())
  for key in ("psnr", "ssim", "psnr_mouth", "ssim_mouth", "lmd", "lse_c", "lse_d"):
    assert theirs[key] == pytest.approx(ours[key], rel=1e-5), key
  failed = json.loads((scores / "id09.missing.00001_id09.missing.00001.json").read_text())
  assert "no generated video" in failed["error"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  lst = filelists.write_filelist(tmp_path / "list.txt", [filelists.Pair("a/b/1", "a/b/1")])
  cfg = eval_voxceleb2.get_config()
  cfg.data_root = str(tmp_path)
  cfg.filelists.reconstruction = str(lst)
  cfg.settings = "reconstruction"
  with pytest.raises(job.EvaluationError, match="set --config.checkpoint"):
    job.run(cfg, tmp_path / "out")
  cfg.settings = "lipsync"
  with pytest.raises(job.EvaluationError, match="unknown"):
    job.run(cfg, tmp_path / "out")


def test_batches_are_split_over_several_devices():
  """With 2 (forced) CPU devices a batch is sharded along axis 0 and padded to a multiple of 2."""
  code = (
      "import numpy as np, jax, jax.numpy as jnp\n"
      "from diff2lip_jax import sharding\n"
      "mesh = sharding.local_mesh(); assert mesh.size == 2, mesh\n"
      "seen = []\n"
      "g = jax.jit(lambda x: jnp.sum(x, axis=1))\n"
      "def f(x):\n"
      "  seen.append((x.shape[0], len(x.sharding.device_set))); return g(x)\n"
      "x = np.arange(21, dtype=np.float32).reshape(7, 3)\n"
      "y = sharding.batched_apply(f, x, 3, mesh)\n"
      "np.testing.assert_allclose(y, x.sum(1)); assert seen == [(4, 2), (4, 2)], seen\n"
      "assert sharding.round_up(3, 2) == 4 and sharding.round_up(1, 8) == 8\n")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                     env=env, check=False)
  assert r.returncode == 0, r.stderr[-2000:]


def test_job_and_lipsync_are_one_core(debug_run, tmp_path):
  """The job's video of a pair equals `lipsync_to_file(..., preset="upstream")` with the same
  options: the job has no inference code of its own."""
  workdir, _ = debug_run
  cfg = eval_debug.get_config()
  root = workdir / "debug_data"
  options = job.options_from_config(cfg).replace(sampling_input_type="gt",
                                                 sampling_ref_type="gt")
  ours = tmp_path / "lipsync.mp4"
  model = checkpoints.load_model(cfg.checkpoint, model_flags=cfg.model_flags or None)
  lipsync_to_file(root / "id01/clip/00001.mp4", root / "id00/clip/00001.mp4", ours,
                  checkpoint=model, options=options)
  a = video_lib.read_video(ours).frames
  b = video_lib.read_video(workdir / "cross" / "videos" / "id00.clip.00001_id01.clip.00001.mp4").frames
  np.testing.assert_array_equal(a, b)
