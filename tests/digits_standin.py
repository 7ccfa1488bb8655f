"""A local stand-in for DIGITS' HTTP contract -- NOT DIGITS -- to test the client against.

    python -m tests.digits_standin [--port 0] [--jobs-dir DIR] [--max-seconds 600]

DIGITS (Python 2, Flask, a GPU scheduler) cannot run here, so this small
http.server implements the routes and fields the kit's client uses, with DIGITS'
answers as its sources have them (digits/views.py, digits/dataset/.../views.py,
digits/model/images/generic/views.py, digits/pretrained_model/views.py):
form errors as HTTP 400 {"errors": {field: [message]}}, other errors as
{"error": {"message", "type"}}, the `username` cookie from POST /login, job
states Initialized -> Running -> Done (or Error), progress, snapshots, the model
tarball, /files/, infer_one/infer_many answers {"outputs": ...}, and DIGITS 6.1.1's
faults that a client meets: /datasets/<id>.json answers HTTP 500 (TypeError) for an
image-folder dataset until it is done, while /<kind>/<id>/status answers throughout;
the image-processing extension writes PNG/JPEG-encoded Datums when asked to (which a
Caffe without OpenCV cannot read).

What it really does and does not do:
* It validates the forms like DIGITS (required fields, folders/files that must
  exist, choices, number ranges, the network must parse as a NetParameter).
* A model job applies DIGITS' rules with digits_jobs.validate (the same split,
  Data layers, deploy and solver files); a rule violation puts the job in Error.
* It does NOT train. A "finished" model's snapshot holds randomly initialised
  weights (or the uploaded pretrained weights, or the custom_network_snapshot
  files copied in by layer name), saved by the real Caffe; its log says so.
  Inference runs that snapshot in the real Caffe.
* It listens on 127.0.0.1 only, on an ephemeral port by default, bounds request
  bodies and the number of jobs, stops after --max-seconds, and marks every answer
  with the header X-Thermalnet-Stand-In.
Jobs advance one step per status request (no timers), so tests are deterministic.
"""
from __future__ import annotations

import argparse
import email.parser
import email.policy
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

import numpy as np

from digits_jobs import validate as v
from thermalnet import solver as digits_solver

STANDIN_HEADER = "X-Thermalnet-Stand-In"
STANDIN_NOTE = "stand-in for DIGITS' HTTP contract, not DIGITS"
MAX_BODY = 64 << 20
MAX_JOBS = 200
FRAMEWORKS = ("caffe",)
REQUIRED = "This field is required."


def _err(d: Dict[str, List[str]], field: str, msg: str) -> None:
    d.setdefault(field, []).append(msg)


class Job:
    def __init__(self, jid: str, kind: str, name: str, root: str):
        self.id, self.kind, self.name = jid, kind, name
        self.dir = os.path.join(root, jid)
        os.makedirs(self.dir)
        self.status = "Initialized"
        self.progress = 0
        self.snapshots: List[float] = []
        self.error: Optional[str] = None
        self.facts: Optional[v.DatasetFacts] = None
        self.settings: Optional[v.JobSettings] = None
        self.network: Optional[str] = None
        self.dataset_id: Optional[str] = None
        self.pretrained_weights: Optional[str] = None
        self.weights_files: List[str] = []     # custom_network_snapshot: caffe train --weights
        self.max_iter = 0
        self.submitted = time.time()
        self.pending: List = []        # dataset work done on the first Running step
        self.extension = False         # a generic (extension) dataset: DIGITS' GenericDatasetJob

    def brief(self) -> Dict:
        d = {"id": self.id, "name": self.name, "status": self.status}
        if self.dataset_id:
            d["dataset_id"] = self.dataset_id
        return d


class StandinState:
    """Jobs, users and injected faults of one stand-in server."""

    def __init__(self, jobs_dir: str, make_weights: bool = True, steps: int = 4, max_jobs: int = MAX_JOBS):
        self.jobs_dir = jobs_dir
        self.jobs: Dict[str, Job] = {}
        self.lock = threading.Lock()
        self.make_weights = make_weights
        self.steps = max(1, steps)
        self.max_jobs = max_jobs
        self.faults: Dict[Tuple[str, str], List] = {}
        self.log: List[Tuple[str, str, int]] = []
        self._n = 0

    def inject(self, method: str, path: str, *answers) -> None:
        """Answer the next requests to (method, path) with these HTTP codes, or "drop" (close, no answer)."""
        self.faults.setdefault((method, path), []).extend(answers)

    def new_job(self, kind: str, name: str) -> Job:
        if len(self.jobs) >= self.max_jobs:
            raise _Answer(429, {"error": {"message": "stand-in job limit (%d) reached" % self.max_jobs,
                                          "type": "TooManyRequests"}})
        self._n += 1
        jid = "%s-%04d" % (time.strftime("%Y%m%d-%H%M%S"), self._n)
        job = Job(jid, kind, name, self.jobs_dir)
        self.jobs[jid] = job
        return job

    # -- job progression (one step per status request) ---------------------------------
    def advance(self, job: Job) -> None:
        if job.status in ("Done", "Error", "Aborted"):
            return
        if job.status == "Initialized":
            job.status = "Running"
            try:
                if job.kind == "dataset":
                    self._run_dataset(job)
                elif job.kind == "model":
                    self._start_model(job)          # DIGITS' before_run: no caffe_output.log yet
            except Exception as exc:   # noqa: BLE001 - a task failure is the job's Error state
                job.status, job.error = "Error", "%s: %s" % (type(exc).__name__, exc)
                return
            try:
                if job.kind == "model":
                    self._start_caffe(job)          # what `caffe train` would meet first
            except Exception as exc:   # noqa: BLE001
                job.status, job.error = "Error", "error code 1"      # DIGITS: the tool's exit status
                self._log(job, "%s: %s" % (type(exc).__name__, exc))
            return
        job.progress = min(100, job.progress + int(np.ceil(100.0 / self.steps)))
        if job.progress >= 100:
            try:
                if job.kind == "model":
                    self._finish_model(job)
                job.status = "Done"
            except Exception as exc:   # noqa: BLE001
                job.status, job.error = "Error", "%s: %s" % (type(exc).__name__, exc)
                self._log(job, "task failed: %s" % job.error)

    def _log(self, job: Job, line: str) -> None:
        with open(os.path.join(job.dir, "caffe_output.log"), "a") as f:
            f.write("[%s] %s\n" % (STANDIN_NOTE, line))

    def _run_dataset(self, job: Job) -> None:
        for step in job.pending:
            step()

    def _start_model(self, job: Job) -> None:
        """DIGITS' before_run: split the network, write the job files (rule errors -> Error)."""
        ds = self.jobs[job.dataset_id]
        pyfile = os.path.join(job.dir, v.PYTHON_LAYER_FILE)
        files = v.digits_files(job.network, ds.facts, job.settings,
                               python_layer_file=pyfile if os.path.isfile(pyfile) else None, where=job.name)
        for name, text in files.texts().items():
            with open(os.path.join(job.dir, name), "w") as f:
                f.write(text)
        job.max_iter = files.solver.max_iter
        self._log(job, "wrote %s; no training runs in the stand-in" % ", ".join(sorted(files.texts())))

    def _start_caffe(self, job: Job) -> None:
        """`caffe train` in the job folder, as far as the stand-in can tell without running it."""
        with open(os.path.join(job.dir, v.TRAIN_VAL_FILE)) as f:
            train_val = f.read()
        # The Python loss layer opens its class-weights file in the job folder (relative) or at its
        # absolute path; the stand-in assumes no THERMALNET_DATASET on the server. The message is
        # the layer's own (prototxt/digits_python_layers.py load_class_weights).
        for layer, path in v.class_weights_files(train_val, where=job.name).items():
            if not os.path.isfile(path if os.path.isabs(path) else os.path.join(job.dir, path)):
                raise ValueError("class weights file %s: no such file (relative paths are tried in the working "
                                 "directory %s, then in $THERMALNET_DATASET, which is not set)" % (path, job.dir))
        if job.weights_files:
            # DIGITS runs caffe train --weights=A,B; a file that does not fit aborts Caffe and
            # the job ends in Error. The stand-in checks the same by name and shape, without Caffe.
            from thermalnet.nets import check_weights
            fit = check_weights(job.weights_files, os.path.join(job.dir, v.DEPLOY_FILE))
            self._log(job, "pretrained weights %s: %d layers copied by name, from fillers: %s"
                      % (",".join(job.weights_files), len(fit["from_weights"]), ", ".join(fit["from_fillers"])))

    def _finish_model(self, job: Job) -> None:
        """A snapshot from the real Caffe: random init (custom) or the uploaded weights (pretrained)."""
        name = "%s_iter_%d.caffemodel" % (v.SNAPSHOT_PREFIX, job.max_iter)
        if self.make_weights:
            from thermalnet.caffe_env import import_caffe
            caffe = import_caffe()
            caffe.set_mode_cpu()
            # The deploy net has no data or Python layers: absolute paths, no chdir (threads share cwd).
            net = caffe.Net(os.path.join(job.dir, v.DEPLOY_FILE), caffe.TEST)
            if job.pretrained_weights:
                net.copy_from(job.pretrained_weights)
            for w in job.weights_files:
                net.copy_from(w)
            net.save(os.path.join(job.dir, name))
            self._log(job, "snapshot %s holds %s weights, NOT trained ones" % (
                name, "the uploaded pretrained" if job.pretrained_weights else
                "the custom_network_snapshot (pretrained model) and filler" if job.weights_files else
                "randomly initialised"))
            job.snapshots = [float(job.settings.train_epochs)]

    # -- inference (DIGITS' transformer: resize, RGB->BGR, mean; then the deploy net) ---
    def infer(self, job: Job, images: List[Tuple[str, bytes]], epoch: Optional[float], resize: bool) -> Dict:
        from PIL import Image
        from thermalnet.caffe_env import import_caffe
        from thermalnet.lmdb_io import read_mean_binaryproto
        if job.status != "Done" or not job.snapshots:
            raise _Answer(500, {"error": {"message": "model job %s has no snapshot" % job.id, "type": "RuntimeError"}})
        if epoch is not None and epoch not in job.snapshots:
            raise _Answer(500, {"error": {"message": "Invalid epoch %s" % epoch, "type": "ValueError"}})
        caffe = import_caffe()
        caffe.set_mode_cpu()
        snap = [f for f in os.listdir(job.dir) if f.endswith(".caffemodel")][0]
        ds = self.jobs[job.dataset_id].facts
        mean = None
        if job.settings.use_mean != "none" and ds.mean_file:
            mean = read_mean_binaryproto(ds.mean_file).astype(np.float32)
            if job.settings.use_mean == "pixel":
                mean = mean.mean(axis=(1, 2), keepdims=True)
        out = []
        net = caffe.Net(os.path.join(job.dir, v.DEPLOY_FILE), os.path.join(job.dir, snap), caffe.TEST)
        _, c, h, w = net.blobs["data"].data.shape
        for key, blob in images:
            try:
                img = Image.open(io.BytesIO(blob)).convert("RGB" if c == 3 else "L")
            except Exception as exc:   # noqa: BLE001
                raise _Answer(500, {"error": {"message": "cannot read image %s: %s" % (key, exc),
                                              "type": "ValueError"}})
            if resize and img.size != (w, h):
                img = img.resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
            arr = arr[:, :, ::-1].transpose(2, 0, 1) if c == 3 else arr[np.newaxis]
            if mean is not None:
                # DIGITS resizes a mean image of another size; the stand-in falls back to its pixel mean
                fits = mean.shape[1:] in ((1, 1), arr.shape[1:])
                arr = arr - (mean if fits else mean.mean(axis=(1, 2), keepdims=True))
            net.blobs["data"].reshape(1, *arr.shape)
            net.blobs["data"].data[...] = arr
            res = net.forward()
            out.append((key, {k: np.array(val[0]) for k, val in res.items()}))
        return dict(out)


class _Answer(Exception):
    def __init__(self, status: int, body, headers: Optional[Dict[str, str]] = None):
        self.status, self.body, self.headers = status, body, headers or {}


def _not_found(what: str = "Job not found") -> _Answer:
    return _Answer(404, {"error": {"message": "404 Not Found: %s" % what, "type": "NotFound", "description": what}})


def _bad_request(what: str) -> _Answer:
    return _Answer(400, {"error": {"message": "400 Bad Request: %s" % what, "type": "BadRequest",
                                   "description": what}})


class Form:
    """Parsed request fields: strings in .fields, uploads in .files (name -> (filename, bytes))."""

    def __init__(self, fields: Dict[str, str], files: Dict[str, Tuple[str, bytes]]):
        self.fields, self.files = fields, files

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.fields


def _parse_body(ctype: str, body: bytes) -> Form:
    if ctype.startswith("multipart/form-data"):
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
        fields, files = {}, {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            payload = part.get_payload(decode=True) or b""
            if filename is not None:
                files[name] = (filename, payload)
            else:
                fields[name] = payload.decode("utf-8")
        return Form(fields, files)
    qs = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    return Form({k: vals[-1] for k, vals in qs.items()}, {})


# -- field checks with WTForms' / DIGITS' messages ---------------------------------------------
def _int(form: Form, errs, key, default=None, minimum=None, maximum=None, optional=False):
    raw = form.get(key, "")
    if raw.strip() == "":
        if optional or default is not None:
            return default
        _err(errs, key, REQUIRED)
        return None
    try:
        val = int(raw)
    except ValueError:
        _err(errs, key, "Not a valid integer value")
        return None
    if (minimum is not None and val < minimum) or (maximum is not None and val > maximum):
        _err(errs, key, "Number must be at least %s." % minimum if maximum is None
             else "Number must be between %s and %s." % (minimum, maximum))
    return val


def _float_list(form: Form, errs, key, default, minimum=0.0):
    raw = form.get(key, "")
    if raw.strip() == "":
        return [default] if default is not None else []
    try:
        vals = [float(x) for x in raw.split(",")]
    except ValueError:
        _err(errs, key, "Not a valid float value")
        return []
    if any(x < minimum for x in vals):
        _err(errs, key, "All numbers must be at least %s." % minimum)
    return vals


def _choice(form: Form, errs, key, choices, default):
    val = form.get(key, default) or default
    if val not in choices:
        _err(errs, key, "Not a valid choice")
    return val


def _folder(form: Form, errs, key, required, message="Folder does not exist"):
    val = form.get(key, "").strip()
    if not val:
        if required:
            _err(errs, key, REQUIRED)
        return None
    if not os.path.isdir(val):
        _err(errs, key, message)
    return val


class StandinHandler(BaseHTTPRequestHandler):
    server_version = "thermalnet-digits-standin/1 (not DIGITS)"
    protocol_version = "HTTP/1.1"
    state: StandinState = None     # set per server class

    def log_message(self, fmt, *args):   # quiet: tests read state.log instead
        pass

    # -- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body, headers: Optional[Dict[str, str]] = None) -> None:
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode(), "application/json"
        elif isinstance(body, bytes):
            data, ctype = body, "application/octet-stream"
        else:
            data, ctype = str(body).encode(), "text/html; charset=utf-8"
        headers = dict(headers or {})
        ctype = headers.pop("Content-Type", ctype)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header(STANDIN_HEADER, STANDIN_NOTE)
        for k, val in headers.items():
            self.send_header(k, val)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise _Answer(413, {"error": {"message": "request body over the stand-in's %d bytes" % MAX_BODY,
                                          "type": "RequestEntityTooLarge"}})
        return self.rfile.read(n) if n else b""

    def _user(self) -> Optional[str]:
        for part in (self.headers.get("Cookie") or "").split(";"):
            k, _, val = part.strip().partition("=")
            if k == "username" and val:
                return val
        return None

    def _require_login(self) -> str:
        user = self._user()
        if not user:
            raise _Answer(401, {"error": {"message": "401 Unauthorized", "type": "Unauthorized"}})
        if not v_username(user):
            raise _bad_request("Invalid username - %s" % user)
        return user

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        path = url.path
        st = self.state
        with st.lock:
            plan = st.faults.get((method, path))
            fault = plan.pop(0) if plan else None
        try:
            body = self._body() if method == "POST" else b""
        except _Answer as a:
            self._send(a.status, a.body, a.headers)
            return
        if fault == "drop":
            st.log.append((method, path, 0))
            self.close_connection = True
            return
        if fault is not None:
            st.log.append((method, path, int(fault)))
            self._send(int(fault), "<html><body>%d (injected by the %s)</body></html>" % (fault, STANDIN_NOTE))
            return
        query = {k: vals[-1] for k, vals in parse_qs(url.query).items()}
        try:
            form = _parse_body(self.headers.get("Content-Type", ""), body) if method == "POST" else Form(query, {})
            with st.lock:
                status, answer, headers = self._route(method, path, form, query)
        except _Answer as a:
            status, answer, headers = a.status, a.body, a.headers
        except Exception as exc:   # noqa: BLE001 - a stand-in bug answers 500, like Flask's handler
            status, answer, headers = 500, {"error": {"message": str(exc), "type": type(exc).__name__}}, {}
        st.log.append((method, path, status))
        self._send(status, answer, headers)

    # -- routes ---------------------------------------------------------------------------------
    def _route(self, method: str, path: str, form: Form, query: Dict[str, str]):
        st = self.state
        if method == "POST" and path == "/login":
            return self._login(form, query)
        if method == "GET" and path in ("/index.json", "/completed_jobs.json"):
            return 200, self._job_lists(), {}
        if method == "POST" and path == "/datasets/images/generic.json":
            return 200, self._create_prebuilt(form), {}
        m = re.match(r"^/datasets/generic/create/([\w-]+)\.json$", path)
        if method == "POST" and m:
            return 200, self._create_extension(m.group(1), form), {}
        if method == "POST" and path == "/models/images/generic.json":
            return 200, self._create_model(form), {}
        m = re.match(r"^/(models|datasets|jobs)/([\w.-]+)/status$", path)
        if method == "GET" and m:
            # digits/views.py job_status: json.dumps (served as text/html), 200 even for an unknown job.
            job = st.jobs.get(m.group(2))
            if job is None:
                return 200, json.dumps({"error": "Job not found."}), {}
            st.advance(job)
            return 200, json.dumps({"error": None, "status": job.status, "name": job.name,
                                    "type": "Dataset" if job.kind == "dataset" else "Model"}), {}
        m = re.match(r"^/(models|datasets)/([\w.-]+)\.json$", path)
        if method == "GET" and m:
            job = self._job(m.group(2))
            st.advance(job)
            if job.extension and (job.status != "Done" or job.facts is None):
                # DIGITS 6.1.1: GenericDatasetJob.json_dict -> get_feature_dims -> len(feature_shape),
                # None until the create-db task logs the shape; the stand-in builds in one step, so
                # it answers 500 for the whole run.
                raise _Answer(500, {"error": {"message": "object of type 'NoneType' has no len()",
                                              "type": "TypeError"}})
            d = job.brief()
            d["directory"] = job.dir
            if job.kind == "model":
                d["snapshots"] = list(job.snapshots)
            return 200, d, {}
        m = re.match(r"^/jobs/([\w.-]+)/table_data\.json$", path)
        if method == "GET" and m:
            job = self._job(m.group(1))
            return 200, {"job": dict(job.brief(), progress=job.progress, type=job.kind)}, {}
        m = re.match(r"^/models/([\w.-]+)/download(?:\.(tar\.gz|tgz|tar))?$", path)
        if m:
            return self._download(self._job(m.group(1)), query.get("epoch") or form.get("snapshot_epoch"))
        m = re.match(r"^/files/([\w.-]+)/([\w.-]+)$", path)
        if method == "GET" and m:
            job = self._job(m.group(1))
            f = os.path.join(job.dir, m.group(2))
            if not os.path.isfile(f):
                raise _not_found("File not found")
            with open(f, "rb") as fh:
                return 200, fh.read(), {"Content-Type": "text/plain; charset=utf-8"}
        if method == "POST" and path == "/pretrained_models/upload_archive":
            return self._upload_archive(form)
        if method == "POST" and path in ("/models/images/generic/infer_one.json",
                                         "/models/images/generic/infer_many.json"):
            return self._infer(path.endswith("infer_one.json"), form, query)
        raise _not_found("no such route in the stand-in: %s %s" % (method, path))

    def _job(self, jid: str) -> Job:
        job = self.state.jobs.get(jid)
        if job is None:
            raise _not_found()
        return job

    def _login(self, form: Form, query: Dict[str, str]):
        user = (form.get("username") or query.get("username", "")).strip()
        if not v_username(user):
            page = ("<html><body><div class=\"alert alert-danger\">%s</div>"
                    "<form method=post action=/login><input name=username></form></body></html>"
                    % ("username is required" if not user else "Must start with a lowercase letter and use "
                       "only lowercase letters, numbers, periods, dashes and underscores"))
            return 200, page, {}
        nxt = form.get("next") or query.get("next") or "/"
        return 302, "<html>redirect</html>", {"Location": nxt, "Set-Cookie": "username=%s; Path=/" % user}

    def _job_lists(self) -> Dict:
        jobs = sorted(self.state.jobs.values(), key=lambda j: -j.submitted)
        running = [j.brief() for j in jobs if j.status in ("Initialized", "Waiting", "Running")]
        done = lambda kind: [dict(j.brief(), type=kind) for j in jobs   # noqa: E731
                             if j.kind == kind and j.status not in ("Initialized", "Waiting", "Running")]
        return {"version": "stand-in (not DIGITS)", "running": running, "datasets": done("dataset"),
                "models": done("model"), "pretrained_models": done("pretrained")}

    # -- datasets ---------------------------------------------------------------------------------
    def _create_prebuilt(self, form: Form) -> Dict:
        self._require_login()
        errs: Dict[str, List[str]] = {}
        name = form.get("dataset_name").strip()
        if not name:
            _err(errs, "dataset_name", REQUIRED)
        if form.get("method", "prebuilt") != "prebuilt":
            _err(errs, "method", "Not a valid choice")
        paths = {k: _folder(form, errs, k, k == "prebuilt_train_images")
                 for k in ("prebuilt_train_images", "prebuilt_train_labels", "prebuilt_val_images",
                           "prebuilt_val_labels")}
        mean = form.get("prebuilt_mean_file").strip() or None
        if mean and not os.path.isfile(mean):
            _err(errs, "prebuilt_mean_file", "File does not exist")
        same = _int(form, errs, "force_same_shape", default=1)
        if same not in (0, 1, None):
            _err(errs, "force_same_shape", "Not a valid choice")
        if errs:
            raise _Answer(400, {"errors": errs})
        job = self.state.new_job("dataset", name)

        def analyze():
            job.facts = _analyze(paths["prebuilt_train_images"], paths["prebuilt_train_labels"],
                                 paths["prebuilt_val_images"], paths["prebuilt_val_labels"], mean, bool(same))
        job.pending.append(analyze)
        return job.brief()

    def _create_extension(self, ext: str, form: Form) -> Dict:
        self._require_login()
        if ext != "image-processing":
            raise _bad_request("the stand-in knows only the image-processing extension, not %r" % ext)
        errs: Dict[str, List[str]] = {}
        name = form.get("dataset_name").strip()
        if not name:
            _err(errs, "dataset_name", REQUIRED)
        msg = "Folder does not exist or is not reachable"
        feat = _folder(form, errs, "feature_folder", True, msg)
        lab = _folder(form, errs, "label_folder", True, msg)
        has_val = form.get("has_val_folder", "").lower() not in ("", "false")
        vfeat = _folder(form, errs, "validation_feature_folder", has_val, msg)
        vlab = _folder(form, errs, "validation_label_folder", has_val, msg)
        pct = _int(form, errs, "folder_pct_val", default=10, minimum=0, maximum=100)
        conv = _choice(form, errs, "channel_conversion", ("RGB", "L", "none"), "none")
        encodings = [_choice(form, errs, key, ("none", "png", "jpg"), default)
                     for key, default in (("dsopts_feature_encoding", "png"), ("dsopts_label_encoding", "none"))]
        _choice(form, errs, "dsopts_backend", ("lmdb",), "lmdb")
        _int(form, errs, "dsopts_batch_size", default=32, minimum=1)
        _int(form, errs, "dsopts_num_threads", default=4, minimum=1)
        same = _int(form, errs, "dsopts_force_same_shape", default=1)
        if errs:
            raise _Answer(400, {"errors": errs})
        job = self.state.new_job("dataset", name)
        job.extension = True

        def build():
            job.facts = _build_from_folders(job.dir, feat, lab, vfeat if has_val else None,
                                            vlab if has_val else None, pct or 0, conv, bool(same), *encodings)
        job.pending.append(build)
        return job.brief()

    # -- models -------------------------------------------------------------------------------------
    def _create_model(self, form: Form) -> Dict:
        user = self._require_login()
        st = self.state
        errs: Dict[str, List[str]] = {}
        name = form.get("model_name").strip()
        if not name:
            _err(errs, "model_name", REQUIRED)
        ds_id = form.get("dataset")
        ds = st.jobs.get(ds_id)
        if ds is None or ds.kind != "dataset" or ds.status in ("Error", "Aborted"):
            _err(errs, "dataset", "Not a valid choice")
        method = _choice(form, errs, "method", ("standard", "previous", "pretrained", "custom"), "standard")
        if form.get("framework", "caffe") not in FRAMEWORKS:
            _err(errs, "framework", "The framework you choose is not currently supported.")
        net_text = form.get("custom_network")
        pretrained = None
        weights_files: List[str] = []
        if method == "custom":
            if not net_text.strip():
                _err(errs, "custom_network", REQUIRED)
            else:
                try:
                    v.parse_net(net_text)
                except v.DigitsRuleError as exc:
                    _err(errs, "custom_network", "Bad network: %s" % str(exc).split(": ", 1)[-1])
            # DIGITS 6.1.1's validate_custom_network_snapshot checks nothing (its existence check is
            # commented out): a path the server lacks fails the job when caffe train opens it.
            weights_files = [f for f in form.get("custom_network_snapshot").strip().split(os.path.pathsep) if f]
        elif method == "pretrained":
            pid = form.get("pretrained_networks")
            pretrained = st.jobs.get(pid)
            if not pid:
                _err(errs, "pretrained_networks", REQUIRED)
            elif pretrained is None or pretrained.kind != "pretrained":
                _err(errs, "pretrained_networks", "Selected job doesn't exist. Maybe it was deleted by another user.")
        else:
            _err(errs, "method", "the stand-in implements the custom and pretrained methods only")
        epochs = _int(form, errs, "train_epochs", default=30, minimum=1)
        rates = _float_list(form, errs, "learning_rate", 0.01)
        batches = [b for b in form.get("batch_size").split(",") if b.strip()]
        try:
            batches = [int(b) for b in batches]
            if any(b < 1 for b in batches):
                _err(errs, "batch_size", "All numbers must be at least 1.")
        except ValueError:
            _err(errs, "batch_size", "Not a valid integer value")
            batches = []
        for key in ("snapshot_interval", "val_interval"):
            _float_list(form, errs, key, 1.0)
        _int(form, errs, "random_seed", optional=True, minimum=0)
        _choice(form, errs, "solver_type", digits_solver.SOLVER_TYPES, "SGD")
        _choice(form, errs, "lr_policy", digits_solver.LR_POLICIES, "step")
        _choice(form, errs, "use_mean", v.USE_MEAN, "image")
        from_client = form.get("python_layer_from_client", "").lower() not in ("", "false")
        upload = form.files.get("python_layer_client_file")
        if from_client and upload is None:
            # DIGITS 6.1.1's validate_py_ext reads flask.request.files[...] unguarded: a KeyError, HTTP 400.
            raise _bad_request("The browser (or proxy) sent a request that this server could not understand.")
        if from_client and upload and upload[0] and os.path.splitext(upload[0])[1] not in (".py", ".pyc"):
            _err(errs, "python_layer_client_file", "Python file, %s, needs .py or .pyc extension." % upload[0])
        if errs:
            raise _Answer(400, {"errors": errs})
        if method == "pretrained":
            with open(os.path.join(pretrained.dir, v.ORIGINAL_FILE)) as f:
                net_text = f.read()
        created = []
        for rate in rates:
            for batch in batches or [None]:
                fields = dict(form.fields, learning_rate=str(rate), batch_size=str(batch or ""))
                extra = (" learning_rate:%s" % rate if len(rates) > 1 else "") + \
                        (" batch_size:%d" % batch if len(batches) > 1 else "")
                job = st.new_job("model", name + extra)
                job.dataset_id, job.network, job.username = ds_id, net_text, user
                try:
                    job.settings = v.JobSettings.from_form(fields)
                except v.DigitsRuleError as exc:
                    raise _Answer(400, {"errors": {"form": [str(exc)]}})
                job.settings.train_epochs = epochs
                if from_client and upload:
                    with open(os.path.join(job.dir, v.PYTHON_LAYER_FILE), "wb") as f:
                        f.write(upload[1])
                elif pretrained is not None and os.path.isfile(os.path.join(pretrained.dir, v.PYTHON_LAYER_FILE)):
                    shutil.copy(os.path.join(pretrained.dir, v.PYTHON_LAYER_FILE), job.dir)
                if pretrained is not None:
                    job.pretrained_weights = os.path.join(pretrained.dir, "model.caffemodel")
                job.weights_files = list(weights_files)
                created.append(job)
        if len(created) == 1:
            return created[0].brief()
        return {"jobs": [j.brief() for j in created]}

    def _download(self, job: Job, epoch: Optional[str]):
        if job.kind != "model" or not job.snapshots:
            raise _Answer(500, {"error": {"message": "no snapshot to download for job %s" % job.id,
                                          "type": "ValueError"}})
        snap = [f for f in os.listdir(job.dir) if f.endswith(".caffemodel")][0]
        if epoch not in (None, "", "-1") and float(epoch) not in job.snapshots:
            raise _Answer(500, {"error": {"message": "Invalid epoch %s" % epoch, "type": "ValueError"}})
        ds = self.state.jobs[job.dataset_id].facts
        info = {"id": job.id, "name": job.name, "status": job.status, "framework": "caffe",
                "snapshot file": snap, "solver file": v.SOLVER_FILE, "train_val file": v.TRAIN_VAL_FILE,
                "deploy file": v.DEPLOY_FILE, "model file": v.ORIGINAL_FILE,
                "image dimensions": [ds.height, ds.width, ds.channels], "digits version": STANDIN_NOTE}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            names = [v.SOLVER_FILE, v.TRAIN_VAL_FILE, v.DEPLOY_FILE, v.ORIGINAL_FILE, snap]
            if os.path.isfile(os.path.join(job.dir, v.PYTHON_LAYER_FILE)):
                names.append(v.PYTHON_LAYER_FILE)
                info["python layer file"] = v.PYTHON_LAYER_FILE
            for n in names:
                tf.add(os.path.join(job.dir, n), arcname=n)
            if ds.mean_file:
                tf.add(ds.mean_file, arcname=os.path.basename(ds.mean_file))
                info["mean file"] = os.path.basename(ds.mean_file)
            data = json.dumps(info, sort_keys=True, indent=4).encode()
            ti = tarfile.TarInfo("info.json")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        return 200, buf.getvalue(), {"Content-Disposition": "attachment; filename=%s_epoch_%s.tar.gz"
                                                             % (job.id, epoch or -1)}

    # -- pretrained models ------------------------------------------------------------------------------
    def _upload_archive(self, form: Form):
        # DIGITS' requires_login sits under the route decorator there, so it is not enforced: same here.
        if "archive" not in form.files:
            raise _bad_request("400 Bad Request: KeyError: 'archive'")
        blob = form.files["archive"][1]
        tmp = tempfile.mkdtemp(dir=self.state.jobs_dir, prefix=".upload-")
        try:
            members = _unpack_any(blob, tmp)
            if members is None:
                return 500, {"status": "Incorrect Archive Type"}, {}
            if "info.json" not in members:
                return 500, {"status": "Missing or Incorrect json file"}, {}
            with open(os.path.join(tmp, "info.json")) as f:
                info = json.load(f)
            for key in ("snapshot file", "framework", "name"):
                if key not in info:
                    return 500, {"status": "Missing Key '%s' in info.json" % key}, {}
            model = info.get("model file") or info.get("network file")
            if not model:
                return 500, {"status": "Missing model definition in info.json"}, {}
            for need in (info["snapshot file"], model):
                if need not in members:
                    return 500, {"status": "%s is not in the archive" % need}, {}
            job = self.state.new_job("pretrained", info["name"])
            shutil.move(os.path.join(tmp, info["snapshot file"]), os.path.join(job.dir, "model.caffemodel"))
            shutil.move(os.path.join(tmp, model), os.path.join(job.dir, v.ORIGINAL_FILE))
            if v.PYTHON_LAYER_FILE in members:
                shutil.move(os.path.join(tmp, v.PYTHON_LAYER_FILE), os.path.join(job.dir, v.PYTHON_LAYER_FILE))
            job.status, job.progress = "Done", 100
            return 200, {"status": "success"}, {}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- inference ---------------------------------------------------------------------------------------
    def _infer(self, one: bool, form: Form, query: Dict[str, str]):
        jid = query.get("job_id") or form.get("job_id")
        if not jid:
            raise _bad_request("job_id is a required field")
        job = self._job(jid)
        epoch = float(form.get("snapshot_epoch")) if form.has("snapshot_epoch") else None
        resize = not form.get("dont_resize")
        if one:
            if form.get("image_path"):
                path = form.get("image_path")
                if not os.path.isfile(path):
                    raise _Answer(500, {"error": {"message": "no such file %s" % path, "type": "IOError"}})
                with open(path, "rb") as f:
                    images = [("image", f.read())]
            elif "image_file" in form.files and form.files["image_file"][1]:
                images = [("image", form.files["image_file"][1])]
            else:
                raise _bad_request("must provide image_path or image_file")
            out = self.state.infer(job, images, epoch, resize)
            # DIGITS answers infer_one with the batch axis kept: 1 x Q x H x W.
            return 200, {"outputs": {k: [val.tolist()] for k, val in out["image"].items()}}, {}
        if "image_list" not in form.files:
            raise _bad_request("image_list is a required field")
        folder = form.get("image_folder").strip()
        if folder and not os.path.exists(folder):
            raise _bad_request('image_folder "%s" does not exit' % folder)
        paths = []
        for line in form.files["image_list"][1].decode().splitlines():
            line = line.strip()
            if not line:
                continue
            m = re.match(r"(.*\S)\s+\d+$", line)
            p = m.group(1) if m else line
            paths.append(os.path.join(folder, p) if folder and not os.path.isabs(p) else p)
        n = _int(form, {}, "num_test_images", optional=True)
        paths = paths[:n] if n else paths
        images = []
        for p in paths:
            if not os.path.isfile(p):
                raise _Answer(500, {"error": {"message": "no such file %s" % p, "type": "IOError"}})
            with open(p, "rb") as f:
                images.append((p, f.read()))
        out = self.state.infer(job, images, epoch, resize)
        return 200, {"outputs": {p: {k: val.tolist() for k, val in o.items()} for p, o in out.items()}}, {}


def v_username(name: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9.\-_]*$", name or ""))


def _analyze(train_images, train_labels, val_images, val_labels, mean, same_shape) -> v.DatasetFacts:
    """AnalyzeDbTask: count entries, first Datum's shape, optionally every shape the same."""
    from thermalnet.lmdb_io import lmdb_count, read_lmdb
    shape = None
    counts = {}
    for key, path in (("train", train_images), ("train_labels", train_labels), ("val", val_images),
                      ("val_labels", val_labels)):
        if not path:
            continue
        n = lmdb_count(path)
        if n == 0:
            raise ValueError("%s: empty database" % path)
        counts[key] = n
        for i, (_, arr) in enumerate(read_lmdb(path)):
            if key == "train" and shape is None:
                shape = arr.shape
            if not same_shape:
                break
            first = arr.shape if i == 0 else first
            if arr.shape != first:
                raise ValueError("%s: entry %d has shape %s, entry 0 %s" % (path, i, arr.shape, first))
    c, h, w = shape
    return v.DatasetFacts(height=h, width=w, channels=c, train_count=counts["train"],
                          val_count=counts.get("val", 0), train_images=train_images, train_labels=train_labels,
                          val_images=val_images, val_labels=val_labels, mean_file=mean)


def _encoded_datum(arr: np.ndarray, encoding: str):
    """digits/tools/create_generic_db.py array_to_datum for png/jpg: the CxHxW array as it was
    read (RGB, not swapped), encoded by PIL, Datum.encoded set."""
    from PIL import Image
    from thermalnet.caffe_env import caffe_pb2
    hwc = arr.transpose(1, 2, 0)
    datum = caffe_pb2().Datum()
    datum.height, datum.width, datum.channels = (int(x) for x in hwc.shape)
    buf = io.BytesIO()
    Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc).save(
        buf, **({"format": "PNG"} if encoding == "png" else {"format": "JPEG", "quality": 90}))
    datum.data, datum.encoded = buf.getvalue(), True
    return datum


def _build_from_folders(job_dir, feat, lab, vfeat, vlab, pct, conversion, same_shape,
                        feature_encoding="none", label_encoding="none") -> v.DatasetFacts:
    """The image-processing extension: pair files by stem, LMDBs (raw: BGR features and the labels
    as read; png/jpg: encoded Datums, as DIGITS writes them), mean."""
    import random
    from PIL import Image
    from thermalnet.lmdb_io import LmdbWriter, write_mean_binaryproto

    def put(writer, arr, encoding):
        if encoding == "none":
            writer.put(arr)
        else:
            writer.put_datum(_encoded_datum(arr, encoding))

    def listing(folder):
        files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs
                       if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")))
        if not files:
            raise ValueError("Unable to find supported images in %s" % folder)
        return files

    def pairs(ff, lf):
        a, b = listing(ff), listing(lf)
        if len(a) != len(b):
            raise ValueError("Expect same number of images in feature and label folders (%d!=%d)" % (len(a), len(b)))
        for x, y in zip(a, b):
            if os.path.splitext(os.path.basename(x))[0] != os.path.splitext(os.path.basename(y))[0]:
                raise ValueError("No corresponding feature/label pair found for (%s,%s)" % (x, y))
        return list(zip(a, b))

    def load(path):
        img = Image.open(path)
        if conversion != "none" and img.mode != conversion:
            img = img.convert(conversion)
        arr = np.asarray(img)
        arr = arr[..., np.newaxis] if arr.ndim == 2 else arr
        return arr.transpose(2, 0, 1)

    train = pairs(feat, lab)
    if vfeat:
        val = pairs(vfeat, vlab)
    else:
        order = list(range(len(train)))
        random.Random(0).shuffle(order)
        n_val = int(len(train) * pct // 100)
        val = [train[i] for i in order[:n_val]]
        train = [train[i] for i in order[n_val:]]
    facts = {}
    total = None
    for split, items in (("train_db", train), ("val_db", val)):
        if not items:
            continue
        with LmdbWriter(os.path.join(job_dir, split, "features")) as fw, \
                LmdbWriter(os.path.join(job_dir, split, "labels")) as lw:
            shape = None
            for fp, lp in items:
                x, y = load(fp), load(lp)
                if shape is None:
                    shape = (x.shape, y.shape)
                elif same_shape and (x.shape, y.shape) != shape:
                    raise ValueError("Feature shape mismatch (last:%s, previous:%s)" % (x.shape, shape[0]))
                xb = x[::-1] if x.shape[0] == 3 else x          # DIGITS stores 3-channel data BGR
                put(fw, xb if feature_encoding == "none" else x, feature_encoding)
                put(lw, y, label_encoding)
                if split == "train_db" and same_shape:
                    total = xb.astype(np.float64) if total is None else total + xb
        facts[split] = (len(items), shape)
    mean = None
    if total is not None:
        mean = os.path.join(job_dir, "train_db", "mean.binaryproto")
        write_mean_binaryproto(np.around(total / len(train)).astype(np.uint8).astype(np.float32), mean)
    (n_train, (fshape, _)) = facts["train_db"]
    c, h, w = fshape
    j = lambda *p: os.path.join(job_dir, *p)   # noqa: E731
    return v.DatasetFacts(height=h, width=w, channels=c, train_count=n_train,
                          val_count=facts.get("val_db", (0, None))[0],
                          train_images=j("train_db", "features"), train_labels=j("train_db", "labels"),
                          val_images=j("val_db", "features") if "val_db" in facts else None,
                          val_labels=j("val_db", "labels") if "val_db" in facts else None, mean_file=mean)


def _unpack_any(blob: bytes, dest: str) -> Optional[List[str]]:
    """tar or zip -> dest; member names (plain files only, no paths leaving dest); None if neither."""
    names = []
    bio = io.BytesIO(blob)
    if zipfile.is_zipfile(bio):
        with zipfile.ZipFile(bio) as zf:
            for n in zf.namelist():
                if n.endswith("/"):
                    continue
                _safe(n)
                with zf.open(n) as src, open(os.path.join(dest, n), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                names.append(n)
        return names
    try:
        tf = tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    except tarfile.TarError:
        return None
    with tf:
        for m in tf.getmembers():
            if not m.isfile():
                continue
            _safe(m.name)
            with tf.extractfile(m) as src, open(os.path.join(dest, m.name), "wb") as dst:
                shutil.copyfileobj(src, dst)
            names.append(m.name)
    return names


def _safe(name: str) -> None:
    if os.path.isabs(name) or ".." in name.split("/") or "/" in name:
        raise _Answer(500, {"status": "archive member %r is not a plain file name" % name})


class StandinServer:
    """Run the stand-in in a background thread: `with StandinServer() as s: ... s.url ...`."""

    def __init__(self, jobs_dir: Optional[str] = None, port: int = 0, make_weights: bool = True, steps: int = 4,
                 max_seconds: Optional[float] = None, max_jobs: int = MAX_JOBS):
        self._own_dir = jobs_dir is None
        self.jobs_dir = jobs_dir or tempfile.mkdtemp(prefix="digits-standin-")
        os.makedirs(self.jobs_dir, exist_ok=True)
        self.state = StandinState(self.jobs_dir, make_weights, steps, max_jobs)
        handler = type("BoundStandinHandler", (StandinHandler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.max_seconds = max_seconds
        self._thread: Optional[threading.Thread] = None
        self._timer: Optional[threading.Timer] = None

    def start(self) -> "StandinServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="digits-standin", daemon=True)
        self._thread.start()
        if self.max_seconds:
            self._timer = threading.Timer(self.max_seconds, self.httpd.shutdown)
            self._timer.daemon = True
            self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer:
            self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._own_dir:
            shutil.rmtree(self.jobs_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.digits_standin",
                                description="A local stand-in for DIGITS' HTTP contract (NOT DIGITS: it validates "
                                            "forms and writes DIGITS' job files, but does not train; snapshots hold "
                                            "untrained weights). Loopback only.")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    p.add_argument("--jobs-dir", help="where job folders go (default: a temporary folder, removed at exit)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop after this long (default 600)")
    p.add_argument("--steps", type=int, default=4, help="status polls from Running to Done")
    p.add_argument("--no-weights", action="store_true", help="do not save snapshots with Caffe")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    srv = StandinServer(args.jobs_dir, args.port, not args.no_weights, args.steps, args.max_seconds)
    print("DIGITS stand-in (not DIGITS) at %s, jobs in %s, stopping after %.0f s"
          % (srv.url, srv.jobs_dir, args.max_seconds), flush=True)
    srv.start()
    try:
        srv._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
