"""`make mutation`: mutation testing (cosmic-ray, pinned in requirements-mutation.txt) over the
modules where a silent error changes a published number, with the tests that cover each.

Not in CI: every mutant is one pytest run of its module's test files, minutes to hours on
2 cores. For each module the tracked tree is copied to build/mutation/<module>/ and mutated
there (the checkout is never touched), `cosmic-ray baseline` checks that the tests pass
unmutated, then `cosmic-ray init` / the operator (and, for large files, line) filters /
`cosmic-ray exec` run, and `cosmic-ray dump` is read back. Results go to results/mutation/:
<module>.json (every mutant: operator, line, function, outcome; survivors with their diff)
and summary.md / summary.json (mutants, killed, survived, equivalent, score).

A survivor is either killed by a new test (then rerun) or explained in EQUIVALENT_FILE as
equivalent (same behaviour for every input the kit can give), keyed by operator, function
and the source line, so the explanation survives code moving up or down. Score = killed /
(mutants - equivalent); the target is TARGET in every module.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join("results", "mutation")
WORK_DIR = os.path.join("build", "mutation")
EQUIVALENT_FILE = os.path.join(RESULTS_DIR, "equivalent.json")
TARGET = 0.90
TIMEOUT_S = 300.0        # one mutant's test run; an endless loop is a kill (cosmic-ray: timeout)


class Target(NamedTuple):
    path: str                                  # file to mutate, relative to the repository
    tests: Sequence[str]                       # test files (fast ones) that cover it
    functions: Sequence[str] = ()              # only these functions (large files); empty = whole file
    select: str = ""                           # pytest -k expression: the tests of those functions


# Order = priority: the small numeric modules first.
TARGETS: Dict[str, Target] = {
    "metrics": Target("thermalnet/metrics.py", ("tests/test_metrics.py",)),
    "decoders": Target("thermalnet/decoders.py", ("tests/test_spec.py",)),
    "solver": Target("thermalnet/solver.py", ("tests/test_digits_solver.py",)),
    "spec": Target("thermalnet/spec.py", ("tests/test_spec.py",)),
    "layout": Target("thermalnet/layout.py", ("tests/test_dataset_layout.py", "tests/test_spec.py")),
    "postprocess": Target("thermalnet/postprocess.py", ("tests/test_postprocess.py",)),
    "baselines": Target("thermalnet/baselines.py", ("tests/test_baselines.py",)),
    "eq1_layer": Target("prototxt/digits_python_layers.py", ("tests/test_loss_layer.py",)),
    # The register's checks of published numbers (eq. 1's weights, Table 2's means), then its data checks.
    "fidelity": Target("tools/fidelity.py", ("tests/test_fidelity.py",), ("check_eq1_loss", "check_eq2_rms"),
                       "eq1 or eq2 or shipped"),
    "fidelity_data": Target("tools/fidelity.py", ("tests/test_fidelity.py",),
                            ("check_split", "check_table1_sizes", "check_table2_classes", "check_epochs"),
                            "split or table1 or table2 or epochs or moved"),
    # Pairing, split and window code (dataset_builder: pairs.py, splits.py, build.py's window).
    "pairs": Target("dataset_builder/pairs.py", ("tests/test_pairs.py", "tests/test_build_options.py",
                                                 "tests/test_dataset_build.py", "tests/test_pair_layouts.py")),
    "splits": Target("dataset_builder/splits.py", ("tests/test_splits.py", "tests/test_dataset_build.py",
                                                   "tests/test_pair_layouts.py")),
    "window": Target("dataset_builder/build.py", ("tests/test_dataset_build.py", "tests/test_build_options.py"),
                     ("dataset_window",)),
    # The paper's findings (Table 2's relations and their tolerances).
    "findings": Target("thermalnet/findings.py", ("tests/test_findings.py",)),
}

class KnownBug(NamedTuple):
    """A bug a reviewer once made by hand that the tests then missed (issue "Tests that catch bugs"):
    `old` (exactly once in `path`) becomes `new`; `tests` must fail."""
    name: str
    path: str
    old: str
    new: str
    tests: Sequence[str]


_SIGMOID_SCALE = "            scale = float(top[0].diff.flat[0]) / self.norm\n            x, diff, factor"
_EQ2_CHECK = 'if len(sel) != r["n"] or (sel and abs(np.mean([p["tn"] for p in sel]) - r["tn"]) > 1e-3):'
KNOWN_BUGS = (
    KnownBug("sigmoid loss backward ignores the top diff (loss_weight != 1)", "prototxt/digits_python_layers.py",
             _SIGMOID_SCALE, _SIGMOID_SCALE.replace("float(top[0].diff.flat[0])", "1.0"),
             ("tests/test_loss_layer.py",)),
    KnownBug("SSIM captioned lower-is-better", "thermalnet/metrics.py", '"ssim": True', '"ssim": False',
             ("tests/test_metrics.py",)),
    KnownBug("annealed decoding's default temperature 1.0, not 0.38", "thermalnet/decoders.py",
             "ANNEAL_T = 0.38", "ANNEAL_T = 1.0", ("tests/test_spec.py",)),
    KnownBug("DIGITS interval rounded, not truncated", "thermalnet/solver.py",
             "int(n) if 1 < n < total else 0", "int(round(n)) if 1 < n < total else 0",
             ("tests/test_digits_solver.py",)),
    KnownBug("multistep stepvalue truncated, not the ceiling", "thermalnet/solver.py",
             "int(math.ceil(float(v) * scale))", "int(float(v) * scale)", ("tests/test_digits_solver.py",)),
    KnownBug("sigmoid stepsize truncated, not the ceiling", "thermalnet/solver.py",
             'out["stepsize"] = int(math.ceil(float(p["stepsize"]) * scale))\n    return out',
             'out["stepsize"] = int(float(p["stepsize"]) * scale)\n    return out', ("tests/test_digits_solver.py",)),
    KnownBug("register's eq. 1 check accepts class weights off by 100 %", "tools/fidelity.py",
             "if err > 1e-5:", "if err > 1.0:", ("tests/test_fidelity.py",)),
    KnownBug("register's eq. 2 check no longer compares Table 2 with the per-image file", "tools/fidelity.py",
             _EQ2_CHECK, 'if len(sel) != r["n"]:', ("tests/test_fidelity.py",)),
)
KNOWN_BUGS_FILE = "known_bugs"          # results/mutation/known_bugs.{json,md}


# Operators left out, to keep a run within hours on 2 cores (cosmic-ray's full set replaces every
# arithmetic operator by each of 12 others and every comparison by each of 9): arithmetic keeps
# one replacement per operator, as mutmut does (+ -, * /, / *, / //, // /, % /, ** *); comparisons
# keep the classic boundary shift and negation (< <=, < >=, == !=, ...; `is` <-> `is not`,
# `in` <-> `not in`). Bitwise / shift replacements of arithmetic raise on floats and say nothing
# the kept ones do not; `==` -> `is` is identity of small ints (equivalent or a SyntaxWarning).
KEPT_BINARY = ("Add_Sub", "Sub_Add", "Mul_Div", "Div_Mul", "Div_FloorDiv", "FloorDiv_Div", "Mod_Div", "Pow_Mul")
KEPT_COMPARISON = ("Eq_NotEq", "NotEq_Eq", "Lt_LtE", "Lt_GtE", "LtE_Lt", "LtE_Gt", "Gt_GtE", "Gt_LtE", "GtE_Gt",
                   "GtE_Lt", "Is_IsNot", "IsNot_Is", "In_NotIn", "NotIn_In")
EXCLUDED_OPERATORS = (
    r"core/ReplaceBinaryOperator_(?!(%s)$)" % "|".join(KEPT_BINARY),
    r"core/ReplaceComparisonOperator_(?!(%s)$)" % "|".join(KEPT_COMPARISON),
)


def function_lines(source: str, names: Sequence[str]) -> List[str]:
    """'first-last' line ranges of the named top-level functions (cosmic-ray's line filter);
    raises ValueError for a name the file does not define."""
    spans = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            spans[node.name] = "%d-%d" % (first, node.end_lineno)
    missing = [n for n in names if n not in spans]
    if missing:
        raise ValueError("no function %s in the file" % ", ".join(missing))
    return [spans[n] for n in names]


def test_command(python: str, tree: str, tests: Sequence[str], select: str = "") -> str:
    """pytest in the copy `tree`. PYTHONPATH puts the copy's prototxt/ before the venv's .pth entry
    (make setup points that at the checkout's prototxt/), so Caffe loads the mutated loss layer; no
    bytecode is written, so a mutant and the restored file are never confused by a same-second mtime."""
    return "env PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=%s %s -m pytest -x -q -p no:cacheprovider %s%s" % (
        os.path.join(tree, "prototxt"), python, " ".join(tests), " -k %s" % shlex.quote(select) if select else "")


def config_text(target: Target, python: str, source: Optional[str] = None, tree: str = ".") -> str:
    """cosmic-ray's TOML for one target, run inside its copy of the tree."""
    lines = ['[cosmic-ray]', 'module-path = %s' % json.dumps(target.path), 'timeout = %.1f' % TIMEOUT_S,
             'excluded-modules = []',
             'test-command = %s' % json.dumps(test_command(python, tree, target.tests, target.select)),
             '', '[cosmic-ray.distributor]', 'name = "local"', '',
             '[cosmic-ray.filters.operators-filter]',
             'exclude-operators = [%s]' % ", ".join(json.dumps(o) for o in EXCLUDED_OPERATORS)]
    if target.functions:
        spans = function_lines(source, target.functions)
        lines += ['', '[cosmic-ray.filters.line-filter.lines]',
                  '%s = [%s]' % (json.dumps(target.path), ", ".join(json.dumps(s) for s in spans))]
    return "\n".join(lines) + "\n"


def equivalence_key(mutation: Dict, source_lines: Sequence[str], diff: Optional[str] = None) -> str:
    """operator | function | the line as mutated (from the diff; else the original line): stable
    when the code moves, and one key per mutant where a line has several of one operator."""
    changed = [l[1:].strip() for l in (diff or "").splitlines() if l.startswith("+") and not l.startswith("+++")]
    line = changed[0] if changed else source_lines[mutation["start_pos"][0] - 1].strip()
    return "%s | %s | %s" % (mutation["operator_name"], mutation.get("definition_name") or "", line)


def summarise(name: str, target: Target, dump_lines: Sequence[str], source: str,
              equivalent: Dict[str, str]) -> Dict:
    """cosmic-ray dump (one JSON [work_item, result] a line) -> the module's record."""
    src_lines = source.splitlines()
    mutants = []
    for text in dump_lines:
        if not text.strip():
            continue
        item, result = json.loads(text)
        (m,) = item["mutations"]
        worker = (result or {}).get("worker_outcome")
        if worker == "skipped":
            continue                      # filtered out (operator or line filter)
        key = equivalence_key(m, src_lines, (result or {}).get("diff"))
        if result is None:
            outcome = "not run"
        elif worker == "timeout":
            outcome = "killed"            # the tests did not finish: the mutant is detected
        elif result.get("test_outcome") in ("killed", "incompetent"):
            outcome = "killed"
        elif result.get("test_outcome") == "survived":
            outcome = "equivalent" if key in equivalent else "survived"
        else:
            outcome = "not run"
        rec = {"operator": m["operator_name"], "line": m["start_pos"][0], "function": m.get("definition_name"),
               "occurrence": m["occurrence"], "outcome": outcome, "key": key}
        if outcome in ("survived", "equivalent"):
            rec["diff"] = result.get("diff")
        if outcome == "equivalent":
            rec["why"] = equivalent[key]
        mutants.append(rec)
    return tally(name, target, mutants, source)


def tally(name: str, target: Target, mutants: List[Dict], source: str) -> Dict:
    """The module's record: counts, score and target over its mutants."""
    mutants = sorted(mutants, key=lambda r: (r["line"], r["operator"], r["occurrence"]))
    count = {k: sum(1 for r in mutants if r["outcome"] == k) for k in ("killed", "survived", "equivalent", "not run")}
    scored = len(mutants) - count["equivalent"] - count["not run"]
    return {"module": name, "path": target.path, "tests": list(target.tests), "functions": list(target.functions),
            "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
            "mutants": len(mutants), **{k.replace(" ", "_"): v for k, v in count.items()},
            "score": (count["killed"] / float(scored)) if scored else None, "target_met": None if not scored else
            count["killed"] >= TARGET * scored and not count["not run"], "mutant_list": mutants}


def merge(previous: Optional[Dict], new: Dict, target: Target, source: str, equivalent: Dict[str, str]) -> Dict:
    """A session that re-ran some mutants (--survivors) on top of the earlier record of the same
    source: new outcomes replace old ones; survivors are re-judged against today's EQUIVALENT_FILE."""
    if not previous or previous.get("source_sha256") != new["source_sha256"]:
        return new
    ident = lambda m: (m["operator"], m["occurrence"])
    fresh = {ident(m): m for m in new["mutant_list"]}
    out = []
    for m in previous["mutant_list"]:
        m = dict(fresh.get(ident(m), m))
        if m["outcome"] in ("survived", "equivalent"):
            m["outcome"] = "equivalent" if m["key"] in equivalent else "survived"
            m.pop("why", None)
            if m["outcome"] == "equivalent":
                m["why"] = equivalent[m["key"]]
        out.append(m)
    known = {ident(m) for m in previous["mutant_list"]}
    out += [m for k, m in fresh.items() if k not in known]
    return tally(new["module"], target, out, source)


def markdown(records: Sequence[Dict]) -> str:
    out = ["# Mutation testing (cosmic-ray)", "",
           "Score = killed / (mutants - equivalent); target %d %% in every module. Mutants are cosmic-ray's "
           "operators less tools/mutation.py EXCLUDED_OPERATORS; equivalent mutants are explained in %s. "
           "Made by the command in each row (`make mutation MUTATION_ARGS=\"--report\"` re-reads the sessions "
           "after an edit of the explanations)." % (TARGET * 100, EQUIVALENT_FILE),
           "", "| module | file (functions) | tests | mutants | killed | survived | equivalent | score | target "
           "| command |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in records:
        where = r["path"] + (" (%s)" % ", ".join(r["functions"]) if r["functions"] else "")
        score = "—" if r["score"] is None else "%.1f %%" % (100 * r["score"])
        met = "—" if r["target_met"] is None else ("met" if r["target_met"] else "**not met**")
        out.append("| %s | %s | %s | %d | %d | %d | %d | %s | %s | %s |" % (
            r["module"], where, ", ".join(os.path.basename(t) for t in r["tests"]), r["mutants"], r["killed"],
            r["survived"], r["equivalent"], score, met, "`%s`" % (r.get("command") or "?")
            + (", then `%s`" % r["survivors_rerun"]["command"] if r.get("survivors_rerun") else "")))
    for r in records:
        rest = [m for m in r["mutant_list"] if m["outcome"] in ("survived", "equivalent")]
        if not rest:
            continue
        out += ["", "## %s: survivors" % r["module"], "", "| line | function | operator | status |",
                "| ---: | --- | --- | --- |"]
        for m in rest:
            status = "equivalent: " + m["why"] if m["outcome"] == "equivalent" else "**survived**"
            out.append("| %d | %s | %s | %s |" % (m["line"], m["function"], m["operator"].split("/")[-1],
                                                  status.replace("|", "\\|")))
    return "\n".join(out) + "\n"


def _copy_tree(dest: str) -> None:
    """The checkout's tracked and untracked-not-ignored files, copied to dest (fresh)."""
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = os.path.join(REPO, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def _cr(bin_dir: str, tool: str, *args: str, cwd: str) -> str:
    proc = subprocess.run([os.path.join(bin_dir, tool)] + list(args), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("%s %s failed (exit %d): %s" % (tool, " ".join(args), proc.returncode,
                                                            (proc.stderr or proc.stdout).strip()[-2000:]))
    return proc.stdout


# Marks every pending job but the listed (operator, occurrence) pairs as skipped; run by the
# cosmic-ray venv's python, since the kit's venv does not have cosmic_ray.
_ONLY_SCRIPT = """
import json, sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import WorkResult, WorkerOutcome
keep = {tuple(k) for k in json.load(open(sys.argv[2]))}
with use_db(sys.argv[1], WorkDB.Mode.open) as db:
    for item in list(db.pending_work_items):
        m = item.mutations[0]
        if (m.operator_name, m.occurrence) not in keep:
            db.set_result(item.job_id, WorkResult(output="kept from the previous run",
                                                  worker_outcome=WorkerOutcome.SKIPPED))
"""


def run_module(name: str, bin_dir: str, python: str, work: str, only: Optional[List] = None) -> Dict:
    """Copy, configure, baseline, init, filter, exec, dump: the module's record. only: run just
    these (operator, occurrence) mutants (the survivors of the previous run)."""
    target = TARGETS[name]
    tree = os.path.join(work, name, "tree")
    _copy_tree(tree)
    with open(os.path.join(tree, target.path)) as f:
        source = f.read()
    cfg, db = os.path.join(work, name, "cr.toml"), os.path.join(work, name, "session.sqlite")
    with open(cfg, "w") as f:
        f.write(config_text(target, python, source, tree))
    if os.path.exists(db):
        os.remove(db)
    _cr(bin_dir, "cosmic-ray", "baseline", cfg, cwd=tree)
    _cr(bin_dir, "cosmic-ray", "init", cfg, db, cwd=tree)
    _cr(bin_dir, "cr-filter-operators", db, cfg, cwd=tree)
    if target.functions:
        _cr(bin_dir, "cr-filter-lines", db, "--config", cfg, cwd=tree)
    if only is not None:
        keep = os.path.join(work, name, "only.json")
        with open(keep, "w") as f:
            json.dump(only, f)
        _cr(bin_dir, "python", "-c", _ONLY_SCRIPT, db, keep, cwd=tree)
    t0 = time.time()
    _cr(bin_dir, "cosmic-ray", "exec", cfg, db, cwd=tree)
    rec = report_module(name, bin_dir, work)
    rec["seconds"] = round(time.time() - t0)
    return rec


def report_module(name: str, bin_dir: str, work: str) -> Dict:
    """The record of a finished (or partly run) session in work/<module>/, with today's EQUIVALENT_FILE."""
    tree, db = os.path.join(work, name, "tree"), os.path.join(work, name, "session.sqlite")
    if not os.path.isfile(db):
        raise FileNotFoundError("%s: no session to report (run the module first)" % db)
    with open(os.path.join(tree, TARGETS[name].path)) as f:
        source = f.read()
    dump = _cr(bin_dir, "cosmic-ray", "dump", db, cwd=tree)
    return summarise(name, TARGETS[name], dump.splitlines(), source, read_equivalent().get(name, {}))


def read_equivalent(path: Optional[str] = None) -> Dict[str, Dict[str, str]]:
    path = path or os.path.join(REPO, EQUIVALENT_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_results(records: Sequence[Dict], out: str) -> None:
    """<module>.json for each record run now; summary.json / summary.md over every module on disk."""
    from thermalnet.atomic import write_json, atomic_file
    os.makedirs(out, exist_ok=True)
    for r in records:
        write_json(os.path.join(out, r["module"] + ".json"), r)
    every = []
    for name in TARGETS:
        path = os.path.join(out, name + ".json")
        if os.path.isfile(path):
            with open(path) as f:
                every.append(json.load(f))
    write_json(os.path.join(out, "summary.json"),
               [{k: v for k, v in r.items() if k != "mutant_list"} for r in every])
    with atomic_file(os.path.join(out, "summary.md")) as tmp:
        with open(tmp, "w") as f:
            f.write(markdown(every))


def _previous(out: str, name: str) -> Dict:
    """The earlier <module>.json, or {}."""
    path = os.path.join(out, name + ".json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def run_known_bugs(python: str, work: str) -> List[Dict]:
    """Make each KNOWN_BUGS bug in a copy of the tree, run its tests, restore: one record per bug
    (caught = the tests failed; first_failure = the first failing test)."""
    tree = os.path.join(work, KNOWN_BUGS_FILE, "tree")
    _copy_tree(tree)
    out = []
    for bug in KNOWN_BUGS:
        path = os.path.join(tree, bug.path)
        with open(path) as f:
            original = f.read()
        if original.count(bug.old) != 1:
            raise ValueError("%s: the known bug '%s' no longer applies (its text occurs %d times): update "
                             "tools/mutation.py KNOWN_BUGS" % (bug.path, bug.name, original.count(bug.old)))
        try:
            with open(path, "w") as f:
                f.write(original.replace(bug.old, bug.new))
            proc = subprocess.run(test_command(python, tree, bug.tests), shell=True, cwd=tree,
                                  capture_output=True, text=True)
        finally:
            with open(path, "w") as f:
                f.write(original)
        if proc.returncode not in (0, 1):
            raise RuntimeError("%s: the tests of '%s' did not run (pytest exit %d): %s"
                               % (bug.path, bug.name, proc.returncode, proc.stdout.strip()[-500:]))
        failed = [l.split()[1] for l in proc.stdout.splitlines() if l.startswith("FAILED ")]
        out.append({"bug": bug.name, "path": bug.path, "tests": list(bug.tests), "caught": proc.returncode == 1,
                    "first_failure": failed[0] if failed else None})
    return out


def known_bugs_markdown(records: Sequence[Dict], command: str) -> str:
    lines = ["# Known bugs, made again", "",
             "Each bug a reviewer made by hand (and the tests once missed) is made again in a copy of the tree "
             "and its tests are run; every one must be caught. Made by `%s`." % command, "",
             "| bug | file | tests | caught | first failing test |", "| --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append("| %s | %s | %s | %s | %s |" % (r["bug"], r["path"], ", ".join(os.path.basename(t) for t in
                     r["tests"]), "yes" if r["caught"] else "**no**", "`%s`" % r["first_failure"]
                     if r["first_failure"] else "—"))
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.mutation",
                                description="Mutation testing (cosmic-ray) of the kit's core modules; results in "
                                            "%s. Slow: one pytest run per mutant." % RESULTS_DIR)
    p.add_argument("modules", nargs="*", metavar="MODULE", help="modules to run (default all, in this order: %s)"
                   % ", ".join(TARGETS))
    p.add_argument("--cosmic-ray-bin", default=os.path.join(REPO, ".venv-mutation", "bin"),
                   help="folder holding cosmic-ray and its cr-* tools (make mutation installs them)")
    p.add_argument("--report", action="store_true", help="only re-read the sessions already in --work (after "
                                                             "editing %s): no mutant is run" % EQUIVALENT_FILE)
    p.add_argument("--survivors", action="store_true", help="run only the survivors of the previous run (after "
                                                                "adding tests; the module's source must be unchanged)")
    p.add_argument("--known-bugs", action="store_true", help="only make the bugs in KNOWN_BUGS again, one at a "
                                                                "time in a copy, and check their tests fail")
    p.add_argument("--out", default=os.path.join(REPO, RESULTS_DIR), help="results folder")
    p.add_argument("--work", default=os.path.join(REPO, WORK_DIR), help="scratch folder for the mutated copies")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from thermalnet import cli
    return cli.run(lambda: _main(args))


def _known_bugs(args) -> int:
    from thermalnet.atomic import write_json, atomic_file
    command = 'make mutation MUTATION_ARGS="--known-bugs"'
    records = run_known_bugs(sys.executable, os.path.abspath(args.work))
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, KNOWN_BUGS_FILE + ".json"), {"command": command, "bugs": records})
    with atomic_file(os.path.join(args.out, KNOWN_BUGS_FILE + ".md")) as tmp:
        with open(tmp, "w") as f:
            f.write(known_bugs_markdown(records, command))
    for r in records:
        print("[mutation] %s: %s (%s)" % ("caught" if r["caught"] else "NOT CAUGHT", r["bug"], r["first_failure"]),
              file=sys.stderr, flush=True)
    missed = [r["bug"] for r in records if not r["caught"]]
    if missed:
        print("error: known bugs the tests no longer catch: %s" % "; ".join(missed), file=sys.stderr)
        return 1
    return 0


def _main(args) -> Optional[int]:
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        raise ValueError("unknown module %s (known: %s)" % (", ".join(unknown), ", ".join(TARGETS)))
    if not os.path.isfile(os.path.join(args.cosmic_ray_bin, "cosmic-ray")):
        raise FileNotFoundError("%s: no cosmic-ray here (make mutation installs requirements-mutation.txt)"
                                % args.cosmic_ray_bin)
    if args.known_bugs:
        return _known_bugs(args)
    flags = ["--survivors"] if args.survivors else []
    command = "make mutation" + (' MUTATION_ARGS="%s"' % " ".join(flags + args.modules)
                                 if args.modules or flags else "")
    bin_dir, work = os.path.abspath(args.cosmic_ray_bin), os.path.abspath(args.work)
    names = args.modules or [n for n in TARGETS if not args.report
                             or os.path.isfile(os.path.join(work, n, "session.sqlite"))]
    for name in names:
        print("[mutation] %s: %s" % (name, TARGETS[name].path), file=sys.stderr, flush=True)
        previous = _previous(args.out, name)
        if args.report:
            rec = report_module(name, bin_dir, work)
            rec.update(command=previous.get("command") or command, seconds=previous.get("seconds"),
                       survivors_rerun=previous.get("survivors_rerun"))
        elif args.survivors:
            if not previous or previous.get("source_sha256") is None:
                raise ValueError("%s: no earlier run of %s to take the survivors from" % (args.out, name))
            only = [[m["operator"], m["occurrence"]] for m in previous["mutant_list"] if m["outcome"] == "survived"]
            rec = run_module(name, bin_dir, sys.executable, work, only)
            rec.update(command=previous.get("command"), survivors_rerun=dict(command=command, seconds=rec["seconds"]),
                       seconds=previous.get("seconds"))
        else:
            rec = dict(run_module(name, bin_dir, sys.executable, work), command=command)
        if args.report or args.survivors:
            with open(os.path.join(work, name, "tree", TARGETS[name].path)) as f:
                source = f.read()
            kept = {k: rec[k] for k in ("command", "seconds", "survivors_rerun") if rec.get(k) is not None}
            rec = dict(merge(previous, rec, TARGETS[name], source, read_equivalent().get(name, {})), **kept)
        write_results([rec], args.out)
        print("[mutation] %s: %d mutants, %d killed, %d survived, %d equivalent (%s s)" % (
            name, rec["mutants"], rec["killed"], rec["survived"], rec["equivalent"], rec["seconds"]),
            file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
