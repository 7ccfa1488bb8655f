#!/usr/bin/env bash
# The kit's GPU checks in one go, for a machine with an NVIDIA GPU (driver R580+, CUDA 13).
# NOT RUN YET: written on machines without a GPU; its first run is its test.
#
#   bash tools/extra/gpu_check.sh            # results in runs/gpu_check/results.md (+ .json, log)
#
# 1. builds the GPU Caffe with all cores and links it into the venv (make gpu-setup), for this
#    GPU's architecture only (CUDA_ARCH="" builds the default list; any other value is used as is);
# 2. probes GPU 0 (python -m thermalnet.caffe_env --gpu 0);
# 3. runs the test suite with the GPU build, so the tests marked `gpu` run (SKIP_TESTS=1 skips);
# 4. times `caffe time -gpu 0` (train stage, forward-backward) for v1_0 at 240x320 and v1_1 at
#    120x160, batch 8, SYNTHETIC random data;
# 5. trains the demo (SYNTHETIC dataset, v1.1, batch 4) for ITERS iterations on GPU 0 (default the
#    README's CPU demo run: 5733) and evaluates it (Table 2's TN), for comparison with the CPU demo.
# Needs the package index (Python requirements, CUDA wheels) unless .venv and the cache exist.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
ITERS=${ITERS:-5733}
PY=.venv/bin/python
mkdir -p "$OUT"
R="$OUT/results.md"; LOG="$OUT/gpu_check.log"
: > "$R"; : > "$LOG"
note() { echo "$*" | tee -a "$R"; }
step() {   # step NAME CMD...: run, log, one result line with exit status and seconds
  local name=$1 t0 rc; shift; t0=$(date +%s)
  echo "=== $name: $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1; rc=$?
  note "- $name: exit $rc, $(( $(date +%s) - t0 )) s"
  return $rc
}

note "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
note ""
note "- GPU: $(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | head -n 1)"
note "- CPU cores: $(nproc); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -z "${CUDA_ARCH+set}" ]; then
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ')
  CUDA_ARCH=${cc:+-gencode arch=compute_$cc,code=sm_$cc}
fi
note "- CUDA_ARCH: ${CUDA_ARCH:-the default list of install_caffe.sh}"

step "make gpu-setup (all $(nproc) cores)" make gpu-setup CUDA_ARCH="$CUDA_ARCH" || { note "GPU build failed: see $LOG"; exit 1; }
step "probe GPU 0" "$PY" -m thermalnet.caffe_env --gpu 0 || { note "GPU 0 not usable: see $LOG"; exit 1; }
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  step "test suite (GPU tests enabled)" "$PY" -m pytest -q -rs tests
  note "  - $(grep -E '[0-9]+ (passed|failed)' "$LOG" | tail -n 1)"
fi

step "caffe time -gpu 0 and the GPU demo" "$PY" - "$OUT" "$ITERS" <<'PYEOF'
"""Times and the GPU demo; appends to results.md and writes results.json."""
import json, os, subprocess, sys, tempfile
from thermalnet.caffe_env import caffe_tool, python_layer_env
from tools import benchmark, demo, nets

out, iters = sys.argv[1], int(sys.argv[2])
res = {"caffe_time": [], "demo": None}
lines = ["", "## caffe time -gpu 0 (train stage, forward-backward, SYNTHETIC random data, batch 8)", "",
         "| network | input | forward-backward ms | img/s |", "|---|---|---:|---:|"]
for base, h, w in (("v1_0", 240, 320), ("v1_1", 120, 160)):
    work = tempfile.mkdtemp(prefix="gpu_check_")
    ds = benchmark.synthetic_dataset(os.path.join(work, "ds"), n_train=16, n_val=4, height=h, width=w)
    net = os.path.join(work, "train.prototxt")
    nets.materialize(benchmark.train_path(base), ds, net, batch_size=8)
    env = dict(python_layer_env(), THERMALNET_DATASET=ds, GLOG_logtostderr="1", GLOG_minloglevel="0")
    p = subprocess.run([caffe_tool(), "time", "-model", net, "-phase", "TRAIN", "-stage", "train",
                        "-iterations", "50", "-gpu", "0"], cwd=ds, env=env, capture_output=True, text=True)
    m = benchmark.FB_RE.search(p.stderr + p.stdout)
    ms = float(m.group(1)) if p.returncode == 0 and m else None
    res["caffe_time"].append({"net": base, "height": h, "width": w, "batch": 8, "fb_ms": ms,
                              "img_per_s": 8 / (ms / 1000.0) if ms else None, "exit": p.returncode})
    lines.append("| %s | %dx%d | %s | %s |" % (base, h, w, "%.1f" % ms if ms else "failed (exit %d)" % p.returncode,
                                              "%.0f" % (8 / (ms / 1000.0)) if ms else "-"))
ds = demo.synthetic_dataset()
info = json.load(open(os.path.join(ds, "dataset.json")))
per_epoch = -(-int(info["counts"]["train"]) // demo.DEMO_BATCH)
r = demo.run_pipeline(ds, os.path.join(out, "demo_gpu"), epochs=iters / float(per_epoch), max_minutes=None,
                      gpu=0, progress=False)
s = r["summary"]
res["demo"] = {"iterations": s["iterations"], "epochs": s["iterations"] / float(per_epoch),
               "train_seconds": r["train_seconds"], "images_per_second": s.get("images_per_second"),
               "epochs_per_minute": s["iterations"] / float(per_epoch) / (r["train_seconds"] / 60.0),
               "table2": os.path.join(out, "demo_gpu", "eval", "table2.md")}
lines += ["", "## Demo on GPU 0 (SYNTHETIC, v1.1 120x160, batch %d)" % demo.DEMO_BATCH, "",
          "%d iterations (%.1f epochs) in %.1f min: %.1f epochs/min, %.0f img/s; Table 2:" % (
              s["iterations"], res["demo"]["epochs"], r["train_seconds"] / 60.0, res["demo"]["epochs_per_minute"],
              s.get("images_per_second") or 0), ""]
lines.append(open(res["demo"]["table2"]).read())
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(res, f, indent=1)
with open(os.path.join(out, "results.md"), "a") as f:
    f.write("\n".join(lines) + "\n")
PYEOF
note ""
note "Full log: $LOG"
