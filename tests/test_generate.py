"""End to end: `lipsync` / `python -m diff2lip_jax.generate` on a real face and real speech.

Uses the small upstream model (converted from ../shared) and 2 DDIM steps so CI stays quick; the
README demo runs the released architecture.
"""

import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest

from diff2lip_jax import audio as audio_lib
from diff2lip_jax import video as video_lib
from diff2lip_jax.generate import lipsync, pingpong_indices

REPO = pathlib.Path(__file__).resolve().parents[1]
FACE = REPO / "examples" / "face.png"
ALSA_SPEECH = pathlib.Path("/usr/share/sounds/alsa/Front_Center.wav")
FACE_BOX = (175, 76, 266, 167)  # dlib's box on examples/face.png (x2, y2 exclusive)


def _write_wav(path, wav, sr=16000):
  with av.open(str(path), "w") as c:
    s = c.add_stream("pcm_s16le", rate=sr, layout="mono")
    frame = av.AudioFrame.from_ndarray((np.clip(wav, -1, 1) * 32767).astype(np.int16)[None],
                                       format="s16", layout="mono")
    frame.sample_rate = sr
    for p in s.encode(frame):
      c.mux(p)
    for p in s.encode(None):
      c.mux(p)
  return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
  """0.6 s of real recorded speech (alsa-utils' "front center"), else a voiced synthetic tone."""
  if ALSA_SPEECH.is_file():
    wav = audio_lib.load_audio(ALSA_SPEECH)
    start = int(np.argmax(np.abs(wav) > 0.05))
    wav = wav[start:start + 9600]
  else:
    t = np.arange(9600) / 16000
    wav = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2
  return _write_wav(tmp_path_factory.mktemp("audio") / "speech.wav", wav.astype(np.float32))


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
  """A 30 fps, 320x320 clip of the example face drifting sideways, frames 5-8 without a face."""
  src = np.array(video_lib.read_video(FACE).frames[0])
  frames = []
  for i in range(14):
    f = np.roll(src, i, axis=1)[16:336, 80:400].copy()
    if 5 <= i <= 8:
      f[:] = 128  # no face here
    frames.append(f)
  path = tmp_path_factory.mktemp("video") / "face30.mp4"
  video_lib.write_video(path, np.stack(frames), 30.0)
  return path


def _run(*args):
  return subprocess.run([sys.executable, "-m", "diff2lip_jax.generate", *args],
                        capture_output=True, text=True, check=False, cwd=REPO)


def test_pingpong_indices():
  np.testing.assert_array_equal(pingpong_indices(9, 4), [0, 1, 2, 3, 2, 1, 0, 1, 2])
  np.testing.assert_array_equal(pingpong_indices(3, 1), [0, 0, 0])
  np.testing.assert_array_equal(pingpong_indices(3, 10), [0, 1, 2])


def test_cli_on_still_face_and_real_speech(tmp_path, speech, small_checkpoint):
  out = tmp_path / "out.mp4"
  r = _run(f"--video_path={FACE}", f"--audio_path={speech}", f"--out_path={out}",
           f"--checkpoint={small_checkpoint}", "--timestep_respacing=ddim2")
  assert r.returncode == 0, r.stderr[-2000:]
  result = video_lib.read_video(out)
  audio_seconds = len(audio_lib.load_audio(speech)) / 16000
  assert result.frames.shape[1:] == (512, 512, 3)
  assert abs(result.num_frames - audio_seconds * 25) <= 1
  with av.open(str(out)) as c:
    assert len(c.streams.audio) == 1 and len(c.streams.video) == 1
    a = c.streams.audio[0]
    assert abs(float(a.duration * a.time_base) - result.num_frames / 25) <= 1 / 25 + 0.03
  src = video_lib.read_video(FACE).frames[0].astype(np.int16)
  x1, y1, x2, y2 = FACE_BOX
  outside = np.ones((512, 512), bool)
  outside[y1 - 4:y2 + 4, x1 - 4:x2 + 4] = False  # the box, with a margin for chroma blocks
  diff = np.abs(result.frames.astype(np.int16) - src).mean(-1)
  # Codec loss only: compare with the same writer encoding the untouched input.
  video_lib.write_video(tmp_path / "input.mp4", np.repeat(src[None].astype(np.uint8), 5, 0), 25)
  baseline = np.abs(video_lib.read_video(tmp_path / "input.mp4").frames.astype(np.int16) - src)
  baseline = baseline.mean(-1)[:, outside].mean()
  assert diff[:, outside].mean() < 1.5 * baseline + 0.5, (diff[:, outside].mean(), baseline)
  assert diff[:, (y1 + y2) // 2 + 4:y2 - 4, x1 + 4:x2 - 4].mean() > 10  # lower face replaced


def test_api_any_fps_missing_faces_and_pixels_outside_box(face_video, speech, small_checkpoint):
  from diff2lip_jax import checkpoint
  video = video_lib.read_video(face_video)
  model_and_params = checkpoint.load(small_checkpoint)
  res = lipsync(video, speech, model_and_params=model_and_params,
                timestep_respacing="ddim2", progress=False)
  n_audio = audio_lib.num_frames_for_audio(len(audio_lib.load_audio(speech)), 30.0)
  assert res.fps == 30.0 and len(res.frames) == n_audio == 18  # 0.6 s at 30 fps
  src = pingpong_indices(n_audio, video.num_frames)
  np.testing.assert_array_equal(src, list(range(14)) + [12, 11, 10, 9])  # played back
  assert res.no_face == [(5, 8)]
  no_face = range(5, 9)
  for k in no_face:
    np.testing.assert_array_equal(res.frames[k], video.frames[src[k]])
  k = 2  # a frame with a face: the top and the far sides are the input's, bit for bit
  np.testing.assert_array_equal(res.frames[k][:60], video.frames[src[k]][:60])
  np.testing.assert_array_equal(res.frames[k][:, :60], video.frames[src[k]][:, :60])
  assert np.abs(res.frames[k].astype(int) - video.frames[src[k]]).max() > 30
  assert len(res.audio) == round(n_audio / 30 * 16000)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, speech, small_checkpoint):
  d = tmp_path_factory.mktemp("bad")
  blank = d / "blank.png"
  from PIL import Image
  Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(blank)
  (d / "garbage.mp4").write_bytes(b"not a video at all" * 100)
  _write_wav(d / "short.wav", np.zeros(1600, np.float32))  # 0.1 s
  (d / "empty.wav").write_bytes(b"")
  wrong = d / "wrong_ckpt"
  wrong.mkdir()
  (wrong / "params").symlink_to(pathlib.Path(small_checkpoint) / "params")
  (wrong / "model_flags.json").write_text('{"num_channels": 64, "num_res_blocks": 1}')
  return d


@pytest.mark.parametrize("video,audio,ckpt,message", [
    ("blank.png", "SPEECH", "CKPT", "no face found"),
    ("garbage.mp4", "SPEECH", "CKPT", "garbage.mp4"),
    ("FACE", "short.wav", "CKPT", "need >= 0.20 s"),
    ("FACE", "empty.wav", "CKPT", "empty.wav"),
    ("FACE", "SPEECH", "missing_ckpt", "not found"),
    ("FACE", "SPEECH", "wrong_ckpt", "does not match"),
])
def test_cli_bad_inputs(bad_inputs, speech, small_checkpoint, tmp_path, video, audio, ckpt,
                        message):
  resolve = {"FACE": FACE, "SPEECH": speech, "CKPT": small_checkpoint}
  path = lambda name: resolve.get(name, bad_inputs / name)
  out = tmp_path / "out.mp4"
  r = _run(f"--video_path={path(video)}", f"--audio_path={path(audio)}", f"--out_path={out}",
           f"--checkpoint={path(ckpt)}", "--timestep_respacing=ddim2")
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, r.stderr[-1500:]
  assert "Traceback" not in r.stderr
  assert not out.exists() and not list(tmp_path.iterdir())
