"""The kit's DIGITS job definitions (digits_jobs/jobs/*.json) turned into form fields.

Each JSON file holds the form DIGITS' page would submit, with the paths written as
placeholders ({dataset} = the dataset folder as the DIGITS server sees it,
{folders} = the image-folder export for the image-processing extension). Keys
starting with "_" are notes for people and never sent.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

from thermalnet import layout
from thermalnet.caffe_env import REPO_ROOT

JOBS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jobs")
DATASET_PREBUILT = "dataset_prebuilt.json"
DATASET_IMAGE_PROCESSING = "dataset_image_processing.json"
MODEL_DEMO = "model_demo.json"
MODEL_PAPER = "model_paper.json"
PRETRAINED_UPLOAD = "pretrained_upload.json"
INFERENCE = "inference.json"

# Routes (DIGITS 6: digits/dataset/images/generic/views.py, digits/dataset/generic/views.py,
# digits/model/images/generic/views.py, digits/pretrained_model/views.py, digits/views.py).
ROUTE_LOGIN = "/login"
ROUTE_DATASET_PREBUILT = "/datasets/images/generic.json"
ROUTE_DATASET_EXTENSION = "/datasets/generic/create/%s.json"
ROUTE_MODEL = "/models/images/generic.json"
ROUTE_DATASET_STATUS = "/datasets/%s.json"
ROUTE_MODEL_STATUS = "/models/%s.json"
# The state alone (digits/views.py job_status): answers while a job runs. DIGITS 6.1.1's
# /datasets/<id>.json answers HTTP 500 for a generic image-folder dataset until its
# create-db task has logged the feature shape (GenericDatasetJob.get_feature_dims: len(None)).
ROUTE_DATASET_STATE = "/datasets/%s/status"
ROUTE_MODEL_STATE = "/models/%s/status"
ROUTE_JOB_TABLE = "/jobs/%s/table_data.json"
ROUTE_DOWNLOAD = "/models/%s/download.tar.gz"
ROUTE_FILES = "/files/%s/%s"
ROUTE_UPLOAD_ARCHIVE = "/pretrained_models/upload_archive"
ROUTE_COMPLETED = "/completed_jobs.json"
ROUTE_INFER_ONE = "/models/images/generic/infer_one.json"
ROUTE_INFER_MANY = "/models/images/generic/infer_many.json"
CAFFE_LOG = "caffe_output.log"
# DIGITS' "Pretrained model(s)" field of a custom network (digits/model/forms.py): server
# paths separated by the server's os.path.pathsep (":" on DIGITS' Linux hosts); DIGITS'
# caffe_train.py splits them and runs caffe train --weights=A,B (Caffe's -weights).
PRETRAINED_FIELD = "custom_network_snapshot"
DIGITS_PATHSEP = ":"


def pretrained_field(weights) -> Dict[str, str]:
    """The kit's --weights ("A,B" or a list of paths as the DIGITS server sees them) as DIGITS' field."""
    from thermalnet.nets import split_weights
    files = split_weights(weights)
    for f in files:
        if DIGITS_PATHSEP in f:
            raise ValueError("%s: DIGITS separates pretrained models with %r, so a path may not contain it"
                             % (f, DIGITS_PATHSEP))
    return {PRETRAINED_FIELD: DIGITS_PATHSEP.join(files)}


def load_job(name_or_path: str) -> Dict:
    """A job JSON by file name (in digits_jobs/jobs/) or path; one-line errors naming the file."""
    path = name_or_path if os.path.exists(name_or_path) else os.path.join(JOBS_DIR, name_or_path)
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: no such job definition" % name_or_path)
    with open(path) as f:
        try:
            job = json.load(f)
        except ValueError as exc:
            raise ValueError("%s: not JSON (%s)" % (path, exc))
    if not isinstance(job, dict) or not isinstance(job.get("form"), dict):
        raise ValueError("%s: a job definition is a JSON object with a \"form\" object" % path)
    job["_path"] = path
    return job


def _fill(value, subs: Dict[str, str]):
    if isinstance(value, str):
        try:
            return value.format(**subs)
        except KeyError as exc:
            raise ValueError("placeholder {%s} has no value here" % exc.args[0])
    return value


def form_fields(job: Dict, **subs: str) -> Dict[str, str]:
    """The form as strings, placeholders filled, notes ("_..." keys) dropped."""
    out = {}
    for k, v in job["form"].items():
        if k.startswith("_"):
            continue
        v = _fill(v, subs)
        if isinstance(v, bool):
            v = "1" if v else ""
        out[k] = str(v)
    return out


def repo_path(rel: str) -> str:
    """Files named in the jobs (network, Python layer) are relative to the repository."""
    return rel if os.path.isabs(rel) else os.path.join(REPO_ROOT, rel)


def dataset_layout(root: str) -> Dict[str, str]:
    """The kit's dataset layout (spec) as absolute-style paths under root (a server path)."""
    j = lambda *p: "/".join([root.rstrip("/")] + list(p))   # noqa: E731 (server paths are POSIX)
    return {"train_images": j(layout.TRAIN_DB, layout.FEATURES), "train_labels": j(layout.TRAIN_DB, layout.LABELS),
            "val_images": j(layout.VAL_DB, layout.FEATURES), "val_labels": j(layout.VAL_DB, layout.LABELS),
            "mean_file": j(layout.TRAIN_DB, layout.MEAN_FILE), "class_weights": j(layout.CLASS_WEIGHTS_FILE),
            "test_visible": j(layout.TEST_DIR, "visible")}


def model_network_text(job: Dict, class_weights: Optional[str] = None) -> str:
    """The job's network prototxt as DIGITS' custom_network field; class weights made absolute."""
    from digits_jobs.validate import rewrite_class_weights
    path = repo_path(job["network"])
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: the network named by %s does not exist" % (path, job.get("_path", "job")))
    with open(path) as f:
        text = f.read()
    return rewrite_class_weights(text, class_weights) if class_weights else text


# Field names of DIGITS 6's forms, per route (digits/model/forms.py, digits/model/images/forms.py,
# digits/dataset/forms.py, digits/dataset/images/forms.py, digits/dataset/images/generic/forms.py,
# digits/dataset/generic/forms.py, digits/extensions/data/imageProcessing/forms.py). DIGITS
# ignores fields it does not know, so a misspelt one would silently fall back to a default;
# tests/test_digits_jobs.py checks every job against these lists.
_MODEL_FIELDS = (
    "dataset python_layer_from_client python_layer_client_file python_layer_server_file train_epochs "
    "snapshot_interval val_interval random_seed batch_size batch_accumulation solver_type rms_decay "
    "learning_rate lr_policy lr_step_size lr_step_gamma lr_multistep_values lr_multistep_gamma lr_exp_gamma "
    "lr_inv_gamma lr_inv_power lr_poly_power lr_sigmoid_step lr_sigmoid_gamma method framework "
    "standard_networks previous_networks pretrained_networks custom_network custom_network_snapshot "
    "select_gpu select_gpus select_gpus_list select_gpu_count model_name group_name shuffle crop_size use_mean "
    "aug_flip aug_quad_rot aug_rot aug_scale aug_noise aug_hsv_use aug_hsv_h aug_hsv_s aug_hsv_v").split()
_DATASET_FIELDS = ("dataset_name", "group_name")
DIGITS_FIELDS = {
    ROUTE_MODEL: tuple(_MODEL_FIELDS),
    ROUTE_DATASET_PREBUILT: _DATASET_FIELDS + tuple(
        "encoding resize_channels resize_width resize_height resize_mode method prebuilt_train_images "
        "prebuilt_train_labels prebuilt_val_images prebuilt_val_labels force_same_shape prebuilt_mean_file".split()),
    ROUTE_DATASET_EXTENSION % "image-processing": _DATASET_FIELDS + tuple(
        "dsopts_feature_encoding dsopts_label_encoding dsopts_batch_size dsopts_num_threads dsopts_backend "
        "dsopts_force_same_shape feature_folder label_folder folder_pct_val has_val_folder "
        "validation_feature_folder validation_label_folder channel_conversion".split()),
    ROUTE_INFER_ONE: ("job_id", "image_path", "snapshot_epoch", "show_visualizations", "dont_resize"),
    ROUTE_INFER_MANY: ("job_id", "image_folder", "num_test_images", "snapshot_epoch", "dont_resize"),
}
# info.json keys DIGITS' upload_archive reads (validate_archive_keys + the model/labels lookups).
ARCHIVE_REQUIRED_KEYS = ("snapshot file", "framework", "name")
ARCHIVE_MODEL_KEYS = ("model file", "network file")
# The kit's own info.json key for the class-weights file in an uploaded archive. DIGITS'
# CaffeUploadTask keeps only the snapshot, model, labels and Python-layer files, so the
# loss layer reads the dataset's copy on the server (its absolute path is written into
# the network); the copy in the archive keeps the model and its v(q) together.
ARCHIVE_CLASS_WEIGHTS_KEY = "class weights file"
