"""Folders of already-aligned visible/IR pairs, matched by file stem.

A pairs folder is any folder holding a visible and an IR subfolder of one of the
LAYOUTS below (names matched without regard to case), found anywhere under the root
(so KAIST's set00/V000/{visible,lwir} and MSRS's {train,test}/{vi,ir} nests work).
Inside the two subfolders files pair by relative folder and stem, without regard to
case (LLVIP's visible/train/x.jpg pairs with infrared/train/X.JPG); what has no
partner is reported. The folders on a pair's path also carry its split, if the data
has one (splits.py). Optional classes.csv (stem,object_class) at the root gives
per-class RMS groups; pairs.json {"synthetic": true} marks SYNTHETIC data.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from thermalnet.imageio import IMAGE_EXTS, IR_EXTS

# (visible folder, IR folder, who ships it): every layout read, in the order tried.
LAYOUT_TABLE = (
    ("crop_LR_visible", "cropinfrared", "RoadScene (FLIR ADAS frames, visible resized to the IR's size)"),
    ("tv", "ir", "the paper's 'TV image' naming"),
    ("visible", "lwir", "KAIST (setNN/VNNN/visible|lwir; sets 00-05 train, 06-11 test)"),
    ("visible", "infrared", "LLVIP (visible|infrared, each with train/ and test/)"),
    ("vi", "ir", "MSRS and other fusion benchmarks (train|test/vi|ir)"),
    ("vis", "ir", "M3FD (Vis/, Ir/) and TNO-style VIS/ + IR/ folders"),
    ("visible", "ir", "the kit's SYNTHETIC generator"),
)
LAYOUTS = tuple((v.lower(), i.lower()) for v, i, _ in LAYOUT_TABLE)
# Words in folder names that say which side a lone folder is (for the not-found message)
_VIS_WORDS = ("visible", "vis", "vi", "tv", "rgb", "optical", "color", "colour")
_IR_WORDS = ("infrared", "ir", "lwir", "thermal", "therm")
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
    folders: Tuple[str, ...] = ()     # folder names from the root to the file (the split hints)


def _files(folder: str, exts) -> Dict[Tuple[str, str], List[str]]:
    """(relative folder, stem), both lower case -> files, for every image under folder."""
    out: Dict[Tuple[str, str], List[str]] = {}
    for here, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(here, folder)
        rel = "" if rel == "." else rel
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            if ext.lower() in exts and not name.startswith("."):
                out.setdefault((rel.lower(), stem.lower()), []).append(os.path.join(here, name))
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
                dirs[:] = [d for d in dirs if d not in (names[vis], names[ir])]    # read by list_pairs
                break
    return found


def _words(name: str) -> List[str]:
    return [w for w in name.lower().replace("-", "_").replace(" ", "_").replace(".", "_").split("_") if w]


def not_found_message(root: str) -> str:
    """One line: no layout under root, the layouts looked for, and what was found instead."""
    looked = ", ".join("%s/+%s/" % (v, i) for v, i, _ in LAYOUT_TABLE)
    seen = []
    for here, dirs, files in os.walk(root):
        dirs.sort()
        for d in dirs:
            w = set(_words(d))
            side = "visible" if w & set(_VIS_WORDS) else ("infrared" if w & set(_IR_WORDS) else None)
            if side:
                other = "infrared" if side == "visible" else "visible"
                seen.append("%s/ looks like a %s folder with no %s partner"
                            % (os.path.relpath(os.path.join(here, d), root), side, other))
        if len(seen) >= 3:
            break
    if not seen:
        images = [f for f in os.listdir(root) if os.path.splitext(f)[1].lower() in IMAGE_EXTS]
        if images:
            seen.append("%d images lie directly in it (a pair's two images go in two sibling folders)" % len(images))
    msg = "%s: no pairs folder layout found (looked for subfolders %s)" % (root, looked)
    return msg + ("; found instead: " + "; ".join(seen[:3]) if seen else "")


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
        raise FileNotFoundError(not_found_message(root))
    if classes is None:
        cpath = os.path.join(root, "classes.csv")
        classes = read_classes(cpath) if os.path.isfile(cpath) else {}
    pairs, skipped = [], []
    for vis_dir, ir_dir in dirs:
        vis = _files(vis_dir, IMAGE_EXTS)
        ir = _files(ir_dir, IR_EXTS)
        prefix = os.path.relpath(os.path.dirname(vis_dir), root)
        prefix = "" if prefix == "." else prefix
        for key in sorted(set(vis) | set(ir)):
            v, i = vis.get(key, []), ir.get(key, [])
            sub = os.path.join(*key) if key[0] else key[1]
            if not v:
                skipped.append((i[0], "IR file with no visible partner (no %s/%s.*)" % (os.path.basename(vis_dir), sub)))
                continue
            if not i:
                skipped.append((v[0], "visible file with no IR partner (no %s/%s.*)" % (os.path.basename(ir_dir), sub)))
                continue
            if len(v) > 1 or len(i) > 1:
                skipped.append(((v + i)[0], "ambiguous pair: several files with stem %r (%s)"
                                % (key[1], ", ".join(os.path.basename(p) for p in v + i))))
                continue
            stem = os.path.splitext(os.path.basename(v[0]))[0]
            inner = os.path.relpath(os.path.dirname(v[0]), vis_dir)
            inner = "" if inner == "." else inner
            key_path = os.path.join(*[x for x in (prefix, inner, stem) if x])
            cls = classes.get(key_path, classes.get(stem, UNKNOWN_CLASS))
            rel = os.path.relpath(v[0], root)
            pairs.append(PairSource(_safe(key_path.replace(os.sep, "_")), v[0], i[0], rel, cls,
                                    tuple(os.path.dirname(rel).split(os.sep))))
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError("%s: pair ids collide after making them file-name safe" % root)
    return pairs, skipped
