"""The folders say what depends on what, and the commands people type exist.

thermalnet/ is the core: it imports nothing of the kit's other folders. dataset_builder/
builds datasets on top of it and imports neither tools/ nor digits_jobs/. A module that
broke this would make the core depend on a launcher (and a launcher's import-time cost).
"""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = ("thermalnet", "dataset_builder", "digits_jobs", "tools", "tests")
ALLOWED = {"thermalnet": {"thermalnet"}, "dataset_builder": {"thermalnet", "dataset_builder"}}


def _kit_imports(path: str, package: str):
    """(line, top-level kit package) of every import in a file, function-level ones included."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, package if node.level else (node.module or "").split(".")[0]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_core_and_builder_import_only_what_they_may(package):
    bad = []
    folder = os.path.join(REPO, package)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            for line, top in _kit_imports(os.path.join(folder, name), package):
                if top in KIT and top not in ALLOWED[package]:
                    bad.append("%s/%s:%d imports %s" % (package, name, line, top))
    assert not bad, bad


def _scripts():
    import tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def test_every_console_command_names_a_main_and_answers_help(tmp_path):
    scripts = _scripts() if sys.version_info >= (3, 11) else pytest.skip("tomllib needs Python 3.11")
    assert {"thermalnet-train", "thermalnet-evaluate", "thermalnet-augment", "thermalnet-demo",
            "thermalnet-dataset"} <= set(scripts)
    for name, target in sorted(scripts.items()):
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target
        # run as installed (the editable install of make setup), from outside the repository
        exe = os.path.join(os.path.dirname(sys.executable), name)
        if not os.path.isfile(exe):
            pytest.fail("%s: not installed; run make setup (pip install -e .)" % name)
        p = subprocess.run([exe, "--help"], cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "usage" in p.stdout.lower(), (name, p.stderr[-500:])


def test_no_top_level_tools_package_is_installed(tmp_path):
    """tools/ is installed as thermalnet.tools; a top-level 'tools' would shadow users' own."""
    p = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                        "print(importlib.util.find_spec('tools') is None, "
                        "importlib.util.find_spec('thermalnet.tools.train') is not None)"],
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["True", "True"], p.stdout + p.stderr
