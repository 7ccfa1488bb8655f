"""tools.mutation (`make mutation`) without cosmic-ray: its targets exist, its config restricts
large files to the named functions, and a dump is counted as the summary says."""
from __future__ import annotations

import json
import os

import pytest

from tools import mutation as M

REPO = M.REPO


def test_every_target_and_its_tests_exist():
    for name, t in M.TARGETS.items():
        assert os.path.isfile(os.path.join(REPO, t.path)), name
        for test in t.tests:
            assert os.path.isfile(os.path.join(REPO, test)), (name, test)
        if t.functions:
            with open(os.path.join(REPO, t.path)) as f:
                assert len(M.function_lines(f.read(), t.functions)) == len(t.functions)
    paths = {t.path for t in M.TARGETS.values()}
    for module in ("metrics", "decoders", "solver", "spec", "layout", "postprocess", "baselines"):
        assert "thermalnet/%s.py" % module in paths
    assert {"prototxt/digits_python_layers.py", "tools/fidelity.py", "dataset_builder/pairs.py"} <= paths


SOURCE = '''import os


def a(x):
    return x + 1


@staticmethod
def b(x):
    if x < 2:
        return 0
    return x * 2
'''


def test_function_lines_and_config():
    assert M.function_lines(SOURCE, ["b", "a"]) == ["8-12", "4-5"]
    with pytest.raises(ValueError, match="no function c"):
        M.function_lines(SOURCE, ["a", "c"])
    cfg = M.config_text(M.Target("pkg/m.py", ("tests/t1.py", "tests/t2.py"), ("b",)), "/v/python", SOURCE, "/w/m")
    assert 'module-path = "pkg/m.py"' in cfg
    assert ('test-command = "env PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/w/m/prototxt /v/python -m pytest -x -q '
            '-p no:cacheprovider tests/t1.py tests/t2.py"') in cfg
    assert '[cosmic-ray.filters.line-filter.lines]\n"pkg/m.py" = ["8-12"]' in cfg
    assert "-k 'a or b'\"" in M.config_text(M.Target("m.py", ("t",), select="a or b"), "p")
    assert "exclude-operators" in cfg and "line-filter" not in M.config_text(M.Target("pkg/m.py", ("t",)), "p")


def _job(op, line, outcome, worker="normal"):
    item = {"job_id": "%s%d" % (op, line), "mutations": [{"module_path": "m.py", "operator_name": op,
                                                          "occurrence": 0, "start_pos": [line, 4],
                                                          "end_pos": [line, 5], "definition_name": "b"}]}
    diff = "--- a\n+++ b\n@@ -%d +%d @@\n-    return 0\n+    return 1\n" % (line, line)
    result = None if outcome is None else {"worker_outcome": worker, "test_outcome": outcome, "diff": diff,
                                           "output": ""}
    return json.dumps([item, result])


def test_summary_counts_each_outcome():
    equivalent = {"core/NumberReplacer | b | return 1": "0 and 1 both mean no snapshot here (made up)"}
    dump = [_job("core/ReplaceComparisonOperator_Lt_LtE", 10, "survived"),
            _job("core/NumberReplacer", 11, "survived"),
            _job("core/ReplaceBinaryOperator_Mul_Add", 12, "killed"),
            _job("core/ReplaceBinaryOperator_Mul_Sub", 12, "incompetent", "exception"),
            _job("core/ReplaceBinaryOperator_Mul_Div", 12, None, "skipped"),
            json.dumps([json.loads(_job("core/AddNot", 10, "killed"))[0],
                        {"worker_outcome": "skipped", "test_outcome": "killed", "diff": None, "output": None}])]
    rec = M.summarise("m", M.Target("m.py", ("t",)), dump, SOURCE, equivalent)
    assert (rec["mutants"], rec["killed"], rec["survived"], rec["equivalent"], rec["not_run"]) == (5, 2, 1, 1, 1)
    assert rec["score"] == pytest.approx(2 / 3.0) and rec["target_met"] is False
    (eq,) = [m for m in rec["mutant_list"] if m["outcome"] == "equivalent"]
    assert eq["why"].startswith("0 and 1") and eq["line"] == 11
    assert M.equivalence_key({"operator_name": "o", "start_pos": [11, 0]}, SOURCE.splitlines()) == "o |  | return 0"
    md = M.markdown([dict(rec, command="make mutation")])
    assert "| m | m.py | t | 5 | 2 | 1 | 1 | 66.7 % | **not met** | `make mutation` |" in md
    assert "| 10 | b | ReplaceComparisonOperator_Lt_LtE | **survived** |" in md


def test_equivalent_file_names_only_known_modules():
    for name, entries in M.read_equivalent().items():
        assert name in M.TARGETS, name
        for key, why in entries.items():
            assert key.count(" | ") >= 2 and len(why) > 20, key


def test_a_survivors_rerun_merges_into_the_earlier_record():
    t = M.Target("m.py", ("t",))
    first = M.summarise("m", t, [_job("core/NumberReplacer", 11, "survived"),
                                 _job("core/ReplaceBinaryOperator_Mul_Add", 12, "killed")], SOURCE, {})
    assert (first["killed"], first["survived"]) == (1, 1)
    rerun = M.summarise("m", t, [_job("core/NumberReplacer", 11, "killed")], SOURCE, {})
    merged = M.merge(first, rerun, t, SOURCE, {})
    assert (merged["mutants"], merged["killed"], merged["survived"], merged["score"]) == (2, 2, 0, 1.0)
    # still surviving, then explained: equivalent without running anything again
    why = {"core/NumberReplacer | b | return 1": "made up: the same for every input here"}
    again = M.merge(first, M.summarise("m", t, [], SOURCE, {}), t, SOURCE, why)
    assert (again["survived"], again["equivalent"], again["score"]) == (0, 1, 1.0)
    # another source: nothing is merged
    changed = M.summarise("m", t, [_job("core/NumberReplacer", 11, "killed")], SOURCE + "\n", {})
    assert M.merge(first, changed, t, SOURCE + "\n", {})["mutants"] == 1


def test_an_unknown_module_is_one_line(capsys):
    assert M.main(["nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown module nope (known: metrics")


def test_each_known_bug_still_applies_once_and_names_existing_tests():
    """`--known-bugs` makes each bug by a text replacement: the text must still be there, once."""
    assert len(M.KNOWN_BUGS) == 8 and len({b.name for b in M.KNOWN_BUGS}) == 8
    for bug in M.KNOWN_BUGS:
        with open(os.path.join(REPO, bug.path)) as f:
            assert f.read().count(bug.old) == 1, bug.name
        assert bug.old != bug.new
        for test in bug.tests:
            assert os.path.isfile(os.path.join(REPO, test)), (bug.name, test)


def test_known_bugs_table_marks_a_missed_bug():
    md = M.known_bugs_markdown([{"bug": "b1", "path": "x.py", "tests": ["tests/t.py"], "caught": True,
                                 "first_failure": "tests/t.py::a"},
                                {"bug": "b2", "path": "y.py", "tests": ["tests/u.py"], "caught": False,
                                 "first_failure": None}], "make mutation")
    assert "| b1 | x.py | t.py | yes | `tests/t.py::a` |" in md and "| b2 | y.py | u.py | **no** | — |" in md
