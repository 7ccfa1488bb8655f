"""Which pairs are test pairs: the split the data carries, a list file, or one drawn here.

Public sets of visible/thermal pairs are frames of videos: a frame and its neighbour
are nearly the same picture, so a split drawn frame by frame puts almost every test
scene in training too. What is honoured, in this order of say:
  * --split-file: lines `name,split` (or `name split`), name = pair id, relative path,
    file name or stem (any case), split = train|test|val;
  * --split random: drawn here, by SEQUENCE, never by frame: a sequence is the frames
    of one folder whose numbers run on (a gap of more than SEQUENCE_GAP_FACTOR times the
    folder's usual step starts a new one), so neighbouring frames stay on one side;
  * --split auto (default): the split the folders carry (a folder named train/test/val
    anywhere on a pair's path; KAIST's official sets: setNN with NN in KAIST_TEST_SETS
    are test, the others train), else the paper's: seeded, stratified by object class,
    100 test pairs when there are >= 1100 (split_indices);
  * --split paper: the paper's split even where the data carries one.
Validation pairs (val/) are not test pairs: they join training (the kit has no third split).
"""
from __future__ import annotations

import csv
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from thermalnet import spec

SPLIT_MODES = ("auto", "random", "paper")
FOLDER_SPLITS = {"train": "train", "training": "train", "test": "test", "testing": "test",
                 "val": "val", "valid": "val", "validation": "val"}
KAIST_SET = re.compile(r"^set(\d{2})$", re.IGNORECASE)
KAIST_TEST_SETS = range(6, 12)          # KAIST's official split: sets 00-05 train, 06-11 test
SEQUENCE_GAP_FACTOR = 2                 # a frame number more than 2 usual steps on starts a new run
_NUMBERED = re.compile(r"^(.*?)(\d+)$")

SOURCE_PAPER = "paper: seeded and stratified by object class"
SOURCE_FOLDERS = "folders: train/ and test/ on the path (val/ joins train)"
SOURCE_KAIST = "KAIST sets: set00-05 train; set06-11 test"
SOURCE_RANDOM = "random by sequence (folder + run of numbered frames)"
SOURCE_FILE = "split file"


class SplitError(ValueError):
    pass


def paper_test_count(n: int, test_count: Optional[int] = None,
                     test_fraction: float = spec.DEFAULT_TEST_FRACTION) -> int:
    """Test pairs of n: the paper's 100 when n >= 1100, else a fraction (>= 1, <= n - 1)."""
    if test_count is None:
        test_count = spec.PAPER_TEST if n >= spec.PAPER_TRAIN + spec.PAPER_TEST else \
            max(1, int(round(n * test_fraction)))
    return int(min(max(1, test_count), n - 1))


def split_indices(classes: Sequence[str], seed: int = spec.SEED, test_count: Optional[int] = None,
                  test_fraction: float = spec.DEFAULT_TEST_FRACTION) -> Tuple[List[int], List[int]]:
    """Seeded split stratified by object class: the paper's 100 test pairs when there are
    >= 1100 (1000/100 at exactly 1100), else a fraction (at least one test pair)."""
    n = len(classes)
    if n < 2:
        raise SplitError("need at least 2 usable pairs (1 train + 1 test), got %d" % n)
    test_count = paper_test_count(n, test_count, test_fraction)
    rng = np.random.default_rng(seed)
    groups = {c: rng.permutation([i for i, k in enumerate(classes) if k == c]).tolist() for c in sorted(set(classes))}
    exact = {c: len(g) * test_count / float(n) for c, g in groups.items()}
    quota = {c: int(np.floor(v)) for c, v in exact.items()}
    rest = test_count - sum(quota.values())
    for c in sorted(groups, key=lambda c: (-(exact[c] - quota[c]), c))[:rest]:
        quota[c] += 1
    test = sorted(i for c, g in groups.items() for i in g[:quota[c]])
    test_set = set(test)
    train = [i for i in rng.permutation(n).tolist() if i not in test_set]   # shuffled: mixed mini-batches
    return train, test


def carried_split(folders: Sequence[str]) -> Optional[Tuple[str, str]]:
    """(train|test|val, source) that a pair's folders say, or None: KAIST's setNN first,
    else the folder word nearest the file."""
    for f in folders:
        m = KAIST_SET.match(f)
        if m:
            return ("test" if int(m.group(1)) in KAIST_TEST_SETS else "train"), SOURCE_KAIST
    for f in reversed(folders):
        if f.lower() in FOLDER_SPLITS:
            return FOLDER_SPLITS[f.lower()], SOURCE_FOLDERS
    return None


def sequences(names: Sequence[Tuple[str, str]]) -> List[int]:
    """Sequence number of each (folder, stem): the frames of one folder whose numbers run
    on. Within a folder and stem prefix, frames sorted by number start a new sequence where
    the step exceeds SEQUENCE_GAP_FACTOR x the folder's median step; an unnumbered stem is
    a sequence of its own."""
    by_run: Dict[Tuple[str, str], List[Tuple[int, int]]] = {}
    out = [-1] * len(names)
    nxt = 0
    for i, (folder, stem) in enumerate(names):
        m = _NUMBERED.match(stem)
        if m is None:
            out[i], nxt = nxt, nxt + 1
        else:
            by_run.setdefault((folder, m.group(1).lower()), []).append((int(m.group(2)), i))
    for key in sorted(by_run):
        frames = sorted(by_run[key])
        steps = np.diff([f[0] for f in frames])
        limit = SEQUENCE_GAP_FACTOR * max(1, int(np.median(steps))) if steps.size else 1
        prev = None
        for num, i in frames:
            if prev is None or num - prev > limit:
                nxt += 1
            out[i] = nxt - 1
            prev = num
    return out


def random_by_sequence(seqs: Sequence[int], seed: int = spec.SEED, test_count: Optional[int] = None,
                       test_fraction: float = spec.DEFAULT_TEST_FRACTION) -> Tuple[List[int], List[int]]:
    """Whole sequences, in a seeded random order, go to test while each brings it nearer the
    paper's count (or the fraction): no sequence is cut, so neighbouring frames never straddle."""
    n = len(seqs)
    groups: Dict[int, List[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(s, []).append(i)
    if len(groups) < 2:
        raise SplitError("all %d pairs are one sequence (one folder of consecutively numbered frames): a "
                         "split by sequence needs two; give --split-file or --split paper" % n)
    want = paper_test_count(n, test_count, test_fraction)
    rng = np.random.default_rng(seed)
    test: List[int] = []
    for g in rng.permutation(sorted(groups)).tolist():
        if len(test) >= want:
            break
        size = len(test) + len(groups[g])
        if size >= n:
            continue                          # keep some training pairs
        if not test or abs(size - want) < abs(len(test) - want):   # a long run that overshoots waits
            test += groups[g]
    if not test:
        raise SplitError("no sequence fits the test split without emptying training")
    test_set = set(test)
    train = [i for i in rng.permutation(n).tolist() if i not in test_set]
    return train, sorted(test)


def read_split_file(path: str) -> Dict[str, str]:
    """name (lower case) -> train|test|val from lines `name,split` or `name split` (# comments)."""
    out = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SplitError("%s: cannot read the split file (%s)" % (path, exc)) from None
    for no, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        row = next(csv.reader([line])) if "," in line else line.split()
        if len(row) != 2:
            raise SplitError("%s: line %d %r needs 'name,split'" % (path, no, line))
        name, split = row[0].strip(), row[1].strip().lower()
        if split in ("split", "set") and no == 1:
            continue                                      # header
        if split not in FOLDER_SPLITS:
            raise SplitError("%s: line %d: split %r is not train, test or val" % (path, no, row[1]))
        out[name.lower()] = FOLDER_SPLITS[split]
    if not out:
        raise SplitError("%s: no 'name,split' lines" % path)
    return out


def _shuffled(idx: Sequence[int], seed: int) -> List[int]:
    """Training order: seeded shuffle (mixed mini-batches), as split_indices gives it."""
    return [idx[k] for k in np.random.default_rng(seed).permutation(len(idx)).tolist()]


def _file_split(table: Dict[str, str], names: Sequence[str]) -> Optional[str]:
    for n in names:
        if n and n.lower() in table:
            return table[n.lower()]
    return None


def choose(items: Sequence, mode: str = "auto", split_file: Optional[str] = None, seed: int = spec.SEED,
           test_count: Optional[int] = None, test_fraction: float = spec.DEFAULT_TEST_FRACTION):
    """Split of the kept items (each with .id, .source, .object_class, .folders, .path).

    Returns (train indices, test indices, per-item split source, summary for dataset.json,
    [(index, reason)] of items a split file leaves out)."""
    if mode not in SPLIT_MODES:
        raise SplitError("split %r not one of %s" % (mode, ", ".join(SPLIT_MODES)))
    n = len(items)
    if n < 2:
        raise SplitError("need at least 2 usable pairs (1 train + 1 test), got %d" % n)
    if split_file:
        table = read_split_file(split_file)
        train, test, left = [], [], []
        for i, it in enumerate(items):
            rel = it.source.split(":", 1)[-1]
            stem = os.path.splitext(os.path.basename(rel))[0]
            s = _file_split(table, (it.id, rel, os.path.splitext(rel)[0], os.path.basename(rel), stem))
            if s is None:
                left.append((i, "not in the split file %s" % os.path.basename(split_file)))
            else:
                (test if s == "test" else train).append(i)
        if not train or not test:
            raise SplitError("%s: the split file gives %d train and %d test pairs of the %d found; both "
                             "must be > 0" % (split_file, len(train), len(test), n))
        src = "%s %s" % (SOURCE_FILE, os.path.basename(split_file))
        return _shuffled(train, seed), test, [src] * n, {"source": src}, left
    if mode == "random":
        seqs = sequences([(os.path.dirname(it.source.split(":", 1)[-1]),
                           os.path.splitext(os.path.basename(it.path))[0]) for it in items])
        train, test = random_by_sequence(seqs, seed, test_count, test_fraction)
        return train, test, [SOURCE_RANDOM] * n, {"source": SOURCE_RANDOM, "seed": seed,
                                                  "sequences": len(set(seqs)),
                                                  "test_sequences": len({seqs[i] for i in test})}, []
    hints = [carried_split(it.folders) for it in items] if mode == "auto" else [None] * n
    if not any(hints):
        train, test = split_indices([it.object_class for it in items], seed, test_count, test_fraction)
        return train, test, [SOURCE_PAPER] * n, {"source": SOURCE_PAPER, "seed": seed}, []
    missing = [it for it, h in zip(items, hints) if h is None]
    if missing:
        raise SplitError("%s: %d of %d pairs carry no split (no train/ or test/ folder, no KAIST setNN) while "
                         "the others do: give --split random, --split paper or --split-file"
                         % (missing[0].path, len(missing), n))
    train = [i for i, h in enumerate(hints) if h[0] != "test"]
    test = [i for i, h in enumerate(hints) if h[0] == "test"]
    if not train or not test:
        raise SplitError("the split the folders carry has %d train and %d test pairs; both must be > 0 (give "
                         "--split random or --split paper)" % (len(train), len(test)))
    sources = [h[1] for h in hints]
    summary = {"source": "; ".join(sorted(set(sources))), "val_in_train": sum(h[0] == "val" for h in hints)}
    return _shuffled(train, seed), test, sources, summary, []
