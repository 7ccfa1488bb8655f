"""FLIR radiometric JPEGs written from known numbers, so that every clone tests the FLIR path.

A real FLIR JPEG is an ordinary JPEG (the camera's rendering) carrying APP1 segments
"FLIR\\0" whose chunks, joined in order, form an FFF record stream: a 64-byte
big-endian header (version 100, directory offset 64, entry count), a directory of
32-byte entries (type, subtype, version, index, offset, length, ...) and the records.
The records written here are the ones the kit's reader (dataset_builder.flir), flyr and
exiftool read, laid out as the FLIR ONE sample of SOURCES.md lays them out:

* 0x0e embedded photo: little-endian record header (0x0003, width, height), JPEG at +32;
* 0x20 camera info: header 0x0002, width, height; emissivity, distance, temperatures,
  humidity, Planck R1/B/F, atmosphere constants at +0x20.., PlanckO/R2 at +0x308, the
  counts' range at +0x310 and median/range at +0x338;
* 0x01 raw thermal image: header 0x0002, width, height, width-1 at +0x0c, height-1 at
  +0x10, then a 16-bit PNG whose samples hold the counts little-endian (subtype 3), or
  the counts as raw little-endian 16-bit (subtype 2);
* 0x2a picture in picture: Real2IR (float), OffsetX/Y, PiPX1/X2/Y1/Y2 (int16, little-endian).

flyr reads the directory's entries from the stream's first byte (so it misses the last
two): like FLIR's own files, the directory has empty entries at its end. The counts are
the radiometric model run forwards (planck_counts) on temperatures the test chose, so
the degC the reader gives back are known to the counts' rounding.
"""
from __future__ import annotations

import io
import math
import struct
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image

# FFF record types and raw subtypes (exiftool's FLIR tables; the reader names them too)
REC_RAW, REC_PHOTO, REC_CAMERA, REC_PIP = 1, 14, 32, 42
RAW_LE, RAW_PNG = 2, 3
# One APP1 segment carries at most 65533 bytes after its length field; FLIR's files put
# 65524 bytes of the stream in each (65534-byte segments: 10 bytes of FLIR chunk header).
CHUNK = 65524
_DIR_ENTRIES = 14             # FLIR ONE files: 6 records and 8 empty entries
_CAMERA_RECORD = 0x9ac        # the FLIR ONE camera record's length
MODEL = "Kit FLIR writer"     # EXIF Model of the written files

# FLIR ONE's constants (the mug sample of SOURCES.md), in flyr's names; temperatures in K.
CAMERA = {"emissivity": 0.95, "object_distance": 1.0, "reflected_apparent_temperature": 293.15,
          "atmospheric_temperature": 293.15, "ir_window_temperature": 293.15, "ir_window_transmission": 1.0,
          "relative_humidity": 0.5, "planck_r1": 17837.53125, "planck_b": 1450.4, "planck_f": 1.0,
          "planck_o": -1143, "planck_r2": 0.0123327812, "atmospheric_trans_alpha1": 0.006569,
          "atmospheric_trans_alpha2": 0.01262, "atmospheric_trans_beta1": -0.002276,
          "atmospheric_trans_beta2": -0.00667, "atmospheric_trans_x": 1.9}
# camera record field -> (offset, struct format)
_CAMERA_FIELDS = {"emissivity": (0x20, "<f"), "object_distance": (0x24, "<f"),
                  "reflected_apparent_temperature": (0x28, "<f"), "atmospheric_temperature": (0x2c, "<f"),
                  "ir_window_temperature": (0x30, "<f"), "ir_window_transmission": (0x34, "<f"),
                  "relative_humidity": (0x3c, "<f"), "planck_r1": (0x58, "<f"), "planck_b": (0x5c, "<f"),
                  "planck_f": (0x60, "<f"), "atmospheric_trans_alpha1": (0x70, "<f"),
                  "atmospheric_trans_alpha2": (0x74, "<f"), "atmospheric_trans_beta1": (0x78, "<f"),
                  "atmospheric_trans_beta2": (0x7c, "<f"), "atmospheric_trans_x": (0x80, "<f"),
                  "planck_o": (0x308, "<i"), "planck_r2": (0x30c, "<f")}


def as_stored(camera: Dict) -> Dict:
    """The constants as a reader gets them back: floats through float32, temperatures
    rounded to 0.01 K as flyr rounds them."""
    out = {}
    for k, v in camera.items():
        fmt = _CAMERA_FIELDS[k][1]
        v = struct.unpack(fmt, struct.pack(fmt, v))[0]
        out[k] = round(v, 2) if k in ("atmospheric_temperature", "ir_window_temperature",
                                      "reflected_apparent_temperature") else v
    return out


def planck_counts(cam: Dict, kelvin):
    """Raw counts the camera records for an object at `kelvin`: FLIR's radiometric model
    run forwards (object through the air, the window and the air again, plus the
    reflected surroundings, the air's and the window's own radiation)."""
    def counts(t):
        return cam["planck_r1"] / (cam["planck_r2"] * (np.exp(cam["planck_b"] / t) - cam["planck_f"])) \
            - cam["planck_o"]

    ta = cam["atmospheric_temperature"]
    h2o = cam["relative_humidity"] * math.exp(1.5587 + 0.06939 * (ta - 273.15) - 0.00027816 * (ta - 273.17) ** 2
                                              + 0.00000068455 * (ta - 273.15) ** 3)
    root = math.sqrt(cam["object_distance"] / 2)
    x = cam["atmospheric_trans_x"]
    tau = x * math.exp(-root * (cam["atmospheric_trans_alpha1"] + cam["atmospheric_trans_beta1"] * math.sqrt(h2o))) \
        + (1 - x) * math.exp(-root * (cam["atmospheric_trans_alpha2"] + cam["atmospheric_trans_beta2"] * math.sqrt(h2o)))
    e, w = cam["emissivity"], cam["ir_window_transmission"]
    before_window = e * tau * counts(np.asarray(kelvin, np.float64)) \
        + (1 - e) * tau * counts(cam["reflected_apparent_temperature"]) + (1 - tau) * counts(ta)
    after_window = w * before_window + (1 - w) * counts(cam["ir_window_temperature"])
    return tau * after_window + (1 - tau) * counts(ta)


def _record_header(first: int, width: int, height: int) -> bytearray:
    head = bytearray(32)
    struct.pack_into("<HHH", head, 0, first, width, height)
    struct.pack_into("<II", head, 0x0c, max(0, width - 1), max(0, height - 1))
    return head


def _png16_swapped(counts: np.ndarray) -> bytes:
    """16-bit greyscale PNG holding the counts byte-swapped, as FLIR cameras write it."""
    buf = io.BytesIO()
    Image.fromarray(counts.astype(np.uint16).byteswap()).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(rgb: np.ndarray, quality: int = 95, exif: Optional[bytes] = None) -> bytes:
    buf = io.BytesIO()
    kw = {"exif": exif} if exif else {}
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def fff_stream(counts: np.ndarray, camera: Dict, photo: Optional[np.ndarray] = None, pip: Optional[Dict] = None,
               raw_format: str = "png", byteorder: str = ">") -> bytes:
    """The FFF record stream: header, directory, records (photo, camera, raw, PiP).

    byteorder "<" writes header and directory little-endian, as DJI's files do
    (exiftool reads them; flyr and the kit's fast path read big-endian only)."""
    h, w = counts.shape
    recs = []                                            # (type, subtype, bytes)
    if photo is not None:
        recs.append((REC_PHOTO, 1, bytes(_record_header(3, photo.shape[1], photo.shape[0])) + _jpeg(photo)))
    cam = _record_header(2, w, h) + bytearray(_CAMERA_RECORD - 32)
    for k, v in camera.items():
        off, fmt = _CAMERA_FIELDS[k]
        struct.pack_into(fmt, cam, off, v)
    # the counts' range, as the camera records it (flyr's render() windows with median +- range/2)
    lo, hi, med = int(counts.min()), int(counts.max()), int(np.median(counts))
    struct.pack_into("<HH", cam, 0x310, lo, hi)
    struct.pack_into("<ii", cam, 0x338, med, max(1, hi - lo))
    recs.append((REC_CAMERA, 1, bytes(cam)))
    if raw_format == "png":
        raw = bytes(_record_header(2, w, h)) + _png16_swapped(counts)
        recs.append((REC_RAW, RAW_PNG, raw))
    elif raw_format == "le":
        raw = bytes(_record_header(2, w, h)) + counts.astype("<u2").tobytes()
        recs.append((REC_RAW, RAW_LE, raw))
    else:
        raise ValueError("raw_format %r: 'png' or 'le'" % raw_format)
    if pip is not None:
        p = bytearray(96)
        struct.pack_into("<f6h", p, 0, pip["Real2IR"], pip["OffsetX"], pip["OffsetY"], pip["PiPX1"], pip["PiPX2"],
                         pip["PiPY1"], pip["PiPY2"])
        recs.append((REC_PIP, 1, bytes(p)))
    bo = byteorder
    header = bytearray(64)
    header[:4] = b"FFF\x00"
    struct.pack_into(bo + "III", header, 0x14, 100, 64, _DIR_ENTRIES)
    struct.pack_into(bo + "I", header, 0x20, len(recs) + 1)     # next free index id
    directory = bytearray(32 * _DIR_ENTRIES)
    body = bytearray()
    pos = 64 + len(directory)
    pos += (-pos) % 0x100                                        # records start aligned, as FLIR's do
    start = pos
    for i, (kind, sub, data) in enumerate(recs):
        struct.pack_into(bo + "HHIIII", directory, 32 * i, kind, sub, 100, 1, pos, len(data))
        body += data
        pad = (-len(data)) % 4
        body += bytes(pad)
        pos += len(data) + pad
    return bytes(header) + bytes(directory) + bytes(start - 64 - len(directory)) + bytes(body)


def _exif(make: str, model: str) -> bytes:
    ex = Image.Exif()
    ex[0x010f] = make
    ex[0x0110] = model
    return ex.tobytes()


def app1_segments(fff: bytes, chunk: int = CHUNK) -> bytes:
    """The stream cut into APP1 'FLIR' segments: FF E1, length, FLIR\\0, 01, chunk n, last n."""
    parts = [fff[i:i + chunk] for i in range(0, len(fff), chunk)] or [b""]
    if len(parts) > 256:
        raise ValueError("FFF stream of %d bytes needs more than 256 chunks" % len(fff))
    out = bytearray()
    for n, part in enumerate(parts):
        out += b"\xff\xe1" + struct.pack(">H", len(part) + 10) + b"FLIR\x00\x01" + bytes([n, len(parts) - 1]) + part
    return bytes(out)


def render(celsius: np.ndarray) -> np.ndarray:
    """The grey rendering a camera stores as the file's main picture (min..max)."""
    c = np.asarray(celsius, np.float64)
    g = np.round((c - c.min()) / max(1e-9, float(np.ptp(c))) * 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def write_flir(path: str, celsius: np.ndarray, photo: Optional[np.ndarray] = None, real2ir: float = 1.0,
               offset: Sequence[int] = (0, 0), pip_box: Optional[Sequence[int]] = None, raw_format: str = "png",
               camera: Optional[Dict] = None, model: str = MODEL, byteorder: str = ">",
               chunk: int = CHUNK) -> Dict:
    """Write a FLIR radiometric JPEG holding `celsius` (H x W degC) as raw counts.

    photo: the embedded visible photo (h x w x 3 uint8) or None (a thermal-only file);
    real2ir, offset (OffsetX, OffsetY): the alignment tags (written only with a photo);
    pip_box: PiPX1, PiPX2, PiPY1, PiPY2 (default: the whole IR image).
    Returns what a reader should find: the counts, the degC they stand for (the model
    inverted exactly, so only the counts' rounding separates it from `celsius`), the
    constants as stored, the tags.
    """
    cam = dict(CAMERA, **(camera or {}))
    stored = as_stored(cam)
    counts = np.round(planck_counts(stored, np.asarray(celsius, np.float64) + 273.15))
    if counts.min() < 0 or counts.max() > 0xFFFF:
        raise ValueError("temperatures outside what 16-bit counts hold with these constants")
    counts = counts.astype(np.uint16)
    h, w = counts.shape
    tags = None
    if photo is not None:
        box = tuple(pip_box) if pip_box is not None else (0, w - 1, 0, h - 1)
        tags = {"Real2IR": float(np.float32(real2ir)), "OffsetX": int(offset[0]), "OffsetY": int(offset[1]),
                "PiPX1": box[0], "PiPX2": box[1], "PiPY1": box[2], "PiPY2": box[3]}
    fff = fff_stream(counts, cam, photo, tags, raw_format, byteorder)
    main = _jpeg(render(celsius), quality=90, exif=_exif("FLIR Systems AB", model))
    # the FLIR segments go right after the main JPEG's own APP segments (EXIF), as a camera writes them
    pos = 2
    while main[pos] == 0xFF and 0xE0 <= main[pos + 1] <= 0xEF:
        pos += 2 + struct.unpack(">H", main[pos + 2:pos + 4])[0]
    data = main[:pos] + app1_segments(fff, chunk) + main[pos:]
    with open(path, "wb") as f:
        f.write(data)
    # one count is worth 1 / (dcounts/dT) kelvin: the degC read back lie within half of that
    c = np.asarray(celsius, np.float64) + 273.15
    slope = (planck_counts(stored, c + 0.01) - planck_counts(stored, c - 0.01)) / 0.02
    return {"path": path, "counts": counts, "camera": stored, "tags": tags, "shape": (h, w),
            "photo_shape": None if photo is None else tuple(photo.shape[:2]), "model": model,
            "tolerance": float(0.5 / slope.min()) + 1e-6}


def scene(photo_hw=(480, 640), ir_hw=(120, 160), scale: int = 3, offset=(14, -14), residual=(0, 0),
          border: int = 0, seed: int = 0, shapes: int = 14):
    """(photo, celsius, real2ir): warm and cool shapes seen by both cameras.

    A temperature map and a colour picture of the same shapes are drawn on the photo's
    pixel grid; the IR pixel (u, v) is the mean temperature over the scale x scale photo
    pixels it covers, its grid centred at the photo centre + offset + residual. The tags
    say offset only: `residual` is the misalignment left after them (parallax) that the
    edge search should find. border: black letterbox rows/columns around the photo.
    """
    rng = np.random.RandomState(seed)
    hv, wv = photo_hw
    hi, wi = ir_hw
    yy, xx = np.mgrid[0:hv, 0:wv]
    temp = 20.0 + 3.0 * xx / wv + 2.0 * yy / hv
    rgb = np.empty((hv, wv, 3), np.float64)
    rgb[:] = (70, 90, 80)
    for _ in range(shapes):
        cx, cy = rng.uniform(0.1, 0.9) * wv, rng.uniform(0.1, 0.9) * hv
        rx, ry = rng.uniform(0.04, 0.16) * wv, rng.uniform(0.04, 0.16) * hv
        mask = ((np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)) if rng.rand() < 0.5 else \
            (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1)
        t = rng.uniform(25.0, 60.0)
        temp[mask] = t
        rgb[mask] = np.clip((t - 20.0) * 5 + rng.uniform(-40, 40, 3), 10, 250)
    rgb += rng.normal(0, 3, rgb.shape)
    photo = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    if border:
        photo[:border] = photo[-border:] = 0
        photo[:, :border] = photo[:, -border:] = 0
    x0 = wv // 2 + offset[0] + residual[0] - wi * scale // 2
    y0 = hv // 2 + offset[1] + residual[1] - hi * scale // 2
    if (wi * scale) % 2 or (hi * scale) % 2 or x0 < 0 or y0 < 0 or x0 + wi * scale > wv or y0 + hi * scale > hv:
        raise ValueError("the IR grid must lie on whole photo pixels inside the photo")
    block = temp[y0:y0 + hi * scale, x0:x0 + wi * scale]
    celsius = block.reshape(hi, scale, wi, scale).mean(axis=(1, 3))
    return photo, celsius.astype(np.float64), wv / float(scale * wi)


# -- the written sample set: one file per case the reader meets -----------------------------
# name -> scene and file parameters. The residual is the misalignment planted beyond the
# tags (photo pixels): what --refine-alignment must find. Cases mirror the real samples of
# SOURCES.md: a portrait phone file (FLIR ONE mug), a landscape file with raw little-endian
# counts, a letterboxed photo with a coarse IR (AX8), thermal-only files (PNG and raw
# counts) and a little-endian FFF as DJI writes it.
WRITTEN = {
    "written_portrait.jpg": dict(photo_hw=(640, 480), ir_hw=(160, 120), scale=3, offset=(14, -14), residual=(6, -6),
                                 seed=1, raw_format="png"),
    "written_landscape_le.jpg": dict(photo_hw=(480, 640), ir_hw=(120, 160), scale=3, offset=(-10, 8),
                                     residual=(-7, 5), seed=2, raw_format="le"),
    "written_letterbox.jpg": dict(photo_hw=(480, 640), ir_hw=(60, 80), scale=7, offset=(0, 0), residual=(-14, -7),
                                  border=60, seed=3, raw_format="png"),
    "written_thermal_only.jpg": dict(photo=False, ir_hw=(120, 120), seed=4, raw_format="png"),
    "written_thermal_only_le.jpg": dict(photo=False, ir_hw=(96, 128), seed=5, raw_format="le"),
    "written_fff_little_endian.jpg": dict(photo=False, ir_hw=(64, 80), seed=6, raw_format="le", byteorder="<"),
}
WITH_PHOTO = tuple(n for n, p in WRITTEN.items() if p.get("photo", True))
THERMAL_ONLY = tuple(n for n in WRITTEN if n not in WITH_PHOTO)


def write_samples(folder: str) -> Dict[str, Dict]:
    """Write every WRITTEN file into folder; name -> write_flir's answer plus the chosen
    degC ("celsius") and the planted residual."""
    import os

    out = {}
    for name, p in WRITTEN.items():
        p = dict(p)
        if p.pop("photo", True):
            photo, celsius, real2ir = scene(p["photo_hw"], p["ir_hw"], p["scale"], p["offset"], p["residual"],
                                            p.get("border", 0), p["seed"])
        else:
            rng = np.random.RandomState(p["seed"])
            hi, wi = p["ir_hw"]
            celsius = 5.0 + 20.0 * np.add.outer(np.arange(hi) / hi, np.arange(wi) / wi) / 2 + rng.rand(hi, wi)
            photo, real2ir = None, 1.0
        info = write_flir(os.path.join(folder, name), celsius, photo, real2ir, p.get("offset", (0, 0)),
                          raw_format=p["raw_format"], byteorder=p.get("byteorder", ">"))
        info.update(celsius=celsius, residual=tuple(p.get("residual", (0, 0))), scale=p.get("scale"))
        out[name] = info
    return out
