"""The web app (`diff2lip_jax.app`) driven in a real browser: Debian's headless Chromium through
Playwright's Python API (`executable_path`, no browser download).

The app runs as its command line would (a subprocess) with the small upstream test model and 2
DDIM steps. The page is used as a person would: upload the example photo and speech, click the
face on the first frame, start, wait for the video, fetch it and check the mp4; then a face-less
picture shows the core's one-line error in the page. The screenshot of the finished job is
saved as `docs/app_screenshot.png` (committed; the README shows it).
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "app_screenshot.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 # a microphone that beeps, allowed without asking
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
START_TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream_dir, small_flags):
  """The app on 127.0.0.1 (small model, ddim2, 8 frames a batch): (url, log path, process)."""
  tmp = tmp_path_factory.mktemp("app")
  flags = tmp / "flags.json"
  flags.write_text(json.dumps(small_flags))
  port = _free_port()
  log = tmp / "server.log"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  cmd = [sys.executable, "-m", "diff2lip_jax.app", "--checkpoint",
         str(upstream_dir / "tfg_small.npz"), "--model_flags", str(flags),
         "--timestep_respacing", "ddim2", "--sampling_batch_size", "1", "--nframes", "8",
         "--port", str(port)]
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
  deadline = time.time() + START_TIMEOUT_S
  while "Running on local URL" not in log.read_text():
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
    time.sleep(0.5)
  yield f"http://127.0.0.1:{port}/", log, proc
  if proc.poll() is None:
    proc.kill()


@pytest.fixture(scope="module")
def browser():
  """Headless Debian Chromium."""
  from playwright.sync_api import sync_playwright
  if not os.path.exists(CHROMIUM):
    pytest.fail("chromium not found: apt-get install chromium (.ci/run does)")
  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()


def _open(browser, url, hosts):
  page = browser.new_page(viewport={"width": 1360, "height": 820}, permissions=["microphone"])
  page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
  page.goto(url)
  page.wait_for_selector("#run", timeout=60_000)
  return page


def _upload(page, picture, speech=None):
  """The picture, and the speech file (None: 1.5 s recorded from the microphone)."""
  page.locator("#video_input input[type=file]").set_input_files(str(picture))
  if speech is not None:
    page.locator("#audio_input input[type=file]").set_input_files(str(speech))
  else:
    page.locator("#audio_input").get_by_label("Record audio").click()
    page.locator("#audio_input").get_by_text("Record", exact=True).click()
    page.wait_for_timeout(1500)
    page.locator("#audio_input button.stop-button").click()
  page.wait_for_selector("#first_frame img", timeout=60_000)
  page.locator("#audio_input").get_by_label("Download").wait_for(timeout=60_000)


def _face_box(picture):
  """The largest dlib box in the picture, as the app's preview finds it."""
  from diff2lip_jax.inference import faces
  from diff2lip_jax.media import video as video_lib
  frame = video_lib.read_video(picture, max_frames=1).frames[0]
  boxes, _ = faces.make_detector("dlib").detect_all(frame)
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return boxes[int(np.argmax(areas))], frame.shape[:2], len(boxes)


def _check_mp4(path, seconds):
  """A playable H.264 + AAC mp4 whose picture and sound last `seconds` (to a frame)."""
  import av
  with av.open(str(path)) as c:
    v, a = c.streams.video[0], c.streams.audio[0]
    assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
    frames = sum(1 for _ in c.decode(video=0))
  with av.open(str(path)) as c:
    sound = np.concatenate([f.to_ndarray().reshape(-1, f.samples)[0]
                            for f in c.decode(audio=0)])
    rate = c.streams.audio[0].rate
  assert abs(frames / 25 - seconds) <= 1 / 25 + 1e-6, (frames, seconds)
  assert abs(len(sound) / rate - seconds) < 0.05, (len(sound) / rate, seconds)
  assert np.abs(sound).max() > 0.01  # the speech, not silence
  return frames


def test_app_in_browser(server, browser, tmp_path):
  from diff2lip_jax import app
  from diff2lip_jax.media import audio as audio_lib
  url, log, proc = server
  hosts: set[str] = set()
  picture = app.EXAMPLE_PHOTO
  speech = app.example_speech(tmp_path)
  seconds = len(audio_lib.load_audio(speech)) / audio_lib.SAMPLE_RATE

  # 1. The example photo and speech; the face clicked on the first frame; the job.
  page = _open(browser, url, hosts)
  _upload(page, picture, speech)
  box, (h, w), count = _face_box(picture)
  note = page.locator("#faces_note")
  assert f"{count} face" in note.inner_text()
  img = page.locator("#first_frame img").first
  page.wait_for_function("() => document.querySelector('#first_frame img').naturalWidth > 0")
  natural = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
  rect = img.bounding_box()
  # object-fit: contain, so the picture may not fill the element: find where it lies.
  fit = min(rect["width"] / natural[0], rect["height"] / natural[1])
  ox = (rect["width"] - natural[0] * fit) / 2
  oy = (rect["height"] - natural[1] * fit) / 2
  cx, cy = (box[0] + box[2]) / 2 / w * natural[0], (box[1] + box[3]) / 2 / h * natural[1]
  img.click(position={"x": ox + cx * fit, "y": oy + cy * fit})
  page.wait_for_function(
      "() => document.querySelector('#faces_note').innerText.includes('chosen')", timeout=30_000)
  fx, fy = map(int, re.search(r"at (\d+),(\d+)", note.inner_text()).groups())
  assert box[0] <= fx <= box[2] and box[1] <= fy <= box[3], (fx, fy, box)
  page.get_by_text("Options", exact=True).click()  # the accordion: sampler, steps, face, ...
  assert page.locator("#face textarea, #face input").first.input_value() == f"{fx},{fy}"

  # Record what the output shows while the job runs (the progress of the core's stages).
  page.evaluate("""() => { window.seen = ''; new MutationObserver(() => {
      window.seen += document.querySelector('#output_video').innerText + '|'; }).observe(
      document.querySelector('#output_video'), {subtree: true, childList: true,
      characterData: true}); }""")
  started = time.time()
  page.click("#run")
  page.wait_for_selector("#output_video video", timeout=240_000)
  took = time.time() - started
  summary = page.locator("#summary").inner_text()
  frames_text = re.search(r"(\d+) frames at 25 fps", summary)
  assert frames_text, summary
  seen = page.evaluate("() => window.seen")
  assert any(s in seen for s in app.STAGES.values()), seen[-500:]

  # The video through the page's download button, the same as the player's; playable there.
  with page.expect_download(timeout=60_000) as download:
    page.locator("#output_video").get_by_label("Download").first.click()
  out = tmp_path / "downloaded.mp4"
  download.value.save_as(out)
  src = page.locator("#output_video video").first.get_attribute("src")
  assert page.request.get(src if src.startswith("http") else url.rstrip("/") + src).body() == \
      out.read_bytes()
  frames = _check_mp4(out, seconds)
  assert int(frames_text.group(1)) == frames
  page.locator("#output_video video").first.evaluate(
      "v => new Promise(r => { v.addEventListener('seeked', r, {once: true}); "
      "v.currentTime = 0.5; })")
  assert page.locator("#output_video video").first.evaluate("v => v.videoWidth") == w
  workdir = pathlib.Path(re.search(r"uploads and outputs in (\S+)", log.read_text()).group(1))
  assert list((workdir / "outputs").glob("*.mp4")), "outputs live in the app's temp folder"
  SCREENSHOT.parent.mkdir(exist_ok=True)
  page.evaluate("() => window.scrollTo(0, 0)")
  page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
  _save_small(tmp_path / "shot.png", SCREENSHOT)

  # 2. The example button fills both inputs.
  page.reload()
  page.wait_for_selector("#example", timeout=60_000)
  page.click("#example")
  page.wait_for_function(
      "() => document.querySelector('#faces_note').innerText.includes('face')", timeout=60_000)

  # 3. A picture without a face and speech from the microphone: the core reads the recording,
  # then stops at the faces with its one-line message, in the page, no traceback.
  from PIL import Image
  y, x = np.mgrid[0:192, 0:256]
  plain = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
  faceless = tmp_path / "wall.png"
  Image.fromarray(plain).save(faceless)
  page.reload()
  _upload(page, faceless)
  assert "No face found in the first frame" in page.locator("#faces_note").inner_text()
  page.click("#run")
  error = page.get_by_text("no face found in any of the 1 frames")
  error.first.wait_for(timeout=120_000)
  assert "Traceback" not in page.content()
  assert page.locator("#output_video video").count() == 0
  assert hosts == {url.split("/")[2]}, f"the page fetched from elsewhere: {hosts}"

  # 4. Stopping the app removes its temp folder.
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=60)
  assert not workdir.exists()
  print(f"job {took:.1f} s, {frames} frames")


def _save_small(src, dst):
  """The screenshot as a 256-colour PNG (~150 KB; octree keeps the thin green face box)."""
  from PIL import Image
  Image.open(src).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(
      dst, optimize=True)


def test_page_helpers():
  """Steps per sampler, the clicked face, one-line errors (no browser)."""
  from diff2lip_jax import app
  from diff2lip_jax.inference.options import LipsyncOptions
  assert app.step_options("ddim", 10) == dict(sampler="ddim", steps=0, timestep_respacing="ddim10")
  assert app.step_options("ddpm", 50)["timestep_respacing"] == "50"
  assert app.step_options("unipc", 8) == dict(sampler="unipc", steps=8)
  with pytest.raises(ValueError, match="steps must be >= 1"):
    app.step_options("ddim", 0)
  assert app.default_steps(LipsyncOptions.preset("default")) == 25
  assert app.default_steps(LipsyncOptions.preset("default", sampler="dpmpp_2m", steps=7)) == 7
  boxes = [[0, 0, 100, 100], [40, 40, 60, 60], [200, 0, 260, 60]]
  assert app.pick_box(boxes, 50, 50) == 1   # inside two: the smaller one
  assert app.pick_box(boxes, 10, 10) == 0
  assert app.pick_box(boxes, 300, 20) == 2  # outside all: the nearest centre
  assert app.one_line(ValueError("first line\nTraceback ...")) == "first line"
  assert len(app.one_line(ValueError("x" * 1000))) == 300


def test_face_picker_on_a_video(tmp_path):
  """Two faces in a video's first frame: both boxed, the input playable, a click picks one;
  the page queues one job at a time, analytics off."""
  from diff2lip_jax import app
  from diff2lip_jax.inference import pipeline
  from diff2lip_jax.inference.options import LipsyncOptions
  from diff2lip_jax.media import encode
  from diff2lip_jax.media import video as video_lib
  face = video_lib.read_video(app.EXAMPLE_PHOTO).frames[0][:256:2, 128:384:2]  # 128x128
  pair = np.concatenate([face, np.zeros_like(face[:, :32]), face[:, ::-1]], axis=1)
  clip = tmp_path / "two.mp4"
  encode.write_video(clip, np.stack([pair] * 3), 25)
  # The preview needs only the options' detector: a model is never run.
  page = app.LipsyncApp(pipeline.Lipsyncer((None, {})), LipsyncOptions.preset("default"),
                        tmp_path / "work")
  picture, player, face_spec, note, state = page.on_video(str(clip))
  assert len(state["boxes"]) == 2 and note.startswith("2 faces found"), note
  assert player["visible"] and player["value"] == str(clip)  # a video: its player shows
  assert face_spec == "largest" and picture.shape == pair.shape
  right = state["boxes"][1]  # left to right
  click = type("Click", (), {"index": [right[0] + 3, right[3] - 3]})()
  _, face_spec, note = page.on_select(state, click)
  x, y = map(int, face_spec.split(","))
  assert right[0] <= x <= right[2] and right[1] <= y <= right[3] and "Face 2 of 2" in note
  _, player, _, _, _ = page.on_video(str(app.EXAMPLE_PHOTO))
  assert not player["visible"]  # a photo: the first frame is the input
  demo = page.build()
  jobs = [f for f in demo.fns.values() if f.name == "job"]
  assert len(jobs) == 1 and jobs[0].queue and jobs[0].concurrency_limit == 1  # one at a time
  assert demo.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
  page.close()
  assert not (tmp_path / "work").exists()
