#!/usr/bin/env bash
# One lent-GPU session of the benchmarks, each step bounded, for the workplace's `device` tool: its output
# goes to $OUT/all.log and each JSON record to $OUT. Before the run, on a machine with the art packages:
#   ../shared/tools/gpu-wheels.sh httpx2 httpcore2 truststore opentelemetry-api importlib_metadata \
#       cryptography cffi fastapi-offline redis hiredis unfake==1.0.7
#   python -m bench.image2pixel --timing-only --timing-images .gpu/i2p-timing.npz   # .gpu/ git-ignored
# then run `bash bench/gpu_session.sh COMMIT STEP...` there, carrying .whl and .gpu.
# Steps: smoke i2p pytest pp diffusion. What the 2026-11-30 H200 run taught: gpu_smoke and bench.diffusion
# spend minutes in `max-autotune` compiling, so give each a call of its own; the rest fit in one.
set -u
export PYTHONUNBUFFERED=1 KILN_COMMIT=$1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
shift
log=$OUT/all.log
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >>"$log" 2>&1 || { echo "install failed" >>"$log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; df -h /tmp | tail -1; } >>"$log" 2>&1
run() {
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "=== $name: $*" >>"$log"
  timeout -k 5 "$limit" "$@" >>"$log" 2>&1
  echo "=== $name rc=$? $((SECONDS - start))s" >>"$log"
  cp bench/results/*-gpu-*.json "$OUT"/ 2>/dev/null
}
for step in "$@"; do
  case $step in
    smoke) run smoke 540 python3 -m bench.gpu_smoke --work-dir /tmp/smoke ;;
    i2p) run i2p 120 python3 -m bench.image2pixel --timing-only --timing-images .gpu/i2p-timing.npz --device cuda ;;
    pytest) run pytest 120 python3 -m pytest -p no:cacheprovider -q -o addopts=-ra --timeout 60 -k "cuda or gpu" \
      tests/kernels tests/pipelines/test_post_processing.py tests/pipelines/test_pixart_sigma.py \
      tests/pipelines/test_image2pixel_cuda.py tests/server/test_devices.py ;;
    pp) run pp 240 python3 -m bench.post_processing --device cuda --runs 10 --reference-runs 1 --encode-runs 3 \
      --concurrency 1 16 --requests 24 ;;
    diffusion) run diffusion 540 python3 -m bench.diffusion --model pixart --repeats 2 --work-dir /tmp ;;
  esac
done
