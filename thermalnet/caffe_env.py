"""Find and import the Caffe the kit runs on, and the kit's Python layer module.

Order: CAFFE_ROOT (an existing Caffe: the BVLC image's /opt/caffe, the DIGITS
container's), else whatever `import caffe` finds (make setup links its cached
build into the virtual environment). The loss layer lives in
prototxt/digits_python_layers.py, the file DIGITS uploads, so that folder goes
on sys.path too: `module: "digits_python_layers"` must import everywhere.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOTXT_DIR = os.path.join(REPO_ROOT, "prototxt")


class CaffeNotFound(RuntimeError):
    pass


def _prepend(path: str) -> None:
    if path and os.path.isdir(path) and path not in sys.path:
        sys.path.insert(0, path)


def import_caffe(quiet: bool = True):
    """Import pycaffe (CPU mode unless a GPU was asked for later) and return the module."""
    if quiet:
        os.environ.setdefault("GLOG_minloglevel", "2")
    root = os.environ.get("CAFFE_ROOT")
    if root:
        _prepend(os.path.join(root, "python"))
    _prepend(PROTOTXT_DIR)
    try:
        import caffe  # noqa: WPS433
    except ImportError as exc:
        hint = ("CAFFE_ROOT=%s has no importable python/caffe" % root) if root else \
            "run `make setup` (builds a CPU Caffe) or set CAFFE_ROOT to an existing Caffe"
        raise CaffeNotFound("cannot import caffe (%s): %s" % (exc, hint)) from exc
    return caffe


# The kit's run-time switches of its Caffe patches (tools/caffe/patches): "0" takes Caffe's original code.
DECONV_ENV = "CAFFE_DECONV_DIRECT"     # patch 0002: the direct depthwise deconvolution
BRANCH_FREE_ENV = "CAFFE_BRANCH_FREE"  # patch 0003: branch-free ReLU and max pooling
POWX_SQRT_ENV = "CAFFE_POWX_SQRT"      # patch 0004: caffe_powx's roots and squares without pow()
FUSED_ADAM_ENV = "CAFFE_FUSED_ADAM"    # patch 0005: Adam's CPU update in one pass
CROP_ROWS_ENV = "CAFFE_CROP_ROWS"      # patch 0006: Crop's rows without per-row allocations
BATCHED_CONV_ENV = "CAFFE_BATCHED_CONV"  # patch 0007: one GEMM for several images in Convolution
KIT_PATCH_ENVS = {DECONV_ENV: "0002", BRANCH_FREE_ENV: "0003", POWX_SQRT_ENV: "0004", FUSED_ADAM_ENV: "0005",
                  CROP_ROWS_ENV: "0006", BATCHED_CONV_ENV: "0007"}


def caffe_lib_patches() -> dict:
    """Which of the kit's run-time-switchable patches the loaded libcaffe carries
    (each reads its environment variable, whose name is then in the library)."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "libcaffe" in line and "/" in line}
        blobs = []
        for lib in libs:
            with open(lib, "rb") as f:
                blobs.append(f.read())
    except OSError:
        blobs = []
    return {var: any(var.encode() in b for b in blobs) for var in KIT_PATCH_ENVS}


def caffe_pb2():
    """The protobuf module for Datum, NetParameter, SolverParameter."""
    return import_caffe().proto.caffe_pb2


def caffe_tool() -> str:
    """Path of the `caffe` command-line tool (train, time, test)."""
    root = os.environ.get("CAFFE_ROOT")
    candidates = []
    if root:
        candidates += [os.path.join(root, "build", "tools", "caffe"), os.path.join(root, "bin", "caffe")]
    candidates.append(os.path.join(os.path.dirname(sys.executable), "caffe"))
    found = shutil.which("caffe")
    if found:
        candidates.append(found)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise CaffeNotFound("no `caffe` tool found (looked in %s); run `make setup` or set CAFFE_ROOT"
                        % ", ".join(candidates))


def python_layer_env() -> dict:
    """Environment for a `caffe` subprocess whose nets use digits_python_layers."""
    env = dict(os.environ)
    paths = [PROTOTXT_DIR] + [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("GLOG_minloglevel", "0")
    return env


# The probe: select the device and run one ReLU on it, so that a missing driver, a missing
# device and a build without code for this GPU's architecture all show up here.
_GPU_PROBE = """
import os, sys, tempfile
from thermalnet.caffe_env import import_caffe
c = import_caffe()
c.set_mode_gpu()
c.set_device(int(sys.argv[1]))
fd, path = tempfile.mkstemp(suffix=".prototxt")
with os.fdopen(fd, "w") as f:
    f.write('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }'
            ' layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
net = c.Net(path, c.TEST)
os.remove(path)
net.blobs["x"].data[...] = -1.0
net.forward()
assert float(net.blobs["y"].data.max()) == 0.0, "ReLU on the GPU gave a wrong result"
print("ok")
"""


def gpu_problem(gpu: int):
    """None if GPU `gpu` runs Caffe code, else a one-line reason.

    Runs in a child process: Caffe answers a bad device with a glog FATAL, which aborts
    the whole process (a CPU_ONLY build's set_device does the same)."""
    import subprocess
    env = dict(os.environ, GLOG_minloglevel="2", GLOG_logtostderr="1")
    proc = subprocess.run([sys.executable, "-c", _GPU_PROBE, str(int(gpu))], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return None
    return explain_gpu_failure(proc.stderr)


def explain_gpu_failure(stderr: str) -> str:
    """One line from the stderr of a Caffe process that failed to use a GPU (glog FATAL, Python error)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    fatal = [ln.split("] ", 1)[1] for ln in lines if re.match(r"^F\d{4,8} ", ln) and "] " in ln]
    text = fatal[0] if fatal else (lines[-1] if lines else "the probe process failed without a message")
    if "CPU-only" in text:
        return "this Caffe is a CPU-only build (build a GPU one: make gpu-setup)"
    m = re.search(r"Check failed: .*?\(\d+ vs\. \d+\)\s*(.*)", text)
    reason = m.group(1).strip() if m and m.group(1).strip() else text
    if "driver" in reason.lower() or "no CUDA-capable device" in reason:
        reason += " (no usable NVIDIA GPU or driver on this machine)"
    elif "no kernel image" in reason:
        reason += " (this GPU's architecture is not in the build's CUDA_ARCH list)"
    return "CUDA: " + reason


def check_gpu_available(gpu: int) -> None:
    """Raise RuntimeError (one line) unless GPU `gpu` is usable by this Caffe."""
    problem = gpu_problem(gpu)
    if problem:
        raise RuntimeError("GPU %d is not usable: %s; drop --gpu to run on the CPU" % (gpu, problem))


def use_device(gpu=None):
    """Import Caffe and select the CPU (gpu=None) or GPU `gpu`, probed first; returns the module."""
    caffe = import_caffe()
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        check_gpu_available(gpu)
        caffe.set_mode_gpu()
        caffe.set_device(int(gpu))
    return caffe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thermalnet.caffe_env",
                                description="Say which Caffe the kit uses and whether a GPU is usable by it "
                                            "(a child process probes the device: Caffe aborts on a bad one).")
    from thermalnet import cli
    cli.add_gpu(p, help="GPU id to probe (set_device + one ReLU on the device)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        caffe = import_caffe()
        print("caffe: %s" % os.path.dirname(os.path.realpath(caffe.__file__)))
        if args.gpu is not None:
            problem = gpu_problem(args.gpu)
            if problem:
                raise RuntimeError("GPU %d is not usable: %s" % (args.gpu, problem))
            print("GPU %d: usable" % args.gpu)
    from thermalnet import cli
    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
