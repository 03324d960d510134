"""Audio loading, Wav2Lip/Diff2Lip mel spectrogram and per-video-frame mel windows.

Reproduces (facts and numbers, not code) upstream Diff2Lip `audio/audio.py` + `audio/hparams.py`
(identical to Wav2Lip's, librosa 0.9.2) and the frame <-> mel pairing of Diff2Lip `generate.py`
(`load_all_indiv_mels` / `crop_audio_window`, the Wav2Lip `get_segmented_mels` convention).

Pipeline, all in numpy on the host (it is cheap next to the diffusion model):

  load_audio(path)        -> wav  [S] float32, 16 kHz mono, in [-1, 1]
  melspectrogram(wav)     -> mel  [80, T] float32 in [-4, 4], T = 1 + S // 200 (80 steps / s)
  melspectrogram_for_frames(wav) -> the same with 0.2 s of trailing silence (full last windows)
  frame_times(N, fps)     -> t    [N] float64 seconds (t_j = j / fps)
  mel_windows(mel, t)     -> win  [N', 80, 16] float32, the model's `indiv_mels`

Upstream pairs 25-fps video frame j with `mel[:, s:s+16]`, s = int(80 * max(j - 1, 0) / 25). Here
that rule is expressed in seconds so it holds for any frame rate or irregular timestamps: the
window starts `WINDOW_LEAD_SECONDS` (0.04 s, one 25-fps frame) before the frame's timestamp,
clipped at 0, and is `MEL_WINDOW` (16) mel steps = 0.2 s long.
"""

from __future__ import annotations

import functools
import os

import av
import librosa
import numpy as np
import scipy.signal

# --- hparams (upstream audio/hparams.py, Wav2Lip values) -------------------------------------
SAMPLE_RATE = 16000  # Hz.
N_FFT = 800  # samples (50 ms).
HOP_LENGTH = 200  # samples (12.5 ms) -> 80 mel steps per second.
WIN_LENGTH = 800  # samples, Hann window.
NUM_MELS = 80
FMIN = 55.0  # Hz.
FMAX = 7600.0  # Hz.
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0  # symmetric normalisation to [-4, 4].
MEL_STEPS_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 80.
MEL_WINDOW = 16  # mel steps per video frame window (0.2 s); upstream `syncnet_mel_step_size`.
WINDOW_LEAD_SECONDS = 0.04  # window starts one 25-fps frame before the frame's timestamp.
MIN_SECONDS = MEL_WINDOW / MEL_STEPS_PER_SECOND  # 0.2 s: audio needed for one window.
RESAMPLE_TYPE = "soxr_hq"  # librosa.resample; upstream librosa 0.9.2 used kaiser_best (resampy).

_INDEX_EPS = 1e-6  # guards int() against float error, e.g. 80 * (0.24 - 0.04) = 15.999999...


class AudioError(ValueError):
  """Unreadable / empty / too short audio; the message says what to do."""


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Decodes the first audio stream of any file PyAV/FFmpeg reads, as mono at `sample_rate`.

  Works for wav, mp3, aac, m4a, flac, ... and the audio track of a video (mp4, mkv, ...).
  Channels are averaged with equal weights (as `librosa.load(mono=True)` does upstream) and the
  signal is resampled with `librosa.resample(res_type=RESAMPLE_TYPE)` (soxr "HQ"; upstream's
  librosa 0.9.2 default kaiser_best needs resampy; the two differ by ~1e-4 away from the band
  edge). Upstream also round-trips through a 16-bit wav (ffmpeg); that quantisation is skipped.

  Args:
    path: audio or video file.
    sample_rate: output rate in Hz.

  Returns:
    [S] float32 waveform, nominally in [-1, 1].

  Raises:
    AudioError: missing file, no audio stream, undecodable data, or zero decoded samples.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioError(f"{path}: audio file not found; check the path")
  if os.path.getsize(path) == 0:
    raise AudioError(f"{path}: file is empty (0 bytes); pass a non-empty recording")
  chunks = []
  try:
    with av.open(path) as container:
      if not container.streams.audio:
        raise AudioError(f"{path}: file has no audio stream; pass a file with an audio track")
      stream = container.streams.audio[0]
      source_rate = stream.codec_context.sample_rate or stream.rate
      # Only the sample format is converted (to planar float); rate and channels are left as
      # they are so that mixing and resampling are done here, identically for every format.
      to_float = av.AudioResampler(format="fltp")
      for frame in container.decode(stream):
        source_rate = frame.sample_rate or source_rate
        for out in to_float.resample(frame):
          chunks.append(out.to_ndarray())  # [channels, n] float32
      for out in to_float.resample(None):
        chunks.append(out.to_ndarray())
  except AudioError:
    raise
  except (av.FFmpegError, OSError, ValueError) as e:
    raise AudioError(f"{path}: cannot decode audio ({e}); re-encode it, e.g. to 16 kHz wav") from e
  chunks = [c for c in chunks if c.size]
  if not chunks:
    raise AudioError(f"{path}: audio stream is empty (0 samples); pass a non-empty recording")
  wav = np.concatenate(chunks, axis=1).mean(axis=0)
  if not source_rate:
    raise AudioError(f"{path}: audio stream has no sample rate; re-encode it, e.g. to 16 kHz wav")
  if source_rate != sample_rate:
    wav = librosa.resample(wav, orig_sr=source_rate, target_sr=sample_rate, res_type=RESAMPLE_TYPE)
  return np.ascontiguousarray(wav, dtype=np.float32)


def check_duration(wav: np.ndarray, sample_rate: int = SAMPLE_RATE,
                   min_seconds: float = MIN_SECONDS) -> float:
  """Returns the duration of `wav` [S] in seconds; raises AudioError if below `min_seconds`."""
  seconds = np.shape(wav)[-1] / sample_rate if np.ndim(wav) else 0.0
  if seconds + _INDEX_EPS < min_seconds:
    raise AudioError(f"audio is {seconds:.2f} s, need >= {min_seconds:.2f} s "
                     f"(one {MEL_WINDOW}-step mel window); pass a longer recording")
  return seconds


@functools.cache
def mel_basis() -> np.ndarray:
  """[80, 401] float32 Slaney mel filterbank, 55..7600 Hz at 16 kHz (librosa default, as upstream)."""
  return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN, fmax=FMAX)


def melspectrogram(wav: np.ndarray, block_steps: int = 4000) -> np.ndarray:
  """Upstream `audio.melspectrogram`: normalised log-mel of a 16 kHz mono waveform.

  pre-emphasis (1 - 0.97 z^-1) -> |STFT| (Hann 800, hop 200, centred, zero-padded as librosa
  0.9.2) -> Slaney mel 55..7600 Hz -> 20 log10(max(1e-5, .)) - 20 dB -> clip(8 (S + 100) / 100 - 4).

  The STFT is taken `block_steps` mel steps (default 4000 = 50 s) at a time: each STFT frame sees
  the same 800 samples of the zero-padded, pre-emphasised signal, so the values do not depend on
  the block size, while peak memory is bounded by the block, not by the audio's length.

  Args:
    wav: [S] float waveform at SAMPLE_RATE, S >= 1.
    block_steps: mel steps per STFT block (>= 1).

  Returns:
    [80, 1 + S // 200] float32 in [-4, 4]; mel step k is centred on sample 200 k.

  Raises:
    AudioError: `wav` is not a non-empty 1-D array.
  """
  wav = np.asarray(wav, dtype=np.float64)
  if wav.ndim != 1 or wav.size == 0:
    raise AudioError(f"melspectrogram needs a non-empty 1-D waveform, got shape {wav.shape}")
  steps = 1 + wav.size // HOP_LENGTH
  emphasised = scipy.signal.lfilter([1.0, -PREEMPHASIS], [1.0], wav)
  padded = np.pad(emphasised, (N_FFT // 2, N_FFT // 2))  # librosa center=True, "constant"
  del emphasised
  min_level = np.exp(MIN_LEVEL_DB / 20.0 * np.log(10.0))  # 1e-5.
  out = np.empty((NUM_MELS, steps), np.float32)
  for a in range(0, steps, block_steps):
    b = min(steps, a + block_steps)
    segment = padded[HOP_LENGTH * a: HOP_LENGTH * (b - 1) + N_FFT]
    spec = np.abs(librosa.stft(segment, n_fft=N_FFT, hop_length=HOP_LENGTH,
                               win_length=WIN_LENGTH, window="hann", center=False))
    db = 20.0 * np.log10(np.maximum(min_level, mel_basis() @ spec)) - REF_LEVEL_DB
    norm = 2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    out[:, a:b] = np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE)
  return out


def melspectrogram_for_frames(wav: np.ndarray) -> np.ndarray:
  """`melspectrogram` of `wav` followed by MIN_SECONDS (0.2 s) of silence, so that every frame
  up to the end of the audio gets a full 16-step window (each window starts 0.04 s before its
  frame). [80, 1 + (S + 3200) // 200] float32 in [-4, 4]."""
  silence = np.zeros(int(MIN_SECONDS * SAMPLE_RATE), np.float32)
  return melspectrogram(np.concatenate([np.asarray(wav, np.float32), silence]))


def frame_times(num_frames: int, fps: float) -> np.ndarray:
  """[num_frames] float64 timestamps in seconds of frames at a constant rate: t_j = j / fps."""
  if fps <= 0:
    raise ValueError(f"fps must be > 0, got {fps}")
  return np.arange(int(num_frames), dtype=np.float64) / float(fps)


def window_start_indices(times: np.ndarray) -> np.ndarray:
  """[N] int64 first mel step of each frame's window: int(80 * max(t - 0.04, 0)).

  For t_j = j / 25 this equals upstream's int(80 * max(j - 1, 0) / 25) exactly (a 1e-6 guard
  absorbs float error such as 80 * (0.24 - 0.04) = 15.99999...; upstream values are either
  integers or >= 0.2 away from one).
  """
  t = np.maximum(np.asarray(times, dtype=np.float64) - WINDOW_LEAD_SECONDS, 0.0)
  return np.floor(MEL_STEPS_PER_SECOND * t + _INDEX_EPS).astype(np.int64)


def num_windows(num_mel_steps: int, times: np.ndarray) -> int:
  """Number of leading frames whose full 16-step window fits in `num_mel_steps` mel steps."""
  fits = window_start_indices(times) + MEL_WINDOW <= num_mel_steps
  return int(fits.size if fits.all() else np.argmin(fits))


def mel_windows(mel: np.ndarray, times: np.ndarray) -> np.ndarray:
  """Per-frame mel windows (upstream `indiv_mels`), stopping at the first that does not fit.

  Args:
    mel: [80, T] output of `melspectrogram`.
    times: [N] frame timestamps in seconds (e.g. `frame_times(N, fps)`).

  Returns:
    [N', 80, 16] float32, N' = `num_windows(T, times)` <= N; window j = mel[:, s_j:s_j + 16].
  """
  mel = np.asarray(mel, dtype=np.float32)
  starts = window_start_indices(times)[:num_windows(mel.shape[-1], times)]
  if starts.size == 0:
    return np.zeros((0, mel.shape[0], MEL_WINDOW), np.float32)
  index = starts[:, None] + np.arange(MEL_WINDOW)  # [N', 16]
  return np.ascontiguousarray(np.moveaxis(mel[:, index], 0, 1))  # [80, N', 16] -> [N', 80, 16]


def num_frames_for_audio(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
  """Number of whole video frames at `fps` that `num_samples` audio samples span."""
  return int(np.floor(num_samples * fps / sample_rate + _INDEX_EPS))


def as_wav(audio: str | os.PathLike | np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Driving audio as [S] float32 16 kHz mono.

  Args:
    audio: a path (any audio or video file, any rate, any channels: `audio.load_audio`), or
      samples: [S] mono, or [S, C] / [C, S] multi-channel (the shorter axis is taken as channels
      and averaged), at `sample_rate`.
    sample_rate: rate of array input in Hz; resampled to 16 kHz (soxr, as `load_audio`).

  Raises:
    AudioError: unreadable file or an array of another shape.
  """
  if not isinstance(audio, np.ndarray):
    return load_audio(audio)
  wav = np.asarray(audio)
  if wav.ndim == 2:
    wav = wav.mean(axis=int(np.argmin(wav.shape)))
  if wav.ndim != 1:
    raise AudioError(f"audio array must be [S] or [S, channels], got {audio.shape}")
  if np.issubdtype(wav.dtype, np.integer):
    wav = wav / float(np.iinfo(wav.dtype).max + 1)
  wav = wav.astype(np.float32)
  if int(sample_rate) != SAMPLE_RATE:
    wav = librosa.resample(wav, orig_sr=int(sample_rate), target_sr=SAMPLE_RATE,
                           res_type=RESAMPLE_TYPE).astype(np.float32)
  return wav
