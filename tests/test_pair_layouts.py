"""Public visible/thermal sets as their users hold them: each layout of pairs.LAYOUT_TABLE
written with generated images (tiny, SYNTHETIC), built through the CLI, and the split each
carries honoured (splits.py): the manifest and dataset.json say where the split came from."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from dataset_builder import pairs as P
from dataset_builder import splits as S
from dataset_builder.build import SPLIT_SOURCE_COLUMN
from dataset_builder.cli import main as cli_main
from thermalnet import layout

SIZE = ["--size", "12", "16", "--quiet", "--workers", "1"]


def _pair(vis_path, ir_path, seed, ir_rgb=False):
    """One tiny aligned pair: 16x12 RGB whose brightness is the 8-bit IR's."""
    rng = np.random.RandomState(seed)
    ir = rng.randint(0, 256, (12, 16)).astype(np.uint8)
    for p in (vis_path, ir_path):
        os.makedirs(os.path.dirname(p), exist_ok=True)
    Image.fromarray(np.repeat(ir[:, :, None], 3, axis=2)).save(vis_path)
    Image.fromarray(np.repeat(ir[:, :, None], 3, axis=2) if ir_rgb else ir).save(ir_path)


def _build(tmp_path, root, *extra):
    out = str(tmp_path / "ds")
    rc = cli_main(["build", "--pairs", str(root), "--out", out] + SIZE + list(extra))
    assert rc == 0
    with open(os.path.join(out, layout.MANIFEST_FILE), newline="") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(out, layout.DATASET_INFO_FILE)) as f:
        info = json.load(f)
    return rows, info


def _test_ids(rows):
    return sorted(r["id"] for r in rows if r["split"] == "test")


def test_llvip_train_test_folders(tmp_path, capsys):
    """LLVIP: visible|infrared x train|test, JPEGs (IR stored as RGB grey). Stems pair without
    regard to case; an unmatched file is named; the test split is LLVIP's test folder."""
    root = tmp_path / "LLVIP"
    for split, first in (("train", 10001), ("test", 190001)):
        for k in range(3):
            n = "%06d" % (first + k)
            _pair(str(root / "visible" / split / (n + ".jpg")), str(root / "infrared" / split / (n + ".jpg")),
                  first + k, ir_rgb=True)
    os.rename(str(root / "infrared" / "train" / "010002.jpg"), str(root / "infrared" / "train" / "010002.JPG"))
    _pair(str(root / "visible" / "test" / "190009.jpg"), str(tmp_path / "elsewhere" / "x.jpg"), 9)
    rows, info = _build(tmp_path, root)
    assert _test_ids(rows) == ["test_190001", "test_190002", "test_190003"]
    assert "train_010002" in {r["id"] for r in rows}                 # .JPG paired with .jpg
    assert {r[SPLIT_SOURCE_COLUMN] for r in rows} == {S.SOURCE_FOLDERS}
    assert info["split"]["source"] == S.SOURCE_FOLDERS and info["counts"]["skipped"] == 1
    err = capsys.readouterr().err
    assert "190009.jpg: visible file with no IR partner (no infrared/test/190009.*)" in err


def test_kaist_official_sets(tmp_path):
    """KAIST: setNN/VNNN/visible|lwir; sets 00-05 train, 06-11 test, whatever the seed."""
    root = tmp_path / "kaist"
    for s, v in (("set00", "V000"), ("set02", "V001"), ("set05", "V000"), ("set06", "V000"), ("set11", "V002")):
        for k in range(2):
            n = "I%05d" % k
            _pair(str(root / s / v / "visible" / (n + ".jpg")), str(root / s / v / "lwir" / (n + ".jpg")), k)
    rows, info = _build(tmp_path, root, "--seed", "5")
    assert _test_ids(rows) == ["set06_V000_I00000", "set06_V000_I00001", "set11_V002_I00000", "set11_V002_I00001"]
    assert {r[SPLIT_SOURCE_COLUMN] for r in rows} == {S.SOURCE_KAIST} and info["split"]["source"] == S.SOURCE_KAIST
    # --split random overrides it, whole videos (folders) on one side
    rows, info = _build(tmp_path, root, "--split", "random")
    assert info["split"]["source"] == S.SOURCE_RANDOM and info["split"]["sequences"] == 5
    side = {}
    for r in rows:
        side.setdefault(r["id"].rsplit("_", 1)[0], set()).add(r["split"])
    assert all(len(v) == 1 for v in side.values()) and {"train", "test"} == set.union(*side.values())


def test_msrs_train_test_vi_ir(tmp_path):
    """MSRS: train|test, each with vi/ and ir/ (PNG)."""
    root = tmp_path / "MSRS"
    for split in ("train", "test"):
        for k in range(3):
            n = "%05dD" % (k + (100 if split == "test" else 0))
            _pair(str(root / split / "vi" / (n + ".png")), str(root / split / "ir" / (n + ".png")), k)
    rows, info = _build(tmp_path, root)
    assert _test_ids(rows) == ["test_00100D", "test_00101D", "test_00102D"]
    assert info["split"]["source"] == S.SOURCE_FOLDERS


def test_m3fd_vis_ir_with_a_split_file(tmp_path):
    """M3FD: Vis/ and Ir/ (no split folders): without a list the paper's split; with
    --split-file the listed one, and pairs it does not list are skipped."""
    root = tmp_path / "M3FD_Fusion"
    for k in range(8):
        n = "%05d" % k
        _pair(str(root / "Vis" / (n + ".png")), str(root / "Ir" / (n + ".png")), k)
    rows, info = _build(tmp_path, root)
    assert info["split"]["source"] == S.SOURCE_PAPER and SPLIT_SOURCE_COLUMN not in rows[0]
    lst = tmp_path / "m3fd_split.csv"
    lst.write_text("name,split\n00000,train\n00001,train\n00002,train\n00003,val\n00004.PNG train\n"
                   "Vis/00005.png,test\n00006,TEST\n")
    rows, info = _build(tmp_path, root, "--split-file", str(lst))
    assert _test_ids(rows) == ["00005", "00006"] and len(rows) == 7
    assert info["split"]["source"] == "%s m3fd_split.csv" % S.SOURCE_FILE and info["counts"]["skipped"] == 1


def test_a_bad_split_file_is_one_line(tmp_path, capsys):
    root = tmp_path / "M3FD"
    for k in range(3):
        _pair(str(root / "Vis" / ("%05d.png" % k)), str(root / "Ir" / ("%05d.png" % k)), k)
    lst = tmp_path / "split.txt"
    for text, why in (("00000 train\n00001 holdout\n", "line 2: split 'holdout' is not train, test or val"),
                      ("00000 train\n00001 train\n", "gives 2 train and 0 test pairs")):
        lst.write_text(text)
        assert cli_main(["build", "--pairs", str(root), "--out", str(tmp_path / "ds"), "--split-file", str(lst)]
                        + SIZE) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: %s" % lst) and why in err, err


def test_tno_vis_ir_and_roadscene(tmp_path):
    """TNO-style VIS/ + IR/ (BMP) and RoadScene's crop_LR_visible/ + cropinfrared/: no split
    of their own, so the paper's (seeded, stratified)."""
    tno = tmp_path / "TNO"
    for k in range(4):
        _pair(str(tno / "VIS" / ("scene%d.bmp" % k)), str(tno / "IR" / ("scene%d.bmp" % k)), k)
    rows, info = _build(tmp_path, tno)
    assert len(rows) == 4 and info["split"]["source"] == S.SOURCE_PAPER
    road = tmp_path / "RoadScene"
    for k in range(5):
        _pair(str(road / "crop_LR_visible" / ("FLIR_%05d.jpg" % k)), str(road / "cropinfrared" / ("FLIR_%05d.jpg" % k)), k)
    rows, info = _build(tmp_path, road)
    assert len(rows) == 5 and info["split"]["source"] == S.SOURCE_PAPER


def test_split_folders_anywhere_and_val_is_not_test(tmp_path):
    """train/ val/ test/ anywhere on the path: val pairs train, test pairs test."""
    root = tmp_path / "set"
    for split in ("train", "val", "test"):
        for k in range(2):
            n = "%s%d" % (split[:2], k)
            _pair(str(root / "day" / split / "visible" / (n + ".png")), str(root / "day" / split / "infrared" / (n + ".png")), k)
    rows, info = _build(tmp_path, root)
    assert _test_ids(rows) == ["day_test_te0", "day_test_te1"]
    assert {r["id"] for r in rows if r["split"] == "train"} >= {"day_val_va0", "day_val_va1"}
    assert info["split"]["val_in_train"] == 2


def test_random_split_keeps_runs_of_numbered_frames_together(tmp_path):
    """A flat folder of numbered frames from 8 videos (runs 0-5, 1000-1005, ...): --split
    random puts every run wholly on one side, whatever the seed."""
    root = tmp_path / "frames"
    for run in range(8):
        for k in range(6):
            n = "FLIR_%05d" % (run * 1000 + k * 2)          # every second frame kept
            _pair(str(root / "visible" / (n + ".jpg")), str(root / "lwir" / (n + ".jpg")), run * 10 + k)
    for seed in ("1", "2", "3"):
        rows, info = _build(tmp_path, root, "--split", "random", "--seed", seed, "--test-fraction", "0.25")
        side = {}
        for r in rows:
            side.setdefault(int(r["id"].split("_")[1]) // 1000, set()).add(r["split"])
        assert len(side) == 8 and all(len(v) == 1 for v in side.values()), side
        assert sum(v == {"test"} for v in side.values()) == 2            # 12 of 48 frames: two runs
        assert info["split"]["sequences"] == 8 and {r[SPLIT_SOURCE_COLUMN] for r in rows} == {S.SOURCE_RANDOM}


def test_sequences_rule():
    names = [("a", "I%05d" % n) for n in (0, 1, 2, 3, 10, 11, 12)] + [("b", "I00004"), ("a", "x"), ("a", "y")]
    seqs = S.sequences(names)
    assert seqs[:4] == [seqs[0]] * 4 and seqs[4:7] == [seqs[4]] * 3 and seqs[0] != seqs[4]
    assert len(set(seqs)) == 5             # two runs in a/, one in b/, two unnumbered frames
    with pytest.raises(S.SplitError, match="one sequence"):
        S.random_by_sequence([0, 0, 0])


def test_a_split_carried_by_some_pairs_only_is_refused(tmp_path, capsys):
    root = tmp_path / "mixed"
    _pair(str(root / "train" / "vi" / "a.png"), str(root / "train" / "ir" / "a.png"), 1)
    _pair(str(root / "test" / "vi" / "b.png"), str(root / "test" / "ir" / "b.png"), 2)
    _pair(str(root / "extra" / "vi" / "c.png"), str(root / "extra" / "ir" / "c.png"), 3)
    assert cli_main(["build", "--pairs", str(root), "--out", str(tmp_path / "ds")] + SIZE) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 of 3 pairs carry no split" in err and "c.png" in err
    rows, info = _build(tmp_path, root, "--split", "paper")
    assert info["split"]["source"] == S.SOURCE_PAPER and len(rows) == 3


def test_nothing_found_names_the_folder_the_layouts_and_what_is_there(tmp_path, capsys):
    root = tmp_path / "downloads"
    _pair(str(root / "Train_LLVIP_vi" / "1.jpg"), str(root / "notes" / "1.jpg"), 1)
    assert cli_main(["build", "--pairs", str(root), "--out", str(tmp_path / "ds")] + SIZE) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: %s: no pairs folder layout found" % root)
    assert all("%s/+%s/" % (v, i) in err for v, i, _ in P.LAYOUT_TABLE)
    assert "Train_LLVIP_vi/ looks like a visible folder with no infrared partner" in err


def test_help_lists_every_layout(capsys):
    with pytest.raises(SystemExit):
        cli_main(["build", "--help"])
    out = capsys.readouterr().out
    for v, i, who in P.LAYOUT_TABLE:
        assert "%s/ + %s/" % (v, i) in out and who in out
    assert "--split-file" in out and "random" in out
