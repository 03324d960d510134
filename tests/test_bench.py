"""The benchmarks of bench/ run (`--smoke`: tiny model on CPU) and print sane JSON lines.

CI checks only that the benches work; their figures come from the device (bench/README.md).
The three run side by side in subprocesses with XLA's CPU backend optimisation off (compile
time dominates a smoke run; the numbers are meaningless anyway).
"""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
KEYS = {"figure", "frames_per_s", "step_time_median_s", "step_time_min_s", "step_time_max_s",
        "timed_runs", "warmup_runs", "compile_s", "flop_per_frame", "tflop_per_s",
        "jaxpr_flop_per_step", "peak_memory_bytes", "device", "platform", "device_count",
        "jax_version", "config", "batch", "dtype"}


def _run_all(commands: dict[str, list[str]]) -> dict[str, list[dict]]:
  env = {**os.environ, "XLA_FLAGS": FAST_COMPILE, "JAX_PLATFORMS": "cpu"}
  procs = {name: subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for name, cmd in commands.items()}
  rows = {}
  for name, p in procs.items():
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, f"{name} failed:\n{err[-3000:]}"
    lines = [l for l in out.splitlines() if l.strip()]
    rows[name] = [json.loads(l) for l in lines]  # stdout holds JSON lines only
  return rows


def _check(row: dict, figure: str, batch: int):
  import jax  # pylint: disable=import-outside-toplevel
  assert KEYS <= set(row), KEYS - set(row)
  assert row["figure"] == figure
  assert row["batch"] == batch and row["config"] == "tiny" and row["dtype"] == "float32"
  assert row["timed_runs"] >= 2 and row["warmup_runs"] >= 1
  assert 0 < row["step_time_min_s"] <= row["step_time_median_s"] <= row["step_time_max_s"] < 60
  assert abs(row["frames_per_s"] - batch / row["step_time_median_s"]) < 1e-2 * row["frames_per_s"]
  assert row["flop_per_frame"] > 1e8
  assert abs(row["tflop_per_s"] - row["frames_per_s"] * row["flop_per_frame"] / 1e12) < 1e-3
  assert row["platform"] == "cpu" and row["peak_memory_bytes"] is None
  assert row["jax_version"] == jax.__version__ and row["device_count"] >= 1


def test_benches_smoke():
  rows = _run_all({
      "train": ["bench/train_step.py", "--smoke"],
      "sample": ["bench/sample.py", "--smoke"],
      "generate": ["bench/generate.py", "--smoke"],
  })
  (train,) = rows["train"]
  _check(train, "train_step", 2)
  # One train step costs ~3 forward passes: the jaxpr count of the step agrees with 3 F_fwd.
  assert abs(train["jaxpr_flop_per_step"] / (2 * train["flop_per_frame"]) - 1) < 0.05
  assert train["loss"] > 0

  ddim, fwd = rows["sample"]
  _check(ddim, "ddim_sampling", 2)
  _check(fwd, "forward", 2)
  assert ddim["sampler_steps"] == 2 and ddim["timestep_respacing"] == "ddim2"
  assert ddim["flop_per_frame"] == 2 * fwd["flop_per_frame"]
  assert fwd["jaxpr_flop_per_step"] == 2 * fwd["flop_per_frame"]
  # The sampler runs the audio encoder once per call, not once per step: fewer FLOPs.
  assert ddim["jaxpr_flop_per_step"] < 2 * ddim["flop_per_frame"]

  (gen,) = rows["generate"]
  _check(gen, "lipsync", 6)
  assert gen["flop_per_frame"] == ddim["flop_per_frame"]


def test_released_forward_flops_match_upstream_count():
  """Issue 4: upstream's released 128² model costs 157.4 GFLOP per frame (forward)."""
  sys.path.insert(0, str(REPO))
  from bench import flops  # pylint: disable=import-outside-toplevel
  from diff2lip_jax.models import RELEASED_FLAGS, model_from_flags  # pylint: disable=import-outside-toplevel
  gflop = flops.model_forward_flops(model_from_flags(RELEASED_FLAGS)) / 1e9
  assert abs(gflop - 157.4) < 0.1, gflop


def test_profile_top_sums_device_kernels_by_group(tmp_path):
  """bench/profile_top.py on a hand-made Perfetto trace: host events are ignored, kernels are
  summed over calls and grouped (convolution / matmul / fusion)."""
  import gzip
  run = tmp_path / "prof" / "forward" / "plugins" / "profile" / "run"
  run.mkdir(parents=True)
  conv = "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_cudnn"
  events = [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
      {"ph": "X", "pid": 1, "name": conv, "dur": 200.0},
      {"ph": "X", "pid": 1, "name": conv, "dur": 100.0},
      {"ph": "X", "pid": 1, "name": "nvjet_sm90_tss_256x128", "dur": 60.0},
      {"ph": "X", "pid": 1, "name": "loop_multiply_fusion_86", "dur": 40.0},
      {"ph": "X", "pid": 2, "name": "PjitFunction(step)", "dur": 5000.0},
  ]
  with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  out = subprocess.run([sys.executable, str(REPO / "bench" / "profile_top.py"),
                        str(tmp_path / "prof")], capture_output=True, text=True, check=True)
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  kernels = [r for r in rows if "kernel" in r]
  assert kernels[0] == {"kernel": conv, "ms": 0.3, "share": 0.75, "count": 2}
  assert [r["kernel"] for r in kernels][1:] == ["nvjet_sm90_tss_256x128", "loop_multiply_fusion_86"]
  assert rows[-1] == {"device_busy_ms": 0.4,
                      "groups_ms": {"convolution": 0.3, "matmul": 0.06, "fusion": 0.04}}
