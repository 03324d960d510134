#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create (or reuse) the slice, copy this repo to every worker,
# install it, and run launch.train on all workers at once (one JAX process per host).
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR WORKDIR [extra launch.train flags...]
#   launch/tpu_pod.sh d2l-v4 us-central2-b v4-32 gs://my-bucket/d2l_run1 \
#       --config.data.data_dir=gs://my-bucket/tfds --config.batch_size=256
#
# Environment: CONFIG (default configs/diff2lip_voxceleb2.py), RUNTIME (TPU software version,
# default tpu-ubuntu2204-base), CREATE=0 to require an existing slice.
# Rerunning the same command resumes from WORKDIR's latest checkpoint (also on another slice
# size). Preemption: a SIGTERM to any worker (maintenance event) makes all workers agree on one
# step (jax's preemption sync point), save it and exit 0. gs:// paths need gcsfs (installed here).
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,13p' "$0"; exit 2
fi
NAME=$1 ZONE=$2 ACCEL=$3 WORKDIR=$4; shift 4
CONFIG=${CONFIG:-configs/diff2lip_voxceleb2.py}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REPO=$(cd "$(dirname "$0")/.." && pwd)

if ! gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
  [[ "${CREATE:-1}" == 1 ]] || { echo "error: TPU $NAME not found in $ZONE" >&2; exit 1; }
  gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$ACCEL" \
      --version "$RUNTIME"
fi

tar -C "$REPO" --exclude=.git --exclude='*.egg-info' -czf /tmp/diff2lip_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/diff2lip_jax.tgz "$NAME":/tmp/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "
  set -e
  mkdir -p ~/diff2lip_jax && tar -C ~/diff2lip_jax -xzf /tmp/diff2lip_jax.tgz
  cd ~/diff2lip_jax
  pip install -q -e . && pip install -q -U 'jax[tpu]' gcsfs
  python3 -m launch.train --multihost --config $CONFIG --workdir $WORKDIR $*
"
