"""Long videos in bounded memory: chunking does not change the output, and peak RSS of the CLI
does not grow with the video's length (tiny model, ddim2)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diff2lip_jax.media import video as video_lib
from diff2lip_jax.media import encode
from diff2lip_jax.inference.pipeline import lipsync

REPO = pathlib.Path(__file__).resolve().parents[1]
FACE = REPO / "examples" / "face.png"
# A tiny TFGModel (64x64 crops, 32 channels, one res block per level): the pipeline, not the model,
# is what is measured here.
TINY_FLAGS = {"image_size": 32, "channel_mult": "1,2", "num_channels": 32, "num_res_blocks": 1,
              "num_head_channels": 32, "attention_resolutions": "16",
              "audio_encoder_kwargs": {"init_spatial_dim": 32, "channel_mult": [1, 2],
                                       "num_res_blocks": 1}}
RSS_FPS = 3  # frames per second of the RSS test videos (2 min = 360 frames of 640x360)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  """A checkpoint of the tiny model with random N(0, 0.05) weights (no compilation needed)."""
  import jax
  from diff2lip_jax.inference import checkpoints
  from diff2lip_jax.models import model_from_flags
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32),
                        checkpoints.abstract_params(model_from_flags(TINY_FLAGS)))
  return checkpoints.save(tmp_path_factory.mktemp("tiny") / "ckpt", params, TINY_FLAGS)


_YY, _XX = np.mgrid[0:360, 0:640]
_BACKGROUND = np.stack([_XX // 4, _YY // 3, np.full_like(_XX, 90)], -1).astype(np.uint8)


def _scene(i: int, face: np.ndarray) -> np.ndarray:
  """Frame i of a 640x360 test video: the face (160 px) on a textured background, moving."""
  frame = _BACKGROUND.copy()
  frame[..., 0] += np.uint8(3 * i % 256)
  x = 240 + int(60 * np.sin(i / 20))
  frame[100:260, x:x + 160] = face
  return frame


def _make_video(path: pathlib.Path, seconds: float, fps: int) -> None:
  face = np.asarray(Image.open(FACE).convert("RGB").crop((130, 40, 310, 220)).resize((160, 160)))
  n = int(seconds * fps)
  with encode.VideoWriter(path, fps, preset="ultrafast") as w:
    for start in range(0, n, 32):
      w.write(np.stack([_scene(i, face) for i in range(start, min(n, start + 32))]))


def _make_audio(path: pathlib.Path, seconds: float) -> None:
  import av
  t = np.arange(int(seconds * 16000)) / 16000
  wav = 0.3 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
  with av.open(str(path), "w") as c:
    s = c.add_stream("pcm_s16le", rate=16000, layout="mono")
    pcm = (wav * 32767).astype(np.int16)
    for start in range(0, len(pcm), 16000):
      f = av.AudioFrame.from_ndarray(pcm[None, start:start + 16000], format="s16", layout="mono")
      f.sample_rate = 16000
      for p in s.encode(f):
        c.mux(p)
    for p in s.encode(None):
      c.mux(p)


_RSS_SCRIPT = """
import resource, runpy, sys
sys.argv = ["diff2lip_jax.generate"] + {args!r}
try:
  runpy.run_module("diff2lip_jax.generate", run_name="__main__")
except SystemExit as e:
  if e.code not in (None, 0):
    raise
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _start_lipsync(video: pathlib.Path, audio: pathlib.Path, out: pathlib.Path,
                   ckpt: pathlib.Path) -> subprocess.Popen:
  """The generate CLI in a subprocess that prints its peak RSS at the end."""
  args = [f"--video_path={video}", f"--audio_path={audio}", f"--out_path={out}",
          f"--checkpoint={ckpt}", "--timestep_respacing=ddim2", "--sampling_batch_size=4",
          "--nframes=4", "--face_det_batch_size=16", "--face_det_max_side=320"]
  return subprocess.Popen([sys.executable, "-c", _RSS_SCRIPT.format(args=args)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _peak_rss_mb(proc: subprocess.Popen) -> float:
  out, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-3000:]
  line = [l for l in out.splitlines() if l.startswith("PEAK_RSS_KB")][-1]
  return int(line.split()[1]) / 1024


def test_peak_rss_does_not_grow_with_video_length(tmp_path, tiny_checkpoint):
  """Peak RSS of each run is its own (`getrusage(RUSAGE_SELF)`), so the runs go concurrently."""
  lengths = {"20s": 20.0, "2min": 120.0}
  runs = {}
  for name, seconds in lengths.items():
    video, audio = tmp_path / f"{name}.mp4", tmp_path / f"{name}.wav"
    _make_video(video, seconds, RSS_FPS)
    _make_audio(audio, seconds)
    runs[name] = _start_lipsync(video, audio, tmp_path / f"{name}_out.mp4", tiny_checkpoint)
  results = {name: _peak_rss_mb(proc) for name, proc in runs.items()}
  for name, seconds in lengths.items():
    out = tmp_path / f"{name}_out.mp4"
    assert video_lib.read_video(out, max_frames=2).size_hw == (360, 640)
    with __import__("av").open(str(out)) as c:
      assert c.streams.video[0].frames == int(seconds * RSS_FPS)
  print("peak RSS (MB):", json.dumps(results))
  assert results["2min"] <= 1.15 * results["20s"], results


def test_output_does_not_depend_on_chunking(tmp_path, tiny_checkpoint):
  """Chunks of 4 and of 16 frames (different model batches too) give the same frames."""
  from diff2lip_jax.inference import checkpoints
  loaded = checkpoints.load_model(tiny_checkpoint)
  model_and_params = loaded.model, loaded.params
  face = np.asarray(Image.open(FACE).convert("RGB").crop((130, 40, 310, 220)).resize((160, 160)))
  frames = np.stack([_scene(i, face)[60:300, 160:480] for i in range(10)])
  video = video_lib.Video(frames=frames, fps=25.0, times=np.arange(10) / 25)
  t = np.arange(int(0.6 * 16000)) / 16000
  wav = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
  runs = [lipsync(video, wav, checkpoint=model_and_params, timestep_respacing="ddim2",
                  sampling_batch_size=b, nframes=4, progress=False) for b in (1, 4)]
  assert len(runs[0].frames) == 15  # 0.6 s at 25 fps: 10 frames, then back 8, 7, ..., 4
  diff = np.abs(runs[0].frames.astype(int) - runs[1].frames).max()
  assert diff <= 1, diff
  assert np.abs(runs[0].frames.astype(int) - frames[[*range(10), 8, 7, 6, 5, 4]]).max() > 30
