"""The paper's purpose: turn a visible image dataset into a synthetic thermal one.

    python -m tools.augment --model snapshot.caffemodel --deploy prototxt/thermalnet_v1_1_deploy.prototxt \
        --mean DS/train_db/mean.binaryproto --input DIR_OR_LIST --out OUT

Outputs mirror the input tree (OUT/<relative path without extension>.png), so names
are stable whatever the shard and a cluster array job can write into one folder.
Sharding (--shard i/N, or Slurm array variables) splits the *sorted* full list by
stride, so the N shards partition it exactly. Names are fixed from the full list
before sharding, which is why two inputs that differ only in extension still get
distinct names in every shard. Unreadable images are reported on one line and skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from thermalnet import cli, decoders, imageio, layout, spec

PALETTE = "inferno"
PALETTE_SUFFIX = "_pal"
# Smaller inputs would shrink below one pixel inside the net, and Caffe aborts the
# whole process on that rather than raising: refuse them up front instead.
MIN_INPUT_SIDE = 32


# -- input list, names, shards ------------------------------------------------------
def list_inputs(source: str) -> List[Tuple[str, str]]:
    """A folder (recursive, by extension) or a text list -> sorted [(path, relative name)].

    Relative names come from the folder, or for a list from the deepest folder holding
    every listed file (list paths may be relative to the list file's own folder).
    """
    if os.path.isdir(source):
        found = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for f in files:
                if f.lower().endswith(imageio.IMAGE_EXTS) and not f.startswith("."):
                    path = os.path.join(root, f)
                    found.append((path, os.path.relpath(path, source)))
        return sorted(found, key=lambda t: t[1])
    if not os.path.isfile(source):
        raise FileNotFoundError("%s: no such input folder or list file" % source)
    base = os.path.dirname(os.path.abspath(source))
    paths = []
    with open(source, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                paths.append(os.path.normpath(line if os.path.isabs(line) else os.path.join(base, line)))
    if not paths:
        return []
    paths = sorted(set(paths))
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return sorted(((p, os.path.relpath(p, root)) for p in paths), key=lambda t: t[1])


def output_stems(rel_names: Sequence[str], palette: bool = True) -> Dict[str, str]:
    """Relative input name -> output stem (relative, no extension), unique over the list.

    Inputs that share a stem (x.jpg, x.png) keep their extension in the name (x_jpg,
    x_png) so neither overwrites the other.
    """
    by_stem: Dict[str, List[str]] = {}
    for rel in rel_names:
        by_stem.setdefault(os.path.splitext(rel)[0], []).append(rel)
    stems = {}
    for stem, rels in by_stem.items():
        for rel in rels:
            if len(rels) == 1:
                stems[rel] = stem
            else:
                root, ext = os.path.splitext(rel)
                stems[rel] = root + "_" + ext.lstrip(".").lower()
    taken = {}
    for rel, stem in stems.items():
        names = [stem + ".png"] + ([stem + PALETTE_SUFFIX + ".png"] if palette else [])
        for name in names:
            if name in taken and taken[name] != rel:
                raise ValueError("inputs %s and %s would both write %s; rename one of them"
                                 % (taken[name], rel, name))
            taken[name] = rel
    return stems


def parse_shard(text: str) -> Tuple[int, int]:
    """'i/N' (0-based i) -> (i, N)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError("--shard must look like i/N (0-based i), got %r" % text) from None
    if n < 1 or not 0 <= i < n:
        raise ValueError("--shard %s: need 0 <= i < N" % text)
    return i, n


def shard_from_env(env=None) -> Optional[Tuple[int, int]]:
    """The Slurm array task as (i, N), or None outside an array job.

    i = (TASK_ID - TASK_MIN) / TASK_STEP; N = TASK_COUNT, or (MAX - MIN) / STEP + 1 on
    Slurm versions without TASK_COUNT.
    """
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    task = int(env["SLURM_ARRAY_TASK_ID"])
    lo = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    step = int(env.get("SLURM_ARRAY_TASK_STEP", 1)) or 1
    if "SLURM_ARRAY_TASK_COUNT" in env:
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
    elif "SLURM_ARRAY_TASK_MAX" in env:
        count = (int(env["SLURM_ARRAY_TASK_MAX"]) - lo) // step + 1
    else:
        raise ValueError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                         "SLURM_ARRAY_TASK_MAX is; pass --shard i/N")
    index = (task - lo) // step
    if not 0 <= index < count:
        raise ValueError("Slurm array task %d is outside %d..%d" % (task, lo, lo + (count - 1) * step))
    return index, count


def select_shard(items: Sequence, index: int, count: int) -> list:
    """Every count-th item starting at index: shards of a sorted list partition it exactly."""
    return list(items[index::count])


# -- outputs ------------------------------------------------------------------------
def window_from_dataset(dataset_dir: str) -> Tuple[float, float]:
    """The brightness window [tmin, tmax] (degC) recorded in a dataset's dataset.json."""
    path = os.path.join(dataset_dir, layout.DATASET_INFO_FILE)
    info = layout.read_dataset_info(dataset_dir)
    window = info.get("window")
    if not window or len(window) != 2:
        raise ValueError("%s: no single brightness window (window_mode %r); pass --window TMIN TMAX"
                         % (path, info.get("window_mode")))
    return float(window[0]), float(window[1])


def palette_image(brightness: np.ndarray) -> np.ndarray:
    """Brightness 0..255 -> RGB uint8 false-colour image (matplotlib 'inferno')."""
    from matplotlib import colormaps
    rgba = colormaps[PALETTE](np.clip(np.asarray(brightness, dtype=np.float64) / 255.0, 0, 1))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def to_uint8(brightness: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(brightness), 0, 255).astype(np.uint8)


def write_outputs(out_dir: str, stem: str, brightness: np.ndarray, window=None, palette: bool = False) -> List[str]:
    """Write OUT/stem.png (8-bit brightness), stem.npy (degC, with a window), stem_pal.png."""
    base = os.path.join(out_dir, stem)
    os.makedirs(os.path.dirname(base) or out_dir, exist_ok=True)
    written = [base + ".png"]
    imageio.write_png(written[0], to_uint8(brightness))      # temp file + rename
    if window is not None:
        written.append(base + ".npy")
        imageio.write_npy(written[-1], spec.to_celsius(brightness, *window).astype(np.float32))
    if palette:
        written.append(base + PALETTE_SUFFIX + ".png")
        imageio.write_png(written[-1], palette_image(brightness))
    return written


# -- the run ------------------------------------------------------------------------
def _read(path: str, size) -> np.ndarray:
    img = imageio.read_rgb(path)
    if size is not None:
        img = imageio.resize_visible(img, *size)
    if min(img.shape[:2]) < MIN_INPUT_SIDE:
        raise ValueError("%dx%d is smaller than %d px on a side; resize with --size H W"
                         % (img.shape[0], img.shape[1], MIN_INPUT_SIDE))
    return img


def _chunks(seq: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def run_augment(predictor, inputs: Sequence[Tuple[str, str]], out_dir: str, shard: Tuple[int, int] = (0, 1),
                decoding: str = "expectation", temperature: Optional[float] = None, window=None,
                palette: bool = False, size=None, progress: bool = True, log=None,
                class_weights=None) -> dict:
    """Predict and write every image of this shard; return a summary dict.

    inputs: the FULL sorted list from list_inputs (names are fixed on it before sharding).
    """
    from tqdm import tqdm
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    stems = output_stems([rel for _, rel in inputs], palette=palette)
    mine = select_shard(inputs, *shard)
    os.makedirs(out_dir, exist_ok=True)
    written, skipped = 0, []
    bar = tqdm(total=len(mine), unit="img", desc="augment %d/%d" % (shard[0], shard[1]), disable=not progress)
    rng = np.random.default_rng(decoders.SAMPLE_SEED)        # one stream of draws for the "sample" decoding
    for chunk in _chunks(mine, max(1, predictor.batch_size)):
        images, names = [], []
        for path, rel in chunk:
            try:
                images.append(_read(path, size))
                names.append(rel)
            except imageio.ImageReadError as exc:   # message is "path: reason"
                log("skipped %s" % str(exc).splitlines()[0])
                skipped.append(path)
            except (OSError, ValueError) as exc:
                log("skipped %s: %s" % (path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
                skipped.append(path)
        if images:
            for rel, b in zip(names, predictor.predict_brightness(images, decoding, temperature,
                                                                           class_weights, rng)):
                write_outputs(out_dir, stems[rel], b, window=window, palette=palette)
                written += 1
        bar.update(len(chunk))
    bar.close()
    summary = {"shard": "%d/%d" % shard, "inputs_total": len(inputs), "inputs_shard": len(mine),
               "written": written, "skipped": len(skipped), "skipped_files": skipped, "out": out_dir}
    log("augment: shard %s: %d of %d images written to %s, %d skipped"
        % (summary["shard"], written, len(mine), out_dir, len(skipped)))
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.augment",
                                description="Visible images -> synthetic thermal images with a trained Thermalnet.")
    p.add_argument("--model", required=True, help="trained weights (.caffemodel), or with --backend onnxruntime "
                                                   "a model from thermalnet.onnx_export (.onnx)")
    p.add_argument("--deploy", help="deploy prototxt (Input data -> Softmax prob); not needed for an .onnx model")
    p.add_argument("--mean", help="training mean.binaryproto (default: DATASET/train_db/mean.binaryproto)")
    p.add_argument("--dataset", help="training dataset folder: default mean, and the degC window for --celsius")
    p.add_argument("--input", required=True, help="folder of images (searched recursively) or a text file list")
    p.add_argument("--out", required=True, help="output folder (input sub-folders are mirrored)")
    cli.add_backend(p, ("pycaffe", "opencv", "onnxruntime"),
                    help="pycaffe (reference), opencv (cv2.dnn) or onnxruntime; make bench prints their speeds")
    cli.add_decoding(p, None,
                     help="mmse (default with --dataset: eq. 1's class weights divided out, the minimum-RMS "
                          "estimate), expectation (default without), argmax, annealed; sample and digits model "
                          "readings of the paper (thermalnet.decoders)")
    cli.add_temperature(p)
    p.add_argument("--celsius", action="store_true", help="also write degC arrays (.npy float32)")
    p.add_argument("--window", nargs=2, type=float, metavar=("TMIN", "TMAX"),
                   help="degC window of brightness 0..255 (default: from --dataset)")
    p.add_argument("--palette", action="store_true", help="also write a false-colour %s image (*%s.png)"
                   % (PALETTE, PALETTE_SUFFIX))
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="resize every input to HxW first")
    cli.add_batch_size(p, 8)
    p.add_argument("--shard", help="i/N: process the i-th (0-based) of N shards (default: Slurm array vars)")
    cli.add_gpu(p)
    cli.add_quiet(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _main(args), outputs=[args.out])


def _main(args) -> int:
    shard = parse_shard(args.shard) if args.shard else (shard_from_env() or (0, 1))
    mean = args.mean or (os.path.join(args.dataset, layout.TRAIN_DB, layout.MEAN_FILE) if args.dataset else None)
    window = None
    if args.celsius:
        if args.window:
            window = tuple(args.window)
        elif args.dataset:
            window = window_from_dataset(args.dataset)
        else:
            raise ValueError("--celsius needs --window TMIN TMAX or --dataset DS")
        if not window[1] > window[0]:
            raise ValueError("--window needs TMAX > TMIN, got %g %g" % window)
    decoding = args.decoding or decoders.default_decoding(bool(args.dataset))
    weights = None
    if args.dataset:
        q = int(layout.read_dataset_info(args.dataset)["num_bins"])
        if args.deploy:
            from thermalnet.inference import check_bins
            check_bins(args.deploy, q, args.dataset)
        if decoding == "mmse":
            weights = layout.read_class_weights(args.dataset, q)
    elif decoding == "mmse":
        raise ValueError("--decoding mmse needs --dataset DS (its class_weights.txt)")
    inputs = list_inputs(args.input)
    if not inputs:
        raise ValueError("%s: no images found" % args.input)
    from thermalnet.inference import Predictor
    predictor = Predictor(args.deploy, args.model, mean_file=mean, backend=args.backend,
                          batch_size=args.batch_size, gpu=args.gpu)
    log = cli.DeferredLog()
    summary = run_augment(predictor, inputs, args.out, shard=shard, decoding=decoding, class_weights=weights,
                          temperature=args.temperature, window=window, palette=args.palette,
                          size=tuple(args.size) if args.size else None, progress=not args.quiet, log=log)
    if summary["inputs_shard"] and not summary["written"]:
        first = next((line[len("skipped "):] for line in log.lines if line.startswith("skipped ")), args.input)
        raise ValueError("%s (all %d images of shard %s unreadable; nothing written)"
                         % (first, summary["inputs_shard"], summary["shard"]))
    log.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
