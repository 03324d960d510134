#!/bin/bash
# Issue 12's device block as one call on the lent GPU, what bench/README's table still lacks
# first (a call cut short still brings back what ran). Writes under $OUT: env.txt, train.jsonl,
# sample.jsonl, prof_*.txt (top kernels, bench/profile_top.py), checks.txt (GPU parity tests).
#   run: bash bench/h200.sh   (carry [".devshared"]: a copy of the ../shared/upstream files the
#        parity tests read; ../shared itself does not travel)
#   SMOKE=1 OUT=/tmp/o bash bench/h200.sh   # CPU dry run of the same commands (tiny model)
# Seen 2026-12-04 (H200, jax 0.11.2): sampler/forward programs compile in 16-22 s; the released
# train step took over 170 s.
set -o pipefail
export PYTHONUNBUFFERED=1
O=${OUT:-/tmp/h200}; mkdir -p "$O"
S=${SMOKE:+--smoke}
A="--attention cudnn"; [ -n "$SMOKE" ] && A=""   # cuDNN attention: +11-13 % (2026-12-04)
nvidia-smi -L 2>/dev/null | tee "$O/env.txt"
python3 -c "import sys, jax, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$O/env.txt"
b() {  # b NAME LIMIT_S ARGS...: one bench call, JSON lines to $O/NAME.jsonl, stderr's tail shown
  local name=$1 limit=$2; shift 2
  echo "== $name $*"
  timeout "$limit" python3 "$@" $S 2>"$O/err.txt" | tee -a "$O/$name.jsonl"
  local rc=$?; [ $rc = 0 ] || { echo "rc=$rc"; grep -v "Delay kernel" "$O/err.txt" | tail -4; }
}
prof() {  # prof NAME: summarise and drop the trace folder
  python3 bench/profile_top.py "$O/prof" > "$O/prof_$1.txt" 2>&1; cut -c1-200 "$O/prof_$1.txt"; rm -rf "$O/prof"
}
b train 330 bench/train_step.py $A --profile_dir "$O/prof"; prof train
if [ -d .devshared/upstream ] && [ ! -e ../shared ]; then ln -s "$PWD/.devshared" ../shared; fi
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 120 python3 -m pytest -q -p no:cacheprovider \
  tests/test_s3fd.py tests/test_syncnet.py tests/test_model.py tests/test_sampling_speed.py \
  -k "not converter_cli" 2>&1 | tail -15 | tee "$O/checks.txt"
b sample 60 bench/sample.py $A --figures ddim_sampling --batch 128
b sample 60 bench/sample.py $A --figures ddim_sampling --timestep_respacing ddim10
b sample 100 bench/sample.py $A --figures samplers --samplers dpmpp_2m,unipc --sampler_steps 10
echo done
