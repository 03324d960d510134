"""One workflow, end to end in subprocesses: what `launch.train` makes, `generate` runs and
`launch.evaluate` scores; `export` of the workdir gives the same frames."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from diff2lip_jax.media import video as video_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FACE = REPO / "examples" / "face.png"


def _run(args, env, timeout=900):
  r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO,
                     env=env, timeout=timeout, check=False)
  assert r.returncode == 0, (args[0], r.stderr[-3000:])
  return r


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, trainer_env):
  """A debug training run of a few steps (two checkpoints)."""
  w = tmp_path_factory.mktemp("workflow") / "train"
  _run(["launch.train", "--config", "configs/debug.py", f"--workdir={w}",
        "--config.num_train_steps=4", "--config.checkpoint_every=2", "--config.log_every=2",
        "--config.sample_every=0", "--config.eval_every=0"], trainer_env)
  return w


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
  from diff2lip_jax.media import encode
  path = tmp_path_factory.mktemp("speech") / "speech.mp4"
  t = np.arange(int(0.48 * 16000)) / 16000
  wav = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2).astype(np.float32)
  frames = np.zeros((12, 16, 16, 3), np.uint8)
  encode.write_video(path, frames, 25.0, wav)
  return path


def _generate(checkpoint, out, speech, env):
  return _run(["diff2lip_jax.generate", f"--video_path={FACE}", f"--audio_path={speech}",
               f"--out_path={out}", f"--checkpoint={checkpoint}", "--timestep_respacing=ddim2"],
              env)


def test_train_then_generate_evaluate_and_export(workdir, speech, tmp_path, trainer_env):
  assert (workdir / "model_flags.json").is_file() and (workdir / "config.json").is_file()
  # generate --checkpoint WORKDIR: the best validation checkpoint's EMA params.
  out = tmp_path / "from_workdir.mp4"
  r = _generate(workdir, out, speech, trainer_env)
  assert "training workdir" in r.stdout and "ema params" in r.stdout, r.stdout
  frames = video_lib.read_video(out).frames
  assert len(frames) == 12 and frames.shape[1:] == video_lib.read_video(FACE).frames.shape[1:]
  # export -> a standalone checkpoint that gives the same frames.
  exported = tmp_path / "exported"
  _run(["diff2lip_jax.export", f"--workdir={workdir}", f"--output_dir={exported}"], trainer_env)
  out2 = tmp_path / "from_export.mp4"
  _generate(exported, out2, speech, trainer_env)
  np.testing.assert_array_equal(video_lib.read_video(out2).frames, frames)
  # launch.evaluate --config.checkpoint=WORKDIR on the synthetic debug clips.
  ev = tmp_path / "eval"
  _run(["launch.evaluate", "--config", "configs/eval_debug.py", f"--workdir={ev}",
        f"--config.checkpoint={workdir}"], trainer_env)
  summary = json.loads((ev / "summary.json").read_text())
  assert "training workdir" in summary["checkpoint"]
  for setting in ("reconstruction", "cross"):
    s = summary["settings"][setting]
    assert s["scored"] == s["clips"] == 2, s
    for key in ("fid", "lse_c", "lse_d") + (("ssim", "psnr", "lmd")
                                            if setting == "reconstruction" else ()):
      assert isinstance(s[key], float) and np.isfinite(s[key]), (setting, key, s[key])


def test_a_step_folder_names_one_checkpoint(workdir, speech, tmp_path, trainer_env):
  r = _generate(workdir / "checkpoints" / "2", tmp_path / "step2.mp4", speech, trainer_env)
  assert "of step 2 (step 2)" in r.stdout, r.stdout
  bad = subprocess.run([sys.executable, "-m", "diff2lip_jax.generate", f"--video_path={FACE}",
                        f"--audio_path={speech}", f"--out_path={tmp_path / 'x.mp4'}",
                        f"--checkpoint={tmp_path}"], capture_output=True, text=True, cwd=REPO,
                       env=trainer_env, check=False)
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error:")
  assert "is not a model" in bad.stderr and "Traceback" not in bad.stderr
