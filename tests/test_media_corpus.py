"""Real-world input corpus (issue 11), built here: everyday files in, player-ready mp4 out.

Each input is made with PyAV (packed B-frame XviD AVI by re-muxing the encoder's packets,
rotation by writing the track's display matrix), and goes through what `lipsync_to_file`
does with it: `open_source` -> `scan` (every check) -> `read` -> `VideoWriter` with the
source's colour tags and the driving audio file's own sound. Checks are what a user would
look at: frames upright and in presentation order with increasing times; the output yuv420p,
`moov` before `mdat`, colour tags set, no rotation left, even size; the sound at the source's
rate and channels, as long as the video (+- 1 frame). Where Debian's ffmpeg is installed
(`.ci/run` installs it), the decoded frames are also compared with what ffmpeg shows.
"""

import dataclasses
import fractions
import pathlib
import shutil
import struct
import subprocess
import time

import av
import numpy as np
import pytest
from PIL import Image

from diff2lip_jax.media import encode, video
from diff2lip_jax.media.decode import ColorInfo, VideoError

H, W = 64, 96  # upright size of the marker picture (HEVC needs >= 64 px)
QUADRANTS = {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (0, 0, 255), "br": (255, 255, 255)}


def _marker(n: int = 1, h: int = H, w: int = W) -> np.ndarray:
  """[n, h, w, 3] upright picture: red/green top, blue/white bottom; a bar grows with i so
  that the frame index can be read back (presentation order)."""
  out = np.zeros((n, h, w, 3), np.uint8)
  out[:, :h // 2, :w // 2] = QUADRANTS["tl"]
  out[:, :h // 2, w // 2:] = QUADRANTS["tr"]
  out[:, h // 2:, :w // 2] = QUADRANTS["bl"]
  out[:, h // 2:, w // 2:] = QUADRANTS["br"]
  for i in range(n):  # grey level of a middle band encodes the index
    out[i, h // 2 - 4:h // 2 + 4] = 8 + 20 * i
  return out


def _index(frame: np.ndarray) -> int:
  """The frame index written by `_marker`."""
  h = frame.shape[0]
  return int(round((frame[h // 2 - 2:h // 2 + 2].mean() - 8) / 20))


def _assert_upright(frame: np.ndarray) -> None:
  h, w = frame.shape[:2]
  for name, (y, x) in {"tl": (h // 5, w // 5), "tr": (h // 5, 4 * w // 5),
                       "bl": (4 * h // 5, w // 5), "br": (4 * h // 5, 4 * w // 5)}.items():
    got = frame[y, x].astype(int)
    assert np.abs(got - QUADRANTS[name]).max() < 60, f"{name} corner is {got}: not upright"


def _encode(path, frames, codec="libx264", pix_fmt="yuv420p", fps=25, times=None, fmt=None,
            color=None, options=None):
  """Writes frames [n, h, w, 3] with PyAV (times in seconds for variable frame rate)."""
  with av.open(str(path), "w", format=fmt) as c:
    tb = fractions.Fraction(1, 90000) if times is not None else fractions.Fraction(1, fps)
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
    s.options = dict(options or {})
    s.bit_rate = 4_000_000  # mpeg4/vp9: good enough quality to read the frame index back
    if codec == "libx265":
      s.options["x265-params"] = "log-level=error"
    s.codec_context.time_base = tb
    if color is not None:
      cc = s.codec_context
      cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = (
          color.primaries, color.trc, color.space, color.range)
    for i, f in enumerate(frames):
      vf = av.VideoFrame.from_ndarray(f, format="rgb24")
      if color is not None:
        vf = vf.reformat(format=pix_fmt, dst_colorspace=color.sws_space,
                         dst_color_range=color.range)
      vf.pts = i if times is None else int(round(times[i] * 90000))
      vf.time_base = tb
      c.mux(s.encode(vf))
    c.mux(s.encode(None))


def _set_rotation(path: pathlib.Path, clockwise: int) -> None:
  """Writes the display matrix of an mp4/mov's (only) track: players turn it `clockwise`."""
  data = bytearray(path.read_bytes())
  k = data.find(b"tkhd")
  offset = k + 8 + (32 if data[k + 4] == 1 else 20) + 16  # version, flags, times, ..., matrix
  one = 0x10000
  a, b, c, d = {90: (0, one, -one, 0), 180: (-one, 0, 0, -one), 270: (0, -one, one, 0)}[clockwise]
  data[offset:offset + 36] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 0x40000000)
  path.write_bytes(bytes(data))


def _packed_bframe_avi(path: pathlib.Path, frames: np.ndarray) -> None:
  """MPEG-4 Part 2 with B-frames in AVI, packed as DivX/XviD do: each P-frame's chunk also
  holds the B-frame shown before it, a small N-VOP chunk follows, and the stream says
  "DivX503b1393p". Decoders then stamp frames in decode order (1, 3, 2, 5, 4, ...)."""
  enc = av.CodecContext.create("mpeg4", "w")
  enc.width, enc.height, enc.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
  enc.time_base, enc.framerate, enc.gop_size, enc.max_b_frames = fractions.Fraction(1, 25), 25, 12, 1
  packets = []
  for i, f in enumerate(frames):
    vf = av.VideoFrame.from_ndarray(f, format="rgb24")
    vf.pts = i
    packets += [(bytes(p), p.pts, p.is_keyframe) for p in enc.encode(vf)]
  packets += [(bytes(p), p.pts, p.is_keyframe) for p in enc.encode(None)]
  chunks, i = [], 0
  while i < len(packets):
    data, pts, key = packets[i]
    if i + 1 < len(packets) and packets[i + 1][1] < pts:  # a B-frame shown before this one
      chunks += [(data + packets[i + 1][0], key), (b"\x00\x00\x01\xb6\x50\x00\x00\x00", False)]
      i += 2
    else:
      chunks.append((data, key))
      i += 1
  assert len(chunks) == len(frames) and any(len(c) > 8 for c, _ in chunks[1:3])
  first = chunks[0][0]
  vop = first.find(b"\x00\x00\x01\xb6")
  chunks[0] = (first[:vop] + b"\x00\x00\x01\xb2DivX503b1393p" + first[vop:], True)
  with av.open(str(path), "w", format="avi") as c:
    s = c.add_stream("mpeg4", rate=25)
    s.width, s.height, s.pix_fmt, s.codec_tag = frames.shape[2], frames.shape[1], "yuv420p", "XVID"
    for j, (data, key) in enumerate(chunks):
      p = av.Packet(data)
      p.pts = p.dts = j
      p.time_base, p.stream, p.is_keyframe = fractions.Fraction(1, 25), s, key
      c.mux(p)


def _make_audio(path, codec, rate, layout, seconds=1.0, fmt=None, video_frames=None):
  """A chirp (distinct per channel) in `codec`; with `video_frames`, next to an H.264 track."""
  n = int(seconds * rate)
  t = np.arange(n) / rate
  channels = av.AudioLayout(layout).nb_channels
  x = np.stack([0.3 * np.sin(2 * np.pi * (200 + 300 * t + 50 * k) * t) for k in range(channels)])
  with av.open(str(path), "w", format=fmt) as c:
    if video_frames is not None:
      vs = c.add_stream("libx264", rate=25)
      vs.width, vs.height, vs.pix_fmt = video_frames.shape[2], video_frames.shape[1], "yuv420p"
    streams = []
    for codec_, rate_, layout_ in [(codec, rate, layout)] + ([("aac", 22050, "mono")]
                                                              if fmt == "matroska" else []):
      s = c.add_stream(codec_, rate=rate_)
      s.layout = layout_
      streams.append((s, rate_, layout_))
    if video_frames is not None:
      for i, f in enumerate(video_frames):
        vf = av.VideoFrame.from_ndarray(f, format="rgb24")
        vf.pts = i
        c.mux(vs.encode(vf))
      c.mux(vs.encode(None))
    for s, rate_, layout_ in streams:
      ch = av.AudioLayout(layout_).nb_channels
      y = x[:ch] if rate_ == rate else np.zeros((ch, int(seconds * rate_)))
      for a in range(0, y.shape[1], 4096):
        fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(y[:, a:a + 4096], np.float32),
                                        format="fltp", layout=layout_)
        fr.sample_rate, fr.pts, fr.time_base = rate_, a, fractions.Fraction(1, rate_)
        c.mux(s.encode(fr))
      c.mux(s.encode(None))


def _boxes(path: pathlib.Path) -> list[str]:
  """Top-level ISO-BMFF box types in file order."""
  data, pos, out = path.read_bytes(), 0, []
  while pos + 8 <= len(data):
    size, kind = struct.unpack(">I4s", data[pos:pos + 8])
    size = struct.unpack(">Q", data[pos + 8:pos + 16])[0] if size == 1 else size
    out.append(kind.decode("latin-1"))
    if size < 8:
      break
    pos += size
  return out


def _check_output(path, num_frames, fps, size_hw, audio=None, copy=False, color=ColorInfo(),
                  vfr=False):
  """What a user checks on the result; `audio` = (rate, channels) of the source's sound."""
  boxes = _boxes(path)
  assert boxes.index("moov") < boxes.index("mdat"), f"moov after mdat: {boxes}"
  with av.open(str(path)) as c:
    vs = c.streams.video[0]
    cc = vs.codec_context
    assert cc.name == "h264" and cc.pix_fmt == "yuv420p"
    assert (int(cc.color_primaries), int(cc.color_trc), int(cc.colorspace),
            int(cc.color_range)) == (color.primaries, color.trc, color.space, color.range)
    assert cc.width % 2 == 0 and cc.height % 2 == 0
    frames = list(c.decode(vs))
    assert len(frames) == num_frames and frames[0].rotation == 0
    assert (frames[0].height, frames[0].width) == (size_hw[0] + size_hw[0] % 2,
                                                   size_hw[1] + size_hw[1] % 2)
    if not vfr:
      assert float(vs.average_rate) == pytest.approx(fps, rel=1e-3)
    if audio is None:
      assert not c.streams.audio
      return
    a = c.streams.audio[0]
    assert (a.codec_context.sample_rate, a.codec_context.channels) == audio
    seconds = float(a.duration * a.time_base)
    slack = 1 / fps + (0.5 * 1152 / audio[0] if copy else 0.0)  # copy: packet boundary
    assert abs(seconds - num_frames / fps) <= slack, (seconds, num_frames / fps)


def _lipsync_like(src_path, out, audio_path=None, preset="ultrafast"):
  """What `lipsync_to_file` does with the media: scan, read again, write (frames unchanged)."""
  src = video.open_source(src_path)
  scanned = [(s, f, t) for s, f, t in src.scan(batch_size=7)]
  frames = np.concatenate([f for _, f, _ in scanned])
  np.testing.assert_array_equal(np.concatenate([t for _, _, t in scanned]), src.times)
  assert frames.shape == (src.num_frames, *src.size_hw, 3)
  half = src.num_frames // 2
  np.testing.assert_array_equal(src.read(half, src.num_frames), frames[half:])
  np.testing.assert_array_equal(src.read(0, half), frames[:half])  # behind: seek or restart
  src.close()
  vfr = not encode.is_constant_rate(src.times, src.fps)
  duration = float(src.times[-1] + 1 / src.fps)
  with encode.VideoWriter(out, src.fps, preset=preset, color=src.color, source_audio=audio_path,
                          inputs=[src_path]) as w:
    w.write(frames, src.times if vfr else None)
  return src, frames, duration


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Builds the input files once: {name: path}."""
  root = tmp_path_factory.mktemp("corpus")
  m = _marker(12)
  files = {}

  def add(name, fn, *args, **kwargs):
    files[name] = root / name
    fn(files[name], *args, **kwargs)

  add("packed_bframes.avi", _packed_bframe_avi, m)
  add("bframes.avi", _encode, m, codec="mpeg4", options={"bf": "2"})
  add("rot90.mp4", _encode, np.rot90(m, 1, axes=(1, 2)))
  _set_rotation(files["rot90.mp4"], 90)
  hlg = ColorInfo(primaries=9, trc=18, space=9, range=1)
  add("rot270_hevc10.mov", _encode, np.rot90(m, -1, axes=(1, 2)), codec="libx265",
      pix_fmt="yuv420p10le", color=hlg)
  _set_rotation(files["rot270_hevc10.mov"], 270)
  add("odd_55x37.mp4", _encode, _marker(6, 37, 55), pix_fmt="yuv444p")
  add("bt601_full.mp4", _encode, m, color=ColorInfo(primaries=6, trc=6, space=6, range=2),
      pix_fmt="yuvj420p")
  add("vfr.mp4", _encode, m, times=np.cumsum([0, .04, .02, .05, .03, .04, .1, .04, .04, .03,
                                                .05, .04]))
  add("fps60.mp4", _encode, m, fps=60)
  add("fps120.mkv", _encode, m, fps=120)
  add("vp9.webm", _encode, m, codec="libvpx-vp9", options={"deadline": "realtime",
                                                            "cpu-used": "8"})
  add("mpeg4.mov", _encode, m, codec="mpeg4")
  add("raw.h264", _encode, m, fmt="h264", options={"bf": "2"})  # no time stamps at all
  sec = 12 / 25
  add("speech.mp3", _make_audio, "libmp3lame", 44100, "stereo", sec)
  add("speech.m4a", _make_audio, "aac", 48000, "stereo", sec)
  add("speech.opus", _make_audio, "libopus", 48000, "stereo", sec, fmt="ogg")
  add("speech.flac", _make_audio, "flac", 44100, "mono", sec)
  add("speech_in_video.mp4", _make_audio, "aac", 44100, "stereo", sec, video_frames=m)
  add("two_tracks.mkv", _make_audio, "flac", 32000, "stereo", sec, fmt="matroska")
  return files


VIDEO_CASES = ["packed_bframes.avi", "bframes.avi", "rot90.mp4", "rot270_hevc10.mov",
               "odd_55x37.mp4", "bt601_full.mp4", "vfr.mp4", "fps60.mp4", "fps120.mkv",
               "vp9.webm", "mpeg4.mov", "raw.h264"]


@pytest.mark.parametrize("name", VIDEO_CASES)
def test_video_inputs(corpus, tmp_path, caplog, name):
  src_path = corpus[name]
  out = tmp_path / "out.mp4"
  src, frames, _ = _lipsync_like(src_path, out)
  n = len(frames)
  assert "nominal" not in caplog.text  # the stream's own times were usable (after reordering)
  assert [_index(f) for f in frames] == list(range(n)), "frames not in presentation order"
  assert np.all(np.diff(src.times) > 0) and src.times[0] == 0
  if name != "vfr.mp4":
    np.testing.assert_allclose(src.times, np.arange(n) / src.fps, atol=1e-3)
  if name.startswith("odd"):
    assert src.size_hw == (37, 55)
  else:
    assert src.size_hw == (H, W)
    _assert_upright(frames[0])
  expected_color = {"rot270_hevc10.mov": ColorInfo(9, 18, 9, 1),
                    "bt601_full.mp4": ColorInfo(6, 6, 6, 2)}.get(name, ColorInfo())
  assert src.color == expected_color
  # The range is always written limited ("tv"): full-range H.264 is yuvj420p, not yuv420p.
  _check_output(out, n, src.fps, src.size_hw, color=dataclasses.replace(expected_color, range=1),
                vfr=name == "vfr.mp4")
  got = video.read_video(out)
  assert [_index(f) for f in got.frames] == list(range(n))
  np.testing.assert_allclose(got.times, src.times, atol=1e-3)  # mkv: 1 ms time stamps
  if not name.startswith("odd"):
    _assert_upright(got.frames[0])
  assert np.abs(got.frames[:, :src.size_hw[0], :src.size_hw[1]].astype(int) - frames).mean() < 8


@pytest.mark.parametrize("name,rate,channels,copy", [
    ("speech.mp3", 44100, 2, True), ("speech.m4a", 48000, 2, True),
    ("speech.opus", 48000, 2, False), ("speech.flac", 44100, 1, False),
    ("speech_in_video.mp4", 44100, 2, True), ("two_tracks.mkv", 32000, 2, False)])
def test_audio_sources(corpus, tmp_path, name, rate, channels, copy):
  out = tmp_path / "out.mp4"
  src, frames, _ = _lipsync_like(corpus["fps60.mp4"], out, corpus[name])
  _check_output(out, len(frames), src.fps, src.size_hw, audio=(rate, channels), copy=copy)
  with av.open(str(out)) as c:
    assert c.streams.audio[0].codec_context.codec.canonical_name == ("mp3" if name.endswith(
        "mp3") else "aac")


def test_audio_cut_and_padded_to_the_frames(corpus, tmp_path):
  """A longer clip is cut, a shorter one padded with silence, to the audio_duration given."""
  frames = np.concatenate([_marker(12)] * 3)
  for seconds in (0.3, 1.2):  # source is 0.48 s
    out = tmp_path / f"o{seconds}.mp4"
    with encode.VideoWriter(out, 25, source_audio=corpus["speech.flac"], audio_duration=seconds,
                            preset="ultrafast") as w:
      w.write(frames[:int(seconds * 25)])
    _check_output(out, int(seconds * 25), 25, (H, W), audio=(44100, 1))
    with av.open(str(out)) as c:
      a = c.streams.audio[0]
      assert float(a.duration * a.time_base) == pytest.approx(seconds, abs=1e-3)


def test_stills(tmp_path):
  u = _marker(1)[0]
  exif = tmp_path / "exif_rot.jpg"
  stored = Image.fromarray(np.ascontiguousarray(np.rot90(u, 1)))
  ex = Image.Exif()
  ex[0x0112] = 6  # orientation: turn 90 degrees clockwise to display
  stored.save(exif, exif=ex, quality=95)
  cmyk = tmp_path / "cmyk.jpg"
  Image.fromarray(u).convert("CMYK").save(cmyk, quality=95)
  pal = tmp_path / "palette.png"
  Image.fromarray(u).convert("P").save(pal)
  grey16 = tmp_path / "grey16.png"
  Image.fromarray((np.full((H, W), 40000)).astype(np.uint16)).save(grey16)
  for p in (exif, cmyk, pal):
    v = video.read_video(p)
    assert v.frames.shape == (1, H, W, 3), p.name
    _assert_upright(v.frames[0])
  g = video.read_video(grey16).frames[0]
  assert g.shape == (H, W, 3) and abs(int(g[0, 0, 0]) - 40000 // 257) <= 1


def test_checks_fail_in_the_first_pass(corpus, tmp_path):
  """Inputs that cannot work fail in `scan` (before any sampling), with one-line errors."""
  sizes = tmp_path / "sizes.mkv"  # MJPEG whose frame size changes at frame 3
  with av.open(str(sizes), "w") as c:
    s = c.add_stream("mjpeg", rate=25)
    s.width, s.height, s.pix_fmt = W, H, "yuvj420p"
    for i in range(6):
      h, w = (H, W) if i < 3 else (H + 16, W)
      enc = av.CodecContext.create("mjpeg", "w")
      enc.width, enc.height, enc.pix_fmt, enc.time_base = w, h, "yuvj420p", fractions.Fraction(1, 25)
      for p in enc.encode(av.VideoFrame.from_ndarray(_marker(1, h, w)[0], "rgb24").reformat(
          format="yuvj420p")):
        p.stream, p.pts, p.dts, p.time_base = s, i, i, fractions.Fraction(1, 25)
        c.mux(p)
  cases = {sizes: "changes frame size", corpus["speech.m4a"]: "no video stream",
           tmp_path / "missing.mp4": "not found"}
  for path, message in cases.items():
    start = time.monotonic()
    with pytest.raises(VideoError, match=message) as e:
      for _ in video.open_source(path).scan(batch_size=2):
        pass
    assert "\n" not in str(e.value) and time.monotonic() - start < 5
  with pytest.raises(VideoError, match="no audio stream"):  # at construction, before frames
    encode.VideoWriter(tmp_path / "o.mp4", 25, source_audio=corpus["fps60.mp4"])
  with pytest.raises(VideoError, match="also an input"):
    encode.VideoWriter(corpus["vfr.mp4"], 25, inputs=[corpus["vfr.mp4"]])
  with pytest.raises(VideoError, match="also an input"):
    encode.VideoWriter(corpus["speech.m4a"], 25, source_audio=corpus["speech.m4a"])
  for kwargs, message in [(dict(source_audio=corpus["vfr.mp4"]), "no audio stream"),
                          (dict(inputs=[corpus["vfr.mp4"]]), "also an input"),
                          (dict(pix_fmt="rgb9"), "pix_fmt")]:
    path = corpus["vfr.mp4"] if "inputs" in kwargs else tmp_path / "p.mp4"
    with pytest.raises(VideoError, match=message):
      encode.preflight(path, **kwargs)
  encode.preflight(tmp_path / "new" / "p.mp4", source_audio=corpus["speech.opus"])
  assert not (tmp_path / "new").exists()  # preflight writes nothing
  assert corpus["vfr.mp4"].stat().st_size > 0


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Debian's ffmpeg (installed by .ci/run)")
@pytest.mark.parametrize("name", ["packed_bframes.avi", "rot90.mp4", "rot270_hevc10.mov"])
def test_frames_match_ffmpeg(corpus, tmp_path, name):
  """The frames are what the ffmpeg CLI shows (autorotate; presentation order)."""
  ours = video.read_video(corpus[name])
  raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(corpus[name]), "-f", "rawvideo",
                        "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
  theirs = np.frombuffer(raw, np.uint8).reshape(-1, *ours.size_hw, 3)
  assert len(theirs) == ours.num_frames
  assert np.abs(theirs.astype(int) - ours.frames).mean() < 4
  assert [_index(f) for f in theirs] == list(range(ours.num_frames))
