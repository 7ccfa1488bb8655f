"""The GPU bundle (make gpu-bundle, tools/gpu_bundle.py) and the GPU check (tools/gpu_check.py).

The lent GPU machine reaches no package index, so whatever the check needs there must be in the
bundle. These tests unpack the bundle into an empty folder and run its CPU parts in a clean room:
the Python 3.12 venv with the lent machine's kind of packages that `make gpu-bundle` makes (no
lmdb, no -dev packages), the CUDA wheels' folder standing in for the machine's venv, and a check
that every library the processes load comes from the bundle, that venv, the CUDA folder or the
system libraries the bundle leaves to the target (gpu_bundle.SYSTEM_LIBS) -- on this machine the
Debian libraries are all installed, so a library missing from the bundle would otherwise go
unnoticed. They need a GPU build for Python 3.12 and are skipped, saying so, without one.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from test_gpu_build import _config, cached_builds
from tools import gpu_bundle, gpu_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("THERMALNET_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "thermalnet")
CLEAN_ROOM = os.path.join(CACHE, "gpu-cleanroom-py312")
NO_BUNDLE_BUILD = ("NO GPU CAFFE BUILD FOR PYTHON %s in the cache, or no clean room: `make gpu-bundle` makes both "
                   "(long: a GPU build, see README)" % gpu_bundle.TARGET_PYTHON)
GPU_CHECK = os.path.join(REPO, "tools", "extra", "gpu_check.sh")


def test_ldd_lines_are_parsed_and_classified():
    text = ("\tlinux-vdso.so.1 (0x00007ffd)\n"
            "\tlibcublas.so.13 => /x/nvidia/cu13/lib/libcublas.so.13 (0x00007f01)\n"
            "\tlibglog.so.1 => /usr/lib/x86_64-linux-gnu/libglog.so.1 (0x00007f02)\n"
            "\tlibfoo.so.2 => not found\n"
            "\t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n")
    libs = gpu_bundle.parse_ldd(text)
    assert libs == {"libcublas.so.13": "/x/nvidia/cu13/lib/libcublas.so.13",
                    "libglog.so.1": "/usr/lib/x86_64-linux-gnu/libglog.so.1", "libfoo.so.2": None,
                    "ld-linux-x86-64.so.2": "/lib64/ld-linux-x86-64.so.2"}
    assert [gpu_bundle.classify(k) for k in sorted(libs)] == ["system", "cuda", "carry", "carry"]
    assert gpu_bundle.classify("libstdc++.so.6") == "system"
    assert gpu_bundle.classify("libcudnn_ops.so.9") == "cuda"
    assert gpu_bundle.classify("libpython3.12.so.1.0") == "carry"


def test_the_cpu_caffe_loads_only_libraries_the_bundle_would_carry_or_leave(caffe):
    """The real libcaffe's libraries: Debian's are carried, the C and C++ run-times left to the target."""
    lib = [p for p in open("/proc/self/maps").read().split() if p.endswith("libcaffe.so") or "libcaffe.so." in p][0]
    libs = gpu_bundle.needed([lib], [])
    assert libs and all(v for v in libs.values()), libs
    kinds = {k: gpu_bundle.classify(k) for k in libs}
    assert kinds["libc.so.6"] == "system" and kinds["libstdc++.so.6"] == "system"
    for carried in ("libglog.so", "libprotobuf.so", "liblmdb.so", "libopenblas.so", "libboost_python"):
        assert [k for k, v in kinds.items() if k.startswith(carried) and v == "carry"], (carried, kinds)


def test_missing_wheels_are_pinned_in_requirements():
    for name in gpu_bundle.MISSING_WHEELS:
        assert re.match(r"^%s==\d" % name, gpu_bundle.requirement_pin(name))
    with pytest.raises(ValueError):
        gpu_bundle.requirement_pin("no-such-package")


def test_gpu_check_script_options():
    assert subprocess.run(["bash", GPU_CHECK, "--help"], capture_output=True).returncode == 0
    bad = subprocess.run(["bash", GPU_CHECK, "--no-such-option"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option" in bad.stderr
    text = open(GPU_CHECK).read()
    # the demo's iterations and sizes come from tools.demo through tools.gpu_check, not from the script
    assert not re.search(r"\b(5733|2000|120x160|240x320)\b", text)


def test_gpu_check_takes_its_numbers_from_their_homes():
    from thermalnet import spec
    from tools import demo
    assert (spec.PAPER_BASE, spec.PAPER_HEIGHT, spec.PAPER_WIDTH) in gpu_check.TIME_CASES
    assert (spec.DEFAULT_BASE, spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH) in gpu_check.TIME_CASES
    assert gpu_check.DEFAULT_MINUTES < 9
    cpu = gpu_check.cpu_demo_tn()
    assert cpu is not None, "results/demo is tracked: the CPU demo the GPU demo is compared with"
    assert cpu["tn"] < cpu["best_baseline_rms"]
    assert (demo.DEMO_HEIGHT, demo.DEMO_WIDTH) == (spec.PAPER_HEIGHT, spec.PAPER_WIDTH)


def test_results_file_projects_the_paper_schedule():
    res = {"date": "d", "minutes": 8.5, "elapsed_minutes": 8.0, "device": "GPU 0",
           "caffe_time": [{"net": "v1_0", "height": 240, "width": 320, "device": "GPU 0", "iterations": 20,
                           "fb_ms": 12.5, "img_per_s": 640.0}],
           "paper": {"net": "thermalnet_v1_0.prototxt", "batch": 8, "iters_per_epoch": 125, "iterations": 250,
                     "epochs": 2.0, "wall_seconds": 60.0, "images_per_second": 40.0, "seconds_per_epoch": 30.0,
                     "projected_hours": 30.0 * gpu_check.PAPER_EPOCHS / 3600.0}}
    md = gpu_check.format_results(res)
    assert "| v1_0 | 240x320 | GPU 0 | 12.50 | 640 |" in md
    assert "projected at **8.33 hours**" in md


def test_paper_schedule_runs_and_projects_its_1000_epochs(tmp_path):
    """The paper part on the CPU Caffe: v1.0 at 240x320 stops at its budget; the projection is its
    measured time an epoch times PAPER_EPOCHS."""
    from conftest import make_tiny_dataset
    from thermalnet import spec
    ds, _ = make_tiny_dataset(str(tmp_path / "ds"), n_train=4, n_val=2, height=spec.PAPER_HEIGHT,
                              width=spec.PAPER_WIDTH)
    p = gpu_check.run_paper(str(tmp_path / "run"), ds, None, minutes_left=0.01, batch=2)
    assert p["net"] == os.path.basename(nets_paper()) and p["iters_per_epoch"] == 2 and p["n_train"] == 4
    assert 1 <= p["iterations"] < gpu_check.PAPER_EPOCHS * 2        # stopped by the budget, not the schedule
    assert p["seconds_per_epoch"] == pytest.approx(p["wall_seconds"] / p["epochs"])
    assert p["projected_hours"] == pytest.approx(p["seconds_per_epoch"] * gpu_check.PAPER_EPOCHS / 3600.0)


def nets_paper():
    from thermalnet import nets
    return nets.network(nets.PAPER_NETWORK).net


def test_caffe_time_case_on_the_cpu():
    t = gpu_check.caffe_time("v1_1", 120, 160, None, iterations=1, batch=2)
    assert t["exit"] == 0 and t["fb_ms"] > 0 and t["device"] == "CPU", t
    assert t["img_per_s"] == pytest.approx(2 / (t["fb_ms"] / 1000.0))


# -- the bundle itself ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle_build():
    """The newest GPU build for Python 3.12 in the cache, and the clean room's Python."""
    for root, kind in cached_builds():
        if kind == "gpu" and "python%s" % gpu_bundle.TARGET_PYTHON in (_config(root, "PYTHON_INCLUDE") or ""):
            clean = os.path.join(CLEAN_ROOM, "bin", "python")
            if os.path.isfile(clean):
                return root, clean
    pytest.skip(NO_BUNDLE_BUILD)


@pytest.fixture(scope="module")
def bundle(bundle_build, tmp_path_factory):
    """(bundle file, manifest, unpacked folder): packed afresh, then unpacked into an empty folder."""
    root, _ = bundle_build
    work = tmp_path_factory.mktemp("bundle")
    out = str(work / "gpu_bundle.tar.xz")
    manifest = gpu_bundle.pack(root, os.path.join(CACHE, "bundle-venv-py312", "bin", "python"), out)
    unpacked = work / "unpacked"
    unpacked.mkdir()
    with tarfile.open(out) as tar:
        tar.extractall(str(unpacked))
    return out, manifest, str(unpacked / gpu_bundle.TOP)


def _cuda_site(root):
    return os.path.dirname(os.path.dirname(_config(root, "CUDA_DIR")))       # .../nvidia/cu13 -> its site


def _clean_env(python, cuda_site, **extra):
    """Nothing from this shell: the clean room's Python first on PATH, no LD_LIBRARY_PATH, no PYTHONPATH."""
    env = {"PATH": os.pathsep.join([os.path.dirname(python), "/usr/bin", "/bin"]), "HOME": os.environ["HOME"],
           "LANG": "C.UTF-8", "THERMALNET_CUDA_SITE": cuda_site, "PYTHON": python}
    env.update(extra)
    return env


def _tracked_bytes():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum(os.path.getsize(os.path.join(REPO, f.decode())) for f in files
               if f and os.path.isfile(os.path.join(REPO, f.decode())))


def test_bundle_fits_the_lent_machine_with_the_working_tree(bundle):
    path, manifest, _ = bundle
    total = os.path.getsize(path) + _tracked_bytes()
    assert total <= gpu_bundle.LIMIT_BYTES, "bundle %.1f MiB + tracked files = %.1f MiB > %d MiB" % (
        os.path.getsize(path) / 2.0 ** 20, total / 2.0 ** 20, gpu_bundle.LIMIT_BYTES // 2 ** 20)
    assert manifest["python"].startswith(gpu_bundle.TARGET_PYTHON + ".")
    assert "sm_90" in manifest["cuda_arch"]


def test_bundle_carries_no_cuda_and_no_system_library(bundle):
    _, manifest, top = bundle
    carried = os.listdir(os.path.join(top, "lib"))
    assert carried and sorted(carried) == sorted(c["soname"] for c in manifest["carried_libs"])
    assert [c for c in carried if gpu_bundle.classify(c) != "carry"] == []
    assert any(c.startswith("libpython%s.so" % gpu_bundle.TARGET_PYTHON) for c in carried)
    assert any(c.startswith("libboost_python%s" % gpu_bundle.TARGET_PYTHON.replace(".", "")) for c in carried)
    assert "libcublas.so.13" in manifest["cuda_libs"] and "libc.so.6" in manifest["system_libs"]
    assert os.path.isdir(os.path.join(top, "site", "lmdb"))


def _outside(paths, allowed):
    return sorted(p for p in paths if not any(os.path.realpath(p).startswith(os.path.realpath(a) + os.sep)
                                              for a in allowed)
                  and gpu_bundle.classify(os.path.basename(p)) != "system")


def test_every_elf_file_of_the_bundle_resolves_inside_it(bundle, bundle_build):
    """ldd with LD_LIBRARY_PATH only at the CUDA folder: everything else from the bundle (RUNPATH)."""
    root, python = bundle_build
    _, _, top = bundle
    cuda = os.path.join(_cuda_site(root), "nvidia")
    elves = [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs
             if ".so" in f or f == "caffe.bin"]
    elves = [e for e in elves if open(e, "rb").read(4) == b"\x7fELF"]
    ld = [os.path.join(cuda, d, "lib") for d in os.listdir(cuda)]
    for elf in elves:
        libs = gpu_bundle.needed([elf], ld)
        assert all(libs.values()), (elf, libs)
        assert _outside(libs.values(), [top, cuda]) == [], elf


def test_bundle_pycaffe_and_python_layer_in_the_clean_room(bundle, bundle_build, tmp_path):
    """The clean room's Python 3.12 imports the bundle's pycaffe and runs Thermalnet with the eq. 1
    layer forward and backward on the CPU; every shared object that brought in has an allowed home."""
    root, python = bundle_build
    _, _, top = bundle
    from conftest import make_tiny_dataset
    from thermalnet import nets
    ds, _ = make_tiny_dataset(str(tmp_path / "ds"))
    net = str(tmp_path / "v1_1.prototxt")
    nets.materialize(nets.network("v1_1").net, ds, net, batch_size=2)
    # What the interpreter and the target's packages load on their own comes first (on the target they
    # bring their own libraries, libz or libssl say); what `import caffe` adds must come from the bundle.
    code = ("import json, sys, numpy as np, scipy.ndimage, skimage.io, skimage.transform, google.protobuf\n"
            "import lzma, bz2, ssl, hashlib, ctypes, zlib, uuid, decimal\n"
            "def maps():\n"
            "    return {l.split()[-1] for l in open('/proc/self/maps') if '.so' in l and '/' in l}\n"
            "before = maps()\n"
            "from thermalnet.caffe_env import import_caffe\n"
            "caffe = import_caffe(); caffe.set_mode_cpu()\n"
            "n = caffe.Net(sys.argv[1], caffe.TRAIN, stages=['train'])\n"
            "loss = n.forward()['loss'].item(); n.backward()\n"
            "g = float(np.abs(n.params['conv1'][0].diff).sum())\n"
            "maps = sorted(maps() - before)\n"
            "print(json.dumps({'loss': loss, 'grad': g, 'maps': maps, 'prefix': sys.base_prefix, "
            "'caffe': caffe.__file__}))\n")
    proc = subprocess.run(["bash", "-c", 'source "$1/env.sh" && cd "$2" && exec python - "$3" <<<"$4"', "_", top, ds,
                           net, code], env=_clean_env(python, _cuda_site(root), PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["caffe"].startswith(top)
    assert out["loss"] > 0 and out["grad"] > 0
    assert [m for m in out["maps"] if "libcaffe" in m or "_caffe" in m or "boost_python" in m]
    allowed = [top, CLEAN_ROOM, out["prefix"], os.path.join(_cuda_site(root), "nvidia")]
    assert _outside(out["maps"], allowed) == []


def test_gpu_check_runs_from_the_bundle_on_the_cpu(bundle, bundle_build, tmp_path):
    """tools/extra/gpu_check.sh --bundle ... --cpu: the lent machine's command, small and on the CPU:
    `caffe time` through the bundle's tool (its embedded Python layer), the quick demo with its
    evaluation, the paper schedule's first iterations; one results file."""
    root, python = bundle_build
    path, _, _ = bundle
    out = tmp_path / "out"
    proc = subprocess.run(["bash", GPU_CHECK, "--bundle", path, "--cpu"], cwd=REPO, timeout=1800,
                          env=_clean_env(python, _cuda_site(root), GPU_CHECK_OUT=str(out), GPU_CHECK_MINUTES="6"),
                          capture_output=True, text=True)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert proc.returncode == 0, (proc.stderr[-2000:], log[-4000:])
    res = json.loads((out / "results.json").read_text())
    assert [(t["net"], t["height"], t["width"]) for t in res["caffe_time"]] == list(gpu_check.TIME_CASES)
    assert all(t.get("fb_ms", 0) > 0 for t in res["caffe_time"]), res["caffe_time"]
    assert os.sep + gpu_bundle.TOP + os.sep in res["caffe"] and not res["caffe"].startswith(CACHE), res["caffe"]
    assert "error" not in res["demo"], res["demo"]
    assert res["demo"]["iterations"] > 0 and res["demo"]["tn"] > 0
    assert "error" not in res["paper"], res["paper"]
    assert res["paper"]["iterations"] > 0 and res["paper"]["projected_hours"] > 0
    assert "ldd " not in log, log          # nothing not found at the start
    md = (out / "results.md").read_text()
    assert "## caffe time" in md and "## Demo" in md and "paper's schedule" in md
