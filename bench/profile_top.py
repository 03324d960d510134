"""Top device kernels of a `--profile_dir` trace: where the time of the profiled calls goes.

Reads the Chrome/Perfetto JSON trace that `jax.profiler.trace(..., create_perfetto_trace=True)`
writes (`<dir>/**/perfetto_trace.json.gz`), keeps the events of device (GPU stream) threads, and
prints one JSON line per kernel name: total milliseconds over the profiled calls, share of the
device busy time, count; then a grouped line (convolution / matmul / attention / fusion / copy /
other) so the closing note can name the top costs.

  python bench/profile_top.py DIR [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib

GROUPS = (("attention", ("flash", "fmha", "attention", "softmax")),
          ("convolution", ("conv", "cudnn", "xmma_fprop", "xmma_dgrad", "xmma_wgrad", "implicit")),
          ("matmul", ("gemm", "cublas", "nvjet", "matmul", "dot")),
          ("fusion", ("fusion", "loop_", "input_", "reduce", "triton")),
          ("copy", ("memcpy", "memset", "copy", "transpose")))


def group_of(name: str) -> str:
  low = name.lower()
  for group, keys in GROUPS:
    if any(k in low for k in keys):
      return group
  return "other"


def summarise(path: pathlib.Path, top: int) -> None:
  """Prints the top-`top` kernel lines and the grouped line of one trace file."""
  trace = json.loads(gzip.open(path).read())
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  pids = {e["pid"]: e["args"].get("name", "") for e in events
          if e.get("ph") == "M" and e.get("name") == "process_name"}
  device = {pid for pid, name in pids.items() if "GPU" in name or "gpu" in name}
  total = collections.Counter()
  count = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("pid") in device and "dur" in e:
      total[e["name"]] += e["dur"]
      count[e["name"]] += 1
  busy = sum(total.values()) or 1
  print(json.dumps({"trace": str(path), "processes": sorted(set(pids.values()))[:8]}))
  for name, us in total.most_common(top):
    print(json.dumps({"kernel": name[:160], "ms": round(us / 1e3, 3),
                      "share": round(us / busy, 4), "count": count[name]}))
  groups = collections.Counter()
  for name, us in total.items():
    groups[group_of(name)] += us
  print(json.dumps({"device_busy_ms": round(busy / 1e3, 3),
                    "groups_ms": {g: round(us / 1e3, 3) for g, us in groups.most_common()}}))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("dir")
  p.add_argument("--top", type=int, default=15)
  args = p.parse_args()
  paths = sorted(pathlib.Path(args.dir).rglob("perfetto_trace.json.gz"))
  if not paths:
    raise SystemExit(f"no perfetto_trace.json.gz under {args.dir}")
  for path in paths:
    summarise(path, args.top)


if __name__ == "__main__":
  main()
