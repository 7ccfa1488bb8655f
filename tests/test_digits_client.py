"""The DIGITS client against the local stand-in for DIGITS' HTTP contract (tests/digits_standin.py)
and, with DIGITS_ROOT set (make test-digits), against real DIGITS 6.1.1 as well.

The stand-in is NOT DIGITS: it validates DIGITS' form fields, applies DIGITS' network
rules (digits_jobs/validate.py) and saves snapshots with the real Caffe, but trains
nothing (its snapshots hold random or uploaded weights). The `server` fixture runs a test
against both; tests of fault injection and of the stand-in's request log take `standin`
only. Real DIGITS runs from the checkout DIGITS_ROOT names, on Python 2.7 against the
kit's Caffe (tools/extra/digits_local.sh; its `setup` must have run). The dataset here is
the random SYNTHETIC tiny fixture plus a test split made from its val images.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import tarfile
from typing import Optional

import numpy as np
import pytest

from thermalnet import decoders, layout, metrics, spec
from digits_jobs import client as C
from digits_jobs import jobdefs as jd
from digits_jobs import validate as v
from tests.digits_standin import STANDIN_HEADER, StandinServer

H, W = 48, 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Tiny random dataset (SYNTHETIC) in the kit's layout, with test/ images and a manifest."""
    from PIL import Image
    from conftest import make_tiny_dataset
    root, feats = make_tiny_dataset(str(tmp_path_factory.mktemp("ds") / "tiny"), n_train=6, n_val=4,
                                    height=H, width=W, seed=3)
    x, y = feats[layout.VAL_DB]
    rows = []
    for d in ("visible", "ir", "ir_degC"):
        os.makedirs(os.path.join(root, layout.TEST_DIR, d))
    for i in range(len(x)):
        iid = "t%03d" % i
        Image.fromarray(np.ascontiguousarray(x[i][::-1].transpose(1, 2, 0))).save(
            os.path.join(root, layout.TEST_DIR, "visible", iid + ".png"))
        b = np.clip(np.rint(spec.bin_centers()[y[i, 0]]), 0, 255).astype(np.uint8)
        Image.fromarray(b).save(os.path.join(root, layout.TEST_DIR, "ir", iid + ".png"))
        np.save(os.path.join(root, layout.TEST_DIR, "ir_degC", iid + ".npy"),
                spec.to_celsius(b, 15.0, 45.0).astype(np.float32))
        rows.append({"id": iid, "source": "SYNTHETIC", "object_class": spec.OBJECT_CLASSES[i % 3], "split": "test",
                     "t_min": 15.0, "t_max": 45.0, "vis_h": H, "vis_w": W, "ir_h": H, "ir_w": W, "height": H,
                     "width": W})
    with open(os.path.join(root, layout.MANIFEST_FILE), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return root


@pytest.fixture()
def standin():
    with StandinServer(steps=3) as s:
        yield s


def make_client(url, **kw):
    sleeps = []
    kw.setdefault("retries", 3)
    c = C.DigitsClient(url, poll=0, sleep=sleeps.append, progress=False, backoff=0.5, echo=lambda s: None, **kw)
    c.sleeps = sleeps
    return c


DIGITS_ROOT_ENV = "DIGITS_ROOT"
DIGITS_LOCAL = os.path.join(jd.REPO_ROOT, "tools", "extra", "digits_local.sh")
REAL_POLL = 0.5      # s between a real DIGITS' status polls (the stand-in advances per poll: 0)


class Server:
    """A DIGITS to test against: .standin is the stand-in (request log, fault injection) or None
    for real DIGITS; .poll is the client's --poll for it."""

    def __init__(self, url: str, standin=None, log: Optional[str] = None):
        self.url, self.standin, self.log = url, standin, log        # log: real DIGITS' own log file
        self.poll = "0" if standin else str(REAL_POLL)

    def job_reason(self, job_id: str) -> str:
        """Why DIGITS failed a job, from the server side (DIGITS' log, or the stand-in's job)."""
        if self.standin:
            return self.standin.state.jobs[job_id].error or ""
        with open(self.log) as f:
            return "\n".join(l for l in f if "[%s] [ERROR]" % job_id in l)

    def client(self, **kw):
        if self.standin:
            return make_client(self.url, **kw)
        kw.setdefault("retries", 3)
        return C.DigitsClient(self.url, poll=REAL_POLL, progress=False, backoff=0.5, echo=lambda s: None, **kw)


@pytest.fixture(scope="session")
def real_digits(tmp_path_factory):
    """Real DIGITS 6.1.1 from DIGITS_ROOT on a free port of 127.0.0.1, its jobs in a temporary folder."""
    root = os.environ.get(DIGITS_ROOT_ENV)
    if not root:
        pytest.skip("REAL DIGITS NOT TESTED: %s is not set. `DIGITS_ROOT=<DIGITS v6.1.1 checkout> make test-digits` "
                    "runs these tests against real DIGITS (tools/extra/digits_local.sh setup first)" % DIGITS_ROOT_ENV)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tmp = tmp_path_factory.mktemp("real_digits")
    where = ["--digits", root, "--run-dir", str(tmp / "run")]
    r = subprocess.run(["bash", DIGITS_LOCAL, "start", "--port", str(port), "--jobs-dir", str(tmp / "jobs")] + where,
                       capture_output=True, text=True)
    # A DIGITS that was named but does not start is a failure, never a skip.
    assert r.returncode == 0, "DIGITS from %s did not start: %s" % (root, r.stderr[-3000:])
    try:
        yield Server(r.stdout.strip().splitlines()[-1], log=str(tmp / "run" / "digits.log"))
    finally:
        subprocess.run(["bash", DIGITS_LOCAL, "stop"] + where, capture_output=True, text=True)


def test_digits_local_cli(tmp_path):
    """tools/extra/digits_local.sh: --help, usage errors (2), and one ERROR line (1) where a step is
    missing; nothing of DIGITS is needed for these."""
    env = dict(os.environ, THERMALNET_CACHE=str(tmp_path / "cache"))
    run = lambda *a: subprocess.run(["bash", DIGITS_LOCAL] + list(a), capture_output=True, text=True,  # noqa: E731
                                    env=env, timeout=60)
    h = run("--help")
    assert h.returncode == 0 and "setup --digits DIR --boost-python DIR" in h.stdout and "127.0.0.1" in h.stdout
    assert run("start", "--frobnicate").returncode == 2 and run().returncode == 2
    st = run("status", "--run-dir", str(tmp_path / "run"))
    assert st.returncode == 1 and st.stdout.strip() == "stopped"
    fake = tmp_path / "DIGITS"
    no = run("start", "--digits", str(fake))
    assert no.returncode == 1 and no.stderr.strip().splitlines() == [
        "[digits_local] ERROR: %s: not a DIGITS checkout (no digits/__init__.py)" % fake]
    (fake / "digits").mkdir(parents=True)
    (fake / "digits" / "__init__.py").write_text("")
    no = run("start", "--digits", str(fake), "--run-dir", str(tmp_path / "run"))
    assert no.returncode == 1 and "no Python 2.7 Caffe yet" in no.stderr and len(no.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.fixture(params=["standin", pytest.param("digits", marks=pytest.mark.real_digits, id="real-digits")])
def server(request):
    """Each test that takes `server` runs against the stand-in and against real DIGITS."""
    if request.param == "standin":
        with StandinServer(steps=3) as s:
            yield Server(s.url, s)
    else:
        yield request.getfixturevalue("real_digits")


def routes(s):
    return [(m, p) for m, p, _ in s.state.log]


# -- the whole flow ------------------------------------------------------------------------------
def test_run_flow_creates_trains_fetches_and_evaluates(server, dataset, caffe, tmp_path):
    c = server.client()
    out = str(tmp_path / "run")
    s = C.run_flow(c, dataset, dataset_local=dataset, out=out, overrides={"train_epochs": "3"})
    if server.standin:
        log = routes(server.standin)
        assert log[0] == ("POST", "/login")
        assert log[1] == ("POST", jd.ROUTE_DATASET_PREBUILT)
        assert ("POST", jd.ROUTE_MODEL) in log
        assert log.index(("POST", jd.ROUTE_MODEL)) > log.index(("GET", jd.ROUTE_DATASET_STATUS % s["dataset_job"]))
        assert ("GET", jd.ROUTE_DOWNLOAD % s["model_job"]) in log
    files = s["files"]
    # what DIGITS' download holds: its own prototxt files, the uploaded loss layer, the snapshot
    for key in ("deploy", "train_val", "solver", "original", "python_layer", "caffemodel", "info", "log"):
        assert os.path.isfile(files[key]), key
    info = json.load(open(files["info"]))
    assert info["snapshot file"] == os.path.basename(files["caffemodel"])
    if server.standin:
        assert "NOT trained" in open(files["log"]).read()
    else:   # DIGITS ran the caffe tool: its log, parsed by DIGITS (glog without the year) into snapshots
        assert "Optimization Done." in open(files["log"]).read() and s["snapshots"]
    # DIGITS: max_iter = ceil(N_train / batch) * epochs, with the job's batch and the 6 train pairs
    batch = int(json.load(open(os.path.join(jd.JOBS_DIR, "model_demo.json")))["form"]["batch_size"])
    assert os.path.basename(files["caffemodel"]) == "snapshot_iter_%d.caffemodel" % (-(-6 // batch) * 3)
    ev = s["evaluation"]
    assert ev["n_test"] == 4
    assert os.path.isfile(os.path.join(out, "eval", "eval.json"))
    assert json.load(open(os.path.join(out, "digits_run.json")))["model_job"] == s["model_job"]
    # the fetched deploy net loads in Caffe with the fetched weights
    net = caffe.Net(files["deploy"], files["caffemodel"], caffe.TEST)
    assert net.blobs["prob"].data.shape == (1, spec.NUM_BINS, H, W)


def test_answers_are_marked_as_stand_in(standin):
    import requests
    r = requests.get(standin.url + "/index.json", timeout=10)
    assert "not DIGITS" in r.headers[STANDIN_HEADER]
    assert "not DIGITS" in r.headers["Server"]


# -- retries and errors ----------------------------------------------------------------------------
def test_transient_503_is_retried_with_backoff(standin, dataset):
    standin.state.inject("POST", jd.ROUTE_DATASET_PREBUILT, 503, 503)
    c = make_client(standin.url)
    c.login()
    job = c.create(jd.ROUTE_DATASET_PREBUILT, jd.form_fields(jd.load_job(jd.DATASET_PREBUILT), dataset=dataset,
                                                             name="t"))
    assert job["status"] == "Initialized"
    codes = [code for m, p, code in standin.state.log if p == jd.ROUTE_DATASET_PREBUILT]
    assert codes == [503, 503, 200]
    assert c.sleeps == [0.5, 1.0]


def test_dropped_connection_is_retried(standin, dataset):
    c = make_client(standin.url)
    c.login()
    job = c.create(jd.ROUTE_DATASET_PREBUILT, jd.form_fields(jd.load_job(jd.DATASET_PREBUILT), dataset=dataset,
                                                             name="t"))
    standin.state.inject("GET", jd.ROUTE_DATASET_STATUS % job["id"], "drop")
    assert c.status("dataset", job["id"])["id"] == job["id"]
    assert [code for _, p, code in standin.state.log if p == jd.ROUTE_DATASET_STATUS % job["id"]] == [0, 200]
    assert len(c.sleeps) == 1


def test_dropped_post_is_not_repeated(standin, dataset):
    standin.state.inject("POST", jd.ROUTE_DATASET_PREBUILT, "drop")
    c = make_client(standin.url)
    c.login()
    with pytest.raises(C.DigitsError, match="not repeated"):
        c.create(jd.ROUTE_DATASET_PREBUILT, jd.form_fields(jd.load_job(jd.DATASET_PREBUILT), dataset=dataset,
                                                           name="t"))
    assert [code for _, p, code in standin.state.log if p == jd.ROUTE_DATASET_PREBUILT] == [0]


def test_retries_give_up_with_the_status(standin):
    standin.state.inject("GET", "/index.json", 502, 502, 502, 502)
    c = make_client(standin.url, retries=3)
    with pytest.raises(C.DigitsHTTPError) as ei:
        c.json("GET", "/index.json")
    assert ei.value.status == 502 and "/index.json" in str(ei.value)
    assert len(c.sleeps) == 3


def test_unreachable_server():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = make_client("http://127.0.0.1:%d" % port, retries=2)
    with pytest.raises(C.DigitsError, match="cannot reach DIGITS at http://127.0.0.1:%d .*3 tries" % port):
        c.login()


def test_form_errors_are_reported_field_by_field(server, tmp_path):
    c = server.client()
    c.login()
    with pytest.raises(C.DigitsValidationError) as ei:
        c.create(jd.ROUTE_DATASET_PREBUILT, {"method": "prebuilt", "prebuilt_train_images": str(tmp_path / "nope")})
    e = ei.value
    assert e.status == 400
    assert e.errors["dataset_name"] == ["This field is required."]
    assert e.errors["prebuilt_train_images"] == ["Folder does not exist"]
    assert "dataset_name: This field is required." in str(e) and "prebuilt_train_images: Folder does not exist" \
        in str(e)


def test_bad_network_text_is_a_form_error(server, dataset):
    c = server.client()
    c.login()
    d = c.create(jd.ROUTE_DATASET_PREBUILT, jd.form_fields(jd.load_job(jd.DATASET_PREBUILT), dataset=dataset,
                                                           name="t"))
    job = jd.load_job(jd.MODEL_DEMO)
    fields = jd.form_fields(job)
    fields.update(dataset=d["id"], custom_network="layer { nme: 'x' }")
    with pytest.raises(C.DigitsValidationError, match="custom_network: Bad network"):
        c.create(jd.ROUTE_MODEL, fields, files=C._model_upload(job))


def test_login_refused_and_required(server):
    with pytest.raises(C.DigitsLoginError, match="lowercase"):
        server.client(username="Thermal Net")
    c = server.client()
    c.username = "9lives"            # skip the local check: the server must refuse it too
    with pytest.raises(C.DigitsLoginError, match="did not log in '9lives'"):
        c.login()
    with pytest.raises(C.DigitsHTTPError) as ei:
        c.create(jd.ROUTE_DATASET_PREBUILT, {"dataset_name": "x"})
    assert ei.value.status == 401 and "Unauthorized" in str(ei.value)


def test_unknown_job_is_404(server):
    c = server.client()
    with pytest.raises(C.DigitsHTTPError) as ei:
        c.status("model", "20170101-000000-dead")
    assert ei.value.status == 404 and "Job not found" in str(ei.value)


def test_job_error_state_reports_digits_reason(server, dataset):
    # A network that breaks DIGITS' rules but parses is accepted by the form and fails when
    # the job starts (DIGITS' before_run): the client must say why.
    from google.protobuf import text_format
    from thermalnet.caffe_env import caffe_pb2
    c = server.client()
    c.login()
    d = c.create(jd.ROUTE_DATASET_PREBUILT, jd.form_fields(jd.load_job(jd.DATASET_PREBUILT), dataset=dataset,
                                                           name="t"))
    c.wait("dataset", d["id"])
    job = jd.load_job(jd.MODEL_DEMO)
    net = text_format.Merge(jd.model_network_text(job), caffe_pb2().NetParameter())
    [l for l in net.layer if l.name == "loss"][0].ClearField("exclude")
    fields = jd.form_fields(job)
    fields.update(dataset=d["id"], custom_network=text_format.MessageToString(net))
    m = c.create(jd.ROUTE_MODEL, fields, files=C._model_upload(job))
    with pytest.raises(C.DigitsJobFailed) as ei:
        c.wait("model", m["id"])
    # DIGITS' sanity check fails before Caffe runs: no caffe_output.log, and no JSON route has the
    # reason (DIGITS logs it and shows it live on the job page); the client says where to look.
    assert "ended Error" in str(ei.value) and "failed before Caffe started" in str(ei.value)
    reason = server.job_reason(m["id"])                 # DIGITS names the TEST stage, the kit's rules the deploy net
    assert re.search(r"(?i)layer 'loss'", reason) and "label" in reason, reason


def test_preflight_stops_a_broken_network_before_queuing(server, dataset, tmp_path):
    bad = dict(jd.load_job(jd.MODEL_DEMO))
    netfile = tmp_path / "bad.prototxt"
    netfile.write_text(open(jd.repo_path(bad["network"])).read().replace(
        'module: "digits_python_layers"', 'module: "my_layers"'))
    bad["network"] = str(netfile)
    jobfile = tmp_path / "bad_job.json"
    jobfile.write_text(json.dumps(bad))
    c = server.client()
    from digits_jobs.validate import DigitsRuleError
    with pytest.raises(DigitsRuleError, match="'loss'.*digits_python_layers"):
        C.run_flow(c, dataset, model_job=str(jobfile), dataset_local=dataset, out=str(tmp_path / "o"))
    assert server.standin is None or ("POST", jd.ROUTE_MODEL) not in routes(server.standin)


# -- fine-tuning: DIGITS' pretrained-model field -------------------------------------------------
@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory, caffe):
    """STAND-IN SqueezeNet v1.1 and v1.0 caffemodels (random weights, SqueezeNet's names and shapes)."""
    from tests.test_finetune import squeezenet_deploy_text
    root = tmp_path_factory.mktemp("squeezenet")
    out = {}
    for version in ("v1_0", "v1_1"):
        proto = root / ("%s.prototxt" % version)
        proto.write_text(squeezenet_deploy_text(version))
        net = caffe.Net(str(proto), caffe.TEST)
        rng = np.random.RandomState(7)
        for blobs in net.params.values():
            for b in blobs:
                b.data[...] = rng.randn(*b.data.shape) * 0.05
        path = str(root / ("squeezenet_%s_standin.caffemodel" % version))
        net.save(path)
        out[version] = (path, {k: [b.data.copy() for b in v] for k, v in net.params.items()})
        del net
    return out


def test_run_flow_sends_pretrained_weights_in_digits_field(server, dataset, squeezenet, caffe, tmp_path):
    """--weights goes into custom_network_snapshot; the snapshot (the stand-in: Caffe's copy_from;
    real DIGITS: caffe train --weights, then steps at a learning rate of 1e-30) then holds
    SqueezeNet's blobs, the new layers their fillers."""
    from thermalnet import nets
    path, src = squeezenet["v1_1"]
    c = server.client()
    s = C.run_flow(c, dataset, dataset_local=dataset, out=str(tmp_path / "ft"), evaluate=False,
                   overrides={"train_epochs": "1", "learning_rate": "1e-30"}, weights=path)
    assert s["weights"] == [path]
    assert jd.pretrained_field([path, path]) == {"custom_network_snapshot": path + ":" + path}
    net = caffe.Net(s["files"]["deploy"], s["files"]["caffemodel"], caffe.TEST)
    for k in net.params:
        if k in src:
            for got, want in zip(net.params[k], src[k]):
                np.testing.assert_array_equal(got.data, want)
    assert [k for k in net.params if k not in src] == [nets.SCORE_LAYER] + list(nets.UPSAMPLE_LAYERS)
    job_log = open(s["files"]["log"]).read()
    if server.standin:
        assert server.standin.state.jobs[s["model_job"]].weights_files == [path]
        assert "pretrained weights %s: 25 layers copied by name" % path in job_log
    else:   # the caffe tool read -weights (the kit's Caffe: patch 0008)
        assert "Finetuning from %s" % path in job_log


def test_pretrained_weights_that_do_not_fit(server, dataset, squeezenet, tmp_path, capsys):
    """v1.0 weights for the v1.1 demo job: refused here before queuing (one line naming the
    layer and both shapes); sent anyway, the job ends in Error as DIGITS' would; so does a path
    the server lacks."""
    from thermalnet.nets import WeightsError
    v10 = squeezenet["v1_0"][0]
    c = server.client()
    with pytest.raises(WeightsError, match=r"layer 'conv1' blob 0 \(weights\) has shape 96x3x7x7 in the file "
                                           r"but 64x3x3x3"):
        C.run_flow(c, dataset, dataset_local=dataset, out=str(tmp_path / "x"), evaluate=False, weights=v10)
    assert server.standin is None or ("POST", jd.ROUTE_MODEL) not in routes(server.standin)
    d = c.create(jd.ROUTE_DATASET_PREBUILT, jd.form_fields(jd.load_job(jd.DATASET_PREBUILT), dataset=dataset,
                                                           name="w"))
    c.wait("dataset", d["id"])
    job = jd.load_job(jd.MODEL_DEMO)
    fields = dict(jd.form_fields(job), dataset=d["id"],
                  custom_network=jd.model_network_text(job, jd.dataset_layout(dataset)["class_weights"]))
    m = c.create(jd.ROUTE_MODEL, dict(fields, **jd.pretrained_field(v10)), files=C._model_upload(job))
    with pytest.raises(C.DigitsJobFailed) as ei:
        c.wait("model", m["id"])
    assert "ended Error" in str(ei.value) and "layer 'conv1'" in str(ei.value)
    # DIGITS 6.1.1 does not check the field's paths: the job fails when Caffe cannot open the file.
    absent = str(tmp_path / "absent.caffemodel")
    m = c.create(jd.ROUTE_MODEL, dict(fields, custom_network_snapshot=absent), files=C._model_upload(job))
    with pytest.raises(C.DigitsJobFailed) as ei:
        c.wait("model", m["id"])
    assert "ended Error" in str(ei.value) and absent in str(ei.value)
    capsys.readouterr()
    r = C.main(["--url", server.url, "--poll", server.poll, "run", "--dataset-server", dataset, "--dataset", dataset,
                "--dataset-id", d["id"], "--no-eval", "--weights", v10])
    err = capsys.readouterr().err.strip().splitlines()
    assert r == 1 and len(err) == 1 and err[0].startswith("error: %s: layer 'conv1'" % v10), err


# -- inference, upload ------------------------------------------------------------------------------
@pytest.fixture()
def trained(server, dataset, tmp_path):
    c = server.client()
    s = C.run_flow(c, dataset, dataset_local=dataset, out=str(tmp_path / "run"), evaluate=False,
                   overrides={"train_epochs": "1"})
    return c, s


def test_infer_one_decodes_like_the_kits_predictor(trained, dataset, tmp_path):
    from PIL import Image
    from thermalnet.inference import Predictor
    c, s = trained
    img = os.path.join(dataset, layout.TEST_DIR, "visible", "t000.png")
    outputs = c.infer_one(s["model_job"], img)
    prob = np.asarray(outputs["prob"])
    assert prob.shape == (1, spec.NUM_BINS, H, W)
    pred = Predictor(s["files"]["deploy"], s["files"]["caffemodel"],
                     mean_file=os.path.join(dataset, layout.TRAIN_DB, layout.MEAN_FILE))
    want = pred.predict_probs([np.asarray(Image.open(img).convert("RGB"))])[0]
    # Real DIGITS: its own preprocessing and a second build of the same Caffe (Python 2.7) differ in
    # float32 rounding only (5e-6 at most on probabilities near 1/32 measured); the decoded RMS agrees.
    np.testing.assert_allclose(prob[0], want, rtol=1e-3, atol=1e-5)
    res = C.infer_flow(c, s["model_job"], [img], str(tmp_path / "inf"),
                       ir_dir=os.path.join(dataset, layout.TEST_DIR, "ir"))
    b = decoders.decode(want)
    gt = np.asarray(Image.open(os.path.join(dataset, layout.TEST_DIR, "ir", "t000.png")), dtype=np.float64)
    assert res["images"][0]["rms"] == pytest.approx(metrics.rms(gt, b), abs=1e-3)
    assert os.path.isfile(os.path.join(str(tmp_path / "inf"), "t000.png"))


def test_infer_cli_decodes_like_the_kits_evaluation(trained, dataset, server, tmp_path, capsys):
    """One decoding default: with --dataset the client decodes mmse (class weights divided out), as
    tools.evaluate does; mmse without a dataset is a one-line error."""
    from PIL import Image
    from thermalnet.inference import Predictor
    c, s = trained
    img = os.path.join(dataset, layout.TEST_DIR, "visible", "t000.png")
    out = str(tmp_path / "inf")
    assert C.main(["--url", server.url, "--poll", server.poll, "infer", "--job-id", s["model_job"], "--dataset", dataset,
                   "--limit", "1", "--out", out]) == 0
    pred = Predictor(s["files"]["deploy"], s["files"]["caffemodel"],
                     mean_file=os.path.join(dataset, layout.TRAIN_DB, layout.MEAN_FILE))
    weights = layout.read_class_weights(dataset, spec.NUM_BINS)
    rgb = np.asarray(Image.open(img).convert("RGB"))
    want = pred.predict_brightness([rgb], decoders.DEFAULT_DECODING, class_weights=weights)[0]
    other = pred.predict_brightness([rgb], decoders.FALLBACK_DECODING)[0]
    got = np.asarray(Image.open(os.path.join(out, "t000.png")), dtype=np.float64)
    assert np.abs(got - np.clip(np.rint(want), 0, 255)).max() <= 1
    assert json.load(open(os.path.join(out, "infer.json")))["decoding"] == decoders.DEFAULT_DECODING == "mmse"
    # mmse differs from the plain expectation on these weights (a net with rebalancing leans to rare bins)
    probs = pred.predict_probs([rgb])[0]
    assert not np.allclose(decoders.decode(probs, "mmse", class_weights=weights), other)
    capsys.readouterr()
    assert C.main(["--url", server.url, "--poll", server.poll, "infer", "--job-id", s["model_job"], "--images", img,
                   "--decoding", "mmse", "--out", out]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--decoding mmse needs --dataset" in err[0]


def test_infer_many_with_server_paths(trained, dataset):
    c, s = trained
    vis = os.path.join(dataset, layout.TEST_DIR, "visible")
    out = c.infer_many(s["model_job"], ["t000.png", "t001.png"], image_folder=vis)
    assert sorted(out) == [os.path.join(vis, "t000.png"), os.path.join(vis, "t001.png")]
    assert np.asarray(out[os.path.join(vis, "t001.png")]["prob"]).shape == (spec.NUM_BINS, H, W)


def test_infer_needs_job_id(server):
    c = server.client()
    with pytest.raises(C.DigitsHTTPError, match="job_id is a required field"):
        c.json("POST", jd.ROUTE_INFER_ONE, data={})


def test_upload_and_import_keep_the_weights(server, trained, dataset, caffe, tmp_path):
    c, s = trained
    res = C.upload_flow(c, s["files"]["caffemodel"], jd.repo_path("prototxt/thermalnet_v1_1.prototxt"), "t",
                        dataset_id=s["dataset_job"], import_model=True, dataset_server=dataset)
    assert server.standin is None or ("POST", jd.ROUTE_UPLOAD_ARCHIVE) in routes(server.standin)
    # The imported job's network names the dataset's class weights by their server path (as run does).
    job_dir = c.status("model", res["model_job"])["directory"]
    with open(os.path.join(job_dir, v.TRAIN_VAL_FILE)) as f:
        assert list(v.class_weights_files(f.read()).values()) == [os.path.join(dataset, layout.CLASS_WEIGHTS_FILE)]
    files = c.download_model(res["model_job"], str(tmp_path / "imported"))
    a = caffe.Net(s["files"]["deploy"], s["files"]["caffemodel"], caffe.TEST)
    b = caffe.Net(files["deploy"], files["caffemodel"], caffe.TEST)
    for name in a.params:
        for pa, pb in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(pa.data, pb.data)


def test_upload_carries_the_class_weights_and_the_raw_network_fails_the_import(server, trained, dataset,
                                                                              tmp_path, capsys):
    """The archive holds the dataset's class_weights.txt and a network that names it where DIGITS
    can read it; the raw network (relative class_weights.txt) makes the import job fail, because
    DIGITS runs Caffe in a job folder that has no such file."""
    c, s = trained
    net = jd.repo_path("prototxt/thermalnet_v1_1.prototxt")
    blob = C.build_pretrained_archive(s["files"]["caffemodel"], net, "cw", class_weights=os.path.join(
        dataset, layout.CLASS_WEIGHTS_FILE), class_weights_server="/srv/data/tiny/" + layout.CLASS_WEIGHTS_FILE)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        info = json.load(tf.extractfile("info.json"))
        packed = tf.extractfile(info[jd.ARCHIVE_CLASS_WEIGHTS_KEY]).read()
        original = tf.extractfile("original.prototxt").read().decode()
    with open(os.path.join(dataset, layout.CLASS_WEIGHTS_FILE), "rb") as f:
        assert packed == f.read()
    assert set(v.class_weights_files(original).values()) == {"/srv/data/tiny/" + layout.CLASS_WEIGHTS_FILE}
    # Without the dataset the upload refuses, naming the network and the file, before sending anything.
    sent = len(server.standin.state.log) if server.standin else None
    with pytest.raises(ValueError, match=r"thermalnet_v1_1.prototxt: layer 'loss' names class_weights.txt"):
        C.upload_flow(c, s["files"]["caffemodel"], net, "cw")
    assert sent is None or len(server.standin.state.log) == sent
    assert C.main(["--url", server.url, "--poll", server.poll, "upload", "--weights", s["files"]["caffemodel"]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class_weights.txt" in err[0] and "--dataset-server" in err[0], err
    # The raw network, uploaded as the kit used to: the import job ends in Error naming the file.
    info = {k: (val.format(run="raw", weights="snap.caffemodel") if isinstance(val, str) else val)
            for k, val in jd.load_job(jd.PRETRAINED_UPLOAD)["info"].items()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for arcname, path in (("original.prototxt", net), ("snap.caffemodel", s["files"]["caffemodel"]),
                              (v.PYTHON_LAYER_FILE, jd.repo_path("prototxt/digits_python_layers.py"))):
            tf.add(path, arcname=arcname)
        data = json.dumps(info).encode()
        ti = tarfile.TarInfo("info.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    c.upload_archive(buf.getvalue())
    job = jd.load_job(jd.PRETRAINED_UPLOAD)
    fields = dict(jd.form_fields(job, run="raw"), dataset=s["dataset_job"], pretrained_networks=c.find_pretrained(
        info["name"]))
    m = c.create(job["import_route"], fields, files=C._model_upload(
        dict(job, python_layer_file="prototxt/digits_python_layers.py")))
    # The message is the Python layer's own, from the tool's log (DIGITS' page says only "error code 1").
    with pytest.raises(C.DigitsJobFailed, match=r"class weights file class_weights.txt: no such file \(relative "
                                                r"paths are tried in the working directory .*%s" % m["id"]):
        c.wait("model", m["id"])


def _targz(name: str, data: bytes) -> bytes:
    """A .tar.gz holding one member `name` (hand-made archives for the refusal tests)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_archive_without_info_json_is_refused(server):
    c = server.client()
    with pytest.raises(C.DigitsHTTPError, match="Missing or Incorrect json file"):
        c.upload_archive(_targz("model.caffemodel", b"abc"))


def test_image_processing_export_matches_the_kits_lmdbs(server, dataset, tmp_path):
    # export-folders -> DIGITS' image-processing extension -> LMDBs equal to the kit's (stand-in build)
    from thermalnet.lmdb_io import read_lmdb
    assert C.export_image_folders(dataset, str(tmp_path / "f"), progress=False) == {"train": 6, "val": 4}
    c = server.client()
    built = c.wait("dataset", _image_folder_dataset(c, dataset, tmp_path))["directory"]
    for sub in (layout.TRAIN_DB, layout.VAL_DB):
        for part in (layout.FEATURES, layout.LABELS):
            mine = [a for _, a in read_lmdb(os.path.join(dataset, sub, part))]
            theirs = [a for _, a in read_lmdb(os.path.join(built, sub, part))]
            assert len(mine) == len(theirs)
            for a, b in zip(mine, theirs):
                np.testing.assert_array_equal(a, b)


def _image_folder_dataset(client, dataset, tmp_path) -> str:
    """export-folders, then the shipped image-folders job; returns the new dataset job's id."""
    folders = str(tmp_path / "folders")
    C.export_image_folders(dataset, folders, progress=False)
    client.login()
    job = jd.load_job(jd.DATASET_IMAGE_PROCESSING)
    return client.create(job["route"], jd.form_fields(job, folders=folders, name="t"))["id"]


def test_wait_rides_out_digits_500_on_a_running_image_folder_dataset(standin, dataset, tmp_path):
    """DIGITS 6.1.1 answers /datasets/<id>.json with HTTP 500 (TypeError: its json_dict asks the
    unfinished LMDB for its shape) while an image-folder dataset runs, 200 once it is done;
    /datasets/<id>/status answers throughout. wait() polls the latter, then reads the details."""
    import requests
    c = make_client(standin.url)
    jid = _image_folder_dataset(c, dataset, tmp_path)
    r = requests.get(standin.url + jd.ROUTE_DATASET_STATUS % jid, timeout=10)
    assert r.status_code == 500 and r.json()["error"] == {"message": "object of type 'NoneType' has no len()",
                                                          "type": "TypeError"}
    st = c.wait("dataset", jid)
    assert st["status"] == "Done" and st["id"] == jid
    polled = [(p, code) for _, p, code in standin.state.log if p.startswith("/datasets/%s" % jid)][1:]
    assert polled[-1] == (jd.ROUTE_DATASET_STATUS % jid, 200)            # the details, once done
    assert set(polled[:-1]) == {(jd.ROUTE_DATASET_STATE % jid, 200)}     # every poll before it
    assert c.state("dataset", jid) == "Done"
    with pytest.raises(C.DigitsHTTPError, match="Job not found"):
        c.state("dataset", "20170101-000000-dead")


def test_image_folder_dataset_trains_in_the_kits_caffe(server, dataset, caffe, tmp_path):
    """The shipped image-folders job's LMDBs, written with its encodings as DIGITS writes them,
    train in `caffe train` of the Caffe under test (the kit's has no OpenCV for encoded Datums)."""
    import shutil
    from conftest import caffe_tool_train
    c = server.client()
    built = c.wait("dataset", _image_folder_dataset(c, dataset, tmp_path))["directory"]
    shutil.copy(os.path.join(dataset, layout.CLASS_WEIGHTS_FILE), built)   # the kit's dataset has it
    out, snap = caffe_tool_train(built, str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.isfile(snap)


def test_unpack_refuses_escaping_members(tmp_path):
    with pytest.raises(C.DigitsError, match="refusing archive member"):
        C.unpack_model_archive(_targz("../evil.txt", b"x"), str(tmp_path / "m"))
    assert not os.path.exists(str(tmp_path / "m")) and not os.path.exists(str(tmp_path / "evil.txt"))


# -- dry run ----------------------------------------------------------------------------------------
def test_dry_run_prints_every_request_and_sends_nothing(capsys):
    url = "http://127.0.0.1:9"          # discard port: nothing may be sent
    rc = C.main(["--url", url, "--dry-run", "run", "--dataset-server", "/data/flir", "--job", jd.MODEL_PAPER])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    posts = [l for l in lines if l.startswith(("POST ", "GET "))]
    assert posts[0] == "POST %s/login" % url
    assert posts[1] == "POST %s%s" % (url, jd.ROUTE_DATASET_PREBUILT)
    assert "POST %s%s" % (url, jd.ROUTE_MODEL) in posts
    assert any(l.startswith("GET %s/models/dry-run-2/download.tar.gz" % url) for l in posts)
    assert "    prebuilt_train_images = /data/flir/train_db/features" in lines
    assert "    prebuilt_mean_file = /data/flir/train_db/mean.binaryproto" in lines
    assert "    train_epochs = 1000" in lines
    assert "    method = custom" in lines
    assert any(l.startswith("    custom_network = name: \"thermalnet_v1_0\"") and "lines" in l for l in lines)
    assert any(l.startswith("    [file] python_layer_client_file = digits_python_layers.py") for l in lines)


def test_cli_help_mentions_subcommands(capsys):
    with pytest.raises(SystemExit) as ei:
        C.main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for sub in ("run", "infer", "upload", "download", "export-folders", "--dry-run"):
        assert sub in out


def test_cli_exit_codes(dataset, tmp_path, capsys):
    """0 done, 1 a failure as ONE line `error: <file>: ...` (no traceback), 2 only argparse's usage errors."""
    assert C.main(["export-folders", "--dataset", dataset, "--out", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    missing = str(tmp_path / "absent")
    assert C.main(["export-folders", "--dataset", missing, "--out", str(tmp_path / "g")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: %s" % missing) and not os.path.exists(tmp_path / "g"), err
    # a server that refuses the connection: one line naming the URL, after the retries
    assert C.main(["--url", "http://127.0.0.1:9", "--retries", "0", "download", "--job-id", "x",
                   "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "127.0.0.1:9" in err[0], err
    with pytest.raises(SystemExit) as ei:
        C.main(["download"])                                    # --job-id missing: argparse's usage error
    assert ei.value.code == 2

