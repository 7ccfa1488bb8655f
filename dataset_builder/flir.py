"""FLIR radiometric JPEG -> (visible photo cropped to the IR field of view, degC, meta).

Temperatures are flyr's (raw counts through the file's Planck constants, emissivity,
distance, humidity): computed by the kit's own reader (decode_fast: the same numbers
without flyr's per-byte and per-pixel Python loops), by flyr itself for any file that
reader cannot read exactly as flyr does. The alignment tags come from exiftool: flyr's
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

import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from thermalnet.imageio import ImageReadError, check_ir_values, decode_rgb_jpeg

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
    # the brightest channel by two elementwise maxima: numpy's max over a 3-long last
    # axis is a slow reduction (about 20x the time on a 640x480 photo)
    bright = np.maximum(np.maximum(rgb[:, :, 0], rgb[:, :, 1]), rgb[:, :, 2]) > _BORDER_LEVEL
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


# -- the fast decoder ------------------------------------------------------------------
# flyr spends most of a file's read in Python loops: it scans the JPEG for its FLIR
# segments one byte at a time, swaps the PNG raw image's bytes with np.vectorize (one
# Python call per pixel) and reads an unpacked raw image two bytes at a time. The
# reader below does the same steps with one pattern search, PIL and numpy: the same
# numbers (tests/test_flir_fast.py compares every sample with flyr, bit for bit). Anything
# it does not read exactly as flyr would (another byte order, a damaged or unusual file)
# goes to flyr, which decides as before.

# A FLIR APP1 segment: FF E1, length (2 bytes, big-endian, counting itself), "FLIR\0",
# one byte, chunk number, last chunk number, then the chunk of the FLIR record stream.
_FLIR_SEGMENT = re.compile(b"\xff\xe1..FLIR\x00", re.DOTALL)
# FLIR record types (exiftool's FLIR tag tables)
REC_RAW, REC_PHOTO, REC_CAMERA, REC_PIP = 1, 14, 32, 42
# Raw thermal record subtypes: 1 = 16-bit big-endian, 2 = 16-bit little-endian, 3 = PNG
# (whose 16-bit samples hold the counts little-endian: swapped against PNG's own order).
RAW_LE, RAW_PNG = 2, 3
_PNG_MAGIC = b"\x89PNG"
_RECORD_HEADER = 32           # a record's data start 32 bytes in (width, height at bytes 2..5)


class _NotFast(Exception):
    """This file is not read here the way flyr reads it: flyr decodes it."""


@dataclass
class _Thermogram:
    """What read_flir takes from a decoded file (flyr's thermogram has the same attributes)."""

    celsius: np.ndarray                  # float64 degC, as flyr's .celsius
    optical: Optional[np.ndarray]        # the embedded photo as PIL decodes it, or None
    pip_info: object = None              # flyr's picture-in-picture record, or None


def flir_stream(data: bytes) -> bytes:
    """The FLIR record stream ("FFF") of a JPEG file's bytes: its FLIR chunks in order.

    Found where flyr finds them (from the third byte on; a chunk is skipped whole);
    anything flyr would reject or read differently raises _NotFast.
    """
    chunks: Dict[int, bytes] = {}
    last = None
    pos = 2
    while True:
        m = _FLIR_SEGMENT.search(data, pos)
        if m is None:
            break
        p = m.start()
        if p + 12 > len(data):
            raise _NotFast("segment header cut off")
        size = int.from_bytes(data[p + 2:p + 4], "big") - 10     # the chunk's bytes
        num, total = data[p + 10], data[p + 11]
        if last is None:
            last = total
        if size < 0 or num > total or total != last or num in chunks or p + 12 + size > len(data):
            raise _NotFast("inconsistent or cut-off FLIR segments")
        chunks[num] = data[p + 12:p + 12 + size]
        pos = p + 12 + size
        if num == last:
            break
    if last is None or len(chunks) != last + 1:
        raise _NotFast("no FLIR segments, or some missing")
    return b"".join(chunks[i] for i in range(last + 1))


def flir_records(fff: bytes, wanted: Sequence[int] = (REC_RAW, REC_PHOTO, REC_CAMERA, REC_PIP)):
    """{record type: (subtype, offset, length)} from the stream's record directory.

    The header (big-endian) gives the directory's offset and entry count; each 32-byte
    entry: type (2 bytes), subtype (2), version (4), index (4), offset (4), length (4), ...
    flyr reads the entries from the stream's first byte instead of the directory's
    offset, so it sees the header as two entries and misses the directory's last two:
    a wanted record that its lookup would not find in the same place raises _NotFast.
    """
    if len(fff) < 64 or fff[:4] not in (b"FFF\x00", b"AFF\x00"):
        raise _NotFast("not a FLIR record stream")
    start, count = struct.unpack_from(">II", fff, 0x18)
    if start != 64 or count > 1024 or start + 32 * count > len(fff):
        raise _NotFast("record directory not where flyr reads it")
    entries = [struct.unpack_from(">HH8xII", fff, start + 32 * i) for i in range(count)]
    flyr_view = {}
    for i in range(count):             # flyr: entry i at byte 32 * i, later ones win
        kind, offset, length = struct.unpack_from(">H10xII", fff, 32 * i)
        if kind >= 1:
            flyr_view[kind] = (offset, length)
    out = {}
    for kind, sub, offset, length in entries:
        if kind in wanted:
            if kind in out:
                raise _NotFast("record type %d twice" % kind)
            out[kind] = (sub, offset, length)
    for kind in wanted:
        if (kind in out) != (kind in flyr_view) or (kind in out and out[kind][1:] != flyr_view[kind]):
            raise _NotFast("flyr would find record type %d elsewhere" % kind)
    return out


def _record_bytes(fff: bytes, rec, limit: Optional[int] = None):
    """(width, height, data) of a raw-image or photo record (data cut to limit bytes)."""
    _, offset, length = rec
    width, height = struct.unpack_from("<HH", fff, offset + 2)
    n = length if limit is None else min(limit, length)
    return width, height, fff[offset + _RECORD_HEADER:offset + _RECORD_HEADER + n]


def raw_counts(fff: bytes, rec) -> np.ndarray:
    """The raw thermal image (uint16 counts, height x width) of a raw-data record."""
    sub = rec[0]
    width, height = struct.unpack_from("<HH", fff, rec[1] + 2)
    if width * height == 0:
        raise _NotFast("empty raw image")
    _, _, data = _record_bytes(fff, rec, limit=2 * width * height)     # flyr reads no more
    if data[:4] == _PNG_MAGIC:
        if sub != RAW_PNG:
            raise _NotFast("PNG raw image of subtype %d" % sub)
        with Image.open(io.BytesIO(data)) as img:          # PIL, as flyr: the same counts
            png = np.asarray(img)
        if png.shape != (height, width) or png.dtype.kind not in "ui" or png.min() < 0 or png.max() > 0xFFFF:
            raise _NotFast("PNG raw image of another size or sample type")
        return png.astype(np.uint16).byteswap()
    if sub != RAW_LE or len(data) != 2 * width * height:
        raise _NotFast("raw image of subtype %d or %d bytes" % (sub, len(data)))
    return np.frombuffer(data, dtype="<u2").reshape(height, width).astype(np.uint16)


def planck_celsius(raw: np.ndarray, cam: Dict) -> np.ndarray:
    """Raw counts -> degC (float64): FLIR's radiometric model with the file's constants.

    A body at temperature T gives R1 / (R2 * (exp(B / T) - F)) - O counts. The counts
    are the object's share (emissivity e, through the atmosphere's transmission tau,
    once on each side of the external optics' window, transmission w) plus what the
    surroundings add: the reflected apparent temperature's (1 - e), the atmosphere's
    (1 - tau) and the window's own radiation (1 - w; its reflectance taken as 0).
    tau mixes two exponentials in the square root of the object distance (its half on
    each side of the window) and of the air's water content, from the relative humidity
    and the atmospheric temperature. Arithmetic in flyr's order and with flyr's
    constants (273.17 in the water content's square term, as flyr has it), so the
    numbers are flyr's to the last bit.
    """
    e = cam["emissivity"]
    dist = cam["object_distance"]
    t_atm = cam["atmospheric_temperature"]
    t_refl = cam["reflected_apparent_temperature"]
    t_win = cam["ir_window_temperature"]
    w = cam["ir_window_transmission"]
    r1, r2, b, f, o = (cam["planck_r1"], cam["planck_r2"], cam["planck_b"], cam["planck_f"], cam["planck_o"])
    x = cam["atmospheric_trans_x"]

    def counts(t):
        return r1 / (r2 * (math.exp(b / t) - f)) - o

    water = cam["relative_humidity"] * math.exp(1.5587 + 0.06939 * (t_atm - 273.15)
                                                - 0.00027816 * (t_atm - 273.17) ** 2
                                                + 0.00000068455 * (t_atm - 273.15) ** 3)

    def path(alpha, beta):
        return math.exp(-math.sqrt(dist / 2) * (alpha + beta * math.sqrt(water)))

    tau = x * path(cam["atmospheric_trans_alpha1"], cam["atmospheric_trans_beta1"]) + \
        (1 - x) * path(cam["atmospheric_trans_alpha2"], cam["atmospheric_trans_beta2"])
    through_window = e * tau * w
    added = math.fsum([(1 - e) / e * counts(t_refl),                   # reflected surroundings
                       (1 - tau) / e / tau * counts(t_atm),             # air before the window
                       (1 - w) / through_window * counts(t_win),        # the window itself
                       0.0 / through_window * counts(t_refl),           # its reflection (0)
                       (1 - tau) / through_window / tau * counts(t_atm)])  # air behind it
    obj = raw.astype(np.float64)
    obj /= through_window * tau
    obj -= added
    obj += o
    obj *= r2
    kelvin = b / np.log(r1 / obj + f)
    return kelvin - 273.15


def decode_fast(path: str) -> _Thermogram:
    """One FLIR file -> temperatures, photo and PiP record without flyr's Python loops.

    Raises _NotFast for whatever flyr should decide (read_flir then calls flyr).
    """
    from flyr.picture_in_picture import parse_pip_info
    from flyr.thermal import parse_camera_info

    try:
        with Image.open(path) as img:      # flyr reads the file's EXIF too: fails where it fails
            img.getexif()
        with open(path, "rb") as fh:
            fff = flir_stream(fh.read())
        recs = flir_records(fff)
        if REC_RAW not in recs or REC_CAMERA not in recs:
            raise _NotFast("no raw image or camera record")
        raw = raw_counts(fff, recs[REC_RAW])
        cam = parse_camera_info(io.BytesIO(fff), (0, REC_CAMERA, recs[REC_CAMERA][1], recs[REC_CAMERA][2]))
        celsius = planck_celsius(raw, cam)
    except _NotFast:
        raise
    except Exception as exc:  # noqa: BLE001 -- a damaged file: flyr's error names the problem
        raise _NotFast("%s: %s" % (type(exc).__name__, exc)) from exc
    optical = pip = None
    if REC_PHOTO in recs:              # as flyr: a photo that cannot be read is no photo
        try:
            width, height, data = _record_bytes(fff, recs[REC_PHOTO])
            optical = decode_rgb_jpeg(data, width, height)      # flyr's PIL pixels, faster
            if optical is None:
                with Image.open(io.BytesIO(data)) as img:
                    optical = np.array(img)
            if optical.shape[:2] != (height, width):
                optical = None
        except Exception:  # noqa: BLE001 -- flyr drops the photo on any error
            optical = None
    if REC_PIP in recs:
        try:
            pip = parse_pip_info(io.BytesIO(fff), (0, REC_PIP, recs[REC_PIP][1], recs[REC_PIP][2]))
        except Exception:  # noqa: BLE001 -- as flyr: no PiP record
            pip = None
    return _Thermogram(celsius=celsius, optical=optical, pip_info=pip)


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
    try:
        th = decode_fast(path)
    except _NotFast:
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
