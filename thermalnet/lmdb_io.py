"""Datums and LMDBs exactly as Caffe's Data layer and DIGITS' generic datasets read them.

Datums are built here rather than with caffe.io.array_to_datum, which calls
ndarray.tostring (removed in NumPy 2) in the Caffe the kit builds.
"""
from __future__ import annotations

import os
from typing import Iterator, Tuple

import lmdb
import numpy as np

from thermalnet import layout
from thermalnet.caffe_env import caffe_pb2

_INITIAL_MAP = 64 << 20


def array_to_datum(arr: np.ndarray, label: int = 0):
    """CxHxW (or HxW, taken as 1 channel) uint8 array -> Datum with raw bytes."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise ValueError("a Datum holds CxHxW arrays, got shape %s" % (arr.shape,))
    datum = caffe_pb2().Datum()
    datum.channels, datum.height, datum.width = (int(s) for s in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    datum.label = int(label)
    return datum


def datum_to_array(datum) -> np.ndarray:
    """Datum -> CxHxW array (uint8 for byte data, float32 for float_data)."""
    shape = (datum.channels, datum.height, datum.width)
    if datum.data:
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


class LmdbWriter:
    """Append CxHxW arrays under keys %09d, growing the map when LMDB says it is full."""

    def __init__(self, path: str, map_size: int = _INITIAL_MAP, commit_every: int = 64):
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.map_size = map_size
        self.env = lmdb.open(path, map_size=map_size, subdir=True, lock=True)
        self.commit_every = commit_every
        self.pending = []
        self.count = 0

    def put(self, arr: np.ndarray, label: int = 0) -> None:
        self.put_datum(array_to_datum(arr, label))

    def put_datum(self, datum) -> None:
        """Append a ready Datum (an encoded one, as DIGITS' png/jpg encodings write)."""
        key = (layout.LMDB_KEY_FORMAT % self.count).encode("ascii")
        self.pending.append((key, datum.SerializeToString()))
        self.count += 1
        if len(self.pending) >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
                self.pending = []
            except lmdb.MapFullError:
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)

    def close(self) -> None:
        self.flush()
        self.env.sync()
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _reason(exc: Exception, path: str) -> str:
    """lmdb's message without the path it starts with (the kit's message names the folder once)."""
    msg = (str(exc).splitlines() or [type(exc).__name__])[0]
    return msg[len(path) + 2:] if msg.startswith(path + ": ") else msg


def read_lmdb(path: str) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield (key, CxHxW array) in key order."""
    if not os.path.isdir(path):
        raise FileNotFoundError("%s: no LMDB folder" % path)
    try:
        env = lmdb.open(path, readonly=True, lock=False)
    except lmdb.Error as exc:
        raise ValueError("%s: corrupt or unreadable LMDB (%s); rebuild the dataset"
                         % (path, _reason(exc, path))) from None
    datum = caffe_pb2().Datum()
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                datum.ParseFromString(value)
                yield key.decode("ascii"), datum_to_array(datum)
    except lmdb.Error as exc:
        raise ValueError("%s: corrupt LMDB (%s); rebuild the dataset" % (path, _reason(exc, path))) from None
    finally:
        env.close()


def lmdb_count(path: str) -> int:
    """Entries of an LMDB folder, checked whole first (check_lmdb): a bad one is a one-line ValueError."""
    return check_lmdb(path)


def check_lmdb(path: str) -> int:
    """Entries of one LMDB folder, after checking it is whole; a bad one is a one-line ValueError.

    Caffe's Data layer aborts (or reads past the end of a truncated file) on a damaged
    LMDB, and the lmdb module raises a traceback-worthy InvalidError: check here first.
    """
    data = os.path.join(path, "data.mdb")
    if not os.path.isfile(data):
        raise ValueError("%s: not an LMDB folder (no data.mdb); rebuild the dataset" % path)
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, max_readers=4)
    except lmdb.Error as exc:
        raise ValueError("%s: corrupt or unreadable LMDB (%s); rebuild the dataset"
                         % (path, _reason(exc, path))) from None
    try:
        stat, info = env.stat(), env.info()
        need = (int(info["last_pgno"]) + 1) * int(stat["psize"])
        size = os.path.getsize(data)
        if size < need:
            raise ValueError("%s: truncated LMDB (data.mdb has %d bytes, its index needs %d); rebuild the dataset"
                             % (path, size, need))
        n = 0
        with env.begin() as txn:
            for _ in txn.cursor().iternext(keys=True, values=False):
                n += 1
        if n != int(stat["entries"]):
            raise ValueError("%s: corrupt LMDB (%d entries listed, %d readable); rebuild the dataset"
                             % (path, stat["entries"], n))
        return n
    except lmdb.Error as exc:
        raise ValueError("%s: corrupt LMDB (%s); rebuild the dataset" % (path, _reason(exc, path))) from None
    finally:
        env.close()


def write_mean_binaryproto(mean_chw: np.ndarray, path: str) -> None:
    """Mean image as a BlobProto (1xCxHxW), the format of DIGITS' mean.binaryproto."""
    mean_chw = np.asarray(mean_chw, dtype=np.float32)
    blob = caffe_pb2().BlobProto()
    blob.num, (blob.channels, blob.height, blob.width) = 1, mean_chw.shape
    blob.shape.dim.extend([1] + list(mean_chw.shape))
    blob.data.extend(mean_chw.ravel().tolist())
    with open(path, "wb") as f:
        f.write(blob.SerializeToString())


def read_mean_binaryproto(path: str) -> np.ndarray:
    """BlobProto -> CxHxW float32 mean image."""
    blob = caffe_pb2().BlobProto()
    with open(path, "rb") as f:
        blob.ParseFromString(f.read())
    if blob.shape.dim:
        shape = tuple(blob.shape.dim)[-3:]
    else:
        shape = (blob.channels, blob.height, blob.width)
    return np.asarray(blob.data, dtype=np.float32).reshape(shape)
