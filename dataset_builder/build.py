"""The pipeline: FLIR files / aligned pairs -> window -> bins -> split -> DIGITS LMDBs.

Decoding runs in a process pool (both cores); ONE process (this one) writes the
LMDBs, in the layout of spec (see dataset_builder/README.md). Everything is
written into `<out>.tmp-...` and swapped in only when complete (atomic.py).
Bad inputs are skipped with one line naming the file and the reason, or stop
the build under strict=True before anything replaces the old dataset.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from thermalnet import layout, spec
from thermalnet.atomic import atomic_output_dir, write_text

from . import flir, pairs, splits
from thermalnet.imageio import (ImageReadError, check_ir_values, read_ir, read_rgb, resize_ir, resize_visible, write_npy,
                      write_png)
from .parallel import make_pool

FITS = ("crop", "stretch", "rotate")
MANIFEST_COLUMNS = ("id", "source", "object_class", "split", "t_min", "t_max", "vis_h", "vis_w", "ir_h", "ir_w",
                    "height", "width")
# Where the split is not the paper's (splits.py), each manifest row also says what drew it.
SPLIT_SOURCE_COLUMN = "split_source"
SKIPPED_FILE = "skipped.csv"
ALIGNMENT_FILE = flir.ALIGNMENT_FILE         # FLIR inputs only; its columns: flir.ALIGNMENT_COLUMNS
ALIGNMENT_COLUMNS = flir.ALIGNMENT_COLUMNS
_CHUNK = 8          # items per pool task, at least ...
_MAX_CHUNK = 32     # ... and at most: one exiftool start (~0.1 s) serves up to 32 FLIR files
_MAX_WINDOW_SAMPLES = 20_000_000


class BuildError(RuntimeError):
    pass


@dataclass
class BuildConfig:
    """Every choice that shapes a dataset (recorded in dataset.json)."""

    height: int = spec.DEFAULT_HEIGHT
    width: int = spec.DEFAULT_WIDTH
    window_mode: Optional[str] = None     # None: "dataset" for degC/counts, fixed 0..255 for 8-bit brightness
    window: Optional[Tuple[float, float]] = None
    ir_range: Optional[Tuple[float, float]] = None   # degC of the lowest/highest 8/16-bit IR code, if known
    test_count: Optional[int] = None
    test_fraction: float = spec.DEFAULT_TEST_FRACTION
    seed: int = spec.SEED
    split: str = "auto"                   # splits.SPLIT_MODES: the data's own split, else the paper's
    split_file: Optional[str] = None      # name,split lines: overrides both
    fit: str = "crop"                     # non-4:3 or portrait sources: centre crop / stretch / rotate+crop
    refine_px: int = 0                    # FLIR: extra edge-based alignment search radius (visible px)
    strict: bool = False
    workers: Optional[int] = None
    synthetic: Optional[bool] = None      # None: from the inputs (pairs.json / README.txt)
    progress: bool = True
    num_bins: int = spec.NUM_BINS         # Q of eq. 1 (the network's score layer must have Q outputs)
    rebalance_lambda: float = spec.REBALANCE_LAMBDA   # v(Y)'s mix of prior and uniform
    # Mirrored copy of every TRAINING pair, features and labels flipped together, written
    # into both LMDBs. DIGITS' own `mirror` must stay off: it flips the two Data layers
    # independently, so a visible image would meet the unflipped IR labels.
    mirror: bool = False

    def check(self) -> None:
        if self.height < 8 or self.width < 8:
            raise BuildError("size %dx%d too small" % (self.height, self.width))
        if self.window_mode is not None and self.window_mode not in spec.WINDOW_MODES:
            raise BuildError("window mode %r not one of %s" % (self.window_mode, ", ".join(spec.WINDOW_MODES)))
        if self.window_mode == "fixed" and self.window is None:
            raise BuildError("window mode 'fixed' needs --window TMIN TMAX")
        if self.window is not None and not self.window[1] > self.window[0]:
            raise BuildError("window %r: TMAX must exceed TMIN" % (self.window,))
        if self.ir_range is not None and not self.ir_range[1] > self.ir_range[0]:
            raise BuildError("IR range %r: the high end must exceed the low end" % (self.ir_range,))
        if self.fit not in FITS:
            raise BuildError("fit %r not one of %s" % (self.fit, ", ".join(FITS)))
        if self.split not in splits.SPLIT_MODES:
            raise BuildError("split %r not one of %s" % (self.split, ", ".join(splits.SPLIT_MODES)))
        if self.split_file is not None and not os.path.isfile(self.split_file):
            raise BuildError("%s: no such split file" % self.split_file)
        if not 0 < self.test_fraction < 1:
            raise BuildError("test fraction must be in (0, 1), got %r" % self.test_fraction)
        if not 2 <= self.num_bins <= spec.BRIGHTNESS_LEVELS:
            raise BuildError("Q = %r thermal bins: need 2..%d" % (self.num_bins, spec.BRIGHTNESS_LEVELS))
        if not 0.0 <= self.rebalance_lambda <= 1.0:
            raise BuildError("rebalancing lambda %r: need 0..1" % (self.rebalance_lambda,))


@dataclass
class Item:
    """One candidate pair before decoding."""

    id: str
    kind: str                 # "flir" or "pair"
    path: str                 # FLIR file, or the visible image of a pair
    ir: Optional[str]
    source: str               # manifest 'source': kind:relative path (SYNTHETIC: for generated data)
    object_class: str = pairs.UNKNOWN_CLASS
    folders: Tuple[str, ...] = ()   # folders from the input root to the file: the split they carry


# -- gathering inputs ------------------------------------------------------------------------

def gather(flir_inputs: Sequence[str] = (), pair_roots: Sequence[str] = (),
           classes: Optional[Dict[str, str]] = None) -> Tuple[List[Item], List[Tuple[str, str]], Dict]:
    """Candidate items from FLIR files/folders and pairs folders; early skips; input facts."""
    items: List[Item] = []
    skipped: List[Tuple[str, str]] = []
    facts = {"synthetic": False, "notes": [], "flir": 0, "pairs": 0}
    for src in flir_inputs:
        if os.path.isdir(src):
            files = flir.list_flir(src)
            root = src
            if not files:
                raise BuildError("%s: no .jpg files in this FLIR folder" % src)
        elif os.path.isfile(src):
            files, root = [src], os.path.dirname(src)
        else:
            raise BuildError("%s: no such FLIR file or folder" % src)
        for f in files:
            stem = os.path.splitext(os.path.basename(f))[0]
            cls = (classes or {}).get(stem, pairs.UNKNOWN_CLASS)
            rel = os.path.relpath(f, root)
            items.append(Item(pairs._safe(stem), "flir", f, None, "flir:" + rel, cls,
                              tuple(os.path.dirname(rel).split(os.sep))))
            facts["flir"] += 1
    for root in pair_roots:
        try:
            found, bad = pairs.list_pairs(root, classes)
            meta = pairs.read_pairs_meta(root)
        except (FileNotFoundError, ValueError) as exc:
            raise BuildError(str(exc)) from exc
        skipped += bad
        synthetic = bool(meta.get("synthetic"))
        if synthetic:
            facts["synthetic"] = True
        if meta.get("note"):
            facts["notes"].append(meta["note"])
        if meta.get("ir_units"):
            facts.setdefault("declared_units", set()).add(meta["ir_units"])
        tag = "SYNTHETIC:" if synthetic else "pairs:"
        for p in found:
            items.append(Item(p.id, "pair", p.visible, p.ir, tag + p.rel, p.object_class, p.folders))
            facts["pairs"] += 1
    seen: Counter = Counter()
    for it in items:                      # unique ids across inputs
        seen[it.id] += 1
        if seen[it.id] > 1:
            it.id = "%s_%d" % (it.id, seen[it.id])
    return items, skipped, facts


# -- decoding (pool workers) ------------------------------------------------------------------

def fit_pair(rgb: np.ndarray, ir: np.ndarray, height: int, width: int, fit: str = "crop"):
    """Aligned visible + IR of any size/orientation -> network size HxW, same field of view.

    crop: centre-crop both to the network aspect (portrait FLIR ONE files keep their
    middle); stretch: resize as is; rotate: turn portrait pairs to landscape, then crop.
    """
    if fit == "rotate" and (ir.shape[0] > ir.shape[1]) != (height > width):
        rgb, ir = np.rot90(rgb, -1), np.rot90(ir, -1)
    if fit in ("crop", "rotate"):
        hi, wi = ir.shape
        hv, wv = rgb.shape[:2]
        src, dst = wi / float(hi), width / float(height)
        if abs(src / dst - 1) > 1e-3:
            if src > dst:    # too wide: keep the middle columns
                f = dst / src
                u0 = int(round(wi * (1 - f) / 2)); u1 = u0 + max(1, int(round(wi * f)))
                x0 = int(round(wv * (1 - f) / 2)); x1 = x0 + max(1, int(round(wv * f)))
                ir, rgb = ir[:, u0:u1], rgb[:, x0:x1]
            else:
                f = src / dst
                v0 = int(round(hi * (1 - f) / 2)); v1 = v0 + max(1, int(round(hi * f)))
                y0 = int(round(hv * (1 - f) / 2)); y1 = y0 + max(1, int(round(hv * f)))
                ir, rgb = ir[v0:v1], rgb[y0:y1]
    vis = resize_visible(np.ascontiguousarray(rgb), height, width)
    return np.ascontiguousarray(vis), np.ascontiguousarray(resize_ir(np.ascontiguousarray(ir), height, width))


def _to_degc(values: np.ndarray, units: str, ir_range) -> Tuple[np.ndarray, str]:
    if ir_range is None or units == "degC":
        return values, units
    top = 255.0 if units == "brightness" else 65535.0
    lo, hi = ir_range
    return (lo + values / top * (hi - lo)).astype(np.float32), "degC"


def _load_item(it: Item, cfg: Dict, tags: Optional[Dict]):
    if it.kind == "flir":
        pair = flir.read_flir(it.path, tags=tags, refine_px=cfg["refine_px"])
        rgb, ir, units = pair.visible, pair.celsius, "degC"
        m = pair.meta
        align = flir.alignment_row(it.id, m)
    else:
        rgb = read_rgb(it.path)
        irimg = read_ir(it.ir)
        ir, units = _to_degc(irimg.values, irimg.units, cfg["ir_range"])
        a_v = rgb.shape[1] / float(rgb.shape[0])
        a_i = ir.shape[1] / float(ir.shape[0])
        if abs(a_v / a_i - 1) > pairs.MAX_ASPECT_MISMATCH:
            raise ImageReadError(it.path, "visible %dx%d and IR %dx%d have different aspect ratios: not an "
                                          "aligned pair" % (rgb.shape[1], rgb.shape[0], ir.shape[1], ir.shape[0]))
    meta = {"vis_h": rgb.shape[0], "vis_w": rgb.shape[1], "ir_h": ir.shape[0], "ir_w": ir.shape[1]}
    if it.kind == "flir":
        meta["alignment"] = align
    vis, ir_n = fit_pair(rgb, ir, cfg["height"], cfg["width"], cfg["fit"])
    check_ir_values(ir_n, it.ir or it.path)
    return vis, ir_n, units, meta


def _chunk_size(n: int, workers: int) -> int:
    """Items per pool task: about 8 tasks per worker, _CHUNK..._MAX_CHUNK items each (the
    results come back in input order whatever the size: the dataset does not depend on it)."""
    return int(min(_MAX_CHUNK, max(_CHUNK, n // (8 * workers))))


def _load_chunk(args):
    """Pool task: decode a few items (one exiftool call for all FLIR files among them)."""
    chunk, cfg = args
    cv2.setNumThreads(1)
    flir_paths = [it.path for it in chunk if it.kind == "flir"]
    tags = {}
    if flir_paths and flir.exiftool_path():
        tags = flir.read_tags(flir_paths)
    out = []
    for it in chunk:
        try:
            vis, ir, units, meta = _load_item(it, cfg, tags.get(it.path))
            out.append(("ok", it.id, vis, ir, units, meta))
        except ImageReadError as exc:
            out.append(("skip", exc.path, exc.reason))
        except Exception as exc:     # an unforeseen decoder failure is still one bad file, not a crash
            out.append(("skip", it.ir or it.path, "%s: %s" % (type(exc).__name__, exc)))
    return out


# -- split and window ---------------------------------------------------------------------------

def dataset_window(ir_stack, train: Sequence[int]) -> Tuple[float, float]:
    """One window from the training split's temperature percentiles (spec)."""
    train = sorted(train)
    total = len(train) * ir_stack[0].size
    step = max(1, int(np.ceil(total / float(_MAX_WINDOW_SAMPLES))))
    parts = [np.asarray(ir_stack[i]).ravel()[::step] for i in train]
    lo, hi = np.percentile(np.concatenate(parts), spec.DATASET_WINDOW_PERCENTILES)
    if not hi > lo:
        raise BuildError("training IR has no temperature spread (%.3f..%.3f): cannot set a window" % (lo, hi))
    return float(lo), float(hi)


# -- writing -----------------------------------------------------------------------------------

def _log(msg: str) -> None:
    try:
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)
    except ImportError:
        print(msg, file=sys.stderr)


def _first_skip(skipped: Sequence[Tuple[str, str]], what: str, limit: int = 20) -> str:
    """One line for a build that failed on skipped inputs: the first `limit` named, then what failed."""
    if not skipped:
        return what
    named = "; ".join("%s: %s" % s for s in skipped[:limit])
    more = "; and %d more" % (len(skipped) - limit) if len(skipped) > limit else ""
    return "%s%s (%s)" % (named, more, what)


def build(out: str, flir_inputs: Sequence[str] = (), pair_roots: Sequence[str] = (),
          cfg: Optional[BuildConfig] = None, classes: Optional[Dict[str, str]] = None,
          log: Callable[[str], None] = _log) -> Dict:
    """Build a dataset folder at `out` (atomically). Returns the summary (also in dataset.json)."""
    from tqdm import tqdm

    from thermalnet.lmdb_io import LmdbWriter, write_mean_binaryproto

    cfg = cfg or BuildConfig()
    cfg.check()
    items, skipped, facts = gather(flir_inputs, pair_roots, classes)
    for path, reason in skipped:
        log("skip: %s: %s" % (path, reason))
    if not items:
        raise BuildError(_first_skip(skipped, "no candidate pairs in the inputs"))
    wcfg = {"height": cfg.height, "width": cfg.width, "fit": cfg.fit, "refine_px": cfg.refine_px,
            "ir_range": cfg.ir_range}
    n, h, w = len(items), cfg.height, cfg.width
    by_id = {it.id: it for it in items}
    with atomic_output_dir(out, marker=layout.DATASET_INFO_FILE) as tmp:
        stage = os.path.join(tmp, ".staging")
        os.makedirs(stage)
        vis_mm = np.lib.format.open_memmap(os.path.join(stage, "vis.npy"), "w+", np.uint8, (n, h, w, 3))
        ir_mm = np.lib.format.open_memmap(os.path.join(stage, "ir.npy"), "w+", np.float32, (n, h, w))
        loaded = {}   # id -> (slot, units, meta)
        workers = max(1, cfg.workers or os.cpu_count() or 1)
        size = _chunk_size(n, workers)
        chunks = [(items[i:i + size], wcfg) for i in range(0, n, size)]
        bar = tqdm(total=n, desc="decode", unit="pair", disable=not cfg.progress)

        def take(results):
            for r in results:
                if r[0] == "skip":
                    skipped.append((r[1], r[2]))
                    log("skip: %s: %s" % (r[1], r[2]))
                else:
                    _, iid, vis, ir, units, meta = r
                    slot = len(loaded)
                    vis_mm[slot], ir_mm[slot] = vis, ir
                    loaded[iid] = (slot, units, meta)
                bar.update()

        if workers == 1 or len(chunks) < 3:
            for c in chunks:
                take(_load_chunk(c))
        else:
            with make_pool(workers) as pool:
                for res in pool.imap(_load_chunk, chunks):
                    take(res)
        bar.close()

        # one unit system per dataset
        units = Counter(u for _, u, _ in loaded.values())
        if len(units) > 1:
            main_unit = units.most_common(1)[0][0]
            for iid in [i for i, (_, u, _) in loaded.items() if u != main_unit]:
                skipped.append((by_id[iid].ir or by_id[iid].path,
                                "IR in %s while the dataset is in %s (give --ir-range to convert)"
                                % (loaded[iid][1], main_unit)))
                log("skip: %s: %s" % skipped[-1])
                del loaded[iid]
        if cfg.strict and skipped:
            raise BuildError(_first_skip(skipped, "%d input(s) rejected under --strict; nothing was written"
                                         % len(skipped)))
        if not loaded:
            raise BuildError(_first_skip(skipped, "no usable pairs: all %d inputs were skipped" % n))
        ir_units = next(iter(units)) if len(units) == 1 else units.most_common(1)[0][0]

        # kept items in input order
        kept = [it for it in items if it.id in loaded]
        try:
            train, test, split_sources, split_info, left = splits.choose(
                kept, cfg.split, cfg.split_file, cfg.seed, cfg.test_count, cfg.test_fraction)
        except splits.SplitError as exc:
            raise BuildError(str(exc)) from exc
        for k, reason in left:
            skipped.append((kept[k].ir or kept[k].path, reason))
            log("skip: %s: %s" % skipped[-1])
        cls = [it.object_class for it in kept]
        slots = [loaded[it.id][0] for it in kept]
        with_source = split_info["source"] != splits.SOURCE_PAPER

        mode = cfg.window_mode
        window = cfg.window
        if mode is None:
            mode = "fixed" if (ir_units == "brightness" and window is None) else \
                ("fixed" if window is not None else spec.DEFAULT_WINDOW_MODE)
            if mode == "fixed" and window is None:
                window = (0.0, float(spec.BRIGHTNESS_LEVELS - 1))
        if mode == "dataset":
            window = dataset_window(ir_mm, [slots[i] for i in train])
        elif mode == "image":
            window = None

        synthetic = facts["synthetic"] if cfg.synthetic is None else bool(cfg.synthetic)
        manifest_rows = []
        q = cfg.num_bins
        counts = np.zeros(q, np.int64)
        mean_sum = np.zeros((3, h, w), np.float64)
        t_all = [np.inf, -np.inf]
        for split, order, db in (("train", train, layout.TRAIN_DB), ("test", test, layout.VAL_DB)):
            fdir = os.path.join(tmp, db, layout.FEATURES)
            ldir = os.path.join(tmp, db, layout.LABELS)
            with LmdbWriter(fdir) as fw, LmdbWriter(ldir) as lw:
                for k in tqdm(order, desc="write %s" % db, unit="pair", disable=not cfg.progress):
                    it = kept[k]
                    slot, _, meta = loaded[it.id]
                    rgb = np.asarray(vis_mm[slot])
                    ir = np.asarray(ir_mm[slot])
                    lo, hi = window if window is not None else (float(ir.min()), float(ir.max()))
                    bright = spec.to_brightness(ir, lo, hi)
                    labels = spec.brightness_to_bins(bright, q)
                    bgr = np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))
                    copies = [(bgr, labels)]
                    if split == "train" and cfg.mirror:
                        copies.append((np.ascontiguousarray(bgr[:, :, ::-1]), np.ascontiguousarray(labels[:, ::-1])))
                    for feat, lab in copies:
                        fw.put(feat)
                        lw.put(lab[np.newaxis])
                        if split == "train":
                            mean_sum += feat
                            counts += np.bincount(lab.ravel(), minlength=q)[:q]
                    t_all = [min(t_all[0], float(ir.min())), max(t_all[1], float(ir.max()))]
                    if split == "test":
                        td = os.path.join(tmp, layout.TEST_DIR)
                        write_png(os.path.join(td, "visible", it.id + ".png"), rgb)
                        write_png(os.path.join(td, "ir", it.id + ".png"), np.round(bright).astype(np.uint8))
                        write_npy(os.path.join(td, "ir_degC", it.id + ".npy"), ir.astype(np.float32))
                    manifest_rows.append([it.id, it.source, it.object_class, split, "%.4f" % lo, "%.4f" % hi,
                                          meta["vis_h"], meta["vis_w"], meta["ir_h"], meta["ir_w"], h, w] +
                                         ([split_sources[k]] if with_source else []))
        n_train_entries = len(train) * (2 if cfg.mirror else 1)
        write_mean_binaryproto((mean_sum / n_train_entries).astype(np.float32),
                               os.path.join(tmp, layout.TRAIN_DB, layout.MEAN_FILE))
        prior = counts / float(counts.sum())
        np.savetxt(os.path.join(tmp, layout.CLASS_PRIOR_FILE), prior, fmt="%.8f")
        np.savetxt(os.path.join(tmp, layout.CLASS_WEIGHTS_FILE), spec.rebalance_weights(prior, cfg.rebalance_lambda),
                   fmt="%.8f")
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(MANIFEST_COLUMNS + ((SPLIT_SOURCE_COLUMN,) if with_source else ()))
        wr.writerows(manifest_rows)
        write_text(os.path.join(tmp, layout.MANIFEST_FILE), buf.getvalue())
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(("file", "reason"))
        wr.writerows(skipped)
        write_text(os.path.join(tmp, SKIPPED_FILE), buf.getvalue())
        align_rows = [loaded[it.id][2]["alignment"] for it in kept if "alignment" in loaded[it.id][2]]
        if align_rows:
            buf = io.StringIO()
            wr = csv.writer(buf, lineterminator="\n")
            wr.writerow(ALIGNMENT_COLUMNS)
            wr.writerows(align_rows)
            write_text(os.path.join(tmp, ALIGNMENT_FILE), buf.getvalue())

        present = [c for c in spec.OBJECT_CLASSES if c in cls] + sorted(set(cls) - set(spec.OBJECT_CLASSES))
        class_counts = {s: dict(Counter(cls[i] for i in idx)) for s, idx in (("train", train), ("test", test))}
        if synthetic:
            note = "SYNTHETIC: " + ("; ".join(facts["notes"]) or "generated scenes, not camera data")
        else:
            note = "real data: %d FLIR file(s), %d aligned pair(s) given" % (facts["flir"], facts["pairs"])
        info = {
            "synthetic": synthetic, "note": note, "num_bins": q, "height": h, "width": w,
            "window_mode": mode, "window": list(window) if window is not None else None,
            "lambda": cfg.rebalance_lambda, "mirror": cfg.mirror,
            "counts": {"train": len(train), "test": len(test), "skipped": len(skipped),
                       "train_entries": n_train_entries},
            "object_classes": present, "class_counts": class_counts, "ir_units": ir_units,
            "ir_range": list(cfg.ir_range) if cfg.ir_range else None,
            "temperature_range": t_all, "fit": cfg.fit, "refine_px": cfg.refine_px, "seed": cfg.seed,
            "window_percentiles": list(spec.DATASET_WINDOW_PERCENTILES) if mode == "dataset" else None,
            "inputs": {"flir_files": facts["flir"], "pairs": facts["pairs"]},
            "split": split_info,
        }
        del vis_mm, ir_mm
        shutil.rmtree(stage)
        write_text(os.path.join(tmp, layout.DATASET_INFO_FILE), json.dumps(info, indent=1))
    info["skipped_files"] = skipped
    return info


def format_summary(info: Dict, out: str = "") -> str:
    """Human summary: kept/skipped (with reasons), class balance, window, temperatures."""
    c = info["counts"]
    lines = ["%sdataset %s: %d train / %d test pairs at %dx%d, %d skipped"
             % ("SYNTHETIC " if info["synthetic"] else "", out, c["train"], c["test"], info["height"],
                info["width"], c["skipped"])]
    for split in ("train", "test"):
        cc = info["class_counts"][split]
        lines.append("  %-5s classes: %s" % (split, ", ".join("%s %d" % (k, cc[k]) for k in sorted(cc))))
    win = info["window"]
    if "split" in info:
        lines.append("  split: %s" % info["split"]["source"])
    lines.append("  window (%s): %s %s; IR range %.1f .. %.1f %s"
                 % (info["window_mode"], "per image" if win is None else "%.2f .. %.2f" % tuple(win),
                    info["ir_units"] if win is not None else "", info["temperature_range"][0],
                    info["temperature_range"][1], info["ir_units"]))
    reasons = Counter(r.split(" (")[0] for _, r in info.get("skipped_files", []))
    for r, k in reasons.most_common():
        lines.append("  skipped %d: %s" % (k, r))
    return "\n".join(lines)
