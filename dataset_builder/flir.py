"""FLIR radiometric JPEG -> (visible photo cropped to the IR field of view, degC, meta).

Temperatures come from flyr (raw counts through the file's Planck constants,
emissivity, distance, humidity). The alignment tags come from exiftool: flyr's
own reader of the picture-in-picture record is used only when exiftool is missing
(a test checks the two agree on the sample files).

Geometry of the tags (FLIR's picture-in-picture convention):
  * Real2IR = (visible field of view) / (IR field of view): the whole raw IR image
    (RawThermalImageWidth, not the PiP box) spans photo_width / Real2IR photo
    pixels, so one IR pixel spans s = photo_width / (Real2IR * ir_width) photo
    pixels (square pixels);
  * OffsetX/OffsetY are in photo pixels: the IR image's centre lies at the photo's
    centre plus (OffsetX, OffsetY), positive = right/down;
  * PiPX1..PiPY2 only say which part of the IR the camera showed in its
    picture-in-picture display; the radiometric data are the whole raw image.
This is what exiftool documents (OffsetX: "offset of insertion point from center",
printed with a sign for ImageMagick's -gravity center -geometry), what flyr's
picture-in-picture rendering does (a test finds flyr's pasted IR within one pixel of
the footprint) and what the ImageMagick recipes of other FLIR readers do. The residual
misalignment left on real files is parallax: the two lenses sit a centimetre or two
apart and the tags hold for one (far) distance; an object at distance d needs an
extra shift of about f * b * (1/d - 1/d_cal) photo pixels along the lens baseline
(f: focal length in photo pixels, b: baseline). It is one-sided (every object is
nearer than a far calibration distance) and grows as objects come closer: the
dataset_builder README has the numbers measured on the sample files.
`refine_shift` (--refine-alignment) finds it from the edges.
Portrait files (phone held upright) store both images rotated; the formulae hold
unchanged because both images are stored in the same orientation.
Some cameras (e.g. AX8) letterbox the visible photo in black borders: the IR
footprint is intersected with the photo's real content, and the IR is cropped
to the part that has visible pixels behind it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .imageio import ImageReadError, check_ir_values

ALIGN_TAGS = ("Real2IR", "OffsetX", "OffsetY", "PiPX1", "PiPX2", "PiPY1", "PiPY2")
_EXIF_FIELDS = ALIGN_TAGS + ("Model", "Make", "RawThermalImageType", "RawThermalImageWidth",
                             "RawThermalImageHeight", "EmbeddedImageType", "EmbeddedImageWidth",
                             "EmbeddedImageHeight", "Emissivity", "Error", "Warning")
# Less than this share of the IR image seen by the visible photo: not a usable pair.
MIN_OVERLAP = 0.5
# A letterbox border row/column is darker than this everywhere (JPEG noise included).
_BORDER_LEVEL = 10


class FlirError(ImageReadError):
    """A FLIR file that cannot give an aligned pair; str() is 'path: reason'."""


@dataclass
class FlirPair:
    """An aligned pair read from one FLIR file."""

    visible: np.ndarray          # hv x wv x 3 uint8 RGB: the photo cropped to the IR footprint
    celsius: np.ndarray          # hi x wi float32 degC: the IR pixels that the crop covers
    meta: Dict = field(default_factory=dict)


# -- tags ------------------------------------------------------------------------------

def exiftool_path() -> Optional[str]:
    return shutil.which("exiftool")


def read_tags(paths: Sequence[str]) -> Dict[str, Dict]:
    """FLIR tags of many files with ONE exiftool call (-n: numbers, not prose).

    Returns {path: tags}; a file exiftool cannot read gets {"Error": ...}.
    Raises FileNotFoundError when exiftool is not installed.
    """
    tool = exiftool_path()
    if tool is None:
        raise FileNotFoundError("exiftool not found (Debian package libimage-exiftool-perl)")
    paths = list(paths)
    if not paths:
        return {}
    args = [tool, "-n", "-j", "-q", "-q", "-charset", "filename=utf8"] + ["-" + t for t in _EXIF_FIELDS] + ["--"]
    proc = subprocess.run(args + paths, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    try:
        rows = json.loads(proc.stdout.decode("utf-8", "replace") or "[]")
    except json.JSONDecodeError:
        rows = []
    by_path = {}
    for row in rows:
        by_path[row.get("SourceFile")] = row
    out = {}
    for p in paths:
        out[p] = by_path.get(p, {"Error": "exiftool could not read the file"})
    return out


def tags_from_flyr(thermogram) -> Dict:
    """Alignment tags from flyr's picture-in-picture record (fallback without exiftool)."""
    pip = getattr(thermogram, "pip_info", None)
    if pip is None:
        return {}
    return {"Real2IR": float(pip.real_to_ir), "OffsetX": int(pip.offset_x), "OffsetY": int(pip.offset_y),
            "PiPX1": int(pip.pip_x1), "PiPX2": int(pip.pip_x2), "PiPY1": int(pip.pip_y1),
            "PiPY2": int(pip.pip_y2)}


# -- geometry --------------------------------------------------------------------------

@dataclass
class Footprint:
    """Where the IR pixel grid lies on the visible photo: IR pixel (u, v) covers
    visible [x0 + u*s, x0 + (u+1)*s) x [y0 + v*s, y0 + (v+1)*s)."""

    x0: float
    y0: float
    s: float


def footprint(tags: Dict, vis_shape: Tuple[int, int], ir_shape: Tuple[int, int],
              shift: Tuple[float, float] = (0.0, 0.0)) -> Footprint:
    """IR grid on the visible photo from Real2IR and OffsetX/Y (+ an optional extra shift)."""
    hv, wv = vis_shape[:2]
    hi, wi = ir_shape[:2]
    real2ir = float(tags["Real2IR"])
    if not real2ir > 0:
        raise ValueError("Real2IR must be positive, got %r" % real2ir)
    s = wv / (real2ir * wi)
    cx = wv / 2.0 + float(tags.get("OffsetX", 0)) + shift[0]
    cy = hv / 2.0 + float(tags.get("OffsetY", 0)) + shift[1]
    return Footprint(cx - wi * s / 2.0, cy - hi * s / 2.0, s)


def content_box(rgb: np.ndarray) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the photo without black letterbox borders."""
    bright = rgb.max(axis=2) > _BORDER_LEVEL
    # a border line is (almost) all dark; JPEG ringing lights a few of its pixels
    rows = np.flatnonzero(bright.mean(axis=1) > 0.05)
    cols = np.flatnonzero(bright.mean(axis=0) > 0.05)
    h, w = rgb.shape[:2]
    if rows.size == 0 or cols.size == 0:
        return 0, 0, w, h
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    if box[2] - box[0] < w // 2 or box[3] - box[1] < h // 2:
        return 0, 0, w, h       # a dark (night) photo, not a letterbox: keep it whole
    return box


def ir_window_inside(fp: Footprint, box: Tuple[int, int, int, int], ir_shape: Tuple[int, int]):
    """IR pixel range (u0, v0, u1, v1) whose footprint lies inside the visible box."""
    hi, wi = ir_shape[:2]
    bx0, by0, bx1, by1 = box
    eps = 1e-6
    u0 = max(0, int(math.ceil((bx0 - fp.x0) / fp.s - eps)))
    v0 = max(0, int(math.ceil((by0 - fp.y0) / fp.s - eps)))
    u1 = min(wi, int(math.floor((bx1 - fp.x0) / fp.s + eps)))
    v1 = min(hi, int(math.floor((by1 - fp.y0) / fp.s + eps)))
    return u0, v0, max(u0, u1), max(v0, v1)


def prefilter(gray: np.ndarray, s: float) -> np.ndarray:
    """The photo low-passed for sampling at one IR pixel per s photo pixels (no aliasing)."""
    if s > 1.5:
        return cv2.GaussianBlur(gray, (0, 0), 0.5 * s)
    return gray


def sample_visible(gray: np.ndarray, fp: Footprint, u0: int, v0: int, u1: int, v1: int,
                   prefiltered: bool = False) -> np.ndarray:
    """Visible (grey or RGB) resampled onto IR pixels u0..u1 x v0..v1 (area-like: pre-blur + linear)."""
    src = gray if prefiltered else prefilter(gray, fp.s)
    # output pixel (i, j) centre -> visible x = x0 + (u0 + i + 0.5) * s, sampled at pixel-centre coords
    m = np.array([[fp.s, 0.0, fp.x0 + (u0 + 0.5) * fp.s - 0.5],
                  [0.0, fp.s, fp.y0 + (v0 + 0.5) * fp.s - 0.5]], dtype=np.float64)
    return cv2.warpAffine(src, m, (u1 - u0, v1 - v0), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def edge_map(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gradient magnitude after a light blur: what 'edges agree' compares."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    a = cv2.GaussianBlur(a, (0, 0), sigma)
    gx = cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3)
    return np.hypot(gx, gy)


def _centred_edges(img: np.ndarray, margin: int) -> np.ndarray:
    a = edge_map(img)
    if margin:
        a = a[margin:-margin, margin:-margin]
    a = a.astype(np.float64)
    return a - a.mean()


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def edge_agreement(visible_on_ir: np.ndarray, celsius: np.ndarray, margin: int = 2) -> float:
    """Normalised cross-correlation of visible and IR gradient magnitudes (same grid).

    1 = edges in the same places with proportional strength, ~0 = unrelated. A
    mis-registered visible image moves its edges off the IR edges and scores lower.
    """
    if np.shape(visible_on_ir)[:2] != np.shape(celsius)[:2]:
        raise ValueError("edge_agreement needs equal grids, got %s and %s"
                         % (np.shape(visible_on_ir), np.shape(celsius)))
    return _ncc(_centred_edges(visible_on_ir, margin), _centred_edges(celsius, margin))


def crop_agreement(visible_crop: np.ndarray, ir_crop: np.ndarray) -> float:
    """Edge agreement of an aligned pair as it is stored: the photo crop area-resized to the IR grid."""
    on_ir = cv2.resize(visible_crop, (ir_crop.shape[1], ir_crop.shape[0]), interpolation=cv2.INTER_AREA)
    return edge_agreement(on_ir, ir_crop)


def refine_shift(rgb: np.ndarray, celsius: np.ndarray, tags: Dict, radius: int) -> Tuple[int, int, float]:
    """Extra (dx, dy) visible-pixel shift, within +-radius, that best aligns the edges.

    The tags are a factory calibration for one object distance; close objects show
    parallax (see the module docstring) that this search removes. Scores are taken on
    the IR pixels that stay inside the photo for every shift; coarse grid (step
    radius/8), then every shift around the best one.
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    box = content_box(rgb)
    fp0 = footprint(tags, rgb.shape, celsius.shape)
    inner = (box[0] + radius, box[1] + radius, box[2] - radius, box[3] - radius)
    u0, v0, u1, v1 = ir_window_inside(fp0, inner, celsius.shape)
    if u1 - u0 < 8 or v1 - v0 < 8:
        return 0, 0, float("nan")
    ir_edges = _centred_edges(celsius[v0:v1, u0:u1], 2)
    src = prefilter(gray, fp0.s)        # once, not once per shift

    def score(dx, dy):
        fp = footprint(tags, rgb.shape, celsius.shape, (dx, dy))
        return _ncc(_centred_edges(sample_visible(src, fp, u0, v0, u1, v1, prefiltered=True), 2), ir_edges)

    step = max(1, radius // 8)
    best = max((score(dx, dy), dx, dy) for dx in range(-radius, radius + 1, step)
               for dy in range(-radius, radius + 1, step))
    cx, cy = best[1], best[2]
    for dx in range(cx - step + 1, cx + step):
        for dy in range(cy - step + 1, cy + step):
            if abs(dx) <= radius and abs(dy) <= radius:
                best = max(best, (score(dx, dy), dx, dy))
    return best[1], best[2], best[0]


def aligned_crop(rgb: np.ndarray, celsius: np.ndarray, tags: Dict, shift=(0.0, 0.0), path: str = "?"):
    """(visible crop, IR crop, info): the photo cut to the IR footprint inside its content."""
    fp = footprint(tags, rgb.shape, celsius.shape, shift)
    box = content_box(rgb)
    u0, v0, u1, v1 = ir_window_inside(fp, box, celsius.shape)
    hi, wi = celsius.shape
    overlap = (u1 - u0) * (v1 - v0) / float(hi * wi)
    if overlap < MIN_OVERLAP:
        raise FlirError(path, "IR field of view lies mostly outside the visible photo (%.0f%% overlap; "
                              "Real2IR %.3f, offsets %s/%s)" % (100 * overlap, float(tags["Real2IR"]),
                                                              tags.get("OffsetX"), tags.get("OffsetY")))
    x0 = int(round(fp.x0 + u0 * fp.s))
    x1 = int(round(fp.x0 + u1 * fp.s))
    y0 = int(round(fp.y0 + v0 * fp.s))
    y1 = int(round(fp.y0 + v1 * fp.s))
    x0, y0 = max(x0, box[0]), max(y0, box[1])
    x1, y1 = min(x1, box[2]), min(y1, box[3])
    info = {"vis_box": [x0, y0, x1, y1], "ir_box": [u0, v0, u1, v1], "scale": fp.s, "overlap": overlap}
    return rgb[y0:y1, x0:x1].copy(), celsius[v0:v1, u0:u1].copy(), info


def naive_crop(rgb: np.ndarray, ir_shape: Tuple[int, int]) -> np.ndarray:
    """The naive pairing: the whole photo centre-cropped to the IR aspect (no tags)."""
    hv, wv = rgb.shape[:2]
    hi, wi = ir_shape[:2]
    if wv * hi > hv * wi:       # photo wider than IR: cut the sides
        w = int(round(hv * wi / hi))
        x0 = (wv - w) // 2
        return rgb[:, x0:x0 + w]
    h = int(round(wv * hi / wi))
    y0 = (hv - h) // 2
    return rgb[y0:y0 + h]


# -- reading ---------------------------------------------------------------------------

def _decode(path: str):
    import flyr

    try:
        return flyr.unpack(path)
    except Exception as exc:  # flyr raises KeyError/ValueError/struct.error... on foreign data
        msg = str(exc) or type(exc).__name__
        raise FlirError(path, "not a radiometric FLIR JPEG that can be decoded (%s: %s)"
                        % (type(exc).__name__, msg)) from exc


def check_tags(path: str, tags: Dict) -> None:
    """Reject from the tags alone, before any decoding: foreign JPEGs, thermal-only files."""
    if tags.get("Error"):
        raise FlirError(path, "unreadable file (%s)" % tags["Error"])
    if "RawThermalImageType" not in tags:
        raise FlirError(path, "not a radiometric FLIR JPEG (no raw thermal image in its metadata)")
    if "EmbeddedImageType" not in tags:
        raise FlirError(path, "FLIR file without an embedded visible photo (thermal only): no pair to make")


def check_jpeg_complete(path: str) -> None:
    """A FLIR file is a JPEG: SOI marker first, EOI marker at the end. A cut-off
    download can keep its metadata (and so decode) while the file is damaged."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(max(0, size - 64))
        tail = f.read()
    if head != b"\xff\xd8":
        raise FlirError(path, "not a JPEG file")
    if b"\xff\xd9" not in tail:
        raise FlirError(path, "truncated file (no JPEG end marker)")


def read_flir(path: str, tags: Optional[Dict] = None, refine_px: int = 0) -> FlirPair:
    """One FLIR file -> aligned pair, or FlirError naming the file and the reason."""
    if not os.path.isfile(path):
        raise FlirError(path, "no such file")
    check_jpeg_complete(path)
    if tags is None:
        tags = read_tags([path])[path] if exiftool_path() else None
    if tags is not None:
        check_tags(path, tags)
    th = _decode(path)
    try:
        celsius = np.asarray(th.celsius, dtype=np.float32)
        rgb = th.optical
    except Exception as exc:
        raise FlirError(path, "FLIR data cannot be decoded (%s: %s)" % (type(exc).__name__, exc)) from exc
    if rgb is None:
        raise FlirError(path, "FLIR file without an embedded visible photo (thermal only): no pair to make")
    if tags is None or "Real2IR" not in tags:
        fallback = tags_from_flyr(th)
        tags = dict(tags or {}, **fallback)
    if "Real2IR" not in tags:
        raise FlirError(path, "FLIR file has a visible photo but no alignment tags (Real2IR, OffsetX/Y)")
    check_ir_values(celsius, path)
    rgb = np.ascontiguousarray(rgb[:, :, :3], dtype=np.uint8)
    shift = (0, 0)
    refine_score = None
    vis, ir, info = aligned_crop(rgb, celsius, tags, shift, path)
    agreement_tags = agreement = crop_agreement(vis, ir)
    if refine_px > 0:
        dx, dy, refine_score = refine_shift(rgb, celsius, tags, refine_px)
        if (dx, dy) != (0, 0):
            shift = (dx, dy)
            vis, ir, info = aligned_crop(rgb, celsius, tags, shift, path)
            agreement = crop_agreement(vis, ir)
    check_ir_values(ir, path)
    meta = {
        "model": str(tags.get("Model", "")),
        "raw_ir_shape": list(celsius.shape),
        "photo_shape": list(rgb.shape[:2]),
        "tags": {k: tags[k] for k in ALIGN_TAGS if k in tags},
        "shift": list(shift),
        "refine_score": refine_score,
        "edge_agreement_tags": agreement_tags,     # the crop the tags alone give (before refinement)
        "edge_agreement": agreement,               # the crop kept (after refinement, if any)
        "portrait": bool(celsius.shape[0] > celsius.shape[1]),
    }
    meta.update(info)
    return FlirPair(visible=vis, celsius=ir, meta=meta)


# alignment.csv (one row per FLIR pair in a built dataset): what the tags said, the shift the
# edge search added (--refine-alignment; 0 without it), the crop boxes, and the edge agreement
# of the crop the tags alone give ("before") and of the crop kept ("after").
ALIGNMENT_FILE = "alignment.csv"
ALIGNMENT_COLUMNS = ("id", "model", "real2ir", "offset_x", "offset_y", "shift_x", "shift_y", "scale",
                     "vis_x0", "vis_y0", "vis_x1", "vis_y1", "ir_u0", "ir_v0", "ir_u1", "ir_v1",
                     "edge_agreement", "edge_agreement_tags")


def alignment_row(item_id: str, meta: Dict) -> List:
    """One alignment.csv row (ALIGNMENT_COLUMNS) from a FlirPair's meta."""
    t = meta["tags"]
    return ([item_id, meta["model"], "%.5f" % float(t["Real2IR"]), t.get("OffsetX", 0), t.get("OffsetY", 0),
             meta["shift"][0], meta["shift"][1], "%.4f" % meta["scale"]] + list(meta["vis_box"]) +
            list(meta["ir_box"]) + ["%.4f" % meta["edge_agreement"], "%.4f" % meta["edge_agreement_tags"]])


def list_flir(folder: str) -> List[str]:
    """FLIR candidates in a folder (recursive): every .jpg/.jpeg, sorted."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith((".jpg", ".jpeg")) and not name.startswith("."):
                out.append(os.path.join(root, name))
    return out
