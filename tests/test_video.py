"""Tests for diff2lip_jax.media (video, encode): PyAV read/write round trips, stills, atomic writes, errors."""

import fractions
import pathlib

import av
import numpy as np
import pytest
from PIL import Image

from diff2lip_jax.media import decode as video_decode
from diff2lip_jax.media import encode, video
from diff2lip_jax.media.encode import write_video
from diff2lip_jax.media.video import Video, VideoError, read_video

SR = 16000


def _frames(n: int, h: int, w: int) -> np.ndarray:
  """Smooth, codec-friendly test frames: gradients that change per frame."""
  yy, xx = np.mgrid[0:h, 0:w]
  out = np.empty((n, h, w, 3), np.uint8)
  for i in range(n):
    out[i, ..., 0] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    out[i, ..., 1] = (yy * 255 // max(h - 1, 1)).astype(np.uint8)
    out[i, ..., 2] = (40 + 6 * i) % 256
  return out


def _tone(seconds: float, freq: float = 440.0) -> np.ndarray:
  t = np.arange(int(seconds * SR)) / SR
  return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _streams(path: pathlib.Path) -> dict:
  with av.open(str(path)) as c:
    info = {}
    for s in c.streams:
      info[s.type] = dict(codec=s.codec_context.name,
                          duration=float(s.duration * s.time_base) if s.duration else None,
                          rate=s.codec_context.sample_rate if s.type == "audio" else None,
                          channels=s.codec_context.channels if s.type == "audio" else None,
                          pix_fmt=s.codec_context.pix_fmt if s.type == "video" else None)
    return info


@pytest.mark.parametrize("hw", [(64, 96), (63, 95), (48, 33)])
def test_round_trip_with_audio(tmp_path, hw):
  h, w = hw
  n, fps = 30, 25.0
  frames = _frames(n, h, w)
  out = tmp_path / "out.mp4"
  write_video(out, frames, fps, audio=_tone(2.0), sample_rate=SR)  # audio longer: trimmed
  v = read_video(out)
  assert isinstance(v, Video)
  # Odd sizes: one edge row/column repeated up to even (yuv420p plays everywhere).
  assert v.frames.shape == (n, h + h % 2, w + w % 2, 3) and v.frames.dtype == np.uint8
  if h % 2:
    assert np.abs(v.frames[:, -1].astype(np.int16) - v.frames[:, -2]).mean() < 3.0
  assert v.fps == pytest.approx(fps)
  np.testing.assert_allclose(v.times, np.arange(n) / fps, atol=1e-6)
  assert v.times.dtype == np.float64
  # Lossy, but close on smooth content.
  assert np.abs(v.frames[:, :h, :w].astype(np.int16) - frames).mean() < 3.0
  info = _streams(out)
  assert info["video"]["codec"] == "h264"
  assert info["video"]["pix_fmt"] == "yuv420p"
  assert info["audio"]["codec"] == "aac"
  assert info["audio"]["rate"] == SR and info["audio"]["channels"] == 1
  assert abs(info["audio"]["duration"] - n / fps) <= 1.0 / fps
  assert not list(tmp_path.glob(".*part*")), "temporary file left behind"


def test_short_audio_is_padded_and_aligned(tmp_path):
  n, fps = 50, 25
  tone = _tone(0.5)  # 0.5 s for a 2 s video
  out = tmp_path / "pad.mp4"
  write_video(out, _frames(n, 32, 32), fps, audio=tone)
  info = _streams(out)
  assert abs(info["audio"]["duration"] - n / fps) <= 1.0 / fps
  with av.open(str(out)) as c:
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
  # No shift: encoder priming is removed on decode; silence after the tone.
  assert np.abs(pcm[1000:7000] - tone[1000:7000]).mean() < 0.01
  assert np.abs(pcm[9000:30000]).max() < 0.01


def test_silent_video_and_fractional_fps(tmp_path):
  out = tmp_path / "silent.mp4"
  write_video(out, _frames(12, 40, 40), fractions.Fraction(30000, 1001))
  v = read_video(out)
  assert v.frames.shape[0] == 12
  assert v.fps == pytest.approx(30000 / 1001, rel=1e-6)
  assert "audio" not in _streams(out)


def test_odd_size_choices(tmp_path):
  out = tmp_path / "padded.mp4"
  write_video(out, _frames(5, 31, 45), 25)  # default: pad, yuv420p
  v = read_video(out)
  assert v.frames.shape == (5, 32, 46, 3)
  assert _streams(out)["video"]["pix_fmt"] == "yuv420p"
  write_video(out, _frames(5, 31, 45), 25, odd_size="yuv444p")  # exact size, 4:4:4
  assert read_video(out).frames.shape == (5, 31, 45, 3)
  assert _streams(out)["video"]["pix_fmt"] == "yuv444p"
  write_video(out, _frames(5, 31, 45), 25, pix_fmt="yuv422p")  # 4:2:2 pads the width only
  assert read_video(out).frames.shape == (5, 31, 46, 3)
  assert _streams(out)["video"]["pix_fmt"] == "yuv422p"
  with pytest.raises(VideoError, match="pix_fmt"):
    write_video(out, _frames(2, 16, 16), 25, pix_fmt="yuv999")


def test_max_frames(tmp_path):
  out = tmp_path / "m.mp4"
  write_video(out, _frames(20, 32, 32), 25)
  assert read_video(out, max_frames=7).frames.shape[0] == 7


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
  out = tmp_path / "fail.mp4"
  calls = {"n": 0}
  real = av.VideoFrame.from_ndarray

  def flaky(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 5:
      raise RuntimeError("simulated crash mid-encode")
    return real(*args, **kwargs)

  monkeypatch.setattr(av.VideoFrame, "from_ndarray", flaky)
  with pytest.raises(RuntimeError, match="simulated"):
    write_video(out, _frames(10, 32, 32), 25, audio=_tone(1.0))
  assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
  out = tmp_path / "keep.mp4"
  out.write_bytes(b"previous result")
  with pytest.raises(VideoError):
    write_video(out, np.zeros((3, 8, 8), np.uint8), 25)  # bad shape
  with pytest.raises(VideoError):
    write_video(out, _frames(3, 16, 16), 25, audio=np.full(100, np.nan, np.float32))
  assert out.read_bytes() == b"previous result"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_overwrite_existing(tmp_path):
  out = tmp_path / "o.mp4"
  write_video(out, _frames(4, 16, 16), 25)
  write_video(out, _frames(6, 16, 16), 25)
  assert read_video(out).frames.shape[0] == 6


def test_still_image(tmp_path):
  img = _frames(1, 37, 51)[0]
  for name in ("still.png", "still.jpg"):
    p = tmp_path / name
    Image.fromarray(img).save(p)
    v = read_video(p, still_fps=30.0)
    assert v.frames.shape == (1, 37, 51, 3) and v.frames.dtype == np.uint8
    assert v.fps == 30.0
    np.testing.assert_array_equal(v.times, [0.0])
    if name.endswith(".png"):
      np.testing.assert_array_equal(v.frames[0], img)
  assert read_video(tmp_path / "still.png").fps == 25.0


def test_example_face_png():
  p = pathlib.Path(__file__).resolve().parents[1] / "examples" / "face.png"
  v = read_video(p)
  assert v.frames.shape == (1, 512, 512, 3)


def test_error_missing_file(tmp_path):
  with pytest.raises(VideoError, match="not found"):
    read_video(tmp_path / "nope.mp4")
  with pytest.raises(VideoError, match="not found"):
    read_video(tmp_path)  # a folder


def test_error_garbage_bytes(tmp_path):
  rng = np.random.default_rng(0)
  for name in ("garbage.mp4", "garbage.png", "garbage.bin"):
    p = tmp_path / name
    p.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError):
      read_video(p)
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  with pytest.raises(VideoError):
    read_video(empty)


def test_error_audio_only(tmp_path):
  p = tmp_path / "speech.wav"
  with av.open(str(p), "w") as c:
    s = c.add_stream("pcm_s16le", rate=SR)
    s.layout = "mono"
    f = av.AudioFrame.from_ndarray((_tone(0.2)[None] * 32767).astype(np.int16),
                                   format="s16", layout="mono")
    f.sample_rate = SR
    c.mux(s.encode(f))
    c.mux(s.encode(None))
  with pytest.raises(VideoError, match="no video stream"):
    read_video(p)
  m4a = tmp_path / "speech.m4a"
  write_video_audio_only = av.open(str(m4a), "w")
  with write_video_audio_only as c:
    s = c.add_stream("aac", rate=SR)
    s.layout = "mono"
    f = av.AudioFrame.from_ndarray(_tone(0.2)[None], format="flt", layout="mono")
    f.sample_rate = SR
    c.mux(s.encode(f))
    c.mux(s.encode(None))
  with pytest.raises(VideoError, match="no video stream"):
    read_video(m4a)


def test_error_bad_write_args(tmp_path):
  out = tmp_path / "x.mp4"
  with pytest.raises(VideoError, match="uint8"):
    write_video(out, _frames(2, 16, 16).astype(np.float32), 25)
  with pytest.raises(VideoError, match="fps"):
    write_video(out, _frames(2, 16, 16), 0)
  with pytest.raises(VideoError, match="mono"):
    write_video(out, _frames(2, 16, 16), 25, audio=np.zeros((100, 2), np.float32))
  assert not out.exists()


# --- variable frame rate, streaming writer, frame sources -------------------------------------

VFR_TIMES = np.cumsum([0, 0.04, 0.02, 0.05, 0.033, 0.04, 0.1, 0.04, 0.04, 0.03, 0.05, 0.04])


def test_variable_frame_rate_round_trip(tmp_path):
  frames = _frames(len(VFR_TIMES), 48, 64)
  out = tmp_path / "vfr.mp4"
  write_video(out, frames, 25, audio=_tone(2.0), times=VFR_TIMES)
  v = read_video(out)
  assert v.num_frames == len(VFR_TIMES)
  np.testing.assert_allclose(v.times, VFR_TIMES, atol=1e-4)
  assert not encode.is_constant_rate(v.times, v.fps)
  info = _streams(out)
  assert info["audio"]["duration"] == pytest.approx(VFR_TIMES[-1] + 1 / 25, abs=0.03)
  with pytest.raises(VideoError, match="increase"):
    write_video(tmp_path / "bad.mp4", frames[:3], 25, times=[0.0, 0.1, 0.1])
  assert encode.is_constant_rate(np.arange(5) / 30, 30.0)


def test_streaming_writer_matches_write_video(tmp_path):
  frames = _frames(23, 32, 48)
  audio = _tone(23 / 25)
  with encode.VideoWriter(tmp_path / "s.mp4", 25, audio) as w:
    for start in range(0, 23, 5):
      w.write(frames[start:start + 5])
    assert not (tmp_path / "s.mp4").exists()  # only appears when complete
  write_video(tmp_path / "w.mp4", frames, 25, audio=audio)
  a, b = read_video(tmp_path / "s.mp4"), read_video(tmp_path / "w.mp4")
  np.testing.assert_array_equal(a.frames, b.frames)
  np.testing.assert_array_equal(a.times, b.times)
  assert _streams(tmp_path / "s.mp4") == _streams(tmp_path / "w.mp4")


def test_streaming_writer_aborts_on_error(tmp_path):
  out = tmp_path / "x.mp4"
  with pytest.raises(RuntimeError, match="boom"):
    with encode.VideoWriter(out, 25) as w:
      w.write(_frames(3, 16, 16))
      raise RuntimeError("boom")
  assert list(tmp_path.iterdir()) == []


def _write_small_gop(path, frames, fps=25):
  """H.264 with a keyframe every 8 frames and B-frames, to exercise seeking."""
  with av.open(str(path), "w") as c:
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s.options = {"g": "8", "keyint_min": "8", "bf": "2", "crf": "18"}
    for i, f in enumerate(frames):
      vf = av.VideoFrame.from_ndarray(f, format="rgb24")
      vf.pts = i
      c.mux(s.encode(vf))
    c.mux(s.encode(None))


def test_file_source_reads_any_range(tmp_path):
  rng = np.random.default_rng(0)
  n = 50
  blocks = rng.integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
  frames = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)  # [n, 48, 64, 3]
  path = tmp_path / "gop.mp4"
  _write_small_gop(path, frames)
  full = read_video(path).frames
  src = video.open_source(path)
  assert isinstance(src, video.VideoFileSource)
  scanned = np.concatenate([f for _, f, _ in src.scan(batch_size=16)])
  np.testing.assert_array_equal(scanned, full)
  assert src.num_frames == n and src.fps == 25.0 and src.size_hw == (48, 64)
  np.testing.assert_allclose(src.times, np.arange(n) / 25, atol=1e-6)
  # Forward, backward (seeks to the keyframe before), overlapping and single-frame ranges.
  for a, b in [(40, 50), (0, 5), (20, 30), (29, 30), (3, 45), (49, 50), (17, 18), (0, 50)]:
    np.testing.assert_array_equal(src.read(a, b), full[a:b], err_msg=f"{a}:{b}")
  with pytest.raises(IndexError):
    src.read(45, 51)
  src.close()


def test_scan_stops_at_time(tmp_path):
  path = tmp_path / "v.mp4"
  write_video(path, _frames(30, 16, 16), 25)
  src = video.open_source(path)
  got = sum(len(f) for _, f, _ in src.scan(batch_size=4, stop_time=0.4, extra_frames=2))
  assert got == src.num_frames == 13  # frames 0..10 (t <= 0.4) + 2
  mem = video.open_source(read_video(path))
  assert sum(len(f) for _, f, _ in mem.scan(4, stop_time=0.4, extra_frames=2)) == 13
  still = tmp_path / "s.png"
  Image.fromarray(_frames(1, 9, 9)[0]).save(still)
  assert isinstance(video.open_source(still), video.InMemorySource)


def test_same_frames_give_the_same_file(tmp_path):
  """Fixed x264 threads and no mb-tree: the bytes depend neither on load nor on how the frames
  are handed over. 96 px wide: with mb-tree on, PyAV's libx264 varied at this width (CI)."""
  noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
  frames = np.stack([np.roll(noise, 2 * i, axis=1) for i in range(30)])
  files = set()
  for i, chunk in enumerate((30, 7, 30, 4, 30, 11, 30, 1)):
    out = tmp_path / f"{i}.mp4"
    with encode.VideoWriter(out, 25, _tone(30 / 25), threads=4) as w:
      for start in range(0, 30, chunk):
        w.write(frames[start:start + chunk])
    files.add(out.read_bytes())
  assert len(files) == 1


def test_presentation_clock_sorts_decode_order_stamps(caplog):
  clock = video_decode.PresentationClock(fps=25, window=4)
  for s in [1, 3, 2, 5, 4, 7, 6, 8]:
    clock.push(s / 25)
  np.testing.assert_allclose(clock.finish(), np.arange(8) / 25)
  assert clock.reordered and "nominal" not in caplog.text
  clock = video_decode.PresentationClock(fps=10)
  for s in [0.0, 0.1, 0.1, 0.3]:  # a repeated stamp: timed at the nominal rate, with a warning
    clock.push(s)
  np.testing.assert_allclose(clock.finish(), np.arange(4) / 10)
  assert "nominal" in caplog.text


def test_colour_tags_round_trip(tmp_path):
  """The source's tags are written, and the frames converted with that matrix."""
  frames = _frames(4, 32, 48)
  bt601 = video.ColorInfo(primaries=6, trc=6, space=6)
  write_video(tmp_path / "a.mp4", frames, 25, color=bt601)
  v = read_video(tmp_path / "a.mp4")
  assert v.color == bt601
  assert np.abs(v.frames.astype(np.int16) - frames).mean() < 3.0
  write_video(tmp_path / "b.mp4", frames, 25)
  assert read_video(tmp_path / "b.mp4").color == video.ColorInfo()  # BT.709 when not given
  with pytest.raises(VideoError, match="colour"):
    video.ColorInfo(space=8)


def test_missing_folder_created_only_when_writing(tmp_path):
  out = tmp_path / "new" / "deeper" / "x.mp4"
  with pytest.raises(RuntimeError):
    with encode.VideoWriter(out, 25):
      raise RuntimeError("failed before the first frame")
  assert not (tmp_path / "new").exists()
  write_video(out, _frames(3, 16, 16), 25)
  assert read_video(out).num_frames == 3
