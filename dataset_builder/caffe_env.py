"""Find and import the Caffe the kit runs on, and the kit's Python layer module.

Order: CAFFE_ROOT (an existing Caffe: the BVLC image's /opt/caffe, the DIGITS
container's), else whatever `import caffe` finds (make setup links its cached
build into the virtual environment). The loss layer lives in
prototxt/digits_python_layers.py, the file DIGITS uploads, so that folder goes
on sys.path too: `module: "digits_python_layers"` must import everywhere.
"""
from __future__ import annotations

import os
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


def check_gpu_available(gpu: int) -> None:
    """Probe GPU mode in a child process: a CPU_ONLY Caffe aborts the whole process on set_device."""
    import subprocess
    code = ("from dataset_builder.caffe_env import import_caffe\n"
            "c = import_caffe(); c.set_mode_gpu(); c.set_device(%d)\n" % int(gpu))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("GPU %d is not usable by this Caffe (a CPU_ONLY build, or no such device); "
                           "drop --gpu to run on the CPU" % gpu)


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
