"""splits.py as pure functions: each expected split is worked out by hand on a few made-up
names (which stems go to test, how file names group into sequences, how many test pairs the
paper's ratio gives, what a bad split file's error says). Fast: no Caffe, no images."""
from __future__ import annotations

from collections import Counter, namedtuple

import pytest

from dataset_builder import splits as S

# What choose() reads of a build Item: the kit's sources are always "kind:relative path".
Item = namedtuple("Item", "id source object_class folders path")


def _item(source, folders=(), iid=None, cls="unknown"):
    rel = source.split(":", 1)[1]
    return Item(iid or rel.replace("/", "_"), source, cls, tuple(folders), "root/" + rel)


# -- carried_split ----------------------------------------------------------------------------

def test_kaist_sets_06_to_11_are_test_and_set12_is_not():
    """KAIST's official split: set06-set11 test; any other setNN (set05, set12) trains."""
    assert S.carried_split(("set05", "V000")) == ("train", S.SOURCE_KAIST)
    assert S.carried_split(("set06", "V000")) == ("test", S.SOURCE_KAIST)
    assert S.carried_split(("set11", "V000")) == ("test", S.SOURCE_KAIST)
    assert S.carried_split(("set12", "V000")) == ("train", S.SOURCE_KAIST)


# -- paper_test_count -------------------------------------------------------------------------

def test_paper_count_below_1100_is_the_fraction():
    """1000 pairs are under the paper's 1100: 1000/11 = 90.9 -> 91 test pairs, not the paper's 100."""
    assert S.paper_test_count(1000) == 91
    assert S.paper_test_count(900) == 82             # 81.8


def test_paper_count_at_exactly_1100_ignores_the_fraction():
    """At 1100 pairs the paper's 100 holds whatever the fraction (0.5 would give 550)."""
    assert S.paper_test_count(1100, test_fraction=0.5) == 100
    assert S.paper_test_count(1099, test_fraction=0.5) == 550


def test_paper_count_clamps_an_explicit_count_to_1_and_n_minus_1():
    """--test-count 0 still gives one test pair; 10 of 5 pairs leaves one for training."""
    assert S.paper_test_count(10, test_count=0) == 1
    assert S.paper_test_count(5, test_count=10) == 4
    assert S.paper_test_count(10, test_fraction=0.99) == 9  # round(9.9) = 10 -> 9


# -- split_indices ----------------------------------------------------------------------------

def test_stratified_quota_goes_to_the_largest_remainder():
    """8 'a' + 2 'b', 4 test: exact shares 3.2 and 0.8 -> floors 3 and 0; the one left goes to
    'b' (remainder 0.8 > 0.2), so test holds 3 'a' and 1 'b' for any seed."""
    classes = ["a"] * 8 + ["b"] * 2
    for seed in (0, 1, 2017):
        train, test = S.split_indices(classes, seed=seed, test_count=4)
        assert Counter(classes[i] for i in test) == {"a": 3, "b": 1}
        assert sorted(train + test) == list(range(10))


# -- sequences --------------------------------------------------------------------------------

def test_a_gap_of_three_usual_steps_starts_a_new_sequence():
    """Frames 1,2,3,6: usual step 1, so a step of 3 (> 2 x 1) starts a new sequence."""
    assert S.sequences([("d", "f1"), ("d", "f2"), ("d", "f3"), ("d", "f6")]) == [0, 0, 0, 1]


def test_a_gap_of_two_usual_steps_stays_in_the_sequence():
    """Frames 1,2,3,5: a step of exactly 2 x the usual step still runs on."""
    assert S.sequences([("d", "f1"), ("d", "f2"), ("d", "f3"), ("d", "f5")]) == [0, 0, 0, 0]


def test_the_usual_step_is_measured_on_frame_numbers():
    """Frames 10..40 every 10, then 90: usual step 10, so only the jump of 50 (> 20) splits."""
    names = [("d", "f%d" % k) for k in (10, 20, 30, 40, 90)]
    assert S.sequences(names) == [0, 0, 0, 0, 1]


def test_repeated_frame_numbers_take_the_usual_step_as_one():
    """f1, F1, f01, f2 (one prefix, any case): steps 0,0,1 have median 0, taken as 1 -> limit 2,
    so the step of 1 does not split."""
    assert S.sequences([("d", "f1"), ("d", "F1"), ("d", "f01"), ("d", "f2")]) == [0, 0, 0, 0]


def test_sequence_numbers_are_dense_unnumbered_first_then_runs_by_folder():
    """Unnumbered stems get 0, 1, ... in input order; then the runs, sorted by (folder, prefix),
    take the next numbers: d/f1-f2 -> 2, e/f1 -> 3."""
    names = [("d", "x"), ("d", "f1"), ("e", "f1"), ("d", "y"), ("d", "f2")]
    assert S.sequences(names) == [0, 2, 3, 1, 2]


# -- random_by_sequence -----------------------------------------------------------------------

def test_two_sequences_are_enough_for_a_random_split():
    """Two sequences of 2: one goes to test whole (want = 1), the other trains."""
    train, test = S.random_by_sequence([0, 0, 1, 1], seed=3)
    assert test in ([0, 1], [2, 3])
    assert sorted(train + test) == [0, 1, 2, 3]


def test_a_sequence_that_overshoots_waits():
    """Four sequences of 3, want 4: after the first (3, off by 1) a second would make 6 (off
    by 2), farther, so test stays at one sequence for every seed."""
    seqs = [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for seed in range(6):
        train, test = S.random_by_sequence(seqs, seed=seed, test_count=4)
        assert len(test) == 3 and len({seqs[i] for i in test}) == 1
        assert len(train) == 9


def test_a_sequence_as_far_off_after_as_before_is_not_taken():
    """Three sequences of 2, want 3: after one (2, off by 1) a second makes 4 (also off by 1):
    not nearer, so test stays at 2 pairs."""
    seqs = [0, 0, 1, 1, 2, 2]
    for seed in range(6):
        train, test = S.random_by_sequence(seqs, seed=seed, test_count=3)
        assert len(test) == 2 and len(train) == 4


def test_a_sequence_that_would_empty_training_is_skipped():
    """Sequences of 1 and 9, want 9: if the single frame is drawn first, the 9-frame run would
    leave no training pair, so test stays the single frame; training is never empty."""
    seqs = [0] + [1] * 9
    tests = set()
    for seed in range(20):
        train, test = S.random_by_sequence(seqs, seed=seed, test_count=9)
        assert train and test in ([0], list(range(1, 10)))
        tests.add(tuple(test))
    assert (0,) in tests                              # the case that matters was drawn


# -- read_split_file --------------------------------------------------------------------------

def test_split_file_skips_comments_and_blank_lines(tmp_path):
    """A comment first, blank lines between: every name,split (or name split) line is read."""
    p = tmp_path / "split.txt"
    p.write_text("# made by hand\n\nA1,test\n   \nb2 train\n# more\nC3,VAL\n", encoding="utf-8")
    assert S.read_split_file(str(p)) == {"a1": "test", "b2": "train", "c3": "val"}


def test_split_file_that_is_missing_says_it_cannot_be_read(tmp_path):
    """A file that is not there: a SplitError naming it, not an OSError."""
    p = str(tmp_path / "nope.csv")
    with pytest.raises(S.SplitError, match=r"nope\.csv: cannot read the split file"):
        S.read_split_file(p)


def test_split_file_not_utf8_says_it_cannot_be_read(tmp_path):
    """Latin-1 bytes (0xE9) are not UTF-8: a SplitError, not a UnicodeDecodeError."""
    p = tmp_path / "latin.csv"
    p.write_bytes(b"caf\xe9,test\n")
    with pytest.raises(S.SplitError, match="cannot read the split file"):
        S.read_split_file(str(p))


def test_split_file_line_with_three_fields_is_named(tmp_path):
    """Line 2 has three fields: the error names the line and quotes it."""
    p = tmp_path / "split.csv"
    p.write_text("a1,test\na2,test,extra\n", encoding="utf-8")
    with pytest.raises(S.SplitError, match=r"line 2 'a2,test,extra' needs 'name,split'"):
        S.read_split_file(str(p))


def test_split_file_with_only_comments_says_so(tmp_path):
    """Only a comment: no 'name,split' lines."""
    p = tmp_path / "split.csv"
    p.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(S.SplitError, match="no 'name,split' lines"):
        S.read_split_file(str(p))


# -- choose -----------------------------------------------------------------------------------

def test_choose_rejects_an_unknown_mode():
    """A mode outside auto/random/paper: a SplitError that lists the three."""
    items = [_item("pairs:train/a1.png", ["train"]), _item("pairs:test/b1.png", ["test"])]
    with pytest.raises(S.SplitError, match="'folds' not one of auto, random, paper"):
        S.choose(items, mode="folds")


def test_choose_needs_two_pairs():
    """One pair (even one in test/) cannot be split: the error says 'got 1'."""
    with pytest.raises(S.SplitError, match=r"need at least 2 usable pairs \(1 train \+ 1 test\), got 1"):
        S.choose([_item("pairs:test/b1.png", ["test"])])


def test_choose_two_pairs_in_train_and_test_folders():
    """Two pairs are enough: the one in train/ trains, the one in test/ tests."""
    items = [_item("pairs:train/a1.png", ["train"]), _item("pairs:test/b1.png", ["test"])]
    train, test, sources, summary, left = S.choose(items)
    assert (train, test, left) == ([0], [1], [])
    assert sources == [S.SOURCE_FOLDERS] * 2
    assert summary == {"source": S.SOURCE_FOLDERS, "val_in_train": 0}


def test_choose_split_file_matches_stem_path_without_extension_and_path(tmp_path):
    """Ids never match here: f1 by stem, visible/f2 by path without extension, the path with a
    colon in a folder name whole; f4 is not listed and is left out with the file's name."""
    items = [_item("pairs:visible/f1.png", iid="id0"), _item("pairs:visible/f2.png", iid="id1"),
             _item("pairs:visible/cam:1/f3.png", iid="id2"), _item("pairs:visible/f4.png", iid="id3")]
    p = tmp_path / "split.csv"
    p.write_text("f1,test\nvisible/f2,train\nvisible/cam:1/f3.png,test\n", encoding="utf-8")
    train, test, sources, summary, left = S.choose(items, split_file=str(p))
    assert (train, test) == ([1], [0, 2])
    assert left == [(3, "not in the split file split.csv")]
    assert sources == ["split file split.csv"] * 4 and summary == {"source": "split file split.csv"}


def test_random_split_keeps_folders_with_a_colon_apart():
    """left:cam/f1-f2 and right:cam/f3-f4 are two folders (a colon is part of a folder name),
    so two sequences: one whole folder goes to test."""
    items = [_item("pairs:visible/left:cam/f1.png"), _item("pairs:visible/left:cam/f2.png"),
             _item("pairs:visible/right:cam/f3.png"), _item("pairs:visible/right:cam/f4.png")]
    train, test, _, summary, _ = S.choose(items, mode="random")
    assert test in ([0, 1], [2, 3]) and sorted(train + test) == [0, 1, 2, 3]
    assert (summary["sequences"], summary["test_sequences"]) == (2, 1)


def test_random_split_folder_is_the_relative_one_whatever_the_kind():
    """flir:d/f1-f2 and pairs:d/f3-f4 lie in folder d, numbers running on: one sequence (the
    kind tag is not part of the folder), which a random split cannot cut."""
    items = [_item("flir:d/f1.jpg"), _item("flir:d/f2.jpg"), _item("pairs:d/f3.png"), _item("pairs:d/f4.png")]
    with pytest.raises(S.SplitError, match="all 4 pairs are one sequence"):
        S.choose(items, mode="random")


def test_choose_names_the_first_pair_without_a_split():
    """Some pairs in train/, two in no split folder: the error names the first of those two."""
    items = [_item("pairs:train/a1.png", ["train"]), _item("pairs:misc/b1.png", ["misc"]),
             _item("pairs:other/c1.png", ["other"])]
    with pytest.raises(S.SplitError, match=r"^root/misc/b1\.png: 2 of 3 pairs carry no split"):
        S.choose(items)


def test_choose_folders_with_no_test_pair():
    """Every pair in train/: 2 train and 0 test, which the build refuses."""
    items = [_item("pairs:train/a1.png", ["train"]), _item("pairs:train/a2.png", ["train"])]
    with pytest.raises(S.SplitError, match="has 2 train and 0 test pairs; both must be > 0"):
        S.choose(items)
