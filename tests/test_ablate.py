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


def test_ablation_runs_every_arm_on_one_split(caffe, tmp_path):
    pairs = str(tmp_path / "pairs")
    synthetic.generate(pairs, count=22, seed=5, workers=1, progress=False)
    out = str(tmp_path / "abl")
    rc = ablate.main(["--pairs", pairs, "--out", out, "--iterations", "4", "--batch-size", "2", "--quiet",
                      "--arms", "default,deconv-fixed,q16,mirror,decoding,imagenet"])
    assert rc == 0
    doc = json.load(open(os.path.join(out, "ablation.json")))
    res = {r["arm"]: r for r in doc["results"]}
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
