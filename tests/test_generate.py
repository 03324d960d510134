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

from diff2lip_jax.media import audio as audio_lib
from diff2lip_jax.media import video as video_lib
from diff2lip_jax.media import encode
from diff2lip_jax.inference.pipeline import lipsync
from diff2lip_jax.inference.timeline import pingpong_indices

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
  encode.write_video(path, np.stack(frames), 30.0)
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
  encode.write_video(tmp_path / "input.mp4", np.repeat(src[None].astype(np.uint8), 5, 0), 25)
  baseline = np.abs(video_lib.read_video(tmp_path / "input.mp4").frames.astype(np.int16) - src)
  baseline = baseline.mean(-1)[:, outside].mean()
  assert diff[:, outside].mean() < 1.5 * baseline + 0.5, (diff[:, outside].mean(), baseline)
  assert diff[:, (y1 + y2) // 2 + 4:y2 - 4, x1 + 4:x2 - 4].mean() > 10  # lower face replaced


def test_api_any_fps_missing_faces_and_pixels_outside_box(face_video, speech, small_checkpoint):
  from diff2lip_jax.inference import checkpoints
  video = video_lib.read_video(face_video)
  loaded = checkpoints.load_model(small_checkpoint)
  model_and_params = loaded.model, loaded.params
  res = lipsync(video, speech, checkpoint=model_and_params,
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
    ("FACE", "SPEECH", "missing_ckpt", "is not a model"),
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


# --- faces, time, batch ------------------------------------------------------------------------

FACE_CROP = (slice(40, 220), slice(130, 310))  # 180 x 180 around the face of face.png
FAST = dict(sampling_batch_size=2, nframes=4)  # model batches of 8 frames: one compilation


def _two_face_frames(n: int = 6) -> np.ndarray:
  """[n, 360, 640, 3]: the example face on the left and a smaller mirror image on the right,
  drifting 2 px per frame; dlib finds both."""
  from PIL import Image
  crop = np.array(video_lib.read_video(FACE).frames[0])[FACE_CROP]
  small = np.asarray(Image.fromarray(crop[:, ::-1]).resize((150, 150), Image.BILINEAR))
  out = np.full((n, 360, 640, 3), 90, np.uint8)
  for i in range(n):
    out[i, 60:240, 60 + 2 * i:240 + 2 * i] = crop
    out[i, 110:260, 420 - 2 * i:570 - 2 * i] = small
  return out


@pytest.fixture(scope="module")
def small_model(small_checkpoint):
  from diff2lip_jax.inference import checkpoints
  loaded = checkpoints.load_model(small_checkpoint)
  return loaded.model, loaded.params


@pytest.mark.parametrize("face,chosen", [("0", "left"), (1, "right"), ("470,180", "right"),
                                         ("largest", "left")])
def test_two_faces_pick_each_and_keep_the_other(speech, small_model, face, chosen):
  frames = _two_face_frames()
  video = video_lib.Video(frames=frames, fps=25.0, times=np.arange(len(frames)) / 25)
  res = lipsync(video, speech, checkpoint=small_model, timestep_respacing="ddim2",
                face=face, audio_longer="trim", progress=False, **FAST)
  assert len(res.frames) == len(frames) and res.no_face == []
  left = (slice(50, 260), slice(50, 260))     # the left face's region, all frames
  right = (slice(100, 270), slice(400, 580))
  keep, change = (right, left) if chosen == "left" else (left, right)
  for k in range(len(frames)):
    np.testing.assert_array_equal(res.frames[k][keep], frames[k][keep])
    assert np.abs(res.frames[k][change].astype(int) - frames[k][change]).max() > 30


def _vfr_face_video(path) -> np.ndarray:
  """12 frames of the drifting face at irregular times (variable frame rate); returns times."""
  src = np.array(video_lib.read_video(FACE).frames[0])
  frames = np.stack([np.roll(src, 2 * i, axis=1)[16:336, 80:400] for i in range(12)])
  times = np.cumsum([0, 0.04, 0.02, 0.05, 0.033, 0.04, 0.06, 0.04, 0.025, 0.03, 0.05, 0.04])
  encode.write_video(path, frames, 25, times=times)
  return times


def test_variable_frame_rate_keeps_frames_and_timestamps(tmp_path, speech, small_model):
  from diff2lip_jax.inference.pipeline import lipsync_to_file
  times = _vfr_face_video(tmp_path / "vfr.mp4")
  out = tmp_path / "out.mp4"
  summary = lipsync_to_file(tmp_path / "vfr.mp4", speech, out, checkpoint=small_model,
                            timestep_respacing="ddim2", audio_longer="trim", progress=False,
                            **FAST)
  got = video_lib.read_video(out)
  assert summary.num_frames == got.num_frames == len(times)
  np.testing.assert_allclose(got.times, times, atol=2e-3)
  # Pingpong (the default) continues the timeline with the same spacing, played backwards.
  res = lipsync(tmp_path / "vfr.mp4", speech, checkpoint=small_model,
                timestep_respacing="ddim2", progress=False, **FAST)
  np.testing.assert_allclose(res.times[:12], times, atol=2e-3)
  assert np.all(np.diff(res.times) > 0) and res.times[-1] <= 0.6
  np.testing.assert_allclose(res.times[12] - res.times[11], times[11] - times[10], atol=2e-3)


def test_cli_30fps_faceless_stretch_exits_0_with_warning(tmp_path, face_video, speech,
                                                          small_checkpoint):
  out = tmp_path / "out.mp4"
  r = _run(f"--video_path={face_video}", f"--audio_path={speech}", f"--out_path={out}",
           f"--checkpoint={small_checkpoint}", "--timestep_respacing=ddim2",
           "--audio_longer=trim", "--sampling_batch_size=2", "--nframes=4")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "no face found in frames 5-8" in r.stderr  # the warning
  assert "no face in frames [(5, 8)]" in r.stdout
  src, got = video_lib.read_video(face_video), video_lib.read_video(out)
  assert got.num_frames == src.num_frames == 14 and got.fps == pytest.approx(30.0)
  np.testing.assert_allclose(got.times, src.times, atol=1e-6)


def test_audio_array_any_rate_and_stereo(face_video, small_model):
  """A 44.1 kHz stereo array gives the same frame count as its 16 kHz mono version."""
  t = np.arange(int(0.5 * 44100)) / 44100
  stereo = np.stack([np.sin(2 * np.pi * 220 * t), 0.5 * np.sin(2 * np.pi * 330 * t)], 1) * 0.3
  video = video_lib.read_video(face_video)
  res = lipsync(video, stereo.astype(np.float32), checkpoint=small_model,
                timestep_respacing="ddim2", audio_sample_rate=44100, progress=False, **FAST)
  assert len(res.frames) == 15  # 0.5 s at 30 fps
  assert len(res.audio) == 8000


def test_filelist_batch_failure_and_resume(tmp_path, speech, small_checkpoint):
  root = tmp_path / "data"
  (root / "spk").mkdir(parents=True)
  import shutil
  shutil.copy(FACE, root / "spk" / "face.png")
  shutil.copy(speech, root / "spk" / "a.wav")
  (root / "spk" / "broken.mp4").write_bytes(b"not a video" * 50)
  filelist = tmp_path / "list.txt"
  filelist.write_text("# audio video\nspk/a.wav spk/face.png\nspk/a.wav spk/broken\n"
                      "spk/a.wav spk/face.png\n")
  out = tmp_path / "out"
  args = [f"--filelist={filelist}", f"--data_root={root}", f"--sample_path={out}",
          f"--checkpoint={small_checkpoint}", "--timestep_respacing=ddim2",
          "--sampling_batch_size=2", "--nframes=4"]
  r = _run(*args)
  assert r.returncode == 1, r.stderr[-2000:]
  assert "line 3: spk/a.wav spk/broken" in r.stderr and "Traceback" not in r.stderr
  assert sorted(p.name for p in out.iterdir()) == ["spk.a_spk.face.mp4"]
  assert "1 written" in r.stdout and "1 failed" in r.stdout  # line 4 = line 2's output
  args[3] = f"--checkpoint={tmp_path / 'no_such_ckpt'}"  # all done: no model needed
  r = _run(*args)
  assert "0 written, 2 already done, 1 failed" in r.stdout, r.stdout + r.stderr[-2000:]


def test_output_timeline_and_crossfade():
  from diff2lip_jax.inference.timeline import crossfade_weights, output_timeline
  t = np.arange(10) / 25
  src, times, dur = output_timeline(t, 25, 0.6)  # 15 frames: 0..9, then back 8..4
  np.testing.assert_array_equal(src, [*range(10), 8, 7, 6, 5, 4])
  np.testing.assert_allclose(times, np.arange(15) / 25)
  src, times, _ = output_timeline(t, 25, 0.6, "trim")
  assert len(src) == 10
  src, _, _ = output_timeline(t, 25, 0.3, "trim")  # audio shorter: cut to the audio
  assert len(src) == 7
  vfr = np.array([0, 0.04, 0.06, 0.11, 0.143])
  src, times, dur = output_timeline(vfr, 30, 0.3)
  np.testing.assert_array_equal(src, [0, 1, 2, 3, 4, 3, 2, 1])  # last ends at 0.286 s
  np.testing.assert_allclose(times[:5], vfr)
  np.testing.assert_allclose(np.diff(times)[4:], [0.033, 0.05, 0.02])  # backwards, same gaps
  src, times, _ = output_timeline(np.zeros(1), 25, 0.21)  # a still: repeated
  assert len(src) == 5 and np.all(src == 0)
  w = crossfade_weights(np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1], bool), 3)
  np.testing.assert_allclose(w, [1, 1, .75, .5, .25, 0, 0, .25, .5, .75, 1, 1])
  np.testing.assert_array_equal(crossfade_weights(np.ones(4, bool)), np.ones(4))


def test_filelist_parsing_and_sharding(tmp_path):
  from diff2lip_jax.inference import batch, filelists
  f = tmp_path / "l.txt"
  f.write_text("a/b/00001 c/d/00002\n\n# comment\nx.wav y.mp4\n")
  items = filelists.read_filelist(f)
  assert [(i.line, i.audio, i.video) for i in items] == [(1, "a/b/00001", "c/d/00002"),
                                                        (4, "x.wav", "y.mp4")]
  assert items[0].name == "a.b.00001_c.d.00002"  # upstream's output name
  assert items[1].name == "x_y"
  (tmp_path / "v.mp4").write_bytes(b"")
  assert filelists.resolve_media(tmp_path, "v") == tmp_path / "v.mp4"
  assert filelists.resolve_media(tmp_path, "v.mp4") == tmp_path / "v.mp4"
  # 2 hosts x 2 devices: item i -> worker i mod 4.
  assert batch.assign_items(10, 0, 2, 2) == [[0, 4, 8], [1, 5, 9]]
  assert batch.assign_items(10, 1, 2, 2) == [[2, 6], [3, 7]]
  f.write_text("only_one_field\n")
  with pytest.raises(filelists.FilelistError, match="line|:1"):
    filelists.read_filelist(f)
