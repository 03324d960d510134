"""Tests for diff2lip_jax.media.audio: parity with upstream's mel + frame windows, decoding, errors."""

import fractions
import pathlib
import struct

import av
import numpy as np
import pytest

from diff2lip_jax.media import audio


@pytest.fixture(scope="module")
def mel_io(upstream_dir: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(upstream_dir / "mel_io.npz") as data:
    return {k: data[k] for k in data.files}


def _sine(freq: float, seconds: float, rate: int, channels: int) -> np.ndarray:
  """[channels, n] float32 sine at 0.5 amplitude (same tone on every channel)."""
  t = np.arange(int(round(seconds * rate))) / rate
  return np.repeat(0.5 * np.sin(2 * np.pi * freq * t)[None], channels, 0).astype(np.float32)


def _write_audio(path: pathlib.Path, samples: np.ndarray, rate: int, codec: str,
                 with_video: bool = False) -> None:
  """Writes planar float samples [channels, n] with PyAV (optionally beside a tiny video)."""
  layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
  with av.open(str(path), "w") as container:
    if with_video:
      vstream = container.add_stream("mpeg4", rate=25)
      vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
    astream = container.add_stream(codec, rate=rate, layout=layout)
    fmt = "s16" if codec == "pcm_s16le" else "fltp"
    chunk = 1024
    for i in range(0, samples.shape[1], chunk):
      part = samples[:, i:i + chunk]
      if fmt == "s16":  # packed int16: [1, n * channels]
        data = (part.T.reshape(1, -1) * 32767).astype(np.int16)
      else:
        data = np.ascontiguousarray(part)
      frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
      frame.sample_rate = rate
      frame.pts = i
      frame.time_base = fractions.Fraction(1, rate)
      for packet in astream.encode(frame):
        container.mux(packet)
    for packet in astream.encode(None):
      container.mux(packet)
    if with_video:
      _mux_video(container, vstream, num_frames=10)


def _mux_video(container, vstream, num_frames: int) -> None:
  for k in range(num_frames):
    img = np.full((32, 32, 3), 16 * k, np.uint8)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    frame.pts = k
    for packet in vstream.encode(frame):
      container.mux(packet)
  for packet in vstream.encode(None):
    container.mux(packet)


def _dominant_hz(wav: np.ndarray, rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(wav * np.hanning(wav.size)))
  return float(np.fft.rfftfreq(wav.size, 1 / rate)[np.argmax(spectrum)])


# --- parity with upstream -------------------------------------------------------------------


def test_melspectrogram_matches_upstream(mel_io):
  assert int(mel_io["sample_rate"]) == audio.SAMPLE_RATE
  mel = audio.melspectrogram(mel_io["wav"])
  assert mel.dtype == np.float32
  assert mel.shape == mel_io["mel"].shape == (80, 1 + mel_io["wav"].size // audio.HOP_LENGTH)
  assert np.abs(mel - mel_io["mel"]).max() < 1e-3
  assert mel.min() >= -4 and mel.max() <= 4


def test_windows_at_25fps_match_upstream(mel_io):
  ref = mel_io["frame_windows"]  # [N, 80, 16]: mel bins on axis 1.
  assert ref.shape[1:] == (audio.NUM_MELS, audio.MEL_WINDOW)
  times = audio.frame_times(ref.shape[0] + 20, 25)  # more frames than the audio covers.
  starts = audio.window_start_indices(times)
  np.testing.assert_array_equal(starts[:ref.shape[0]], mel_io["window_start_index"])
  assert audio.num_windows(mel_io["mel"].shape[1], times) == ref.shape[0]
  windows = audio.mel_windows(audio.melspectrogram(mel_io["wav"]), times)
  assert windows.shape == ref.shape and windows.dtype == np.float32
  assert np.abs(windows - ref).max() < 1e-3
  # The exact upstream windows come out of the exact upstream mel.
  np.testing.assert_array_equal(audio.mel_windows(mel_io["mel"], times), ref)


def test_start_indices_equal_upstream_integers_for_long_videos():
  j = np.arange(200_000)
  expected = [int(80 * max(k - 1, 0) / 25) for k in j]
  np.testing.assert_array_equal(audio.window_start_indices(audio.frame_times(j.size, 25)),
                                expected)


def test_windows_at_30fps_follow_the_seconds_rule():
  mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
  times = audio.frame_times(60, 30.0)
  starts = audio.window_start_indices(times)
  expected = [int(np.floor(80 * max(j / 30 - 0.04, 0) + 1e-9)) for j in range(60)]
  np.testing.assert_array_equal(starts, expected)
  assert starts[:4].tolist() == [0, 0, 2, 4]  # 80 * (2/30 - 0.04) = 2.13; 80 * (3/30 - .04) = 4.8
  windows = audio.mel_windows(mel, times)
  fitting = [s for s in starts if s + 16 <= 100]
  assert windows.shape == (len(fitting), 80, 16)
  for w, s in zip(windows, starts):
    np.testing.assert_array_equal(w, mel[:, s:s + 16])


def test_windows_stop_at_first_that_does_not_fit():
  mel = np.zeros((80, 20), np.float32)
  times = np.array([0.0, 0.2, 0.0])  # 2nd window starts at step 12 > 20 - 16: stop there.
  assert audio.num_windows(20, times) == 1
  assert audio.mel_windows(mel, times).shape == (1, 80, 16)
  assert audio.mel_windows(mel[:, :10], times).shape == (0, 80, 16)


def test_num_frames_for_audio():
  assert audio.num_frames_for_audio(52800, 25) == 82  # 3.3 s.
  assert audio.num_frames_for_audio(16000, 30) == 30
  assert audio.num_frames_for_audio(15999, 30) == 29


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,codec,with_video", [
    ("tone.wav", "pcm_s16le", False),
    ("tone.m4a", "aac", False),
    ("tone.mp4", "aac", True),
    ("tone.mp3", "libmp3lame", False),
])
def test_load_audio_resamples_to_16k_mono(tmp_path, name, codec, with_video):
  path = tmp_path / name
  _write_audio(path, _sine(440.0, 1.5, 44100, 2), 44100, codec, with_video)
  wav = audio.load_audio(path)
  assert wav.dtype == np.float32 and wav.ndim == 1
  # Lossy encoders add priming/padding of a few codec frames (~50 ms at most).
  assert abs(wav.size / audio.SAMPLE_RATE - 1.5) < 0.06
  assert abs(_dominant_hz(wav, audio.SAMPLE_RATE) - 440.0) < 2.0
  assert np.abs(wav).max() <= 1.0
  core = wav[wav.size // 4: 3 * wav.size // 4]
  assert abs(np.sqrt(np.mean(core**2)) - 0.5 / np.sqrt(2)) < 0.02  # mono mix keeps the level.


def test_load_audio_wav_round_trip_is_exact_at_16k(tmp_path):
  samples = _sine(1000.0, 0.5, audio.SAMPLE_RATE, 1)
  _write_audio(tmp_path / "a.wav", samples, audio.SAMPLE_RATE, "pcm_s16le")
  wav = audio.load_audio(tmp_path / "a.wav")
  assert wav.shape == (samples.shape[1],)
  assert np.abs(wav - samples[0]).max() < 2 / 32768


def test_load_audio_stereo_is_averaged(tmp_path):
  left = _sine(300.0, 0.5, audio.SAMPLE_RATE, 1)[0]
  samples = np.stack([left, np.zeros_like(left)])
  _write_audio(tmp_path / "lr.wav", samples, audio.SAMPLE_RATE, "pcm_s16le")
  wav = audio.load_audio(tmp_path / "lr.wav")
  assert np.abs(wav - 0.5 * left).max() < 2 / 32768


# --- errors ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
  with pytest.raises(audio.AudioError, match="not found"):
    audio.load_audio(tmp_path / "nope.wav")


def test_zero_length_file(tmp_path):
  path = tmp_path / "empty.wav"
  path.write_bytes(b"")
  with pytest.raises(audio.AudioError, match=r"empty\.wav: file is empty \(0 bytes\)"):
    audio.load_audio(path)


def test_garbage_file(tmp_path):
  path = tmp_path / "junk.mp3"
  path.write_bytes(b"this is not audio" * 100)
  with pytest.raises(audio.AudioError, match="junk.mp3"):
    audio.load_audio(path)


def test_video_only_file(tmp_path):
  path = tmp_path / "silent.mp4"
  with av.open(str(path), "w") as container:
    vstream = container.add_stream("mpeg4", rate=25)
    vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
    _mux_video(container, vstream, num_frames=5)
  with pytest.raises(audio.AudioError, match="no audio stream"):
    audio.load_audio(path)


def test_audio_stream_without_samples(tmp_path):
  path = tmp_path / "nosamples.wav"  # a valid 44-byte RIFF/WAVE header with a 0-byte data chunk.
  fmt = struct.pack("<HHIIHH", 1, 1, audio.SAMPLE_RATE, 2 * audio.SAMPLE_RATE, 2, 16)
  path.write_bytes(b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                   + b"data" + struct.pack("<I", 0))
  with pytest.raises(audio.AudioError, match=r"nosamples\.wav: audio stream is empty"):
    audio.load_audio(path)


def test_too_short_audio():
  with pytest.raises(audio.AudioError, match=r"audio is 0\.10 s, need >= 0\.20 s"):
    audio.check_duration(np.zeros(1600, np.float32))
  assert audio.check_duration(np.zeros(3200, np.float32)) == pytest.approx(0.2)
  with pytest.raises(audio.AudioError):
    audio.check_duration(np.zeros(0, np.float32))
  with pytest.raises(audio.AudioError):
    audio.melspectrogram(np.zeros(0, np.float32))
  # Exactly 0.2 s gives 17 mel steps: one window at t = 0.
  mel = audio.melspectrogram(np.zeros(3200, np.float32))
  assert audio.mel_windows(mel, audio.frame_times(5, 25)).shape[0] >= 1


def test_blocked_mel_equals_one_block():
  """The blockwise STFT (bounded memory for long audio) gives exactly the one-block values."""
  rng = np.random.default_rng(0)
  wav = (0.1 * rng.standard_normal(16000 * 11 + 123)).astype(np.float32)
  whole = audio.melspectrogram(wav, block_steps=10**9)
  assert whole.shape == (80, 1 + wav.size // 200)
  np.testing.assert_array_equal(audio.melspectrogram(wav, block_steps=300), whole)


def test_mel_for_frames_gives_every_frame_a_window():
  """With the appended 0.2 s of silence, every frame up to the end of the audio has a full
  window, at 25 and 30 fps; without it the last frames would not."""
  wav = (0.1 * np.random.default_rng(1).standard_normal(16000 * 2 + 77)).astype(np.float32)
  mel = audio.melspectrogram_for_frames(wav)
  assert mel.shape == (80, 1 + (wav.size + 3200) // 200)
  for fps in (25.0, 30.0):
    n = audio.num_frames_for_audio(wav.size, fps)
    times = audio.frame_times(n, fps)
    assert audio.num_windows(mel.shape[1], times) == n
    assert audio.num_windows(audio.melspectrogram(wav).shape[1], times) < n
