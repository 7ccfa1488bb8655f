"""The dataset folder's layout, in one home: file names, LMDB paths, and the readers of its files.

A dataset folder is what dataset_builder writes and what DIGITS imports as a generic
"prebuilt" dataset; tools.train, tools.evaluate, the DIGITS client and the reports all
find its parts through these names.
"""
from __future__ import annotations

import json
import os

import numpy as np

from thermalnet import spec

# -- Dataset folder layout (DIGITS generic "prebuilt" LMDBs) ---------------------------
TRAIN_DB, VAL_DB = "train_db", "val_db"
FEATURES, LABELS, MEAN_FILE = "features", "labels", "mean.binaryproto"
CLASS_WEIGHTS_FILE = "class_weights.txt"
CLASS_PRIOR_FILE = "class_prior.txt"
MANIFEST_FILE = "manifest.csv"
DATASET_INFO_FILE = "dataset.json"
TEST_DIR = "test"          # test split as image files: test/visible, test/ir, test/ir_degC
LMDB_KEY_FORMAT = "%09d"


def lmdb_pairs(dataset_dir: str):
    """(split, features LMDB, labels LMDB) for train and val of a dataset folder, in that order."""
    return [(split, os.path.join(dataset_dir, sub, FEATURES), os.path.join(dataset_dir, sub, LABELS))
            for split, sub in (("train", TRAIN_DB), ("val", VAL_DB))]



def read_json(path: str, missing: str = None):
    """A JSON file the kit wrote (dataset.json, train_summary.json, eval.json, ablation.json) with
    one-line errors naming it. missing: a hint added when the file is absent."""
    if missing is not None and not os.path.isfile(path):
        raise FileNotFoundError("%s: missing (%s)" % (path, missing))
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as exc:
        raise ValueError("%s: not valid JSON (%s)" % (path, exc)) from None


def read_dataset_info(dataset_dir: str, missing_ok: bool = False) -> dict:
    """dataset.json of a dataset folder -> dict, with the keys every consumer relies on checked.

    missing_ok: {} when the folder has no dataset.json (a hand-made LMDB folder that
    tools.nets can still bind); a dataset.json that exists is always checked.
    """
    path = os.path.join(dataset_dir, DATASET_INFO_FILE)
    if not os.path.isfile(path):
        if missing_ok:
            return {}
        raise FileNotFoundError("%s: missing, not a dataset folder built by dataset_builder" % path)
    info = read_json(path)
    for key in ("num_bins", "height", "width"):
        if key not in info:
            raise ValueError("%s: missing %r" % (path, key))
    return info


def read_class_weights(dataset_dir: str, num_bins: int = spec.NUM_BINS) -> np.ndarray:
    """v(Y) of a dataset folder (class_weights.txt), checked: Q finite positive values."""
    path = os.path.join(dataset_dir, CLASS_WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: missing (written by the dataset builder)" % path)
    w = np.loadtxt(path, dtype=np.float64).ravel()
    if w.size != num_bins or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("%s: need %d positive weights, got %d values" % (path, num_bins, w.size))
    return w
