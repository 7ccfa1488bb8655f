"""dataset_builder/pairs.py on its own (found by make mutation: pairs): small folder trees of tiny
images made here, and the pairs, skipped files, reasons and one-line errors they must give, each
worked out by hand from docs/datasets.md. No Caffe, no LMDB."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dataset_builder import build as B
from dataset_builder import pairs as P

LOOKED = ("looked for subfolders crop_LR_visible/+cropinfrared/, tv/+ir/, visible/+lwir/, visible/+infrared/, "
          "vi/+ir/, vis/+ir/, visible/+ir/")


def _img(path, size=(16, 12), seed=0):
    """A tiny RGB image in the format its extension names (pairing never opens it, the decoder
    does); .npy: a float IR array; any other extension: a line of text."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.RandomState(seed)
    if path.lower().endswith(".npy"):
        np.save(path, rng.uniform(10, 30, (size[1], size[0])).astype(np.float32))
    elif os.path.splitext(path)[1].lower() in P.IMAGE_EXTS:
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(
            os.path.splitext(path)[1].lower(), os.path.splitext(path)[1][1:].upper())
        Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)).save(path, format=fmt)
    else:
        with open(path, "w") as f:
            f.write("not an image\n")
    return path


def _skips(skipped, root):
    return [(os.path.relpath(f, str(root)), why) for f, why in skipped]


# ---- pairing by stem: what is paired, what is named and why ------------------------------------

def test_every_kind_of_skip_is_named_and_later_pairs_still_pair(tmp_path):
    """Keys run in sorted order: a visible-only, an IR-only and an ambiguous stem come before the
    one good pair, which must still be paired; each skip names one file and the missing partner
    by its folder and lower-case stem (top-level files: no folder part)."""
    root = tmp_path / "kaist_like"
    _img(root / "visible" / "a.png")                       # no IR
    _img(root / "lwir" / "B.PNG")                          # no visible; stem said lower case
    _img(root / "visible" / "c.jpg")                       # two visible files with stem c
    _img(root / "visible" / "c.png")
    _img(root / "lwir" / "c.png")
    _img(root / "visible" / "d.png")
    _img(root / "lwir" / "d.png")
    pairs, skipped = P.list_pairs(str(root))
    assert [(p.id, os.path.relpath(p.visible, str(root)), os.path.relpath(p.ir, str(root))) for p in pairs] == \
        [("d", "visible/d.png", "lwir/d.png")]
    assert _skips(skipped, root) == [
        ("visible/a.png", "visible file with no IR partner (no lwir/a.*)"),
        ("lwir/B.PNG", "IR file with no visible partner (no visible/b.*)"),
        ("visible/c.jpg", "ambiguous pair: several files with stem 'c' (c.jpg, c.png, c.png)"),
    ]


def test_a_lone_stem_with_two_files_names_the_first_in_name_order(tmp_path):
    """Two visible files (a.jpg, a.png) and no IR: the first by name, a.jpg, is named; two IR
    files (b.npy, b.png) and no visible: b.npy. One entry per stem."""
    root = tmp_path / "m3fd"
    _img(root / "Vis" / "a.png")
    _img(root / "Vis" / "a.jpg")
    _img(root / "Ir" / "b.png")
    _img(root / "Ir" / "b.npy")
    pairs, skipped = P.list_pairs(str(root))
    assert pairs == []
    assert _skips(skipped, root) == [("Vis/a.jpg", "visible file with no IR partner (no Ir/a.*)"),
                                     ("Ir/b.npy", "IR file with no visible partner (no Vis/b.*)")]


def test_ambiguity_on_the_ir_side_alone_is_named_by_the_visible_file(tmp_path):
    """One visible d.png, two IR files D.PNG and d.npy (same stem, any case): ambiguous, named by
    the visible file, every file listed visible first then IR in name order (upper case sorts first)."""
    root = tmp_path / "tno"
    _img(root / "VIS" / "d.png")
    _img(root / "IR" / "d.npy")
    _img(root / "IR" / "D.PNG")
    _img(root / "VIS" / "e.bmp")
    _img(root / "IR" / "e.bmp")
    pairs, skipped = P.list_pairs(str(root))
    assert [p.id for p in pairs] == ["e"]
    assert _skips(skipped, root) == [("VIS/d.png", "ambiguous pair: several files with stem 'd' (d.png, D.PNG, d.npy)")]


def test_nested_unmatched_file_names_its_subfolder(tmp_path):
    """LLVIP-style visible/test/190009.jpg without infrared/test/190009.*: the subfolder is in the reason."""
    root = tmp_path / "LLVIP"
    _img(root / "visible" / "test" / "190009.jpg")
    _img(root / "visible" / "train" / "010001.jpg")
    _img(root / "infrared" / "train" / "010001.jpg")
    pairs, skipped = P.list_pairs(str(root))
    assert [p.id for p in pairs] == ["train_010001"]
    assert _skips(skipped, root) == [("visible/test/190009.jpg",
                                      "visible file with no IR partner (no infrared/test/190009.*)")]


def test_pair_sources_top_level_and_nested(tmp_path):
    """Every field of PairSource, worked out by hand: id = folders above the layout + folders
    inside it + the visible stem, made file-name safe; rel and folders from the visible file."""
    flat = tmp_path / "flat"
    vis = _img(flat / "visible" / "scene 1.png")
    ir = _img(flat / "lwir" / "SCENE 1.npy")
    pairs, skipped = P.list_pairs(str(flat))
    assert skipped == [] and pairs == [P.PairSource("scene_1", vis, ir, "visible/scene 1.png", "unknown", ("visible",))]

    nested = tmp_path / "kaist"
    vis = _img(nested / "set06" / "V000" / "visible" / "sub" / "I00001.jpg")
    ir = _img(nested / "set06" / "V000" / "lwir" / "sub" / "i00001.JPG")
    pairs, skipped = P.list_pairs(str(nested))
    assert skipped == [] and pairs == [
        P.PairSource("set06_V000_sub_I00001", vis, ir, "set06/V000/visible/sub/I00001.jpg", "unknown",
                     ("set06", "V000", "visible", "sub"))]


def test_same_stem_in_train_and_test_folders_makes_two_pairs(tmp_path):
    """visible/train/1.jpg and visible/test/1.jpg are different pairs (relative folder is part of the key)."""
    root = tmp_path / "LLVIP"
    for split in ("train", "test"):
        _img(root / "visible" / split / "1.jpg")
        _img(root / "infrared" / split / "1.jpg")
    pairs, skipped = P.list_pairs(str(root))
    assert skipped == [] and [(p.id, p.folders) for p in pairs] == [("test_1", ("visible", "test")),
                                                                    ("train_1", ("visible", "train"))]


def test_hidden_and_non_image_files_are_ignored_extensions_in_any_case(tmp_path):
    """macOS ._ files, hidden folders, notes and Thumbs.db are neither paired nor reported;
    .JPEG/.TIFF pair in any case; .npy is an IR format only (a visible x.npy is not an image)."""
    root = tmp_path / "msrs"
    _img(root / "vi" / "a.JPEG")
    _img(root / "ir" / "A.tiff")
    _img(root / "vi" / "._a.JPEG")
    _img(root / "ir" / "._a.tiff")
    _img(root / "vi" / ".thumbs" / "b.png")
    _img(root / "ir" / ".thumbs" / "b.png")
    _img(root / "vi" / "notes.txt")
    _img(root / "vi" / "Thumbs.db")
    _img(root / "ir" / "desktop.ini")
    _img(root / "vi" / "x.npy")
    _img(root / "ir" / "x.npy")
    pairs, skipped = P.list_pairs(str(root))
    assert [(p.id, os.path.basename(p.ir)) for p in pairs] == [("a", "A.tiff")]
    assert _skips(skipped, root) == [("ir/x.npy", "IR file with no visible partner (no vi/x.*)")]


def test_ids_that_collide_after_making_them_safe_are_one_error(tmp_path):
    """'a b.png' and 'a_b.png' both become id a_b: one line naming the pairs folder."""
    root = tmp_path / "set"
    for stem in ("a b", "a_b"):
        _img(root / "visible" / (stem + ".png"))
        _img(root / "infrared" / (stem + ".png"))
    with pytest.raises(ValueError) as exc:
        P.list_pairs(str(root))
    assert str(exc.value) == "%s: pair ids collide after making them file-name safe" % root


def test_classes_csv_at_the_root_by_pair_path_or_stem(tmp_path):
    """classes.csv (header skipped) gives a class by the pair's path (day/a) or by its stem (b); others unknown."""
    root = tmp_path / "set"
    for stem in ("a", "b", "c"):
        _img(root / "day" / "vi" / (stem + ".png"))
        _img(root / "day" / "ir" / (stem + ".png"))
    (root / "classes.csv").write_text("stem,object_class\nday/a,person\nb,car\n")
    pairs, skipped = P.list_pairs(str(root))
    assert [(p.id, p.object_class) for p in pairs] == [("day_a", "person"), ("day_b", "car"), ("day_c", "unknown")]


# ---- finding the layout folders ------------------------------------------------------------------

def test_a_missing_pairs_folder_is_one_line(tmp_path):
    root = tmp_path / "nowhere"
    for call in (P.find_pair_dirs, P.list_pairs):
        with pytest.raises(FileNotFoundError) as exc:
            call(str(root))
        assert str(exc.value) == "%s: no such pairs folder" % root


def test_one_layout_per_folder_the_first_in_the_table(tmp_path):
    """visible/, lwir/ and ir/ side by side: KAIST's visible+lwir comes first in the table and is the
    only pair of folders taken (visible/ is not paired a second time with ir/)."""
    root = tmp_path / "set"
    for d in ("visible", "lwir", "ir"):
        _img(root / d / "a.png")
    assert P.find_pair_dirs(str(root)) == [(str(root / "visible"), str(root / "lwir"))]


# ---- the one-line 'no layout found' message ------------------------------------------------------

def test_not_found_in_an_empty_folder_says_only_what_was_looked_for(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "readme.txt").write_text("nothing\n")
    assert P.not_found_message(str(root)) == "%s: no pairs folder layout found (%s)" % (root, LOOKED)


def test_not_found_counts_images_lying_directly_in_the_folder(tmp_path):
    """Two images (any case of extension) directly in the folder, beside a text file, a .npy and
    a folder with no side word: the message counts the two images."""
    root = tmp_path / "loose"
    _img(root / "a.JPG")
    _img(root / "b.png")
    _img(root / "c.npy")
    _img(root / "notes.txt")
    _img(root / "misc" / "d.png")
    with pytest.raises(FileNotFoundError) as exc:
        P.list_pairs(str(root))
    assert str(exc.value) == ("%s: no pairs folder layout found (%s); found instead: 2 images lie directly in it "
                              "(a pair's two images go in two sibling folders)" % (root, LOOKED))


def test_not_found_names_lone_folders_before_loose_images(tmp_path):
    """A lone visible-looking folder is what is reported; the loose image beside it is not counted."""
    root = tmp_path / "downloads"
    _img(root / "Train_LLVIP_vi" / "1.jpg")
    _img(root / "1.jpg")
    assert P.not_found_message(str(root)) == (
        "%s: no pairs folder layout found (%s); found instead: Train_LLVIP_vi/ looks like a visible folder with no "
        "infrared partner" % (root, LOOKED))


def test_not_found_looks_below_the_top_until_three_are_found(tmp_path):
    """One lone folder at the top (x_vis), one two levels down (deep/thermal): both named, in walk
    order; folders without a side word (deep, notes) are not."""
    root = tmp_path / "downloads"
    for d in ("x_vis", "notes", "deep/thermal"):
        (root / d).mkdir(parents=True)
    assert P.not_found_message(str(root)) == (
        "%s: no pairs folder layout found (%s); found instead: x_vis/ looks like a visible folder with no infrared "
        "partner; deep/thermal/ looks like a infrared folder with no visible partner" % (root, LOOKED))


def test_not_found_names_three_with_two_at_the_top(tmp_path):
    """Two at the top are not enough to stop: the third, one level down, is named too."""
    root = tmp_path / "downloads"
    for d in ("a_vis", "b_ir", "c/lwir"):
        (root / d).mkdir(parents=True)
    assert P.not_found_message(str(root)) == (
        "%s: no pairs folder layout found (%s); found instead: a_vis/ looks like a visible folder with no infrared "
        "partner; b_ir/ looks like a infrared folder with no visible partner; c/lwir/ looks like a infrared folder "
        "with no visible partner" % (root, LOOKED))


def test_not_found_names_at_most_three(tmp_path):
    """Four lone folders at one level: the first three by name are named, the fourth is not."""
    root = tmp_path / "downloads"
    for d in ("a_rgb", "b-vis", "c.ir", "d thermal"):
        (root / d).mkdir(parents=True)
    assert P.not_found_message(str(root)) == (
        "%s: no pairs folder layout found (%s); found instead: a_rgb/ looks like a visible folder with no infrared "
        "partner; b-vis/ looks like a visible folder with no infrared partner; c.ir/ looks like a infrared folder "
        "with no visible partner" % (root, LOOKED))


def test_not_found_stops_walking_once_three_are_found(tmp_path, monkeypatch):
    """A downloads folder can be huge: once the top level gives three lone folders the walk goes no
    deeper (only the top folder is listed), however many folders lie below."""
    root = tmp_path / "downloads"
    for d in ("a_vis", "b_vis", "c_ir"):
        for k in range(3):
            (root / d / ("sub%d" % k) / "thermal").mkdir(parents=True)
    listed = []
    real_walk = os.walk

    def walk(top, *args, **kwargs):
        for step in real_walk(top, *args, **kwargs):
            listed.append(step[0])
            yield step

    monkeypatch.setattr(os, "walk", walk)
    msg = P.not_found_message(str(root))
    assert listed == [str(root)]
    assert msg.endswith("found instead: a_vis/ looks like a visible folder with no infrared partner; b_vis/ looks "
                        "like a visible folder with no infrared partner; c_ir/ looks like a infrared folder with no "
                        "visible partner")


# ---- classes.csv -------------------------------------------------------------------------------

def test_read_classes_skips_comments_blank_lines_and_a_header_only(tmp_path):
    """A comment (even with a comma), a blank line and a header row are skipped; a real stem that
    is a header word ('id') with a real class is kept; spaces trimmed; an empty class is unknown."""
    path = tmp_path / "classes.csv"
    path.write_text("# stem,class of each pair\n\nstem,object_class\nA01,person\n b02 , car \nid,dog\nc03,\n"
                    "d04,oven,extra\n")
    assert P.read_classes(str(path)) == {"A01": "person", "b02": "car", "id": "dog", "c03": "unknown", "d04": "oven"}
    path.write_text("File,Class\nx,computer\n")
    assert P.read_classes(str(path)) == {"x": "computer"}


def test_read_classes_errors_are_one_line_naming_the_file(tmp_path):
    """A row with one field, a non-UTF-8 file, and a field over csv's limit: each one ValueError line."""
    path = tmp_path / "classes.csv"
    path.write_text("a01,person\nlonely\n")
    with pytest.raises(ValueError) as exc:
        P.read_classes(str(path))
    assert str(exc.value) == "%s: line 'lonely' needs 'stem,object_class'" % path
    path.write_bytes(b"a01,person\n\xff\xfe,car\n")
    with pytest.raises(ValueError) as exc:
        P.read_classes(str(path))
    assert str(exc.value) == "%s: not a UTF-8 text CSV (invalid start byte)" % path
    path.write_text("a01," + "x" * 200000 + "\n")
    with pytest.raises(ValueError) as exc:
        P.read_classes(str(path))
    assert str(exc.value) == "%s: not a readable CSV (field larger than field limit (131072))" % path


# ---- pairs.json / README.txt: SYNTHETIC ----------------------------------------------------------

def test_pairs_meta_from_pairs_json_and_readme(tmp_path):
    """No files: {}; README.txt saying SYNTHETIC: synthetic; pairs.json's own 'synthetic' wins over the README."""
    root = tmp_path / "set"
    root.mkdir()
    assert P.read_pairs_meta(str(root)) == {}
    (root / "README.txt").write_text("Pairs made by the kit's generator: SYNTHETIC data.\n")
    assert P.read_pairs_meta(str(root)) == {"synthetic": True}
    (root / "pairs.json").write_text('{"synthetic": false, "note": "real camera"}')
    assert P.read_pairs_meta(str(root)) == {"synthetic": False, "note": "real camera"}
    (root / "README.txt").write_text("synthetic, in lower case, is not the marker\n")
    os.remove(str(root / "pairs.json"))
    assert P.read_pairs_meta(str(root)) == {}


def test_readme_synthetic_counts_only_in_its_first_4096_characters(tmp_path):
    """The README's head is read (4096 characters): SYNTHETIC ending on the 4096th counts, one
    character later it does not."""
    root = tmp_path / "set"
    root.mkdir()
    (root / "README.txt").write_text("x" * 4087 + "SYNTHETIC\n")       # characters 4088..4096
    assert P.read_pairs_meta(str(root)) == {"synthetic": True}
    (root / "README.txt").write_text("x" * 4088 + "SYNTHETIC\n")       # its last letter is the 4097th
    assert P.read_pairs_meta(str(root)) == {}


# ---- aspect ratio of a pair (pairs.MAX_ASPECT_MISMATCH, used by the builder's decoder) --------------

def test_aspect_mismatch_over_five_percent_is_not_an_aligned_pair(tmp_path):
    """Visible 64x48 (4:3): IR 67x48 is 4.5 % off and is read; IR 68x48 (5.9 % off) and 64x40
    (16.7 % off) are skipped with one line naming the visible file and both sizes."""
    cfg = {"height": 12, "width": 16, "fit": "crop", "refine_px": 0, "ir_range": None}
    vis = _img(tmp_path / "vi" / "a.png", size=(64, 48))
    for ir_size, ok in (((67, 48), True), ((68, 48), False), ((64, 40), False)):
        ir = str(tmp_path / "ir" / ("a_%dx%d.png" % ir_size))
        os.makedirs(os.path.dirname(ir), exist_ok=True)
        Image.fromarray(np.random.RandomState(1).randint(0, 256, ir_size[::-1]).astype(np.uint8)).save(ir)
        item = B.Item("a", "pair", vis, ir, "pairs:vi/a.png")
        if ok:
            v, i, units, meta = B._load_item(item, cfg, None)
            assert v.shape[:2] == (12, 16) and meta["ir_w"] == 67
        else:
            with pytest.raises(B.ImageReadError) as exc:
                B._load_item(item, cfg, None)
            assert str(exc.value) == ("%s: visible 64x48 and IR %dx%d have different aspect ratios: not an aligned "
                                      "pair" % (vis, ir_size[0], ir_size[1]))
