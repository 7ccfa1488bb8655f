"""The foundation: the Caffe that `make setup` builds is real, importable and cached."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from thermalnet import caffe_env, lmdb_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(REPO, "tools", "install_caffe.sh")


def _clean_env():
    env = dict(os.environ)
    for var in ("LD_LIBRARY_PATH", "PYTHONPATH", "CAFFE_ROOT"):
        env.pop(var, None)
    return env


def venv_build_flags():
    """The install_caffe.sh flags of the build the venv is linked to (make gpu-setup keeps them)."""
    path = os.path.join(sys.prefix, ".caffe-build-flags")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines() + ["", ""]
    return lines[0].split() + (["--cuda-arch", lines[1]] if lines[1].strip() else [])


def test_import_caffe_without_ld_library_path():
    code = ("import caffe, digits_python_layers; caffe.set_mode_cpu(); "
            "t = set(caffe.layer_type_list()); "
            "print(sorted(t & {'Python', 'Crop', 'Deconvolution', 'Data', 'SoftmaxWithLoss'}))")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['Crop', 'Data', 'Deconvolution', 'Python', 'SoftmaxWithLoss']"


def test_caffe_tool_runs():
    if os.environ.get("CAFFE_ROOT"):
        pytest.skip("using an existing Caffe")
    tool = caffe_env.caffe_tool()
    out = subprocess.run([tool, "--version"], env=_clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "caffe version" in (out.stdout + out.stderr).lower()


def test_second_install_hits_the_cache():
    if os.environ.get("CAFFE_ROOT"):
        pytest.skip("using an existing Caffe")
    out = subprocess.run(["bash", INSTALL, "--no-apt", "--python", sys.executable] + venv_build_flags(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    root = out.stdout.strip().splitlines()[-1]
    assert "cached build found" in out.stderr
    assert os.path.isfile(os.path.join(root, ".thermalnet-complete"))
    import caffe
    assert os.path.realpath(caffe.__file__).startswith(os.path.realpath(root))


def test_install_script_cli():
    help_ = subprocess.run(["bash", INSTALL, "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--gpu" in help_.stdout
    bad = subprocess.run(["bash", INSTALL, "--frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --frobnicate" in bad.stderr


def test_install_script_names_a_missing_boost_python():
    """BOOST_PYTHON_LIBDIR (a Boost.Python built for an interpreter Debian lacks, as
    tools/extra/digits_local.sh does for Python 2.7) is checked before anything is built."""
    env = dict(os.environ, BOOST_PYTHON_LIBDIR="/nonexistent-boost")
    out = subprocess.run(["bash", INSTALL, "--no-apt", "--python", sys.executable], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == ""
    assert "[install_caffe] ERROR: no libboost_python%d%d.so in /nonexistent-boost" % sys.version_info[:2] in out.stderr


def test_datum_round_trip_agrees_with_caffe_io(caffe):
    rng = np.random.RandomState(1)
    img = rng.randint(0, 256, size=(3, 5, 7)).astype(np.uint8)
    datum = lmdb_io.array_to_datum(img, label=3)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 5, 7, 3)
    parsed = caffe.proto.caffe_pb2.Datum.FromString(datum.SerializeToString())
    with warnings.catch_warnings():
        # Caffe's own reader uses np.fromstring's binary mode (deprecated in NumPy 2): one more
        # reason the kit reads Datums with lmdb_io.datum_to_array (np.frombuffer).
        warnings.filterwarnings("ignore", "The binary mode of fromstring", DeprecationWarning)
        np.testing.assert_array_equal(caffe.io.datum_to_array(parsed), img)
    np.testing.assert_array_equal(lmdb_io.datum_to_array(parsed), img)


def test_upstream_array_to_datum_trap_is_real(caffe):
    """Why lmdb_io builds Datums itself: this Caffe's helper calls ndarray.tostring, deprecated in
    NumPy 2.x and removed from NumPy 2.3 on (AttributeError there, DeprecationWarning before)."""
    assert int(np.__version__.split(".")[0]) >= 2, "requirements.txt pins NumPy 2 (NumPy 1 still has tostring)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises((AttributeError, DeprecationWarning), match="tostring"):
            caffe.io.array_to_datum(np.zeros((1, 2, 2), np.uint8))


def test_mean_binaryproto_round_trip(caffe, tmp_path):
    mean = np.random.RandomState(2).rand(3, 4, 6).astype(np.float32) * 255
    path = str(tmp_path / "mean.binaryproto")
    lmdb_io.write_mean_binaryproto(mean, path)
    blob = caffe.proto.caffe_pb2.BlobProto.FromString(open(path, "rb").read())
    np.testing.assert_allclose(caffe.io.blobproto_to_array(blob)[0], mean)
    np.testing.assert_allclose(lmdb_io.read_mean_binaryproto(path), mean)


def test_lmdb_grows_its_map(tmp_path):
    path = str(tmp_path / "db")
    with lmdb_io.LmdbWriter(path, map_size=1 << 16, commit_every=4) as w:
        for i in range(40):
            w.put(np.full((3, 32, 32), i, np.uint8))
    got = list(lmdb_io.read_lmdb(path))
    assert [k for k, _ in got] == ["%09d" % i for i in range(40)]
    assert all(int(a[0, 0, 0]) == i for i, (_, a) in enumerate(got))


@pytest.mark.parametrize("rows", ["1", "0"], ids=["row-loop", "crop_copy"])
@pytest.mark.parametrize("axis,offsets,ref_shape", [(2, (3, 2), (2, 3, 6, 7)), (1, (1, 4, 0), (2, 2, 5, 13))])
def test_crop_layer_forward_backward_match_numpy(caffe, tmp_path, monkeypatch, rows, axis, offsets, ref_shape):
    """The kit patches this Caffe's Crop (0001: one copy per row; 0006: rows without per-row
    allocations, CAFFE_CROP_ROWS=0 the recursion): both paths still exact."""
    monkeypatch.setenv(caffe_env.CROP_ROWS_ENV, rows)
    net_txt = """force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 11 dim: 13 } } }
layer { name: "ref" type: "Input" top: "ref" input_param { shape { %s } } }
layer { name: "crop" type: "Crop" bottom: "x" bottom: "ref" top: "y" crop_param { axis: %d %s } }
""" % (" ".join("dim: %d" % d for d in ref_shape), axis, " ".join("offset: %d" % o for o in offsets))
    path = tmp_path / "crop.prototxt"
    path.write_text(net_txt)
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.RandomState(3)
    x = rng.randn(2, 3, 11, 13).astype(np.float32)
    window = tuple([slice(None)] * axis + [slice(o, o + n) for o, n in zip(offsets, ref_shape[axis:])])
    net.blobs["x"].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, x[window])
    g = rng.randn(*net.blobs["y"].data.shape).astype(np.float32)
    net.blobs["y"].diff[...] = g
    net.backward()
    want = np.zeros_like(x)
    want[window] = g
    np.testing.assert_array_equal(net.blobs["x"].diff, want)


def test_this_caffe_carries_the_crop_row_loop(caffe):
    """The kit's own build applies patch 0006; a CAFFE_ROOT Caffe (BVLC, NVCaffe) need not."""
    from tests.conftest import require_kit_patch
    require_kit_patch(caffe_env.CROP_ROWS_ENV, "Crop rows without allocations")
