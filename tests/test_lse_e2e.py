"""LSE-C / LSE-D of an mp4 scored as Wav2Lip's `scores_LSE` scores it (issue 10, "LSE end to
end"): frames through ffmpeg's default JPEG extraction + cv2, audio through libswresample, then
syncnet_python's SyncNet (seeded weights) -- against ../shared/upstream/lse_e2e."""

import importlib.util
import json
import re
import shutil
import subprocess

import av
import numpy as np
import pytest
import scipy.io.wavfile
from PIL import Image

from diff2lip_jax.evaluation import lse
from diff2lip_jax.inference.crops import resize_bilinear
from diff2lip_jax.media.audio import AudioError
from diff2lip_jax.media.video import VideoError

CLIPS = ("v224_16k_mono", "v160_48k_stereo")
SEED = 12   # lse_e2e.json "weights": seeded_state_dict(syncnet_v2_keys, seed=12)


@pytest.fixture(scope="module")
def expected(upstream_dir) -> dict:
  return json.loads((upstream_dir / "lse_e2e" / "lse_e2e.json").read_text())


@pytest.fixture(scope="module")
def scorer(upstream_dir) -> lse.SyncScorer:
  spec = importlib.util.spec_from_file_location("seeded_weights",
                                                upstream_dir / "seeded_weights.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  keys = json.loads((upstream_dir / "syncnet_v2_keys.json").read_text())["state_dict"]
  return lse.SyncScorer(mod.seeded_state_dict(keys, seed=SEED), batch_size=20)


def _rel(a: float, b: float) -> float:
  return abs(a - b) / abs(b)


@pytest.mark.parametrize("clip", CLIPS)
def test_score_file_matches_upstream(clip, scorer, expected, upstream_dir, monkeypatch):
  path = upstream_dir / "lse_e2e" / f"{clip}.mp4"
  exp = expected["clips"][f"{clip}.mp4"]
  frames, wav = lse.load_upstream_inputs(path)
  assert frames.dtype == np.uint8 and frames.shape[0] == exp["frames"] and frames.shape[3] == 3
  assert wav.dtype == np.float32 and wav.shape == (exp["audio_samples_16k"],)

  seen = []       # the distance matrix score_file computes on its way
  monkeypatch.setattr(scorer, "distances",
                      lambda f, w: seen.append(lse.SyncScorer.distances(scorer, f, w)) or seen[-1])
  s = scorer.score_file(path)
  (dists,) = seen
  with np.load(upstream_dir / "lse_e2e" / f"{clip}_dists.npz") as z:
    ref, mdist = z["dists"].astype(np.float64), z["mdist"].astype(np.float64)
  rel_d, rel_c = _rel(s["lse_d"], exp["lse_d"]), _rel(s["lse_c"], exp["lse_c"])
  dists_rel = float(np.max(np.abs(dists - ref) / np.abs(ref)))
  mdist_abs = float(np.max(np.abs(dists.mean(0) - mdist)))
  print(f"\n{clip}: windows {s['lse_windows']} (upstream {exp['windows']}), offset "
        f"{s['av_offset']} ({exp['offset']}); LSE-D {s['lse_d']:.6f} vs {exp['lse_d']:.6f} "
        f"(rel {rel_d:.2e}); LSE-C {s['lse_c']:.6f} vs {exp['lse_c']:.6f} (rel {rel_c:.2e}); "
        f"dists [{len(dists)}, {dists.shape[1]}] max rel {dists_rel:.2e}; mdist max abs "
        f"{mdist_abs:.2e}")
  assert s["lse_windows"] == len(dists) == exp["windows"] == len(ref)
  assert s["av_offset"] == exp["offset"]
  assert rel_d < 1e-3 and rel_c < 5e-3
  # float32 SyncNet features on CPU reach ~7e-7 (mdist ~1750, LSE-C ~4.8: LSE-C carries the
  # float32 rounding of mdist, ~5e-5 relative).
  np.testing.assert_allclose(dists, ref, rtol=1e-5)
  np.testing.assert_allclose(dists.mean(0), mdist, rtol=1e-6)


def test_resize_bilinear_is_cv2_values():
  """Outputs of cv2.resize (opencv-python-headless 5.0.0, INTER_LINEAR) on small arrays."""
  x = (np.arange(12).reshape(3, 4) * 23 % 256).astype(np.uint8)
  np.testing.assert_array_equal(resize_bilinear(x, (5, 7)), [
      [0, 8, 21, 34, 48, 61, 69], [37, 45, 58, 71, 84, 97, 106], [92, 100, 113, 127, 140, 153, 161],
      [147, 155, 168, 182, 195, 208, 216], [184, 192, 205, 218, 232, 245, 253]])
  np.testing.assert_array_equal(resize_bilinear(x, (2, 3)), [[27, 57, 88], [165, 195, 226]])
  np.testing.assert_array_equal(resize_bilinear(x, (4, 2)),
                                [[11, 57], [69, 115], [138, 184], [195, 241]])
  # Exactly half size: cv2 takes its INTER_AREA fast path, (sum + 2) >> 2 (2/4 -> 1).
  z = np.array([[0, 1, 5, 6], [1, 0, 6, 5]], np.uint8)
  np.testing.assert_array_equal(resize_bilinear(z, (1, 2)), [[1, 6]])
  rgb = np.stack([x, x // 2, 255 - x], -1)
  out = resize_bilinear(rgb, (5, 7))
  assert out.shape == (5, 7, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], resize_bilinear(x, (5, 7)))
  np.testing.assert_array_equal(resize_bilinear(rgb, (3, 4)), rgb)


def _yuv420p_frame(y: np.ndarray, uv: np.ndarray, color_range: int) -> av.VideoFrame:
  f = av.VideoFrame(y.shape[1], y.shape[0], "yuv420p")
  for plane, v in zip(f.planes, (y, uv, uv)):
    np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width] = v
  f.color_range = color_range
  return f


def test_to_yuvj420p_is_ffmpeg51_range_conversion():
  """Limited -> full range as ffmpeg 5.1's libswscale: 16 -> 0, 235 -> 255, chroma 128 fixed,
  clipped outside; full range passes unchanged."""
  y = np.arange(256, dtype=np.uint8).reshape(16, 16)
  uv = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
  out = lse._to_yuvj420p(_yuv420p_frame(y, uv, color_range=1))
  assert out.format.name == "yuvj420p"
  oy, ou, ov = lse._planes(out)
  assert oy.flat[16] == 0 and oy.flat[235] == 255 and oy.flat[0] == 0 and oy.flat[255] == 255
  assert oy.flat[126] == 128 and np.all(np.diff(oy.astype(int).ravel()) >= 0)
  assert ou.flat[32] == 128 and ou.flat[4] == 0 and ou.flat[60] == 255    # 128, 16, 240
  np.testing.assert_array_equal(ou, ov)
  same = lse._to_yuvj420p(_yuv420p_frame(y, uv, color_range=2))
  np.testing.assert_array_equal(lse._planes(same)[0], y)
  np.testing.assert_array_equal(lse._planes(same)[1], uv)


def test_load_upstream_inputs_errors(tmp_path):
  with pytest.raises(VideoError, match="not found"):
    lse.load_upstream_inputs(tmp_path / "missing.mp4")
  path = tmp_path / "silent.mp4"
  with av.open(str(path), "w") as out:
    st = out.add_stream("mpeg4", rate=25)
    st.width = st.height = 32
    st.pix_fmt = "yuv420p"
    for i in range(3):
      frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
      out.mux(st.encode(frame))
    out.mux(st.encode(None))
  with pytest.raises(AudioError, match="no audio stream"):
    lse.load_upstream_inputs(path)


def _ffmpeg_51():
  exe = shutil.which("ffmpeg")
  if exe is None:
    pytest.skip("no ffmpeg CLI (.ci/run installs Debian's)")
  first = subprocess.run([exe, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
  if not re.match(r"ffmpeg version 5\.1", first):
    pytest.skip(f"the reference data was made with ffmpeg 5.1, this CLI is: {first}")
  return exe


@pytest.mark.parametrize("clip", CLIPS)
def test_inputs_equal_upstream_ffmpeg_commands(clip, upstream_dir, tmp_path):
  """Stage check against the CLI commands of lse_e2e.json (`pipeline_facts`): the frames are
  the extracted JPEGs decoded by libjpeg (Pillow; = cv2.imread, measured), bit exact; the audio
  is the CLI's 16-bit wav up to a few one-step roundings of the AAC decoder (ffmpeg 8 vs 5.1)."""
  exe = _ffmpeg_51()
  src = str(upstream_dir / "lse_e2e" / f"{clip}.mp4")
  subprocess.run([exe, "-loglevel", "error", "-y", "-i", src, "-threads", "1", "-f", "image2",
                  str(tmp_path / "%06d.jpg")], check=True)
  subprocess.run([exe, "-loglevel", "error", "-y", "-i", src, "-async", "1", "-ac", "1", "-vn",
                  "-acodec", "pcm_s16le", "-ar", "16000", str(tmp_path / "audio.wav")], check=True)
  frames, wav = lse.load_upstream_inputs(src)
  cli = np.stack([np.asarray(Image.open(p).convert("RGB"))
                  for p in sorted(tmp_path.glob("*.jpg"))])
  rate, pcm = scipy.io.wavfile.read(tmp_path / "audio.wav")
  assert rate == 16000 and pcm.dtype == np.int16 and pcm.ndim == 1
  pcm = pcm.astype(np.int64)
  ours = np.round(wav.astype(np.float64) * 32768).astype(np.int64)
  diff = ours - pcm if len(ours) == len(pcm) else None
  print(f"\n{clip}: frames {frames.shape} equal the CLI's: {np.array_equal(frames, cli)}; audio "
        f"{len(ours)} vs {len(pcm)} samples, differing: "
        f"{np.count_nonzero(diff) if diff is not None else 'n/a'}")
  np.testing.assert_array_equal(frames, cli)
  assert diff is not None and np.abs(diff).max() <= 1 and np.count_nonzero(diff) <= 20
