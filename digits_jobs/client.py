"""Drive NVIDIA DIGITS over its REST routes: dataset, model, snapshots, inference, upload.

    python -m digits_jobs.client --url http://HOST:5000 run --dataset-server /data/flir \
        --dataset DS --job model_demo.json --out runs/digits_demo
    python -m digits_jobs.client --dry-run run --dataset-server /data/flir --job model_paper.json
    python -m digits_jobs.client --url ... infer --job-id ID --dataset DS --out runs/digits_infer
    python -m digits_jobs.client --url ... upload --weights runs/x/snap_iter_N.caffemodel --import --dataset-id ID

DIGITS (6.x) answers JSON on routes ending in .json, keeps the user in a cookie
set by POST /login (a username, no password), and reports form errors as HTTP 400
{"errors": {field: [messages]}}; other errors as {"error": {"message", ...}}. The
LMDB and folder paths in the forms are paths on the DIGITS server: with the
docker-compose file of docker/ the dataset folder DS is mounted at /data/<name>.

Transient failures (connection refused, a GET's connection dropped, HTTP
502/503/504) are retried with exponential backoff; a POST whose connection broke
or whose answer timed out after it was sent is not repeated (DIGITS may have
created the job). --dry-run prints every request (method, URL, fields,
files) and sends nothing.
"""
from __future__ import annotations

import argparse
import html
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from thermalnet import cli, decoders, layout, metrics
from thermalnet.atomic import atomic_dir, write_bytes
from digits_jobs import jobdefs as jd

DEFAULT_URL = "http://localhost:5000"
DEFAULT_USER = "thermalnet"
RETRY_STATUS = (502, 503, 504)
USERNAME_RE = re.compile(r"^[a-z][a-z0-9.\-_]*$")   # digits/utils/auth.py validate_username
RUNNING = ("Initialized", "Waiting", "Running")
FAILED = ("Error", "Aborted")


class DigitsError(RuntimeError):
    """Anything that stops a DIGITS flow; the message says what and where."""


class DigitsHTTPError(DigitsError):
    def __init__(self, method: str, url: str, status: int, message: str):
        self.method, self.url, self.status = method, url, status
        super().__init__("%s %s -> HTTP %d: %s" % (method, url, status, message))


class DigitsValidationError(DigitsHTTPError):
    """HTTP 400 with DIGITS' {"errors": {field: [messages]}}: the form was refused."""

    def __init__(self, method: str, url: str, errors: Dict):
        self.errors = errors
        parts = []
        for fld in sorted(errors):
            msgs = errors[fld]
            msgs = msgs if isinstance(msgs, list) else [msgs]
            parts.append("%s: %s" % (fld, "; ".join(str(m) for m in msgs)))
        DigitsHTTPError.__init__(self, method, url, 400, "DIGITS refused the form: " + " | ".join(parts))


class DigitsLoginError(DigitsError):
    pass


class DigitsJobFailed(DigitsError):
    pass


@dataclass
class Upload:
    """One multipart file: form field, file name sent, and the bytes (or a path to read)."""
    field: str
    filename: str
    path: Optional[str] = None
    data: Optional[bytes] = None

    def content(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            return f.read()

    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.path)


class _DryResponse:
    """What a dry run 'answers': enough for the flow to go on without a server."""

    def __init__(self, payload: Dict, status_code: int = 200):
        self._payload = payload
        self.status_code = status_code
        self.content = json.dumps(payload).encode()
        self.text = self.content.decode()
        self.headers = {"Content-Type": "application/json"}
        self.cookies = {}

    def json(self):
        return self._payload


def check_username(name: str) -> str:
    if not USERNAME_RE.match(name or ""):
        raise DigitsLoginError("DIGITS usernames start with a lowercase letter and use only a-z, 0-9, '.', '-', "
                               "'_'; %r would be refused" % name)
    return name


def _short(text: str, n: int = 300) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", " ", text or ""))
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= n else text[:n] + "..."


class DigitsClient:
    """A logged-in DIGITS session with retries, clear errors and a dry-run mode."""

    def __init__(self, base_url: str = DEFAULT_URL, username: str = DEFAULT_USER, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 1.0, dry_run: bool = False, poll: float = 5.0,
                 echo: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                 progress: bool = True):
        import requests
        self.base = base_url.rstrip("/")
        self.username = check_username(username)
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.dry_run, self.poll, self.echo, self.sleep = dry_run, float(poll), echo, sleep
        self.progress = progress
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        self.requests_sent = 0
        self._dry_ids = 0
        self._dry_epochs: Dict[str, int] = {}

    # -- HTTP -----------------------------------------------------------------------
    def url(self, path: str) -> str:
        return self.base + path

    def _echo_request(self, method: str, url: str, data, files, params) -> None:
        q = ("?" + "&".join("%s=%s" % kv for kv in sorted(params.items()))) if params else ""
        self.echo("%s %s%s" % (method, url, q))
        for k, v in (data or {}).items():
            v = str(v)
            if "\n" in v or len(v) > 120:
                first = v.strip().splitlines()[0] if v.strip() else ""
                v = "%s ... (%d lines, %d bytes)" % (first[:60], v.count("\n") + 1, len(v.encode()))
            self.echo("    %s = %s" % (k, v))
        for up in files or []:
            src = "generated"
            if up.path:
                rel = os.path.relpath(os.path.abspath(up.path), jd.REPO_ROOT)
                src = up.path if rel.startswith("..") else rel
            self.echo("    [file] %s = %s (%s, %d bytes)" % (up.field, up.filename, src, up.size()))

    def request(self, method: str, path: str, data: Optional[Dict] = None, files: Sequence[Upload] = (),
                params: Optional[Dict] = None, allow_redirects: bool = True, stream: bool = False):
        """One HTTP exchange with retries on transient failures; HTTP >= 400 raises with DIGITS' message."""
        import requests
        url = self.url(path)
        if self.dry_run:
            self._echo_request(method, url, data, files, params)
            return self._dry_answer(method, path, data)
        attempt = 0
        while True:
            attempt += 1
            try:
                mp = [(u.field, (u.filename, u.content())) for u in files] or None
                self.requests_sent += 1
                r = self.session.request(method, url, data=data, files=mp, params=params, timeout=self.timeout,
                                         allow_redirects=allow_redirects, stream=stream)
            except requests.exceptions.ConnectionError as exc:
                # Refused before sending: nothing can have happened, safe to repeat. Dropped
                # after sending: safe only for GET (a POST may have created a job).
                unsent = _never_sent(exc)
                if method != "GET" and not unsent:
                    raise DigitsError("%s %s: the connection broke before DIGITS answered; not repeated: "
                                      "DIGITS may have acted on it (check the job list): %s"
                                      % (method, url, _short(str(exc), 200))) from None
                if attempt > self.retries:
                    raise DigitsError("cannot reach DIGITS at %s (%s %s, %d tries): %s"
                                      % (self.base, method, path, attempt, _short(str(exc), 200))) from None
                self._wait_retry(attempt, "connection failed" if unsent else "connection dropped")
                continue
            except requests.exceptions.Timeout:
                if method != "GET" or attempt > self.retries:
                    raise DigitsError("%s %s: no answer within %.0f s%s" % (
                        method, url, self.timeout,
                        "; not repeated: DIGITS may have acted on it (check the job list)" if method != "GET"
                        else " (%d tries)" % attempt)) from None
                self._wait_retry(attempt, "timed out")
                continue
            if r.status_code in RETRY_STATUS and attempt <= self.retries:
                self._wait_retry(attempt, "HTTP %d" % r.status_code)
                continue
            if r.status_code >= 400:
                raise self._http_error(method, url, r)
            return r

    def _wait_retry(self, attempt: int, why: str) -> None:
        delay = self.backoff * (2 ** (attempt - 1))
        self.echo("  DIGITS %s; retry %d/%d in %.1f s" % (why, attempt, self.retries, delay))
        self.sleep(delay)

    @staticmethod
    def _http_error(method: str, url: str, r) -> DigitsHTTPError:
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code == 400 and isinstance(body, dict) and isinstance(body.get("errors"), dict):
            return DigitsValidationError(method, url, body["errors"])
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            e = body["error"]
            msg = "%s: %s" % (e.get("type", "error"), e.get("message", ""))
            if e.get("description") and e.get("description") not in msg:
                msg += " (%s)" % e["description"]
            return DigitsHTTPError(method, url, r.status_code, msg)
        if isinstance(body, dict) and body.get("status"):
            return DigitsHTTPError(method, url, r.status_code, str(body["status"]))
        if r.status_code == 401:
            return DigitsHTTPError(method, url, 401, "not logged in (POST /login first)")
        return DigitsHTTPError(method, url, r.status_code, _short(r.text) or "(empty answer)")

    def json(self, method: str, path: str, **kw) -> Dict:
        r = self.request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise DigitsError("%s %s: DIGITS answered HTTP %d but not JSON: %s"
                              % (method, self.url(path), r.status_code, _short(r.text, 200))) from None

    def _dry_answer(self, method: str, path: str, data: Optional[Dict]):
        creates = path in (jd.ROUTE_DATASET_PREBUILT, jd.ROUTE_MODEL) or path.startswith("/datasets/generic/create/")
        if method == "POST" and creates:
            self._dry_ids += 1
            jid = "dry-run-%d" % self._dry_ids
            if data and data.get("train_epochs"):
                self._dry_epochs[jid] = int(data["train_epochs"])
            return _DryResponse({"id": jid, "name": (data or {}).get("model_name") or (data or {}).get("dataset_name"),
                                 "status": "Initialized"})
        m = re.match(r"^/(models|datasets)/([^/]+)\.json$", path)
        if m:
            return _DryResponse({"id": m.group(2), "status": "Done",
                                 "snapshots": [self._dry_epochs.get(m.group(2), 1)]})
        if path == jd.ROUTE_COMPLETED:
            return _DryResponse({"pretrained_models": [{"id": "dry-run-pretrained", "name": "(dry run)",
                                                        "status": "Done"}]})
        if path == jd.ROUTE_UPLOAD_ARCHIVE:
            return _DryResponse({"status": "success"})
        return _DryResponse({})

    # -- session and jobs ---------------------------------------------------------------
    def login(self) -> None:
        """POST /login; DIGITS answers with a redirect that sets the `username` cookie."""
        r = self.request("POST", jd.ROUTE_LOGIN, data={"username": self.username}, allow_redirects=False)
        if self.dry_run:
            return
        if self.session.cookies.get("username") != self.username:
            hint = _short(getattr(r, "text", ""), 200)
            raise DigitsLoginError("DIGITS at %s did not log in %r (no username cookie; HTTP %d)%s"
                                   % (self.base, self.username, r.status_code, (": " + hint) if hint else ""))

    def create(self, route: str, fields: Dict[str, str], files: Sequence[Upload] = ()) -> Dict:
        job = self.json("POST", route, data=fields, files=files)
        if "jobs" in job and "id" not in job:          # a learning-rate/batch sweep
            raise DigitsError("%s created %d jobs (a sweep); the kit's jobs create one" % (route, len(job["jobs"])))
        if "id" not in job:
            raise DigitsError("POST %s: DIGITS answered without a job id: %s" % (self.url(route), job))
        return job

    def status(self, kind: str, job_id: str) -> Dict:
        """The job's details (id, name, status, directory, a model's snapshots)."""
        route = jd.ROUTE_MODEL_STATUS if kind == "model" else jd.ROUTE_DATASET_STATUS
        return self.json("GET", route % job_id)

    def state(self, kind: str, job_id: str) -> str:
        """The job's state alone ("Running", "Done", ...), from the route DIGITS answers while
        a job runs (its details route answers 500 for a running image-folder dataset)."""
        route = jd.ROUTE_MODEL_STATE if kind == "model" else jd.ROUTE_DATASET_STATE
        d = self.json("GET", route % job_id)
        if not isinstance(d, dict) or d.get("error") or "status" not in d:
            # DIGITS answers an unknown job here with HTTP 200 {"error": "Job not found."}.
            raise DigitsHTTPError("GET", self.url(route % job_id), 404,
                                  str(d.get("error") if isinstance(d, dict) else d) or "no status in the answer")
        return str(d["status"])

    def job_progress(self, job_id: str) -> Optional[int]:
        """Percent done from the home page's table data (absent in some DIGITS versions: None)."""
        try:
            d = self.json("GET", jd.ROUTE_JOB_TABLE % job_id)
        except DigitsHTTPError as exc:
            if exc.status == 404:
                return None
            raise
        job = d.get("job", {}) if isinstance(d, dict) else {}
        p = job.get("progress")
        return int(p) if isinstance(p, (int, float)) else None

    def wait(self, kind: str, job_id: str, desc: str = "", max_wait: Optional[float] = None) -> Dict:
        """Poll the job's state until it is no longer running (tqdm shows DIGITS' percent), then
        return its details. Error/Aborted raise."""
        from tqdm import tqdm
        if self.dry_run:
            self.echo("  (dry run: would poll GET %s until Done)" % self.url(
                (jd.ROUTE_MODEL_STATE if kind == "model" else jd.ROUTE_DATASET_STATE) % job_id))
            return self.status(kind, job_id)
        t0 = time.time()
        bar = tqdm(total=100, desc=desc or "%s %s" % (kind, job_id), unit="%", disable=not self.progress)
        track_progress = True
        try:
            while True:
                state = self.state(kind, job_id)
                if track_progress:
                    p = self.job_progress(job_id)
                    if p is None:
                        track_progress = False
                    elif p > bar.n:
                        bar.update(p - bar.n)
                bar.set_postfix_str(state)
                if state not in RUNNING:
                    break
                if max_wait is not None and time.time() - t0 > max_wait:
                    raise DigitsError("%s job %s still %s after %.0f s (see %s)"
                                      % (kind, job_id, state, max_wait, self.url("/jobs/%s" % job_id)))
                self.sleep(self.poll)
        finally:
            bar.close()
        if state in FAILED:
            detail = ""
            if kind == "model":
                tail = self.fetch_text(job_id, jd.CAFFE_LOG, missing_ok=True)
                if tail:
                    detail = "; last lines of %s:\n%s" % (jd.CAFFE_LOG, "\n".join(tail.strip().splitlines()[-15:]))
                else:
                    # DIGITS 6.1.1 gives the reason of a failed before-run check (its network sanity
                    # checks) in its own log and live on the job page only: no JSON route carries it.
                    detail = ("; it failed before Caffe started (no %s): one of DIGITS' own checks, whose "
                              "reason DIGITS shows live on the job page and in its log" % jd.CAFFE_LOG)
            raise DigitsJobFailed("%s job %s ended %s (%s)%s" % (kind, job_id, state,
                                                                 self.url("/jobs/%s" % job_id), detail))
        if state != "Done":
            raise DigitsError("%s job %s has unknown status %r" % (kind, job_id, state))
        return self.status(kind, job_id)

    def fetch_text(self, job_id: str, name: str, missing_ok: bool = False) -> Optional[str]:
        """A file of the job folder through DIGITS' /files/<job_id>/<name> route."""
        try:
            r = self.request("GET", jd.ROUTE_FILES % (job_id, name))
        except DigitsHTTPError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise
        return r.text

    def download_model(self, job_id: str, out_dir: str, epoch: Optional[float] = None) -> Dict[str, str]:
        """GET /models/<id>/download.tar.gz[?epoch=] and unpack it (safely, atomically) into out_dir."""
        params = {"epoch": _epoch_str(epoch)} if epoch is not None else None
        r = self.request("GET", jd.ROUTE_DOWNLOAD % job_id, params=params)
        if self.dry_run:
            self.echo("  (dry run: would unpack the archive into %s)" % out_dir)
            return {}
        files = unpack_model_archive(r.content, out_dir, "%s%s" % (self.url(jd.ROUTE_DOWNLOAD % job_id),
                                                                     "?epoch=%s" % params["epoch"] if params else ""))
        log = self.fetch_text(job_id, jd.CAFFE_LOG, missing_ok=True)
        if log is not None:
            path = os.path.join(out_dir, jd.CAFFE_LOG)
            write_bytes(path, log.encode())
            files["log"] = path
        return files

    def upload_archive(self, archive: bytes, filename: str = "thermalnet_model.tar.gz") -> Dict:
        """POST /pretrained_models/upload_archive (field `archive`); DIGITS answers {"status": ...}."""
        d = self.json("POST", jd.ROUTE_UPLOAD_ARCHIVE, files=[Upload("archive", filename, data=archive)])
        if d.get("status") != "success":
            raise DigitsError("DIGITS refused the archive: %s" % d.get("status"))
        return d

    def find_pretrained(self, name: str) -> str:
        """The id of the newest pretrained model of that name (upload_archive returns no id)."""
        d = self.json("GET", jd.ROUTE_COMPLETED)
        found = [j for j in d.get("pretrained_models", []) if j.get("name") == name or self.dry_run]
        if not found:
            raise DigitsError("no pretrained model named %r on %s after the upload" % (name, self.base))
        return found[0]["id"]

    def infer_one(self, job_id: str, image: str, epoch: Optional[float] = None, dont_resize: bool = False) -> Dict:
        fields = {"job_id": job_id, "dont_resize": "1" if dont_resize else ""}
        if epoch is not None:
            fields["snapshot_epoch"] = _epoch_str(epoch)
        d = self.json("POST", jd.ROUTE_INFER_ONE, data=fields,
                      files=[Upload("image_file", os.path.basename(image), path=image)])
        return d.get("outputs", {})

    def infer_many(self, job_id: str, server_paths: Sequence[str], image_folder: str = "",
                   epoch: Optional[float] = None, dont_resize: bool = False) -> Dict:
        fields = {"job_id": job_id, "image_folder": image_folder, "dont_resize": "1" if dont_resize else ""}
        if epoch is not None:
            fields["snapshot_epoch"] = _epoch_str(epoch)
        listing = ("\n".join(server_paths) + "\n").encode()
        d = self.json("POST", jd.ROUTE_INFER_MANY, data=fields,
                      files=[Upload("image_list", "image_list.txt", data=listing)])
        return d.get("outputs", {})


def _never_sent(exc) -> bool:
    """True when requests failed to connect at all (refused, no route, connect timeout)."""
    import requests
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    text = repr(exc)
    return "NewConnectionError" in text or "Failed to establish a new connection" in text


def _epoch_str(epoch: float) -> str:
    return ("%d" % epoch) if float(epoch).is_integer() else repr(float(epoch))


def unpack_model_archive(blob: bytes, out_dir: str, where: str = "archive") -> Dict[str, str]:
    """DIGITS' model tarball -> out_dir; refuses absolute/'..' names and links; returns the key files."""
    try:
        tf = tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    except tarfile.TarError as exc:
        raise DigitsError("%s: not a tar archive (%s)" % (where, exc)) from None
    with atomic_dir(out_dir) as tmp:   # swapped in whole, or deleted (thermalnet.atomic)
        with tf:
            for m in tf.getmembers():
                name = os.path.normpath(m.name)
                if not m.isfile() or os.path.isabs(name) or name.startswith(".."):
                    raise DigitsError("%s: refusing archive member %r (not a plain relative file)" % (where, m.name))
                dest = os.path.join(tmp, name)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with tf.extractfile(m) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return model_files(out_dir, where)


def model_files(folder: str, where: str = "") -> Dict[str, str]:
    """The files the kit needs from a DIGITS model folder/archive."""
    names = os.listdir(folder)
    snaps = sorted((f for f in names if f.endswith(".caffemodel")), key=_iter_of)
    out = {"dir": os.path.abspath(folder)}
    for key, fname in (("deploy", "deploy.prototxt"), ("train_val", "train_val.prototxt"),
                       ("solver", "solver.prototxt"), ("original", "original.prototxt"),
                       ("info", "info.json"), ("python_layer", "digits_python_layers.py"),
                       ("mean", layout.MEAN_FILE)):
        if fname in names:
            out[key] = os.path.join(folder, fname)
    if snaps:
        out["caffemodel"] = os.path.join(folder, snaps[-1])
    for need in ("deploy", "caffemodel"):
        if need not in out:
            raise DigitsError("%s: the model archive has no %s (files: %s)"
                              % (where or folder, need, ", ".join(sorted(names))))
    return out


def _iter_of(name: str) -> int:
    m = re.search(r"_iter_(\d+)\.caffemodel$", name)
    return int(m.group(1)) if m else -1


# -- archives for upload -----------------------------------------------------------------
def build_pretrained_archive(weights: str, net: str, name: str,
                             python_layer: str = jd.repo_path("prototxt/digits_python_layers.py"),
                             labels: Optional[str] = None, class_weights: Optional[str] = None,
                             class_weights_server: Optional[str] = None) -> bytes:
    """tar.gz with info.json, original.prototxt (the all-in-one net), weights, the Python layer
    and, when the net's loss names a class-weights file, that file (class_weights.txt).

    A loss layer's relative class_weights would be looked up in the DIGITS job folder,
    which has none: the network in the archive names class_weights_server instead (the
    dataset's copy as the server sees it), rewritten by validate.rewrite_class_weights as
    the run flow does; `class_weights` (the same file here) goes into the archive with it.
    """
    from digits_jobs.validate import class_weights_files, rewrite_class_weights
    for p, what in ((weights, "weights"), (net, "network"), (python_layer, "Python-layer file")):
        if not os.path.isfile(p):
            raise FileNotFoundError("%s: no such %s" % (p, what))
    if not weights.endswith(".caffemodel"):
        raise ValueError("%s: DIGITS wants a .caffemodel" % weights)
    job = jd.load_job(jd.PRETRAINED_UPLOAD)
    info = {k: (v.format(run=name, weights=os.path.basename(weights)) if isinstance(v, str) else v)
            for k, v in job["info"].items()}
    def read(path):
        with open(path, "rb") as f:
            return f.read()
    net_text = read(net).decode()
    relative = {layer: p for layer, p in class_weights_files(net_text, where=net).items() if not os.path.isabs(p)}
    if relative:
        if not (class_weights and class_weights_server):
            raise ValueError("%s: layer '%s' names %s, which a DIGITS job folder does not hold; give the dataset "
                             "(--dataset-server, and --dataset where it is not on this machine at that path)"
                             % (net, sorted(relative)[0], relative[sorted(relative)[0]]))
        if not os.path.isfile(class_weights):
            raise FileNotFoundError("%s: no such class weights file" % class_weights)
        net_text = rewrite_class_weights(net_text, class_weights_server)
    members = [("original.prototxt", net_text.encode()), (os.path.basename(weights), read(weights)),
               ("digits_python_layers.py", read(python_layer))]
    if relative:
        info[jd.ARCHIVE_CLASS_WEIGHTS_KEY] = layout.CLASS_WEIGHTS_FILE
        members.append((layout.CLASS_WEIGHTS_FILE, read(class_weights)))
    if labels:
        info["labels file"] = "labels.txt"
        members.append(("labels.txt", read(labels)))
    members.insert(0, ("info.json", json.dumps(info, indent=2, sort_keys=True).encode()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for arcname, data in members:
            ti = tarfile.TarInfo(arcname)
            ti.size = len(data)
            ti.mtime = int(time.time())
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


# -- image folders for the image-processing extension -------------------------------------
def export_image_folders(dataset_dir: str, out_dir: str, progress: bool = True) -> Dict[str, int]:
    """The kit's LMDBs as the image-processing extension's folders: RGB PNG features, 8-bit label PNGs.

    out/train/features/<key>.png + out/train/labels/<key>.png, same for val. The
    label PNGs hold the bin indices 0..Q-1 (mode L), so DIGITS' raw label LMDB
    equals the kit's byte for byte.
    """
    from tqdm import tqdm
    from thermalnet.imageio import write_png
    from thermalnet.lmdb_io import lmdb_count, read_lmdb

    counts = {}
    with atomic_dir(out_dir) as tmp:   # swapped in whole, or deleted (thermalnet.atomic)
        for split, feats, labels in layout.lmdb_pairs(dataset_dir):
            for p in (feats, labels):
                if not os.path.isdir(p):
                    raise FileNotFoundError("%s: missing LMDB" % p)
            n = lmdb_count(feats)
            if lmdb_count(labels) != n:
                raise ValueError("%s and %s hold different numbers of entries" % (feats, labels))
            fdir, ldir = os.path.join(tmp, split, "features"), os.path.join(tmp, split, "labels")
            os.makedirs(fdir)
            os.makedirs(ldir)
            bar = tqdm(total=n, desc="export %s" % split, unit="img", disable=not progress)
            for (kf, x), (kl, y) in zip(read_lmdb(feats), read_lmdb(labels)):
                if kf != kl:
                    raise ValueError("%s: key %s pairs with label key %s" % (feats, kf, kl))
                if x.shape[0] != 3 or y.shape[0] != 1 or x.shape[1:] != y.shape[1:]:
                    raise ValueError("%s key %s: feature %s / label %s, want 3xHxW and 1xHxW"
                                     % (feats, kf, x.shape, y.shape))
                write_png(os.path.join(fdir, kf + ".png"), np.ascontiguousarray(x[::-1].transpose(1, 2, 0)))  # BGR -> RGB
                write_png(os.path.join(ldir, kf + ".png"), np.ascontiguousarray(y[0]))
                bar.update(1)
            bar.close()
            counts[split] = n
    return counts


# -- flows -----------------------------------------------------------------------------------
def _model_upload(job: Dict) -> List[Upload]:
    if not job.get("python_layer_file"):
        return []
    path = jd.repo_path(job["python_layer_file"])
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: the Python-layer file named by %s does not exist" % (path, job["_path"]))
    return [Upload("python_layer_client_file", os.path.basename(path), path=path)]


def preflight(net_text: str, dataset_dir: Optional[str], form: Dict[str, str], where: str,
              network_file: Optional[str] = None) -> None:
    """DIGITS' rules on the network before queuing it (no Caffe run; validate.py does that).

    Pretrained weights (DIGITS' custom_network_snapshot, server paths) that also exist at
    the same path here are checked against the network like tools.train --weights does: a
    file that does not fit would make DIGITS' caffe train abort after the job is queued.
    """
    from digits_jobs import validate as v
    ds = v.DatasetFacts.from_dataset_dir(dataset_dir) if dataset_dir else v.DatasetFacts.nominal()
    v.digits_files(net_text, ds, v.JobSettings.from_form(form), where=where)
    here = [f for f in form.get(jd.PRETRAINED_FIELD, "").split(jd.DIGITS_PATHSEP) if f and os.path.exists(f)]
    if here and network_file:
        from thermalnet.nets import check_weights
        check_weights(here, network_file)


def run_flow(client: DigitsClient, dataset_server: str, model_job: str = jd.MODEL_DEMO,
             dataset_job: str = jd.DATASET_PREBUILT, dataset_local: Optional[str] = None,
             dataset_id: Optional[str] = None, out: str = "runs/digits", epoch: Optional[float] = None,
             evaluate: bool = True, max_wait: Optional[float] = None, name: Optional[str] = None,
             folders_server: Optional[str] = None, overrides: Optional[Dict[str, str]] = None,
             weights=None) -> Dict:
    """Log in, create the dataset (unless dataset_id), train the model job, fetch it, evaluate it.

    weights: caffemodel(s) to fine-tune from, as paths on the DIGITS server ("A,B" or a list),
    sent in DIGITS' pretrained-model field (jobdefs.PRETRAINED_FIELD).
    """
    name = name or os.path.basename(dataset_server.rstrip("/")) or "dataset"
    layout = jd.dataset_layout(dataset_server)
    summary: Dict = {"digits": client.base, "dataset_server": dataset_server, "dry_run": client.dry_run}
    client.login()
    if not dataset_id:
        djob = jd.load_job(dataset_job)
        subs = {"dataset": dataset_server.rstrip("/"), "name": name}
        if "{folders}" in json.dumps(djob["form"]):
            if not folders_server:
                raise ValueError("%s needs --folders-server (the export-folders output on the server)" % dataset_job)
            subs["folders"] = folders_server.rstrip("/")
        d = client.create(djob["route"], jd.form_fields(djob, **subs))
        dataset_id = d["id"]
        client.echo("dataset job %s created" % dataset_id)
        client.wait("dataset", dataset_id, desc="dataset %s" % dataset_id, max_wait=max_wait)
    summary["dataset_job"] = dataset_id
    mjob = jd.load_job(model_job)
    fields = jd.form_fields(mjob, run=name)
    fields.update(overrides or {})
    if weights:
        fields.update(jd.pretrained_field(weights))
    summary["weights"] = [f for f in fields.get(jd.PRETRAINED_FIELD, "").split(jd.DIGITS_PATHSEP) if f]
    net_text = jd.model_network_text(mjob, layout["class_weights"])
    preflight(net_text, dataset_local, fields, where=mjob["network"], network_file=jd.repo_path(mjob["network"]))
    fields.update(dataset=dataset_id, custom_network=net_text)
    m = client.create(mjob["route"], fields, files=_model_upload(mjob))
    model_id = m["id"]
    summary["model_job"] = model_id
    client.echo("model job %s created (%s)" % (model_id, client.url("/models/%s" % model_id)))
    st = client.wait("model", model_id, desc="train %s" % model_id, max_wait=max_wait)
    summary["snapshots"] = st.get("snapshots", [])
    files = client.download_model(model_id, os.path.join(out, "digits_model"), epoch)
    summary["files"] = files
    if files and evaluate and dataset_local:
        summary["evaluation"] = evaluate_fetched(files, dataset_local, os.path.join(out, "eval"))
    elif evaluate and not dataset_local:
        summary["evaluation"] = "skipped: no local copy of the dataset (--dataset)"
    if not client.dry_run:
        write_bytes(os.path.join(out, "digits_run.json"), json.dumps(summary, indent=1, default=str).encode())
    return summary


def evaluate_fetched(files: Dict[str, str], dataset_dir: str, out: str) -> Dict:
    """The kit's evaluation (tools.evaluate: Table 2 RMS) on the model DIGITS trained."""
    from tools.evaluate import evaluate
    ev = evaluate(dataset_dir, files["deploy"], files["caffemodel"], out)
    return {"out": out, "n_test": ev.get("n_test"), "table": ev.get("table")}


def upload_flow(client: DigitsClient, weights: str, net: str, name: str, dataset_id: Optional[str] = None,
                import_model: bool = False, max_wait: Optional[float] = None, dataset_server: Optional[str] = None,
                dataset_local: Optional[str] = None) -> Dict:
    """Upload a kit-trained model as a DIGITS pretrained model; optionally make it inferable.

    dataset_server: the dataset folder as the DIGITS server sees it (as in run_flow); the
    loss layer reads its class_weights.txt there. dataset_local: the same folder here
    (default: dataset_server), whose class_weights.txt goes into the archive.
    """
    local = dataset_local or dataset_server
    archive = build_pretrained_archive(
        weights, net, name,
        class_weights=os.path.join(local, layout.CLASS_WEIGHTS_FILE) if local else None,
        class_weights_server=jd.dataset_layout(dataset_server)["class_weights"] if dataset_server else None)
    job = jd.load_job(jd.PRETRAINED_UPLOAD)
    info_name = job["info"]["name"].format(run=name)
    client.login()
    client.upload_archive(archive, "%s.tar.gz" % info_name)
    pid = client.find_pretrained(info_name)
    out = {"pretrained_job": pid, "name": info_name}
    client.echo("pretrained model %s uploaded (%s)" % (pid, info_name))
    if import_model:
        if not dataset_id:
            raise ValueError("--import needs --dataset-id (DIGITS model jobs belong to a dataset)")
        fields = jd.form_fields(job, run=name)
        fields.update(dataset=dataset_id, pretrained_networks=pid)
        m = client.create(job["import_route"], fields, files=_model_upload(
            dict(job, python_layer_file="prototxt/digits_python_layers.py")))
        client.wait("model", m["id"], desc="import %s" % m["id"], max_wait=max_wait)
        out["model_job"] = m["id"]
    return out


def decode_outputs(outputs: Dict, decoding: str = decoders.FALLBACK_DECODING,
                   class_weights: Optional[np.ndarray] = None) -> np.ndarray:
    """DIGITS' {"prob": nested lists} for one image -> brightness HxW (decoders.decode; mmse needs the weights)."""
    if "prob" not in outputs:
        have = ", ".join(sorted(outputs)) or "nothing"
        raise DigitsError("DIGITS' answer has no 'prob' output (has: %s)" % have)
    prob = np.asarray(outputs["prob"], dtype=np.float64)
    if prob.ndim == 4:
        prob = prob[0]
    if prob.ndim != 3:
        raise DigitsError("'prob' has shape %s; expected Q x H x W" % (prob.shape,))
    return decoders.decode(prob, decoding, class_weights=class_weights)


def infer_flow(client: DigitsClient, job_id: str, images: Sequence[str], out: str,
               epoch: Optional[float] = None, decoding: str = decoders.FALLBACK_DECODING,
               ir_dir: Optional[str] = None, class_weights: Optional[np.ndarray] = None) -> Dict:
    """infer_one per image; brightness PNGs into out/, RMS (eq. 2) against ir_dir/<id>.png if given."""
    from tqdm import tqdm
    from thermalnet.imageio import read_gray8, write_png
    client.login()
    os.makedirs(out, exist_ok=True)
    rows = []
    for img in tqdm(images, desc="infer", unit="img", disable=not client.progress or client.dry_run):
        outputs = client.infer_one(job_id, img, epoch)
        if client.dry_run:
            continue
        b = decode_outputs(outputs, decoding, class_weights)
        stem = os.path.splitext(os.path.basename(img))[0]
        png = os.path.join(out, stem + ".png")
        write_png(png, np.clip(np.rint(b), 0, 255).astype(np.uint8))
        row = {"image": img, "synthetic_ir": png}
        gt = os.path.join(ir_dir, stem + ".png") if ir_dir else None
        if gt and os.path.isfile(gt):
            row["rms"] = metrics.rms(read_gray8(gt).astype(np.float64), b)
        rows.append(row)
    res = {"job_id": job_id, "decoding": decoding, "images": rows}
    rms = [r["rms"] for r in rows if "rms" in r]
    if rms:
        res["mean_rms"] = float(np.mean(rms))
    if not client.dry_run:
        write_bytes(os.path.join(out, "infer.json"), json.dumps(res, indent=1).encode())
    return res


# -- CLI -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m digits_jobs.client",
                                description="Run the kit's jobs in NVIDIA DIGITS over its REST routes "
                                            "(dataset, model, download, evaluation, inference, upload).")
    p.add_argument("--url", default=os.environ.get("DIGITS_URL", DEFAULT_URL),
                   help="DIGITS server (default $DIGITS_URL or %s)" % DEFAULT_URL)
    p.add_argument("--username", default=DEFAULT_USER, help="DIGITS user (cookie login, no password)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    p.add_argument("--retries", type=int, default=4, help="retries on connection errors and HTTP 502/503/504")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay in s (doubles each retry)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between job status polls")
    p.add_argument("--max-wait", type=float, help="give up waiting for a job after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="dataset -> model -> download -> evaluation")
    r.add_argument("--dataset-server", required=True,
                   help="the dataset folder as the DIGITS server sees it (e.g. /data/flir in the container)")
    r.add_argument("--dataset", help="the same dataset folder here (pre-flight checks and evaluation)")
    r.add_argument("--dataset-id", help="reuse an existing DIGITS dataset job instead of creating one")
    r.add_argument("--dataset-job", default=jd.DATASET_PREBUILT,
                   help="dataset job JSON (%s or %s)" % (jd.DATASET_PREBUILT, jd.DATASET_IMAGE_PROCESSING))
    r.add_argument("--folders-server", help="export-folders output on the server (image-processing job)")
    r.add_argument("--job", default=jd.MODEL_DEMO, help="model job JSON (%s or %s)" % (jd.MODEL_DEMO, jd.MODEL_PAPER))
    r.add_argument("--epochs", type=int, help="override train_epochs")
    r.add_argument("--epoch", type=float, help="snapshot epoch to fetch (default: the last)")
    r.add_argument("--out", default="runs/digits", help="where the fetched model, log and evaluation go")
    r.add_argument("--no-eval", action="store_true", help="skip the kit's evaluation of the fetched model")
    r.add_argument("--weights", metavar="A.caffemodel[,B.caffemodel]",
                   help="fine-tune from these caffemodels, paths as the DIGITS server sees them (DIGITS' "
                        "'Pretrained model(s)' field), e.g. its copy of squeezenet_v1.1.caffemodel; checked "
                        "against the network here too when the same path exists on this machine")

    i = sub.add_parser("infer", help="infer_one on images, decode to brightness PNGs (+ RMS with --dataset)")
    i.add_argument("--job-id", required=True, help="DIGITS model job id")
    i.add_argument("--images", nargs="*", default=[], help="visible images (default: the dataset's test/visible)")
    i.add_argument("--dataset", help="dataset folder: test/visible images and test/ir ground truth")
    i.add_argument("--limit", type=int, help="first N test images only")
    i.add_argument("--epoch", type=float, help="snapshot epoch (default: the last)")
    i.add_argument("--decoding", choices=decoders.DECODINGS,
                   help="default %s with --dataset (its class_weights.txt), else %s (decoders.DEFAULT_DECODING: the "
                        "kit's evaluation decodes the same way)" % (decoders.DEFAULT_DECODING, decoders.FALLBACK_DECODING))
    i.add_argument("--out", default="runs/digits_infer")

    u = sub.add_parser("upload", help="upload a kit-trained model as a DIGITS pretrained model")
    u.add_argument("--weights", required=True, help="the .caffemodel (e.g. runs/NAME/snap_iter_N.caffemodel)")
    u.add_argument("--net", default=jd.repo_path("prototxt/thermalnet_v1_1.prototxt"),
                   help="the all-in-one network it was trained with")
    u.add_argument("--name", default="run", help="name suffix of the pretrained model")
    u.add_argument("--import", dest="import_model", action="store_true",
                   help="also create a 1-epoch, learning-rate-0 model job so DIGITS can run inference")
    u.add_argument("--dataset-id", help="dataset job for --import")
    u.add_argument("--dataset-server",
                   help="the dataset the model was trained on, as the DIGITS server sees it: the loss layer "
                        "reads its %s there (a DIGITS job folder has none)" % layout.CLASS_WEIGHTS_FILE)
    u.add_argument("--dataset", help="the same dataset folder here (default: --dataset-server); its %s goes "
                                     "into the archive" % layout.CLASS_WEIGHTS_FILE)

    d = sub.add_parser("download", help="fetch a model job's files (snapshot, prototxt, log)")
    d.add_argument("--job-id", required=True)
    d.add_argument("--epoch", type=float)
    d.add_argument("--out", default="runs/digits_model")

    e = sub.add_parser("export-folders", help="LMDBs -> image folders for the image-processing extension")
    e.add_argument("--dataset", required=True)
    e.add_argument("--out", required=True)
    return p


def main(argv=None) -> int:
    """Exit 0 done, 1 a failure (one line `error: ...`, thermalnet.cli), 2 argparse usage errors."""
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _command(args))


def _command(args: argparse.Namespace) -> None:
    if args.cmd == "export-folders":
        c = export_image_folders(args.dataset, args.out)
        print("wrote %s: train %d, val %d image pairs" % (args.out, c["train"], c["val"]))
        return
    client = DigitsClient(args.url, args.username, args.timeout, args.retries, args.backoff,
                          dry_run=args.dry_run, poll=args.poll)
    if args.cmd == "run":
        over = {"train_epochs": str(args.epochs)} if args.epochs else None
        s = run_flow(client, args.dataset_server, args.job, args.dataset_job, args.dataset, args.dataset_id,
                     args.out, args.epoch, not args.no_eval, args.max_wait, folders_server=args.folders_server,
                     overrides=over, weights=args.weights)
        print("done: dataset %s, model %s%s" % (s["dataset_job"], s.get("model_job"),
                                                "" if args.dry_run else ", files in %s" % args.out))
    elif args.cmd == "infer":
        images = list(args.images)
        ir_dir = None
        if args.dataset:
            ir_dir = os.path.join(args.dataset, layout.TEST_DIR, "ir")
            if not images:
                vis = os.path.join(args.dataset, layout.TEST_DIR, "visible")
                if not os.path.isdir(vis):
                    raise FileNotFoundError("%s: no test images" % vis)
                images = sorted(os.path.join(vis, f) for f in os.listdir(vis) if f.endswith(".png"))
        if args.limit:
            images = images[:args.limit]
        if not images:
            raise ValueError("no images: give --images or --dataset")
        decoding = args.decoding or decoders.default_decoding(bool(args.dataset))
        weights = None
        if decoding == "mmse":
            if not args.dataset:
                raise ValueError("--decoding mmse needs --dataset (its %s)" % layout.CLASS_WEIGHTS_FILE)
            weights = layout.read_class_weights(args.dataset, int(layout.read_dataset_info(args.dataset)["num_bins"]))
        res = infer_flow(client, args.job_id, images, args.out, args.epoch, decoding, ir_dir, weights)
        if "mean_rms" in res:
            print("mean RMS over %d images: %.2f" % (len(res["images"]), res["mean_rms"]))
    elif args.cmd == "upload":
        res = upload_flow(client, args.weights, args.net, args.name, args.dataset_id, args.import_model,
                          args.max_wait, dataset_server=args.dataset_server, dataset_local=args.dataset)
        print("uploaded: %s" % json.dumps(res))
    elif args.cmd == "download":
        client.login()
        files = client.download_model(args.job_id, args.out, args.epoch)
        print("fetched: %s" % ", ".join(sorted(os.path.basename(v) for k, v in files.items() if k != "dir")))


if __name__ == "__main__":
    sys.exit(main())
