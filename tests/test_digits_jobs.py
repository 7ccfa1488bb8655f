"""The DIGITS job definitions (digits_jobs/jobs/*.json) against DIGITS' field names and the kit's spec."""
from __future__ import annotations

import glob
import json
import math
import os

import pytest

from thermalnet import solver as digits_solver, layout, spec
from digits_jobs import jobdefs as jd
from digits_jobs import validate as v

JOB_FILES = sorted(glob.glob(os.path.join(jd.JOBS_DIR, "*.json")))


def test_all_job_files_present():
    names = {os.path.basename(p) for p in JOB_FILES}
    assert {jd.DATASET_PREBUILT, jd.DATASET_IMAGE_PROCESSING, jd.MODEL_DEMO, jd.MODEL_PAPER,
            jd.PRETRAINED_UPLOAD, jd.INFERENCE} <= names


@pytest.mark.parametrize("path", JOB_FILES, ids=os.path.basename)
def test_fields_are_digits_fields(path):
    job = jd.load_job(path)
    route = job.get("route") if job.get("route") in jd.DIGITS_FIELDS else (
        job.get("import_route") or job.get("route_one"))
    known = set(jd.DIGITS_FIELDS[route])
    unknown = [k for k in job["form"] if not k.startswith("_") and k not in known]
    assert not unknown, "%s: fields DIGITS does not know (it would ignore them): %s" % (path, unknown)


def test_prebuilt_dataset_paths_follow_the_spec_layout():
    f = jd.form_fields(jd.load_job(jd.DATASET_PREBUILT), dataset="/data/x", name="x")
    lay = jd.dataset_layout("/data/x")
    assert f["prebuilt_train_images"] == lay["train_images"] == "/data/x/%s/%s" % (layout.TRAIN_DB, layout.FEATURES)
    assert f["prebuilt_train_labels"] == lay["train_labels"]
    assert f["prebuilt_val_images"] == lay["val_images"]
    assert f["prebuilt_val_labels"] == lay["val_labels"]
    assert f["prebuilt_mean_file"] == lay["mean_file"] == "/data/x/%s/%s" % (layout.TRAIN_DB, layout.MEAN_FILE)
    assert f["method"] == "prebuilt" and f["force_same_shape"] == "1"


def test_image_processing_keeps_labels_raw():
    f = jd.form_fields(jd.load_job(jd.DATASET_IMAGE_PROCESSING), folders="/data/f", name="x")
    # a channel conversion would also convert the 1-channel label PNGs
    assert f["channel_conversion"] == "none" and f["dsopts_label_encoding"] == "none"
    assert f["has_val_folder"] == "1" and f["folder_pct_val"] == "0"
    assert f["validation_label_folder"] == "/data/f/val/labels"


def test_missing_placeholder_is_an_error():
    with pytest.raises(ValueError, match="placeholder {dataset}"):
        jd.form_fields(jd.load_job(jd.DATASET_PREBUILT), name="x")


def test_paper_job_is_the_papers_schedule():
    job = jd.load_job(jd.MODEL_PAPER)
    assert job["form"]["train_epochs"] == 1000            # Kniaz et al. 2017, section 5
    assert os.path.basename(job["network"]) == "thermalnet_%s.prototxt" % spec.PAPER_BASE
    ds = v.DatasetFacts.nominal(spec.PAPER_HEIGHT, spec.PAPER_WIDTH, spec.PAPER_TRAIN, spec.PAPER_TEST)
    files = v.digits_files(jd.model_network_text(job, "/data/p/class_weights.txt"), ds,
                           v.JobSettings.from_form(jd.form_fields(job)), where=job["network"])
    b = int(job["form"]["batch_size"])
    assert files.solver.max_iter == math.ceil(spec.PAPER_TRAIN / b) * 1000
    assert list(files.deploy.input_shape[0].dim) == [1, 3, spec.PAPER_HEIGHT, spec.PAPER_WIDTH]


def test_demo_job_mirrors_the_kit_demo():
    from tools import demo
    job = jd.load_job(jd.MODEL_DEMO)
    f = job["form"]
    assert os.path.basename(job["network"]) == "thermalnet_%s.prototxt" % spec.DEFAULT_BASE
    assert f["train_epochs"] == demo.DEMO_EPOCHS
    assert f["batch_size"] == demo.DEMO_BATCH
    assert f["learning_rate"] == pytest.approx(demo.DEMO_BASE_LR)
    assert f["solver_type"] == "ADAM"


@pytest.mark.parametrize("name", [jd.MODEL_DEMO, jd.MODEL_PAPER])
def test_model_jobs_carry_digits_pretrained_field_empty(name):
    """DIGITS' 'Pretrained model(s)' field is in each model job, empty (fillers) until --weights fills it."""
    job = jd.load_job(name)
    assert jd.PRETRAINED_FIELD in jd.DIGITS_FIELDS[job["route"]]
    assert job["form"][jd.PRETRAINED_FIELD] == "" and jd.form_fields(job)[jd.PRETRAINED_FIELD] == ""
    assert jd.pretrained_field("/w/a.caffemodel, /w/b.caffemodel") == {jd.PRETRAINED_FIELD: "/w/a.caffemodel:/w/b.caffemodel"}
    with pytest.raises(ValueError, match="may not contain"):
        jd.pretrained_field("/w/odd:name.caffemodel")


@pytest.mark.parametrize("name", [jd.MODEL_DEMO, jd.MODEL_PAPER])
def test_model_jobs_upload_the_loss_layer(name):
    job = jd.load_job(name)
    assert os.path.isfile(jd.repo_path(job["python_layer_file"]))
    assert os.path.basename(job["python_layer_file"]) == v.PYTHON_LAYER_FILE
    assert job["form"]["python_layer_from_client"] is True and job["form"]["method"] == "custom"
    assert job["form"]["solver_type"] in digits_solver.SOLVER_TYPES
    assert job["form"]["lr_policy"] in digits_solver.LR_POLICIES


def test_pretrained_archive_info_has_digits_keys():
    info = jd.load_job(jd.PRETRAINED_UPLOAD)["info"]
    for key in jd.ARCHIVE_REQUIRED_KEYS:
        assert key in info
    assert any(k in info for k in jd.ARCHIVE_MODEL_KEYS)
    form = jd.load_job(jd.PRETRAINED_UPLOAD)["form"]
    # the import job must leave the weights alone: lr 0 (and DIGITS' weight decay = lr / 100 = 0)
    assert float(form["learning_rate"]) == 0 and form["method"] == "pretrained"


def test_inference_form_never_sends_an_empty_epoch():
    # DIGITS does float(snapshot_epoch): an empty value is a server error
    assert "snapshot_epoch" not in jd.load_job(jd.INFERENCE)["form"]


def test_archive_round_trip(tmp_path):
    import io
    import tarfile
    from digits_jobs.client import build_pretrained_archive
    w = tmp_path / "snap_iter_5.caffemodel"
    w.write_bytes(b"\x00weights")
    cw = tmp_path / layout.CLASS_WEIGHTS_FILE
    cw.write_text("1\n" * spec.NUM_BINS)
    blob = build_pretrained_archive(str(w), jd.repo_path("prototxt/thermalnet_v1_1.prototxt"), "r1",
                                    class_weights=str(cw), class_weights_server="/data/p/" + layout.CLASS_WEIGHTS_FILE)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        names = tf.getnames()
        info = json.load(tf.extractfile("info.json"))
        assert tf.extractfile("snap_iter_5.caffemodel").read() == b"\x00weights"
        assert tf.extractfile(layout.CLASS_WEIGHTS_FILE).read() == cw.read_bytes()
    assert set(names) == {"info.json", "original.prototxt", "snap_iter_5.caffemodel", v.PYTHON_LAYER_FILE,
                          layout.CLASS_WEIGHTS_FILE}
    assert info[jd.ARCHIVE_CLASS_WEIGHTS_KEY] == layout.CLASS_WEIGHTS_FILE
    assert info["snapshot file"] == "snap_iter_5.caffemodel" and info["model file"] == "original.prototxt"
    assert info["name"] == "thermalnet-kit-r1" and info["framework"] == "caffe"


def test_paper_job_matches_the_paper_solver_template():
    """The DIGITS paper job and prototxt/solver_paper.prototxt make the same assumption."""
    import json
    import re
    job = json.load(open(os.path.join(jd.JOBS_DIR, "model_paper.json")))["form"]
    solver = open(os.path.join(os.path.dirname(jd.JOBS_DIR), "..", "prototxt", "solver_paper.prototxt")).read()
    field = lambda name: re.search(r"^%s:\s*\"?([^\"\n]+)" % name, solver, re.M).group(1)  # noqa: E731
    assert job["solver_type"] == field("type")
    assert float(job["learning_rate"]) == float(field("base_lr"))
    assert job["lr_policy"] == field("lr_policy")
    assert float(job["lr_step_gamma"]) == float(field("gamma"))
    max_iter, stepsize = int(field("max_iter")), int(field("stepsize"))
    assert stepsize == -(-max_iter * job["lr_step_size"] // 100)
    assert job["train_epochs"] == 1000 and int(job["batch_size"]) * int(field("test_interval")) == 1000
