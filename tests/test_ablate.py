"""tools.ablate: arms differ from the default in exactly what they name, share one split,
and each trains and is scored for real (tiny SYNTHETIC pairs, a few iterations)."""
from __future__ import annotations

import csv
import json
import os

import pytest

from thermalnet import layout, spec
from dataset_builder import synthetic
from thermalnet import nets
from tools import ablate


def _deconvs(path):
    return [l for l in nets.load_net(path).layer if l.type == "Deconvolution"]


def _layers(path):
    return {l.name: l for l in nets.load_net(path).layer}


@pytest.mark.parametrize("mode,lr,group", [("fixed", 0.0, 32), ("learned", 1.0, 32), ("learned-full", 1.0, 1)])
def test_edit_net_changes_only_the_deconvolutions(tmp_path, mode, lr, group):
    src = nets.network(spec.DEFAULT_BASE).net
    out = ablate.edit_net(src, str(tmp_path / "n.prototxt"), 32, mode)
    before, after = _layers(src), _layers(out)
    assert list(before) == list(after)
    for name in before:
        if before[name].type == "Deconvolution":
            cp = after[name].convolution_param
            assert [p.lr_mult for p in after[name].param] == [lr] and cp.group == group
            assert cp.num_output == 32 and cp.weight_filler.type == "bilinear"
        else:
            assert before[name] == after[name], name


def test_edit_net_sets_q_on_score_and_deconvolutions(tmp_path):
    out = ablate.edit_net(nets.network(spec.DEFAULT_BASE).deploy, str(tmp_path / "d.prototxt"), 16)
    layers = _layers(out)
    assert layers[nets.SCORE_LAYER].convolution_param.num_output == 16
    assert all(d.convolution_param.num_output == 16 and d.convolution_param.group in (1, 16) for d in _deconvs(out))


def test_unknown_arm_is_an_error():
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        ablate.plan_arms(["default", "nope"], None)


def _tiny_ablation(pairs, out, arms):
    """tools.ablate on tiny SYNTHETIC pairs: 4 iterations of batch 2 per arm; (out, ablation.json, arm -> result)."""
    synthetic.generate(pairs, count=22, seed=5, workers=1, progress=False)
    assert ablate.main(["--pairs", pairs, "--out", out, "--iterations", "4", "--batch-size", "2", "--quiet",
                        "--arms", arms]) == 0
    doc = json.load(open(os.path.join(out, "ablation.json")))
    return out, doc, {r["arm"]: r for r in doc["results"]}


def test_ablation_runs_every_arm_on_one_split(caffe, tmp_path):
    pairs = str(tmp_path / "pairs")
    out, doc, res = _tiny_ablation(pairs, str(tmp_path / "abl"), "default,deconv-fixed,q16,mirror,decoding,imagenet")
    assert set(res) == {"default", "deconv-fixed", "q16", "mirror", "decoding-expectation", "decoding-argmax",
                        "decoding-annealed", "imagenet"}
    assert res["imagenet"]["skip"].startswith("not run")
    ran = [r for r in res.values() if not r.get("skip")]
    for r in ran:
        assert r["iterations"] == 4
        assert r["snapshots"]["last"]["table"][-1]["object_class"] == "overall"
    # same pairs held out in every arm's dataset
    tests = {r["arm"]: sorted(x["id"] for x in csv.DictReader(open(os.path.join(r["dataset"], layout.MANIFEST_FILE)))
                              if x["split"] == "test") for r in ran}
    assert len({tuple(v) for v in tests.values()}) == 1
    # what each arm changed reached its files
    assert json.load(open(os.path.join(res["q16"]["dataset"], layout.DATASET_INFO_FILE)))["num_bins"] == 16
    assert _layers(res["q16"]["deploy"])[nets.SCORE_LAYER].convolution_param.num_output == 16
    assert json.load(open(os.path.join(res["mirror"]["dataset"], layout.DATASET_INFO_FILE)))["mirror"] is True
    assert [p.lr_mult for p in _deconvs(res["deconv-fixed"]["deploy"])[0].param] == [0.0]
    # decoding arms reuse the default arm's model but score differently
    assert res["decoding-argmax"]["snapshots"]["last"]["model"] == res["default"]["snapshots"]["last"]["model"]
    assert res["decoding-argmax"]["snapshots"]["last"]["table"] != res["default"]["snapshots"]["last"]["table"]
    md = open(os.path.join(out, "ablation.md")).read()
    assert "SYNTHETIC" in md and "| q16 | last | 4 |" in md
    assert os.path.getsize(os.path.join(out, "grid.png")) > 10000
    rows = list(csv.DictReader(open(os.path.join(out, "ablation.csv"))))
    assert {r["arm"] for r in rows} == set(res)
    assert "*baseline: mean training IR image*" in md
    # the table is rendered again from ablation.json alone, identically
    os.remove(os.path.join(out, "ablation.md"))
    assert ablate.main(["--report-only", "--out", out]) == 0
    assert open(os.path.join(out, "ablation.md")).read() == md
    # a rerun with one more arm retrains only the new arm; a changed budget retrains
    summary = os.path.join(res["default"]["snapshots"]["last"]["model"])
    before = os.path.getmtime(summary)
    assert ablate.main(["--pairs", pairs, "--out", out, "--iterations", "4", "--batch-size", "2", "--quiet",
                        "--arms", "default,lambda1"]) == 0
    assert os.path.getmtime(summary) == before
    doc2 = json.load(open(os.path.join(out, "ablation.json")))
    assert [r["arm"] for r in doc2["results"]] == ["default", "lambda1"]
    assert doc2["results"][0]["snapshots"]["last"]["table"] == res["default"]["snapshots"]["last"]["table"]
    assert ablate.main(["--pairs", pairs, "--out", out, "--iterations", "6", "--batch-size", "2", "--quiet",
                        "--arms", "default"]) == 0
    assert json.load(open(os.path.join(out, "ablation.json")))["results"][0]["iterations"] == 6


@pytest.mark.parametrize("h,w", [(120, 160), (240, 320)])
def test_skip_arm_keeps_output_size_and_starts_as_the_default(caffe, tmp_path, h, w):
    """Beyond-the-paper skip arm: output H x W = input, and with its zero-initialised skip
    scores the net computes what the default computes from the same weights, 2 px down/right
    (the half stride-4 cell between the two paths, derived in ablate._add_skip)."""
    import numpy as np
    dep = nets.network(spec.DEFAULT_BASE).deploy
    skip = ablate.edit_net(dep, str(tmp_path / "s.prototxt"), 32, None, "fire3/concat")
    a = caffe.Net(nets.deploy_for_size(dep, h, w, str(tmp_path / "a.prototxt")), caffe.TEST)
    b = caffe.Net(nets.deploy_for_size(skip, h, w, str(tmp_path / "b.prototxt")), caffe.TEST)
    for name, blobs in a.params.items():
        for i, blob in enumerate(blobs):
            b.params[name][i].data[...] = blob.data
    assert not b.params["score_skip"][0].data.any()
    x = np.random.RandomState(0).randn(1, 3, h, w).astype(np.float32)
    a.forward(data=x)
    assert b.forward(data=x)["prob"].shape == (1, 32, h, w)
    sa, sb = a.blobs["score"].data, b.blobs["score"].data      # logits: random weights give flat probs
    scale = float(sa.std())
    np.testing.assert_allclose(sb[..., 2:h - 16, 2:w - 16], sa[..., :h - 18, :w - 18], atol=1e-4 * scale)
    assert np.abs(sb[..., 2:h - 16, 2:w - 16] - sa[..., 2:h - 16, 2:w - 16]).max() > 0.1 * scale   # shift is real


def test_report_only_needs_a_finished_ablation(tmp_path, capsys):
    assert ablate.main(["--report-only", "--out", str(tmp_path)]) == 1
    assert "no ablation.json" in capsys.readouterr().err


@pytest.mark.parametrize("h,w", [(120, 160), (240, 320)])
def test_kernel_equals_stride_arm_keeps_the_output_size(caffe, tmp_path, h, w):
    """h-deconv-k4s4: the full-resolution deconvolution paints each score pixel as one 4x4 block (kernel =
    stride), the crop offset moves by (4 - 8) / 2 = -2 to 0, and the output is still H x W."""
    import numpy as np
    dep = nets.network(spec.DEFAULT_BASE).deploy
    out = ablate.edit_net(dep, str(tmp_path / "k.prototxt"), 32, "learned", last_kernel_equals_stride=True)
    first, last = _deconvs(out)
    assert list(first.convolution_param.kernel_size) == [8] and list(last.convolution_param.kernel_size) == [4]
    assert list(last.convolution_param.stride) == [4] and [p.lr_mult for p in last.param] == [1.0]
    crop = next(l for l in nets.load_net(out).layer if l.type == "Crop")
    assert list(crop.crop_param.offset) == [0] and [l for l in _deconvs(dep)][1].convolution_param.kernel_size[0] == 8
    net = caffe.Net(nets.deploy_for_size(out, h, w, str(tmp_path / "kk.prototxt")), caffe.TEST)
    x = np.random.RandomState(0).randn(1, 3, h, w).astype(np.float32)
    assert net.forward(data=x)["prob"].shape == (1, 32, h, w)
    # Caffe's bilinear filler at kernel 4 gives taps 0.25, 0.75, 0.75, 0.25 per axis: no overlap, so the
    # start is a periodic 4x4 pattern (the checkerboard hypothesis), not an interpolation
    k = net.params[last.name][0].data[0, 0]
    np.testing.assert_allclose(k, np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]), atol=1e-6)


def test_hypothesis_arms_carry_the_papers_relations(caffe, tmp_path):
    pairs = str(tmp_path / "pairs")
    assert ablate.plan_arms(["hypotheses"], None)[0]["name"] == "h-sample"
    out, doc, res = _tiny_ablation(pairs, str(tmp_path / "abl"), "default,hypotheses")
    assert set(res) == {"default", "h-sample", "h-sample-t0.5", "h-digits", "h-argmax-q8", "h-deconv-k4s4",
                        "h-sigmoid"}
    for r in res.values():
        shown = r["snapshots"][r["snapshot_shown"]]
        overall = shown["table"][-1]
        assert r["gs_gain_percent"]["overall"] == pytest.approx(
            100 * (overall["tn"] - overall["tn_gs"]) / overall["tn"]), r["arm"]
        assert r["hf_ratio"]["overall"] == pytest.approx(overall["tn_hf"] / overall["ir_hf"]), r["arm"]
        assert set(r["reproduces"]) >= {"gs_gain", "hf", "class_order"}
    # decoding-only hypotheses reuse the default's model; the others trained what they name
    assert res["h-sample"]["snapshots"]["last"]["model"] == res["default"]["snapshots"]["last"]["model"]
    assert res["h-sample"]["temperature"] is None and res["h-sample-t0.5"]["temperature"] == 0.5
    assert res["h-sample"]["hf_ratio"]["overall"] > res["default"]["hf_ratio"]["overall"]
    assert res["h-argmax-q8"]["num_bins"] == 8 and res["h-argmax-q8"]["decoding"] == "argmax"
    assert [l.type for l in nets.load_net(res["h-sigmoid"]["deploy"]).layer][-1] == "Softmax"
    assert any(l.type == "BNLL" for l in nets.load_net(res["h-sigmoid"]["deploy"]).layer)
    assert list(_deconvs(res["h-deconv-k4s4"]["deploy"])[1].convolution_param.kernel_size) == [4]
    md = open(os.path.join(out, "ablation.md")).read()
    assert "The paper's relations per arm" in md and "| h-sample | sample (T 1) |" in md
    assert "| h-sample-t0.5 | sample (T 0.5) |" in md
    assert "Split: paper: seeded and stratified by object class." in md       # pairs without a split of their own
