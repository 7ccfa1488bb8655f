"""THE one place the kit reads and writes image files.

Every reader raises ImageReadError with a one-line message that starts with the
file's path, so a bad file among thousands is named, skipped and reported (or
stops the run under --strict) instead of surfacing later as a shape error.
Every writer goes through thermalnet.atomic (a temporary name in the same folder,
renamed when complete), so an interrupted run never leaves a half-written PNG/NPY behind.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from thermalnet.atomic import write_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IR_EXTS = IMAGE_EXTS + (".npy",)

# IR value units the kit understands: temperatures, 8-bit display brightness,
# and 16-bit raw sensor counts (linear in radiance, not degC).
IR_UNITS = ("degC", "brightness", "counts")


class ImageReadError(ValueError):
    """A file that cannot be used as an image; str() is 'path: reason'."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__("%s: %s" % (path, reason))


def _open_pil(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise ImageReadError(path, "no such file")
    try:
        img = Image.open(path)
        img.load()  # decodes fully: truncated files fail here, not later
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, "image too large (%s)" % exc) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg:
            msg = "truncated image file (%s)" % msg
        elif "cannot identify image file" in msg:
            msg = "not a readable image"
        raise ImageReadError(path, msg) from exc
    return img


# The fast path's files: 8-bit RGB PNG ("zip" tiles of raw mode RGB) and colour JPEG, ending
# with their end marker (a cut-off file takes PIL's path and its "truncated" message).
_FAST_TILES = {"PNG": ("zip", "RGB"), "JPEG": ("jpeg", "RGB")}
_END_MARKERS = {"PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}


@contextlib.contextmanager
def _c_stderr_silenced():
    """Point file descriptor 2 at /dev/null for a C call that prints its own errors: a file
    it cannot decode falls back to PIL, whose one-line error is the kit's (one line per bad file)."""
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:        # no usable fd 2: nothing to silence
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


try:        # libspng: PNG decoding 1.5-1.7x faster than libpng here, the same pixels (make bench)
    import pyspng as _spng
except ImportError:     # an environment without it (the DIGITS container): OpenCV's libpng
    _spng = None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_crcs_match(data: bytes) -> bool:
    """Every chunk of a PNG up to IEND carries a correct CRC-32 (a damaged byte shows here)."""
    if not data.startswith(_PNG_SIGNATURE):
        return False
    view, pos, end = memoryview(data), len(_PNG_SIGNATURE), len(data)
    while pos + 12 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        stop = pos + 8 + length
        if stop + 4 > end or zlib.crc32(view[pos + 4:stop]) != struct.unpack_from(">I", data, stop)[0]:
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos = stop + 4
    return False


def _fast_rgb(path: str):
    """8-bit RGB PNG / colour JPEG -> HxWx3 RGB decoded by libspng (PNG) or OpenCV, else None
    (PIL's path).

    Why: a build decodes thousands of camera-size images; OpenCV's decoders (the same
    libpng / libjpeg-turbo, same integer IDCT and upsampling) give the same pixels as
    PIL's without PIL's tobytes copy, and for JPEG several times faster; libspng decodes
    the same PNG pixels faster still (make bench).
    PIL still reads the header (format, mode, decompression-bomb limit), and any
    file OpenCV cannot decode falls back to PIL, whose error names the problem.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with Image.open(io.BytesIO(raw)) as img:
            fmt, mode, tile = img.format, img.mode, img.tile
            size = img.size
    except Exception:  # noqa: BLE001 -- PIL's path reports it
        return None
    want = _FAST_TILES.get(fmt)
    if want is None or mode != "RGB" or len(tile) < 1:
        return None
    args = tile[0][3] if len(tile[0]) > 3 else None
    rawmode = args[0] if isinstance(args, tuple) else args
    if tile[0][0] != want[0] or rawmode != want[1]:
        return None
    if _END_MARKERS[fmt] not in raw[-64:]:
        return None
    if fmt == "PNG" and _spng is not None:
        if not _png_crcs_match(raw):       # pyspng decodes past bad checksums: PIL's path names them
            return None
        try:
            rgb = _spng.load(raw, "RGB")
        except Exception:  # noqa: BLE001 -- a file libspng refuses: PIL's path names the problem
            return None
        return rgb if rgb.shape[:2] == (size[1], size[0]) else None
    return _cv2_rgb(raw, size[0], size[1])


def _cv2_rgb(data: bytes, width: int, height: int):
    """Encoded bytes -> HxWx3 RGB by OpenCV (stored orientation), or None if it fails or the
    size is not the expected one. libpng prints its own "libpng error: ..." before failing:
    silenced, the caller's PIL path gives the kit's one line."""
    with _c_stderr_silenced():
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.shape[:2] != (height, width):
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_rgb_jpeg(data: bytes, width: int, height: int):
    """JPEG bytes (a colour photo embedded in another file) -> HxWx3 RGB by OpenCV, or None
    when PIL would not read them as an RGB JPEG of that size (the caller then uses PIL):
    the same libjpeg-turbo pixels as PIL's np.array(Image.open(...)), 2-3x faster."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.mode != "RGB" or img.size != (width, height):
                return None
    except Exception:  # noqa: BLE001 -- PIL's path decides
        return None
    return _cv2_rgb(data, width, height)


def read_rgb(path: str) -> np.ndarray:
    """Any colour/grey image -> HxWx3 uint8 RGB (16-bit images are scaled down)."""
    fast = _fast_rgb(path) if os.path.isfile(path) else None
    if fast is not None and fast.shape[0] >= 2 and fast.shape[1] >= 2:
        return fast
    return pil_rgb(path)


def pil_rgb(path: str) -> np.ndarray:
    """read_rgb through PIL alone: every mode, and the errors (make bench times it against read_rgb)."""
    img = _open_pil(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / 257.0, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ImageReadError(path, "unusable image shape %s" % (arr.shape,))
    return np.ascontiguousarray(arr)


def read_gray8(path: str) -> np.ndarray:
    """An 8-bit grey PNG the kit wrote (test/ir brightness, label bins) -> HxW uint8, as stored.

    Unlike read_ir, no units and no refusal of a constant image: these files are the
    kit's own ground truth and outputs, read back exactly. A 3-channel file gives its
    first channel; a 16-bit one is refused (its values are not 0..255 brightness).
    """
    img = _open_pil(path)
    if img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)[:, :, 0]
    elif img.mode in ("L", "P", "LA"):
        arr = np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.uint8)
    else:
        raise ImageReadError(path, "not an 8-bit grey image (mode %s)" % img.mode)
    return np.ascontiguousarray(arr)


@dataclass
class IrImage:
    """IR values and their units (see IR_UNITS)."""

    values: np.ndarray  # HxW float32
    units: str


def read_ir(path: str) -> IrImage:
    """IR image -> float32 HxW with units.

    .npy: degC. 8-bit image: display brightness. 16-bit image: raw counts.
    A 3-channel IR image is accepted only when it is grey (all channels equal, as
    LLVIP stores them); a false-colour palette cannot be turned back into values.
    Constant or non-finite IR is rejected: it carries no thermal signal.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        if not os.path.isfile(path):
            raise ImageReadError(path, "no such file")
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ImageReadError(path, "not a readable .npy array (%s)" % exc) from exc
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.squeeze()
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise ImageReadError(path, "IR .npy must be a 2-D numeric array of degC, got %s %s"
                                 % (arr.dtype, arr.shape))
        units = "degC"
        values = arr.astype(np.float32)
    else:
        img = _open_pil(path)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            values, units = np.asarray(img, dtype=np.float32), "counts"
        elif img.mode in ("L", "P", "LA"):
            values, units = np.asarray(img.convert("L"), dtype=np.float32), "brightness"
        elif img.mode in ("RGB", "RGBA"):
            rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
            spread = int(np.abs(rgb - rgb[:, :, :1]).max())
            if spread > 2:
                raise ImageReadError(path, "IR image is false-colour RGB (channels differ by up to %d); "
                                           "give grey-level or .npy degC IR" % spread)
            values, units = rgb[:, :, 0].astype(np.float32), "brightness"
        elif img.mode == "F":
            values, units = np.asarray(img, dtype=np.float32), "degC"
        else:
            raise ImageReadError(path, "unsupported IR image mode %s" % img.mode)
    check_ir_values(values, path)
    return IrImage(np.ascontiguousarray(values), units)


def check_ir_values(values: np.ndarray, path: str) -> None:
    """Reject IR without usable signal (NaN/inf, constant), naming the file."""
    if values.size == 0 or values.shape[0] < 2 or values.shape[1] < 2:
        raise ImageReadError(path, "IR image is empty (%s)" % (values.shape,))
    finite = np.isfinite(values)
    if not finite.all():
        raise ImageReadError(path, "IR has %d NaN/inf values" % int((~finite).sum()))
    if float(values.max()) - float(values.min()) <= 1e-6:
        raise ImageReadError(path, "IR is constant (%.3f everywhere)" % float(values.flat[0]))


def encode_png(arr: np.ndarray, compression: int = 3, fast: bool = False) -> bytes:
    """HxW (grey, uint8/uint16) or HxWx3 RGB uint8 -> PNG bytes.

    fast: Huffman-only deflate, ~1.5x quicker and ~10% larger on noisy camera images
    (what the SYNTHETIC generator writes by the thousand)."""
    arr = np.asarray(arr)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError("PNG needs uint8/uint16 data, got %s" % arr.dtype)
    if arr.ndim == 3:
        if arr.shape[2] != 3:
            raise ValueError("PNG colour images must be HxWx3 RGB, got %s" % (arr.shape,))
        arr = arr[:, :, ::-1]  # OpenCV writes BGR
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression]
    if fast:
        params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), params)
    if not ok:
        raise ValueError("PNG encoding failed for array %s %s" % (arr.dtype, arr.shape))
    return buf.tobytes()


def write_png(path: str, arr: np.ndarray, compression: int = 3, fast: bool = False) -> None:
    """Write an RGB or grey PNG atomically (temp file + rename)."""
    write_bytes(path, encode_png(arr, compression, fast))


def write_npy(path: str, arr: np.ndarray) -> None:
    """Write a .npy array atomically (temp file + rename)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    write_bytes(path, buf.getvalue())


def resize_visible(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Visible image to the network size: area averaging when shrinking (no aliasing)."""
    h, w = rgb.shape[:2]
    if (h, w) == (height, width):
        return rgb
    interp = cv2.INTER_AREA if (height <= h and width <= w) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interp)


def resize_ir(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """IR (float) to the network size: bilinear when enlarging, area when shrinking."""
    h, w = values.shape[:2]
    values = np.asarray(values, dtype=np.float32)
    if (h, w) == (height, width):
        return values
    interp = cv2.INTER_AREA if (height <= h and width <= w) else cv2.INTER_LINEAR
    return cv2.resize(values, (width, height), interpolation=interp)
