#!/usr/bin/env bash
# The kit's GPU check, for a machine with an NVIDIA GPU (driver R580+, CUDA 13).
#
#   bash tools/extra/gpu_check.sh --bundle runs/gpu_bundle.tar.xz   # a lent machine, no package index
#   bash tools/extra/gpu_check.sh                                   # a machine of your own
#   bash tools/extra/gpu_check.sh --bundle FILE --cpu               # the bundle's clean-room test (no GPU)
#
# Results: $OUT/results.md (quotable), results.json and gpu_check.log; OUT defaults to runs/gpu_check
# (GPU_CHECK_OUT overrides; GPU_CHECK_COMMIT names the commit where the checkout has no .git). Steps:
# 1. --bundle: unpacks `make gpu-bundle`'s bundle (tools/gpu_bundle.py) and sources its env.sh: the
#    machine's own python3 (3.12, numpy 2) runs the kit on the bundle's pycaffe, the CUDA libraries
#    come from that Python's venv (NVIDIA's wheels). Without --bundle: `make gpu-setup` builds the
#    GPU Caffe for this GPU's architecture (CUDA_ARCH="" builds the default list) and the tests run
#    with the GPU tests enabled (SKIP_TESTS=1 skips them);
# 2. probes the GPU (nvidia-smi, python -m thermalnet.caffe_env --gpu 0);
# 3. python -m tools.gpu_check: `caffe time -gpu 0`, the demo (tools.demo's settings) on GPU 0 next
#    to the CPU demo's results, then the paper's schedule for the rest of the budget and the projected
#    time of its 1000 epochs. Its long parts stop before GPU_CHECK_MINUTES (default 8.5) minutes from
#    this script's start: the lent machine gives 10 minutes a command.
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
BUNDLE=""; CPU=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE=$2; shift 2;;
    --cpu) CPU=1; shift;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
OUT=${GPU_CHECK_OUT:-${OUT:-runs/gpu_check}}
MINUTES=${GPU_CHECK_MINUTES:-8.5}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"; : > "$LOG"
say() { echo "[gpu_check] $*" | tee -a "$LOG" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")   # the unpacked bundle and the run folders
trap 'rm -rf "$WORK"' EXIT
if [ -n "$BUNDLE" ]; then
  [ -f "$BUNDLE" ] || { echo "error: $BUNDLE: no such bundle (make gpu-bundle)" >&2; exit 1; }
  tar xJf "$BUNDLE" -C "$WORK" || { echo "error: $BUNDLE: cannot unpack" >&2; exit 1; }
  PY=${PYTHON:-python3}
  # shellcheck disable=SC1091
  PYTHON=$PY source "$WORK/gpu_bundle/env.sh"
  say "bundle $BUNDLE in $WORK; python $("$PY" -c 'import sys, numpy; print(sys.executable, sys.version.split()[0], "numpy", numpy.__version__)' 2>&1)"
  # A library the bundle lacks, or one older than it needs, shows here first (MANIFEST.json: what it needs).
  for f in "$CAFFE_ROOT/build/tools/caffe.bin" "$CAFFE_ROOT"/build/lib/libcaffe.so "$CAFFE_ROOT"/python/caffe/_caffe*.so; do
    miss=$(ldd "$f" 2>&1 | grep -E 'not found|version .* not found' || true)
    [ -z "$miss" ] || say "ldd ${f##*/}: $(echo "$miss" | tr -s ' \n' ' ')"
  done
else
  PY=.venv/bin/python
  if [ "$CPU" = 0 ]; then
    if [ -z "${CUDA_ARCH+set}" ]; then
      cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ')
      CUDA_ARCH=${cc:+-gencode arch=compute_$cc,code=sm_$cc}
    fi
    say "make gpu-setup CUDA_ARCH=${CUDA_ARCH:-(the default list)}"
    make gpu-setup CUDA_ARCH="$CUDA_ARCH" >>"$LOG" 2>&1 || { say "GPU build failed: see $LOG"; exit 1; }
  fi
fi

probe="CPU run (--cpu)"
dev_args=(--cpu --quick)
if [ "$CPU" = 0 ]; then
  probe=$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | head -n 1)
  say "nvidia-smi: $probe"
  "$PY" -m thermalnet.caffe_env --gpu 0 >>"$LOG" 2>&1 || { say "GPU 0 not usable by this Caffe: $(tail -n 1 "$LOG")"; exit 1; }
  say "GPU 0 usable by Caffe"
  dev_args=(--gpu 0)
  if [ -z "$BUNDLE" ] && [ "${SKIP_TESTS:-0}" != 1 ]; then
    "$PY" -m pytest -q -rs tests >>"$LOG" 2>&1
    say "test suite (GPU tests enabled): $(grep -E '[0-9]+ (passed|failed)' "$LOG" | tail -n 1)"
  fi
fi

PYTHONUNBUFFERED=1 "$PY" -m tools.gpu_check --out "$OUT" "${dev_args[@]}" --minutes "$MINUTES" --started "$T0" \
  --probe "$probe" --work "$WORK/runs" --commit "${GPU_CHECK_COMMIT:-}" >>"$LOG" 2>&1
rc=$?
say "tools.gpu_check exit $rc after $(( $(date +%s) - T0 )) s; results: $OUT/results.md"
exit $rc
