"""Folders of already-aligned visible/IR pairs, matched by file stem.

Recognised layouts (a folder holding both subfolders, names matched without regard
to case; searched recursively, so KAIST's set00/V000/{visible,lwir} nests work):
crop_LR_visible/+cropinfrared/ (RoadScene: FLIR ADAS frames, visible resized to the
IR's size), tv/+ir/ (the paper's "TV image"), visible/+lwir/ (KAIST),
visible/+infrared/ (LLVIP, and Visible/+Infrared/ spellings), vi/+ir/ (fusion
benchmarks such as TNO/MSRS-style folders), visible/+ir/ (the kit's own synthetic
generator). Optional classes.csv (stem,object_class) at the root gives
per-class RMS groups; pairs.json {"synthetic": true} marks SYNTHETIC data.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from thermalnet.imageio import IMAGE_EXTS, IR_EXTS

LAYOUTS = (("crop_lr_visible", "cropinfrared"), ("tv", "ir"), ("visible", "lwir"), ("visible", "infrared"),
           ("vi", "ir"), ("visible", "ir"))
UNKNOWN_CLASS = "unknown"
# An aligned pair covers one field of view: aspect ratios agree within this.
MAX_ASPECT_MISMATCH = 0.05


@dataclass
class PairSource:
    id: str               # unique, file-name safe
    visible: str
    ir: str
    rel: str              # visible path relative to the pairs root (for the manifest)
    object_class: str = UNKNOWN_CLASS


def _files(folder: str, exts) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in exts and not name.startswith(".") and os.path.isfile(os.path.join(folder, name)):
            out.setdefault(stem, []).append(os.path.join(folder, name))
    return out


def find_pair_dirs(root: str) -> List[Tuple[str, str]]:
    """(visible_dir, ir_dir) for every folder under root with a known layout."""
    if not os.path.isdir(root):
        raise FileNotFoundError("%s: no such pairs folder" % root)
    found = []
    for here, dirs, _ in os.walk(root):
        dirs.sort()
        names = {d.lower(): d for d in dirs}
        for vis, ir in LAYOUTS:
            if vis in names and ir in names:
                found.append((os.path.join(here, names[vis]), os.path.join(here, names[ir])))
                break
    return found


def read_classes(path: str) -> Dict[str, str]:
    """classes.csv: stem,object_class per line (a header line is allowed)."""
    out = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as exc:
        raise ValueError("%s: not a UTF-8 text CSV (%s)" % (path, exc.reason)) from None
    except csv.Error as exc:
        raise ValueError("%s: not a readable CSV (%s)" % (path, exc)) from None
    for row in rows:
        if not row or row[0].startswith("#"):
            continue
        if len(row) < 2:
            raise ValueError("%s: line %r needs 'stem,object_class'" % (path, ",".join(row)))
        stem, cls = row[0].strip(), row[1].strip()
        if stem.lower() in ("stem", "id", "file") and cls.lower() in ("object_class", "class"):
            continue
        out[stem] = cls or UNKNOWN_CLASS
    return out


def read_pairs_meta(root: str) -> Dict:
    """pairs.json of a pairs folder ({} when absent); README.txt saying SYNTHETIC also counts."""
    meta = {}
    path = os.path.join(root, "pairs.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    readme = os.path.join(root, "README.txt")
    if "synthetic" not in meta and os.path.isfile(readme):
        with open(readme, encoding="utf-8", errors="replace") as f:
            if "SYNTHETIC" in f.read(4096):
                meta["synthetic"] = True
    return meta


def _safe(s: str) -> str:
    return "".join(c if (c.isalnum() or c in "-_.") else "_" for c in s)


def list_pairs(root: str, classes: Optional[Dict[str, str]] = None) -> Tuple[List[PairSource], List[Tuple[str, str]]]:
    """All pairs under root, and (file, reason) for files that cannot form a pair."""
    dirs = find_pair_dirs(root)
    if not dirs:
        raise FileNotFoundError("%s: no pairs folder layout found (expected subfolders %s)"
                                % (root, ", ".join("%s/+%s/" % l for l in LAYOUTS)))
    if classes is None:
        cpath = os.path.join(root, "classes.csv")
        classes = read_classes(cpath) if os.path.isfile(cpath) else {}
    pairs, skipped = [], []
    for vis_dir, ir_dir in dirs:
        vis = _files(vis_dir, IMAGE_EXTS)
        ir = _files(ir_dir, IR_EXTS)
        prefix = os.path.relpath(os.path.dirname(vis_dir), root)
        prefix = "" if prefix == "." else prefix
        for stem in sorted(set(vis) | set(ir)):
            v, i = vis.get(stem, []), ir.get(stem, [])
            if not v:
                skipped.append((i[0], "IR file with no visible partner (no %s/%s.*)" % (os.path.basename(vis_dir), stem)))
                continue
            if not i:
                skipped.append((v[0], "visible file with no IR partner (no %s/%s.*)" % (os.path.basename(ir_dir), stem)))
                continue
            if len(v) > 1 or len(i) > 1:
                skipped.append(((v + i)[0], "ambiguous pair: several files with stem %r (%s)"
                                % (stem, ", ".join(os.path.basename(p) for p in v + i))))
                continue
            key = os.path.join(prefix, stem) if prefix else stem
            cls = classes.get(key, classes.get(stem, UNKNOWN_CLASS))
            pairs.append(PairSource(_safe(key.replace(os.sep, "_")), v[0], i[0], os.path.relpath(v[0], root), cls))
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError("%s: pair ids collide after making them file-name safe" % root)
    return pairs, skipped
