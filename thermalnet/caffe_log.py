"""Caffe training logs (glog format) -> train.csv / val.csv, for both log writers.

The kit writes its pycaffe training loop's log in the format of `caffe train`'s own
glog output, so one parser (this module) and one plot serve both back-ends and any
log a DIGITS job or a bare `caffe train` left behind:

    I1123 20:01:07.123456 12345 solver.cpp:228] Iteration 40, loss = 2.91      (glog < 0.6: MMDD)
    I20261123 20:01:07.123480 12345 solver.cpp:237] ...                        (glog >= 0.6: YYYYMMDD)
    I1123 20:01:07.123501 12345 sgd_solver.cpp:106] Iteration 40, lr = 0.001
    I1123 20:01:09.000001 12345 solver.cpp:330] Iteration 50, Testing net (#0)
    I1123 20:01:09.500000 12345 solver.cpp:397]     Test net output #0: loss = 2.7 (* 1 = 2.7 loss)

CSV columns: iteration, seconds (since the log's first timestamped line), loss, lr.
When a resumed run repeats iterations already in the log (it restarted from an older
snapshot), its rows replace the earlier ones from that iteration on: the curve shows
the run that produced the final weights.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import os
import re
import sys
from typing import Dict, Iterable, List, Optional, Tuple

from thermalnet import cli

# glog up to 0.5 writes MMDD, 0.6 and later YYYYMMDD (Debian 12's libgoogle-glog).
GLOG_RE = re.compile(r"^([IWEF])(\d{4})?(\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6})\s+(\d+) ([^\]]*)\] ?(.*)$")
TRAIN_LOSS_RE = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
LR_RE = re.compile(r"Iteration (\d+), lr = (\S+)")
TESTING_RE = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
TEST_OUT_RE = re.compile(r"Test net output #(\d+): (\S+) = (\S+)(?: \(\* (\S+) = (\S+) loss\))?")
CSV_FIELDS = ("iteration", "seconds", "loss", "lr")


def to_float(text: str) -> float:
    """Caffe prints nan as nan or -nan, infinities as inf."""
    t = text.strip().rstrip(",").lower()
    if t in ("nan", "-nan", "+nan"):
        return float("nan")
    return float(t)


def glog_prefix(when: Optional[_dt.datetime] = None, source: str = "train.py:0", level: str = "I") -> str:
    """glog's line prefix: severity, YYYYMMDD (glog >= 0.6, as the Caffe we build logs), wall time
    with microseconds, thread id, file:line."""
    when = when or _dt.datetime.now()
    return "%s%s %s %5d %s]" % (level, when.strftime("%Y%m%d"), when.strftime("%H:%M:%S.%f"),
                                os.getpid() % 100000, source)


def parse_line(line: str) -> Tuple[Optional[_dt.datetime], Optional[tuple]]:
    """One log line -> (timestamp or None, event or None).

    Events: ("train", it, loss), ("lr", it, lr), ("testing", it, net_id),
    ("test_output", index, name, value, loss_weight or None).
    """
    when = None
    msg = line.rstrip("\n")
    m = GLOG_RE.match(msg)
    if m:
        mo, day, hh, mi, ss, us = (int(m.group(i)) for i in range(3, 9))
        year = int(m.group(2)) if m.group(2) else 2000        # no year: 2000 is a leap year (Feb 29 parses)
        try:
            when = _dt.datetime(year, mo, day, hh, mi, ss, us)
        except ValueError:
            when = None
        msg = m.group(11)
    t = TESTING_RE.search(msg)
    if t:
        return when, ("testing", int(t.group(1)), int(t.group(2)))
    t = TEST_OUT_RE.search(msg)
    if t:
        weight = to_float(t.group(4)) if t.group(4) else None
        return when, ("test_output", int(t.group(1)), t.group(2), to_float(t.group(3)), weight)
    t = LR_RE.search(msg)
    if t:
        return when, ("lr", int(t.group(1)), to_float(t.group(2)))
    t = TRAIN_LOSS_RE.search(msg)
    if t:
        return when, ("train", int(t.group(1)), to_float(t.group(2)))
    return when, None


class _Clock:
    """Seconds since the first timestamp, across midnight and new year (glog has no year)."""

    def __init__(self):
        self.start = None
        self.last = None
        self.offset = _dt.timedelta(0)

    def seconds(self, when: Optional[_dt.datetime]) -> Optional[float]:
        if when is None:
            return None if self.last is None else (self.last + self.offset - self.start).total_seconds()
        if self.start is None:
            self.start = when
        if self.last is not None and when + self.offset < self.last + self.offset - _dt.timedelta(days=180):
            self.offset += _dt.timedelta(days=366 if when.month <= 2 else 365)
        self.last = when
        return (when + self.offset - self.start).total_seconds()


def _supersede(rows: List[Dict], iteration: int) -> None:
    """A resumed run restarting at `iteration` replaces rows from that iteration on."""
    while rows and rows[-1]["iteration"] >= iteration:
        rows.pop()


def parse_log(lines: Iterable[str]) -> Tuple[List[Dict], List[Dict]]:
    """Log lines -> (train rows, val rows), each row {iteration, seconds, loss, lr}.

    A val row is test net #0's loss output: the output named "loss", else the first
    output carrying a loss weight, else the first output.
    """
    clock = _Clock()
    train: List[Dict] = []
    val: List[Dict] = []
    lr_by_iter: Dict[int, float] = {}
    testing = None          # (iteration, seconds) of the test pass being read
    test_outputs: List[tuple] = []

    def close_test():
        nonlocal testing, test_outputs
        if testing is not None and test_outputs:
            named = [o for o in test_outputs if o[1] == "loss"]
            weighted = [o for o in test_outputs if o[3]]
            pick = (named or weighted or test_outputs)[0]
            loss = pick[2] * pick[3] if (pick[3] and not named) else pick[2]
            _supersede(val, testing[0] + 1)
            if val and val[-1]["iteration"] == testing[0]:
                val.pop()
            val.append({"iteration": testing[0], "seconds": testing[1], "loss": loss,
                        "lr": lr_by_iter.get(testing[0])})
        testing, test_outputs = None, []

    for line in lines:
        when, ev = parse_line(line)
        secs = clock.seconds(when)
        if ev is None:
            continue
        kind = ev[0]
        if kind == "test_output":
            if testing is not None:
                test_outputs.append(ev[1:])
            continue
        close_test()
        if kind == "testing":
            if ev[2] == 0:
                testing = (ev[1], secs)
                # A test at iteration i after a resume to i supersedes later val rows.
                _supersede(val, ev[1] + 1)
        elif kind == "train":
            _supersede(train, ev[1])
            train.append({"iteration": ev[1], "seconds": secs, "loss": ev[2], "lr": lr_by_iter.get(ev[1])})
        elif kind == "lr":
            lr_by_iter[ev[1]] = ev[2]
            for row in reversed(train):
                if row["iteration"] == ev[1]:
                    row["lr"] = ev[2]
                    break
    close_test()
    # Val rows take the lr in force at their iteration (the last lr logged at or before it).
    known = sorted(lr_by_iter.items())
    for row in val:
        if row["lr"] is None:
            prior = [lr for it, lr in known if it <= row["iteration"]]
            row["lr"] = prior[-1] if prior else None
    return train, val


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def write_csv(rows: List[Dict], path: str) -> str:
    """Rows -> CSV with CSV_FIELDS, written atomically."""
    from thermalnet.atomic import atomic_file
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_FIELDS)
            for r in rows:
                w.writerow([_fmt(r.get(k)) for k in CSV_FIELDS])
    return path


def read_csv(path: str) -> List[Dict]:
    """train.csv / val.csv -> rows with numbers (empty cells -> None)."""
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: no such loss CSV" % path)
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                rows.append({"iteration": int(r["iteration"]),
                             "seconds": to_float(r["seconds"]) if r["seconds"] else None,
                             "loss": to_float(r["loss"]) if r["loss"] else None,
                             "lr": to_float(r["lr"]) if r["lr"] else None})
    except UnicodeDecodeError as exc:
        raise ValueError("%s: not a loss CSV (not UTF-8 text: %s)" % (path, exc.reason)) from None
    except (KeyError, TypeError, ValueError, csv.Error) as exc:
        raise ValueError("%s: not a loss CSV with columns iteration,seconds,loss,lr (%s: %s)"
                         % (path, type(exc).__name__, exc)) from None
    return rows


def log_to_csv(log_path: str, out_dir: Optional[str] = None) -> Tuple[str, str]:
    """Parse a Caffe/pycaffe log and write out_dir/train.csv and out_dir/val.csv."""
    if not os.path.isfile(log_path):
        raise FileNotFoundError("%s: no such log file" % log_path)
    out_dir = out_dir or os.path.dirname(os.path.abspath(log_path))
    with open(log_path, errors="replace") as f:
        train, val = parse_log(f)
    if not train and not val:
        raise ValueError("%s: no 'Iteration N, loss = X' or 'Test net output' lines: not a Caffe training log"
                         % log_path)
    os.makedirs(out_dir, exist_ok=True)
    return (write_csv(train, os.path.join(out_dir, "train.csv")),
            write_csv(val, os.path.join(out_dir, "val.csv")))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thermalnet.caffe_log",
                                description="Parse a Caffe training log (caffe train, DIGITS, or the kit's "
                                            "pycaffe loop) into train.csv and val.csv "
                                            "(iteration, seconds, loss, lr).")
    p.add_argument("log", help="the log file (e.g. runs/NAME/train.log or a DIGITS caffe_output.log)")
    p.add_argument("--out", help="output folder (default: the log's folder)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        print("wrote %s and %s" % log_to_csv(args.log, args.out))
    return cli.run(body, outputs=[args.out])


if __name__ == "__main__":
    sys.exit(main())
