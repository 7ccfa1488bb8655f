"""The GPU Caffe (tools/install_caffe.sh --gpu: CUDA 13 wheels, no GPU needed to compile).

On a machine without a GPU these check what can be checked: the build links the CUDA
runtime, cuBLAS and cuRAND from the wheels' folder, pycaffe imports from it and runs in
CPU mode, and asking for a GPU fails with one clear line instead of an abort. The build
takes long (see docs/gpu.md), so `make test` does not compile it: these tests use the newest
GPU build in the cache (`make gpu-build`; THERMALNET_GPU_CAFFE=/path names another) and are
skipped, with that command, without one.
Tests marked `gpu` need a real device and are skipped without one.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from thermalnet import caffe_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(REPO, "tools", "install_caffe.sh")
NO_GPU_BUILD = ("NO GPU CAFFE BUILD FOR PYTHON %d.%d in the cache (a build for the GPU bundle's Python 3.12 does "
                "not count: pycaffe is built for one Python): `make gpu-build` compiles one (long: see docs/gpu.md; "
                "`make gpu-build CUDA_ARCH=\"-gencode arch=compute_80,code=sm_80\"` builds one architecture)"
                % sys.version_info[:2])


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "CAFFE_ROOT")}
    env.update(extra)
    return env


def cached_builds():
    """[(root, 'cpu'|'gpu')] of finished builds, newest first, as install_caffe.sh --list says."""
    out = subprocess.run(["bash", INSTALL, "--list"], capture_output=True, text=True, check=True)
    return [tuple(line.rsplit(" ", 1)) for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gpu_root():
    """THERMALNET_GPU_CAFFE (a GPU build elsewhere, e.g. one finished by hand), else the cache's newest
    for this Python."""
    given = os.environ.get("THERMALNET_GPU_CAFFE")
    if given:
        assert os.path.isfile(os.path.join(given, "Makefile.config")), "THERMALNET_GPU_CAFFE=%s: no build" % given
        assert _config(given, "CPU_ONLY") is None, "THERMALNET_GPU_CAFFE=%s is a CPU-only build" % given
        return given
    # pycaffe is built for one Python: the bundle's build for the lent machine's 3.12 is not this venv's
    here = "python%d.%d" % sys.version_info[:2]
    roots = [r for r, kind in cached_builds() if kind == "gpu" and here in (_config(r, "PYTHON_INCLUDE") or "")]
    if not roots:
        pytest.skip(NO_GPU_BUILD)
    return roots[0]


@pytest.fixture(scope="module")
def device_problem(gpu_root):
    """None when GPU 0 runs the GPU build's code, else the kit's one-line reason."""
    proc = subprocess.run([sys.executable, "-m", "thermalnet.caffe_env", "--gpu", "0"], cwd=REPO,
                          env=_env(CAFFE_ROOT=gpu_root), capture_output=True, text=True)
    return None if proc.returncode == 0 else proc.stderr.strip()


def _config(root, name):
    with open(os.path.join(root, "Makefile.config")) as f:
        for line in f:
            if line.startswith(name + " :="):
                return line.split(":=", 1)[1].strip()
    return None


def test_list_tells_cpu_from_gpu_builds():
    builds = cached_builds()
    assert builds, "no finished build at all in the cache"
    for root, kind in builds:
        assert kind in ("cpu", "gpu")
        assert os.path.isfile(os.path.join(root, ".thermalnet-complete"))
        assert (_config(root, "CPU_ONLY") == "1") == (kind == "cpu"), root


def test_gpu_build_links_cuda_from_the_wheels(gpu_root):
    lib = os.path.join(gpu_root, "build", "lib", "libcaffe.so")
    out = subprocess.run(["ldd", lib], env=_env(), capture_output=True, text=True, check=True).stdout
    assert "not found" not in out, out
    cuda_lib = os.path.join(_config(gpu_root, "CUDA_DIR"), "lib")
    assert os.path.basename(os.path.dirname(os.path.dirname(cuda_lib))) == "nvidia", cuda_lib
    wanted = ["libcudart.so.13", "libcublas.so.13", "libcurand.so.10"]
    if _config(gpu_root, "USE_CUDNN") == "1":
        wanted.append("libcudnn.so.9")
    for name in wanted:
        m = re.search(r"^\s*%s => (\S+)" % re.escape(name), out, re.M)
        assert m, "%s does not need %s:\n%s" % (lib, name, out)
        assert os.path.dirname(m.group(1)) == cuda_lib, "%s found outside the wheels: %s" % (name, m.group(1))
    # device code is in the library (nvcc's fat binary section), not only host stubs
    sections = subprocess.run(["objdump", "-h", lib], capture_output=True, text=True, check=True).stdout
    assert ".nv_fatbin" in sections


def test_gpu_build_imports_and_runs_in_cpu_mode(gpu_root, tmp_path):
    """A venv pointed at the GPU build imports it with no LD_LIBRARY_PATH, and CPU mode still works."""
    net = tmp_path / "relu.prototxt"
    net.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 4 } } }\n'
                   'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    code = ("import numpy as np, caffe, digits_python_layers\n"
            "caffe.set_mode_cpu()\n"
            "n = caffe.Net(%r, caffe.TEST)\n"
            "x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) - 12\n"
            "n.blobs['x'].data[...] = x\n"
            "n.forward()\n"
            "assert (n.blobs['y'].data == np.maximum(x, 0)).all()\n"
            "print(caffe.__file__)\n" % str(net))
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                         env=_env(PYTHONPATH=os.pathsep.join([os.path.join(gpu_root, "python"),
                                                              os.path.join(REPO, "prototxt")])))
    assert out.returncode == 0, out.stderr
    assert os.path.realpath(out.stdout.strip()).startswith(os.path.realpath(gpu_root))


def test_gpu_probe_without_a_device_is_one_clear_line(gpu_root, device_problem):
    if device_problem is None:
        pytest.skip("a GPU is usable here: the no-device message cannot be seen")
    lines = device_problem.splitlines()
    assert len(lines) == 1, device_problem
    assert lines[0].startswith("error: GPU 0 is not usable: CUDA: "), lines[0]
    assert re.search(r"driver|no CUDA-capable device", lines[0]), lines[0]


def test_caffe_device_query_without_a_device(gpu_root, device_problem):
    """Caffe itself aborts (glog FATAL) on a missing device; the kit turns that into one line."""
    if device_problem is None:
        pytest.skip("a GPU is usable here")
    proc = subprocess.run([os.path.join(gpu_root, "build", "tools", "caffe"), "device_query", "-gpu", "0"],
                          env=_env(GLOG_logtostderr="1"), capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Check failed" in proc.stderr
    reason = caffe_env.explain_gpu_failure(proc.stderr)
    assert reason.startswith("CUDA: ") and "\n" not in reason
    assert re.search(r"driver|no CUDA-capable device", reason), reason


def test_train_gpu_on_a_gpu_build_without_a_device(gpu_root, device_problem, tiny_dataset, tmp_path):
    if device_problem is None:
        pytest.skip("a GPU is usable here")
    proc = subprocess.run([sys.executable, "-m", "tools.train", "--dataset", tiny_dataset[0], "--out",
                           str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--gpu", "0"],
                          cwd=REPO, env=_env(CAFFE_ROOT=gpu_root), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "GPU 0 is not usable: CUDA: " in lines[0] and re.search(r"driver|no CUDA-capable device", lines[0])


def test_train_gpu_on_the_cpu_build_is_one_line(tiny_dataset, tmp_path):
    """No GPU build needed: the CPU build (what make setup links) refuses --gpu in one line."""
    if os.environ.get("CAFFE_ROOT"):
        pytest.skip("using an existing Caffe")
    caffe = caffe_env.import_caffe()
    if _config(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(caffe.__file__)))),
               "CPU_ONLY") != "1":
        pytest.skip("the venv is linked to a GPU build (make gpu-setup)")
    for backend in ("pycaffe", "caffe"):       # checked before anything is written or `caffe train` aborts
        run = tmp_path / ("run-" + backend)
        proc = subprocess.run([sys.executable, "-m", "tools.train", "--dataset", tiny_dataset[0], "--out",
                               str(run), "--epochs", "1", "--batch-size", "2", "--gpu", "0", "--backend", backend],
                              cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, proc.stderr
        assert "GPU 0 is not usable: this Caffe is a CPU-only build" in lines[0]
        assert not run.exists()


def test_explain_gpu_failure_reads_glog_fatal_lines():
    cpu_only = ("WARNING: Logging before InitGoogleLogging() is written to STDERR\n"
                "F20261201 10:23:40.501030 18298 common.cpp:70] Cannot use GPU in CPU-only Caffe: check mode.\n"
                "*** Check failure stack trace: ***\n    @     0x7f google::LogMessage::Fail()\n")
    assert caffe_env.explain_gpu_failure(cpu_only).startswith("this Caffe is a CPU-only build")
    no_driver = ("F1201 10:23:40.5 1 common.cpp:152] Check failed: error == cudaSuccess (35 vs. 0)  "
                 "CUDA driver version is insufficient for CUDA runtime version\n*** Check failure stack trace: ***\n")
    assert caffe_env.explain_gpu_failure(no_driver) == (
        "CUDA: CUDA driver version is insufficient for CUDA runtime version "
        "(no usable NVIDIA GPU or driver on this machine)")
    arch = "F1201 1 x.cu:9] Check failed: error == cudaSuccess (209 vs. 0)  no kernel image is available for execution on the device\n"
    assert "not in the build's CUDA_ARCH list" in caffe_env.explain_gpu_failure(arch)
    assert caffe_env.explain_gpu_failure("Traceback...\nImportError: no caffe\n") == "CUDA: ImportError: no caffe"


# -- with a real GPU --------------------------------------------------------------------------------
GPU_VS_CPU = r"""
import sys, numpy as np, caffe
net_path, dataset = sys.argv[1], sys.argv[2]
rng = np.random.RandomState(0)
out = {}
for mode in ("cpu", "gpu"):
    if mode == "gpu":
        caffe.set_mode_gpu(); caffe.set_device(0)
    else:
        caffe.set_mode_cpu()
    caffe.set_random_seed(1)
    net = caffe.Net(net_path, caffe.TEST, stages=["val"])   # no dropout: same maths on both
    if mode == "cpu":
        params = {k: [b.data.copy() for b in v] for k, v in net.params.items()}
    else:
        for k, v in net.params.items():
            for b, d in zip(v, params[k]):
                b.data[...] = d
    net.forward()
    net.backward()
    out[mode] = (float(net.blobs["loss"].data), net.params["conv1"][0].diff.copy())
(l_cpu, g_cpu), (l_gpu, g_gpu) = out["cpu"], out["gpu"]
assert abs(l_cpu - l_gpu) <= 1e-4 * max(1.0, abs(l_cpu)), (l_cpu, l_gpu)
np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-3, atol=1e-5 * float(np.abs(g_cpu).max()))
print("loss cpu %.6f gpu %.6f" % (l_cpu, l_gpu))
"""


@pytest.mark.gpu
def test_gpu_loss_and_gradient_match_cpu(gpu_root, device_problem, tiny_dataset, tmp_path):
    """Thermalnet v1.1 with the eq. 1 layer: one forward/backward on GPU 0 equals the CPU's."""
    if device_problem is not None:
        pytest.skip("needs a GPU: %s" % device_problem)
    from thermalnet import nets
    net = str(tmp_path / "v1_1.prototxt")
    nets.materialize(os.path.join(REPO, "prototxt", "thermalnet_v1_1.prototxt"), tiny_dataset[0], net,
                     batch_size=2)
    proc = subprocess.run([sys.executable, "-c", GPU_VS_CPU, net, tiny_dataset[0]], cwd=str(tmp_path),
                          env=_env(PYTHONPATH=os.pathsep.join([os.path.join(gpu_root, "python"),
                                                               os.path.join(REPO, "prototxt")])),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("loss cpu ")
