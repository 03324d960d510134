r"""A web app for lip-sync (Gradio), on the same inference core as `generate`.

  python -m diff2lip_jax.app --checkpoint checkpoints/diff2lip_released
  python -m diff2lip_jax.app --checkpoint CKPT --host 0.0.0.0 --port 7860   # a GPU server
  python -m diff2lip_jax.app --checkpoint CKPT --share                      # a public link

Upload a face video or photo and a speech recording (or record from the microphone; the example
is one click away), choose the face by clicking it on the first frame when there are several,
set the sampler, steps, blend and seed, and get the lip-synced mp4 beside the input.

* The model is loaded once at start and the default setting's sampler compiled then (one warm-up
  run of the example at the full batch size; `--no_warmup` skips it); other settings and shorter
  clips compile their shapes on first use, once per process (`pipeline.Lipsyncer`).
* One job runs at a time (Gradio's queue, concurrency 1); others wait in line and see it.
* The progress bar follows the core's stages: face detection, sampling, encoding.
* Bad inputs show the core's one-line message in the page (`gr.Error`), never a traceback.
* Uploads and outputs live in one temp folder, removed at exit; outputs older than an hour are
  pruned while it runs.
* Nothing is fetched from the internet: Gradio's analytics are off, its fonts are local, and no
  share tunnel is opened unless `--share` (Colab) asks for one.
"""

from __future__ import annotations

import argparse
import atexit
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Optional, Sequence

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by Gradio when it is imported and used
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

from diff2lip_jax.inference import analysis, checkpoints, faces, options as options_lib, pipeline
from diff2lip_jax.media import audio as audio_lib
from diff2lip_jax.media import video as video_lib

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_PHOTO = EXAMPLES / "face.png"
ALSA_SPEECH = pathlib.Path("/usr/share/sounds/alsa/Front_Center.wav")  # "front center"
PREVIEW_SIDE = 720       # longest side of the first-frame picture (pixels)
OUTPUT_MAX_AGE_S = 3600  # outputs older than this are pruned
STAGES = {"detection": "Finding the face", "sampling": "Generating the lips",
          "encoding": "Encoding"}


def one_line(err: BaseException, limit: int = 300) -> str:
  """The first line of an exception's message, at most `limit` characters."""
  text = next((s.strip() for s in str(err).splitlines() if s.strip()), type(err).__name__)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def step_options(sampler: str, steps: int) -> dict:
  """The `LipsyncOptions` fields for `steps` of `sampler` (ddim/ddpm respace, solvers count)."""
  steps = int(steps)
  if steps < 1:
    raise ValueError(f"steps must be >= 1; got {steps}")
  if sampler == "ddim":
    return dict(sampler=sampler, steps=0, timestep_respacing=f"ddim{steps}")
  if sampler == "ddpm":
    return dict(sampler=sampler, steps=0, timestep_respacing=str(steps))
  return dict(sampler=sampler, steps=steps)


def default_steps(options: options_lib.LipsyncOptions) -> int:
  """The step count `options` stand for (25 for "ddim25"; the solvers' `steps`)."""
  if options.steps:
    return int(options.steps)
  digits = "".join(c for c in options.timestep_respacing.split(",")[0] if c.isdigit())
  return int(digits) if digits else 25


def write_wav(path: pathlib.Path, wav: np.ndarray, rate: int = audio_lib.SAMPLE_RATE) -> None:
  """Writes mono float samples in [-1, 1] as 16-bit PCM wav."""
  from scipy.io import wavfile  # pylint: disable=import-outside-toplevel
  wavfile.write(path, rate, (np.clip(wav, -1, 1) * 32767).astype(np.int16))


def example_speech(folder: pathlib.Path) -> pathlib.Path:
  """A speech file: ALSA's "front center" voice where installed, else a voiced 4 Hz tone."""
  out = folder / "example_speech.wav"
  if ALSA_SPEECH.is_file():
    shutil.copyfile(ALSA_SPEECH, out)
  else:
    t = np.arange(int(1.5 * audio_lib.SAMPLE_RATE)) / audio_lib.SAMPLE_RATE
    write_wav(out, 0.3 * np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)))
  return out


def draw_faces(frame: np.ndarray, boxes: Sequence[Sequence[float]], chosen: int) -> np.ndarray:
  """`frame` with each box outlined and numbered from 1; the chosen one in green."""
  img = Image.fromarray(frame)
  draw = ImageDraw.Draw(img)
  width = max(2, round(max(img.size) / 250))
  font = ImageFont.load_default(size=max(12, 8 * width))  # Pillow's own font: nothing fetched
  for i, (x1, y1, x2, y2) in enumerate(boxes):
    colour = (40, 220, 60) if i == chosen else (255, 150, 0)
    draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
    draw.text((x1 + 2 * width, y1 + width), str(i + 1), fill=colour, font=font)
  return np.asarray(img)


def pick_box(boxes: Sequence[Sequence[float]], x: float, y: float) -> int:
  """Index of the box holding (x, y) (the smallest such), else of the nearest box centre."""
  arr = np.asarray(boxes, np.float64).reshape(-1, 4)
  inside = (arr[:, 0] <= x) & (x <= arr[:, 2]) & (arr[:, 1] <= y) & (y <= arr[:, 3])
  if inside.any():
    area = (arr[:, 2] - arr[:, 0]) * (arr[:, 3] - arr[:, 1])
    return int(np.argmin(np.where(inside, area, np.inf)))
  centres = (arr[:, :2] + arr[:, 2:]) / 2
  return int(np.argmin(((centres - [x, y]) ** 2).sum(1)))


class LipsyncApp:
  """The app's server side: one loaded model, a temp folder, and the page's event handlers.

  Args:
    lipsyncer: the inference core with its model loaded.
    options: the page's defaults (sampler, steps, blend, seed) and every other option.
    workdir: the temp folder for the example copies and outputs (removed by `close`).
  """

  def __init__(self, lipsyncer: pipeline.Lipsyncer, options: options_lib.LipsyncOptions,
               workdir: str | os.PathLike):
    self.lipsyncer = lipsyncer
    self.options = options.replace(progress=False)
    self.workdir = pathlib.Path(workdir)
    self.outputs = self.workdir / "outputs"
    self.outputs.mkdir(parents=True, exist_ok=True)
    self.example_photo: Optional[pathlib.Path] = None
    if EXAMPLE_PHOTO.is_file():  # copied: Gradio serves files from its temp folders only
      self.example_photo = self.workdir / EXAMPLE_PHOTO.name
      shutil.copyfile(EXAMPLE_PHOTO, self.example_photo)
    self.example_audio = example_speech(self.workdir)
    self._detector: Optional[faces.FaceDetector] = None  # the preview's own (not thread-shared)
    self._preview_lock = threading.Lock()
    self._run_lock = threading.Lock()

  def warm_up(self) -> float:
    """Compiles the default setting: one run of the example photo at the full batch size
    (silence for `frames_per_batch` frames). Returns the seconds it took."""
    start = time.time()
    photo = self.example_photo or EXAMPLE_PHOTO
    seconds = (self.options.frames_per_batch + 1) / 25.0
    silence = np.zeros(int(seconds * audio_lib.SAMPLE_RATE), np.float32)
    self.lipsyncer.run(str(photo), silence, self.workdir / "warmup.mp4", options=self.options)
    (self.workdir / "warmup.mp4").unlink(missing_ok=True)
    return time.time() - start

  def close(self) -> None:
    """Removes the temp folder."""
    shutil.rmtree(self.workdir, ignore_errors=True)

  # -- the face picker ----------------------------------------------------------------------

  def _preview_detector(self) -> faces.FaceDetector:
    if self._detector is None:
      loaded = self.lipsyncer.loaded
      self._detector = analysis.make_detector(self.options, loaded.s3fd_path, loaded.upstream)
    return self._detector

  def on_video(self, path: Optional[str]):
    """A new input: (first frame with its faces, input player, face, note, picker state)."""
    import gradio as gr  # pylint: disable=import-outside-toplevel
    hidden = gr.update(value=None, visible=False)
    if not path:
      return None, hidden, "largest", "", {}
    try:
      frame = video_lib.read_video(path, max_frames=1).frames[0]
      with self._preview_lock:
        boxes, _ = faces.detect_all_frames(self._preview_detector(), frame[None])[0]
    except ValueError as e:
      raise gr.Error(one_line(e), print_exception=False) from None
    scale = min(1.0, PREVIEW_SIDE / max(frame.shape[:2]))
    if scale < 1.0:
      size = (round(frame.shape[1] * scale), round(frame.shape[0] * scale))
      frame = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
    order = np.argsort(boxes[:, 0], kind="stable") if len(boxes) else []
    shown = [[float(v) * scale for v in boxes[i]] for i in order]  # left to right
    chosen = int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in shown])) if shown else -1
    state = {"frame": frame, "boxes": shown, "scale": scale}
    is_video = pathlib.Path(path).suffix.lower() not in video_lib.IMAGE_SUFFIXES
    player = gr.update(value=path, visible=True) if is_video else hidden
    if not shown:
      note = ("No face found in the first frame: the run looks in every frame and says so if "
              "there is none.")
    elif len(shown) == 1:
      note = "1 face found."
    else:
      note = (f"{len(shown)} faces found: the largest (green) is used; click another on the "
              "picture to choose it.")
    return draw_faces(frame, shown, chosen), player, "largest", note, state

  def on_select(self, state: dict, evt: Any):
    """A click on the first frame: chooses the face there -> (picture, face, note)."""
    import gradio as gr  # pylint: disable=import-outside-toplevel
    if not state or not state.get("boxes"):
      return gr.update(), gr.update(), "No face to choose in this picture."
    boxes, scale = state["boxes"], state["scale"]
    x, y = evt.index[:2]
    i = pick_box(boxes, float(x), float(y))
    x1, y1, x2, y2 = boxes[i]
    face = f"{(x1 + x2) / 2 / scale:.0f},{(y1 + y2) / 2 / scale:.0f}"
    note = f"Face {i + 1} of {len(boxes)} chosen (at {face} in the first frame)."
    return draw_faces(state["frame"], boxes, i), face, note

  def use_example(self):
    """The example photo and speech, as the two inputs (the button shows when installed)."""
    return str(self.example_photo), str(self.example_audio)

  # -- the job ------------------------------------------------------------------------------

  def _prune_outputs(self) -> None:
    cutoff = time.time() - OUTPUT_MAX_AGE_S
    for old in self.outputs.glob("*.mp4"):
      if old.stat().st_mtime < cutoff:
        old.unlink(missing_ok=True)

  def run_job(self, video: Optional[str], audio: Optional[str], sampler: str, steps: float,
              blend: str, face: str, seed: float, progress: Any = None):
    """Lip-syncs `video` to `audio` -> (output mp4 path, summary); errors as `gr.Error`."""
    import gradio as gr  # pylint: disable=import-outside-toplevel
    fail = lambda text: gr.Error(text, duration=None, print_exception=False)  # stays up
    if not video:
      raise fail("Upload a face video or photo first (or click 'Use the example').")
    if not audio:
      raise fail("Upload or record the speech first (or click 'Use the example').")
    try:
      opts = self.options.replace(blend=blend, face=(face or "largest").strip(),
                                  sampling_seed=int(seed or 0), **step_options(sampler, steps))
    except (TypeError, ValueError) as e:
      raise fail(one_line(e)) from None

    def report(stage: str, done: int, total: int) -> None:
      if progress is not None:
        progress((done, total or None), desc=STAGES.get(stage, stage), unit="frames")

    self._prune_outputs()
    out = self.outputs / f"lipsync_{uuid.uuid4().hex[:10]}.mp4"
    start = time.time()
    try:
      with self._run_lock:
        summary = self.lipsyncer.run(video, audio, out, options=opts, on_progress=report)
    except ValueError as e:  # the core's user errors: one line that says what to do
      raise fail(one_line(e)) from None
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("lip-sync failed")
      raise fail(f"internal error ({type(e).__name__}: {one_line(e, 160)}); the server's log "
                 "has the details") from None
    text = (f"**Done** in {time.time() - start:.1f} s: {summary.num_frames} frames at "
            f"{summary.fps:g} fps ({summary.times[-1] + 1 / summary.fps:.2f} s).")
    if summary.no_face:
      spans = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in summary.no_face[:6])
      text += f" Frames without a face, passed through: {spans}."
    return str(out), text

  # -- the page -----------------------------------------------------------------------------

  def build(self):
    """The page (`gr.Blocks`), queued one job at a time."""
    import gradio as gr  # pylint: disable=import-outside-toplevel
    opts = self.options
    with gr.Blocks(title="Diff2Lip lip-sync", analytics_enabled=False,
                   delete_cache=(1800, OUTPUT_MAX_AGE_S)) as demo:
      gr.Markdown("# Diff2Lip lip-sync\nA face video or photo and any speech in, the video "
                  "with lips that match the speech out. "
                  f"Model: {self.lipsyncer.loaded.source}.")
      state = gr.State({})
      with gr.Row():
        with gr.Column(scale=1):
          video_in = gr.File(label="Face video or photo", file_types=["video", "image"],
                             elem_id="video_input")
          audio_in = gr.Audio(label="Speech (a file, or record it)", type="filepath",
                              sources=["upload", "microphone"], elem_id="audio_input")
          example = gr.Button("Use the example", elem_id="example",
                              visible=self.example_photo is not None)
          with gr.Accordion("Options", open=False):
            sampler = gr.Dropdown(list(options_lib.SAMPLERS), value=opts.sampler,
                                  label="Sampler", elem_id="sampler")
            steps = gr.Slider(1, 100, value=default_steps(opts), step=1, label="Steps",
                              elem_id="steps")
            blend = gr.Radio(list(options_lib.BLENDS), value=opts.blend, label="Blend",
                             elem_id="blend")
            face = gr.Textbox(value="largest", label="Face", elem_id="face",
                              info="largest, an index from the left (0, 1, ...), or x,y in "
                                   "pixels; clicking a face on the first frame sets it")
            seed = gr.Number(value=opts.sampling_seed, precision=0, label="Seed",
                             elem_id="seed")
          run = gr.Button("Lip-sync", variant="primary", elem_id="run")
        with gr.Column(scale=1):
          first = gr.Image(label="First frame: click a face to choose it", interactive=False,
                           elem_id="first_frame", format="png", buttons=["fullscreen"])
          note = gr.Markdown(elem_id="faces_note")
          player = gr.Video(label="Input", interactive=False, visible=False,
                            elem_id="input_video")
        with gr.Column(scale=1):
          output = gr.Video(label="Lip-synced", interactive=False, buttons=["download"],
                            elem_id="output_video")
          summary = gr.Markdown(elem_id="summary")
      video_in.change(self.on_video, [video_in], [first, player, face, note, state],
                      concurrency_limit=2, concurrency_id="preview")

      def select(st, evt):
        return self.on_select(st, evt)

      select.__annotations__ = {"st": dict, "evt": gr.SelectData}  # Gradio injects the click
      first.select(select, [state], [first, face, note], concurrency_id="preview")
      example.click(self.use_example, None, [video_in, audio_in], queue=False)

      def job(video, audio, sampler_, steps_, blend_, face_, seed_, progress=gr.Progress()):
        return self.run_job(video, audio, sampler_, steps_, blend_, face_, seed_, progress)

      run.click(job, [video_in, audio_in, sampler, steps, blend, face, seed], [output, summary],
                concurrency_limit=1, concurrency_id="device")
    demo.queue(default_concurrency_limit=1)
    return demo


def create(checkpoint: Any, options: Optional[options_lib.LipsyncOptions] = None, *,
           model_flags: Any = None, warmup: bool = True) -> LipsyncApp:
  """Loads the model once (and warms it up) and returns the app, its temp folder made.

  Sets `GRADIO_TEMP_DIR` inside that folder when Gradio is not imported yet, so that uploads
  land there too. Raises the core's one-line errors (CheckpointError, ValueError).
  """
  options = options or options_lib.LipsyncOptions.preset("default")
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="diff2lip_app_"))
  atexit.register(shutil.rmtree, workdir, True)
  if "gradio" not in sys.modules:
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
  if isinstance(checkpoint, (str, os.PathLike)):
    checkpoint = checkpoints.load_model(checkpoint, pipeline.resolve_dtype(options.dtype),
                                        model_flags=model_flags)
  app = LipsyncApp(pipeline.Lipsyncer(checkpoint, options), options, workdir)
  if warmup:
    logging.info("warm-up (compiles the default setting): %.1f s", app.warm_up())
  return app


def launch(checkpoint: Any, options: Optional[options_lib.LipsyncOptions] = None, *,
           host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           model_flags: Any = None, warmup: bool = True, block: bool = True, **kwargs):
  """Starts the app; returns the `gr.Blocks` (with `block=False`: at once, serving in a thread,
  e.g. inline in a notebook). `kwargs` go to `Blocks.launch`."""
  app = create(checkpoint, options, model_flags=model_flags, warmup=warmup)
  logging.info("uploads and outputs in %s (removed at exit)", app.workdir)
  demo = app.build()
  demo.diff2lip_app = app
  try:
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                max_file_size="1gb", footer_links=["gradio"], **kwargs)
  finally:
    if block:
      app.close()
  return demo


def _interrupt(signum: int, frame: Any) -> None:
  """SIGTERM as Ctrl-C: the server stops and the temp folder is removed."""
  del signum, frame
  raise KeyboardInterrupt


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  p = argparse.ArgumentParser(prog="python -m diff2lip_jax.app", description=__doc__.split(
      "\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="model: a converted/exported checkpoint "
                 "directory, a launch.train workdir, an upstream .pt/.npz, 'random', "
                 "'random:small'")
  p.add_argument("--model_flags", help="JSON of upstream model flags for an upstream .pt/.npz")
  p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
  p.add_argument("--port", type=int, default=7860)
  p.add_argument("--share", action="store_true", help="open a public gradio.live link")
  p.add_argument("--preset", default="default", choices=options_lib.PRESETS)
  p.add_argument("--sampler", choices=options_lib.SAMPLERS, help="the page's default sampler")
  p.add_argument("--steps", type=int, help="solver steps (dpmpp_2m, unipc)")
  p.add_argument("--timestep_respacing", help="ddim/ddpm steps, e.g. ddim25 (default), ddim10")
  p.add_argument("--sampling_batch_size", type=int, help="clips per model batch (32)")
  p.add_argument("--nframes", type=int, help="frames per clip (5)")
  p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
  p.add_argument("--s3fd_path", help="S3FD face detector weights (.pth or converted .npz)")
  p.add_argument("--no_warmup", action="store_true", help="skip compiling at start")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: parses the flags, loads the model, serves until interrupted."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.set_verbosity(logging.INFO)
  names = ("sampler", "steps", "timestep_respacing", "sampling_batch_size", "nframes", "dtype",
           "s3fd_path")
  overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
  signal.signal(signal.SIGTERM, _interrupt)
  try:
    options = options_lib.LipsyncOptions.preset(args.preset, **overrides)
    launch(args.checkpoint, options, host=args.host, port=args.port, share=args.share,
           model_flags=args.model_flags, warmup=not args.no_warmup)
  except ValueError as e:  # CheckpointError, bad options, a broken example: one line
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
