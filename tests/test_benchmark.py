"""tools.benchmark's logic (no timings asserted: speed targets are printed by `make bench`).

The benchmark compares the training step with the old loss layer (tools/bench_old_loss.py)
against the current one, so the two must compute the same thing: checked here in the
real Caffe. The rest checks how results become targets, the report and the JSON.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from thermalnet import spec
from test_loss_layer import _make_net, _net_text, _run, _weights_file
from tools import benchmark

CAFFE_TIME_SAMPLE = """I1201 10:23:50.419539 18439 caffe.cpp:393]   upscore1\tforward: 0.3749 ms.
I1201 10:23:50.419552 18439 caffe.cpp:396]   upscore1\tbackward: 1.1298 ms.
I1201 10:23:50.419557 18439 caffe.cpp:393]   fire2/squeeze1x1\tforward: 11.7834 ms.
I1201 10:23:50.419561 18439 caffe.cpp:396]   fire2/squeeze1x1\tbackward: 13.4389 ms.
I1201 10:23:50.419570 18439 caffe.cpp:401] Average Forward pass: 97.9691 ms.
I1201 10:23:50.419575 18439 caffe.cpp:403] Average Backward pass: 89.0966 ms.
I1201 10:23:50.419580 18439 caffe.cpp:405] Average Forward-Backward: 187.4 ms.
"""


@pytest.mark.parametrize("layer", ["WeightedSoftmaxLoss", "WeightedSigmoidCrossEntropyLoss"])
def test_old_reference_layer_equals_the_current_one(caffe, tmp_path, layer):
    shape = (2, spec.NUM_BINS, 9, 11)
    rng = np.random.RandomState(4)
    scores = (rng.randn(*shape) * 3).astype(np.float32)
    labels = rng.randint(0, spec.NUM_BINS, size=(2, 1, 9, 11)).astype(np.float32)
    param = {"class_weights": _weights_file(tmp_path, rng.uniform(0.2, 3.0, spec.NUM_BINS))}
    text = _net_text(shape, layer, 1.0, param)
    new = _run(_make_net(caffe, tmp_path, text, "new.prototxt"), scores, labels)
    old_text = text.replace('module: "digits_python_layers"', 'module: "%s"' % benchmark.OLD_LOSS_MODULE)
    assert old_text != text
    old = _run(_make_net(caffe, tmp_path, old_text, "old.prototxt"), scores, labels)
    assert new[0] == pytest.approx(old[0], rel=1e-5)
    np.testing.assert_allclose(new[1], old[1], rtol=1e-4, atol=1e-8)


def test_parse_caffe_time_layers():
    assert benchmark.FB_RE.search(CAFFE_TIME_SAMPLE).group(1) == "187.4"
    layers = benchmark.parse_layer_times(CAFFE_TIME_SAMPLE)
    assert layers == pytest.approx({"upscore1": 0.3749 + 1.1298, "fire2/squeeze1x1": 11.7834 + 13.4389})


def test_module_swap_refuses_a_net_without_the_loss_module(tmp_path):
    src = tmp_path / "a.prototxt"
    src.write_text('layer { name: "x" type: "Input" top: "x" }\n')
    with pytest.raises(ValueError, match="no python_param module"):
        benchmark._copy_net_with_module(str(src), str(tmp_path / "b.prototxt"), benchmark.OLD_LOSS_MODULE)


def _results(opencv_diff=3e-6, ort_gflops=150.0):
    def be(ips, gflops, diff):
        return {"img_per_s": ips, "gflops": gflops, "max_abs_diff": diff}
    sizes = []
    for (h, w), scale in (((240, 320), 1.0), ((480, 640), 0.25)):
        sizes.append({"height": h, "width": w, "gflop_per_image": 2.3 / scale, "backends": {
            "pycaffe": be(10 * scale, 23.0, 0.0), "opencv": be(40 * scale, 92.0, opencv_diff),
            "onnxruntime": be(60 * scale, ort_gflops, 2e-6), "opencv_own_softmax": be(80 * scale, 400.0, 3e-6)}})
    return {"quick": False, "date": "2026-12-01T00:00:00+00:00", "note": "RANDOM weights",
            "machine": {"cpu_model": "Test CPU", "cpus": 2, "numpy": "x", "opencv": "4", "opencv_threads": 2,
                        "onnxruntime": "1", "commit": "abc"},
            "load_average_before": [0.1, 0, 0], "load_average_after": [0.2, 0, 0], "sgemm_gflops": 200.0,
            "inference": {"net": "n", "batch": 4, "onnx_max_abs_diff": 2e-6, "sizes": sizes},
            "training": {"net": "t", "height": 120, "width": 160, "batch": 4, "caffe_patches": {"CAFFE_DECONV_DIRECT": True, "CAFFE_BRANCH_FREE": True},
                         "old": {"pycaffe_img_per_s": 10.0, "caffe_time_fb_ms": 300.0, "caffe_time_img_per_s": 13.3,
                                 "layers_ms": {"loss": 50.0, "conv1": 10.0}},
                         "new": {"pycaffe_img_per_s": 21.0, "caffe_time_fb_ms": 180.0, "caffe_time_img_per_s": 22.2,
                                 "layers_ms": {"loss": 8.0, "conv1": 10.0}},
                         "pycaffe_img_per_s": 21.0, "step_speedup_loop": 2.1, "step_speedup_caffe_time": 300 / 180.0,
                         "loop_vs_caffe_time": 21.0 / 22.2},
            "dataset": _dataset_results()}


def _dataset_results():
    return {"note": "SYNTHETIC", "cpus": 2, "height": 120, "width": 160, "lmdb_pairs": 1000,
            "lmdb_write_pairs_per_s": 2000.0,
            "decode_ms": {"PNG": {"images": 40, "height": 480, "width": 640, "pil": 9.0, "read_rgb": 7.0,
                                  "speedup": 9 / 7.0}},
            "inputs": {"PNG pairs": {"pairs": 1100, "kept": 1100, "seconds": 11.0, "pairs_per_s": 100.0},
                       "FLIR files": {"pairs": 60, "kept": 60, "seconds": 3.0, "pairs_per_s": 20.0}}}


def test_targets_pick_the_best_exact_backend_and_judge_each_ratio():
    res = _results()
    got = {name: (value, met) for name, value, _, met in benchmark.targets(res)}
    assert got["training step new / old (pycaffe loop img/s)"] == (2.1, True)
    assert got["training step new / old (caffe time)"][1] is False
    assert got["pycaffe training loop / caffe time (img/s)"][1] is False          # 0.946
    # opencv_own_softmax is a reference row, never "the best back-end".
    assert got["best back-end (onnxruntime) share of sgemm, 240x320"] == (0.75, True)
    # one ratio per kind of input, each against the pycaffe loop's img/s
    assert got["dataset build rate (PNG pairs) / training consumption"] == (100.0 / 21.0, False)
    assert got["dataset build rate (FLIR files) / training consumption"] == (20.0 / 21.0, False)
    assert got["ONNX export: max |ONNX Runtime - pycaffe|"][1] is True
    # A back-end whose output differs from pycaffe cannot be the best one.
    bad = benchmark.targets(_results(opencv_diff=1e-3, ort_gflops=50.0))
    names = [n for n, _, _, _ in bad]
    assert "best back-end (onnxruntime) share of sgemm, 240x320" in names
    assert [m for n, _, _, m in bad if n.startswith("max |back-end")] == [False, False]


def test_report_estimate_and_json(tmp_path):
    res = _results()
    res["augment_estimate"] = benchmark.augment_estimate(res)
    assert res["augment_estimate"]["backend"] == "onnxruntime"
    assert res["augment_estimate"]["seconds"] == pytest.approx(benchmark.AUGMENT_COUNT / 15.0)
    res["targets"] = [{"name": n, "measured": v, "target": t, "met": m} for n, v, t, m in benchmark.targets(res)]
    text = benchmark.format_report(res)
    assert "Test CPU" in text and "2026-12-01" in text and "NOT met" in text and "loss" in text
    path = tmp_path / "sub" / "bench.json"
    benchmark.write_json(res, str(path))
    assert json.loads(path.read_text())["machine"]["cpu_model"] == "Test CPU"
    assert not (tmp_path / "sub" / "bench.json.tmp").exists()


def test_report_of_the_dataset_part_alone():
    """--only dataset: no inference, no training, no ratio."""
    res = {"quick": True, "date": "2026-12-01T00:00:00+00:00", "note": "SYNTHETIC",
           "machine": {"cpu_model": "Test CPU", "cpus": 2, "numpy": "x", "opencv": "4", "opencv_threads": 2,
                       "onnxruntime": "1", "commit": "abc"},
           "load_average_before": [0.1, 0, 0], "load_average_after": [0.2, 0, 0], "dataset": _dataset_results()}
    res["targets"] = benchmark.targets(res)
    assert res["targets"] == []
    text = benchmark.format_report(res)
    assert "inference: not run" in text and "training: not run" in text
    assert "build from PNG pairs:" in text and "100.0 pairs/s" in text and "1.29x" in text


def test_jpeg_pairs_copy_the_pairs_with_jpeg_visible_images(tmp_path):
    from thermalnet.imageio import read_rgb, write_npy, write_png
    rng = np.random.RandomState(1)
    src = tmp_path / "pairs"
    for i in range(3):
        write_png(str(src / "visible" / ("p%d.png" % i)), rng.randint(0, 256, (48, 64, 3)).astype(np.uint8))
        write_npy(str(src / "ir" / ("p%d.npy" % i)), rng.rand(12, 16).astype(np.float32))
    (src / "README.txt").write_text("SYNTHETIC\n")
    dst = benchmark.jpeg_pairs(str(src), str(tmp_path / "jpeg"), 2)
    vis = sorted(os.listdir(os.path.join(dst, "visible")))
    assert vis == ["p0.jpg", "p1.jpg"] and sorted(os.listdir(os.path.join(dst, "ir"))) == ["p0.npy", "p1.npy"]
    assert read_rgb(os.path.join(dst, "visible", "p0.jpg")).shape == (48, 64, 3)
    assert os.path.realpath(os.path.join(dst, "ir", "p0.npy")) == os.path.realpath(str(src / "ir" / "p0.npy"))
    assert (tmp_path / "jpeg" / "README.txt").read_text() == "SYNTHETIC\n"


@pytest.mark.slow
def test_dataset_part_quick_measures_every_input(tmp_path):
    """The dataset part on the demo's cached 60 SYNTHETIC pairs (made if missing), their JPEG
    copies and the FLIR samples when present: every input kept, every rate measured."""
    res = benchmark.bench_dataset(quick=True, workdir=str(tmp_path), log=lambda m: None)
    assert set(res["decode_ms"]) == {"PNG", "JPEG"}
    assert all(d["pil"] > 0 and d["read_rgb"] > 0 for d in res["decode_ms"].values())
    expected = {"PNG pairs", "JPEG pairs"} | ({"FLIR files"} if "flir_skipped" not in res else set())
    assert set(res["inputs"]) == expected
    for v in res["inputs"].values():
        assert v["kept"] == v["pairs"] and v["pairs_per_s"] > 0
    assert res["synthetic_pairs_per_s"] > 0 and res["lmdb_write_pairs_per_s"] > 0
    assert "SYNTHETIC generation" in "\n".join(benchmark.format_dataset(res))
