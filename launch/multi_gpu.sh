#!/usr/bin/env bash
# Train on GPUs: one process per host drives all of that host's GPUs (the mesh spans every GPU
# of every host; the batch is split over data x fsdp).
#
# One host, all GPUs:
#   launch/multi_gpu.sh WORKDIR [extra launch.train flags...]
# Several hosts: run on every host with the same coordinator (host 0's address) and its index:
#   NUM_HOSTS=2 HOST_ID=0 COORDINATOR=10.0.0.1:1234 launch/multi_gpu.sh WORKDIR ...   # host 0
#   NUM_HOSTS=2 HOST_ID=1 COORDINATOR=10.0.0.1:1234 launch/multi_gpu.sh WORKDIR ...   # host 1
#
# Environment: CONFIG (default configs/diff2lip_voxceleb2.py). Needs `pip install -U "jax[cuda12]"`
# (and gcsfs for a gs:// WORKDIR). Rerunning with the same WORKDIR resumes (with another host
# count too). SIGTERM to any host: all hosts save the same step and exit 0.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  sed -n '2,13p' "$0"; exit 2
fi
WORKDIR=$1; shift
CONFIG=${CONFIG:-configs/diff2lip_voxceleb2.py}
cd "$(dirname "$0")/.."
MULTI=()
if [[ "${NUM_HOSTS:-1}" -gt 1 ]]; then
  : "${COORDINATOR:?set COORDINATOR=host:port of host 0}" "${HOST_ID:?set HOST_ID (0-based)}"
  MULTI=(--coordinator_address "$COORDINATOR" --num_processes "$NUM_HOSTS" --process_id "$HOST_ID")
fi
exec python3 -m launch.train "${MULTI[@]}" --config "$CONFIG" --workdir "$WORKDIR" "$@"
