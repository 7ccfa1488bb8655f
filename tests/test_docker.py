"""docker/: the Dockerfiles build Caffe with the same script CI runs, copy only what exists,
and the compose file gives DIGITS its port and volumes. Docker itself does not run here:
the files are parsed and checked against the repository.
"""
from __future__ import annotations

import os
import re
import shlex

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(REPO, "docker")
INSTALL = "tools/install_caffe.sh"


def parse_dockerfile(path):
    """[(INSTRUCTION, argument text)] with comments dropped and continuation lines joined."""
    out, buf = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if buf and line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    assert not buf, "%s ends inside a continued line" % path
    return out


def arg_defaults(instrs):
    d = {}
    for ins, rest in instrs:
        if ins == "ARG" and "=" in rest:
            k, _, val = rest.partition("=")
            d[k] = val.strip('"')
    return d


def copy_sources(instrs):
    srcs = []
    for ins, rest in instrs:
        if ins == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            srcs += parts[:-1]
    return srcs


# -- a strict parser for the YAML subset docker-compose.yml uses (pyyaml is not a dependency) ---------
class YamlSubsetError(ValueError):
    pass


def _scalar(text):
    text = text.strip()
    if not text:
        return None
    if text[0] in "\"'":
        if len(text) < 2 or text[-1] != text[0]:
            raise YamlSubsetError("unterminated quote: %r" % text)
        return text[1:-1]
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlSubsetError("flow sequence not closed: %r" % text)
        return [_scalar(t) for t in text[1:-1].split(",") if t.strip()]
    if text[0] in "{&*!|>%@`":
        raise YamlSubsetError("outside the supported subset: %r" % text)
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def _strip_comment(line):
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            break
        out.append(ch)
    return "".join(out).rstrip()


def parse_yaml_subset(text):
    """Block mappings and sequences, scalars, [flow] lists, comments; anything else is an error."""
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[:len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError("line %d: tab indentation" % n)
        line = _strip_comment(raw)
        if line.strip():
            lines.append((len(line) - len(line.lstrip()), line.strip(), n))

    def block(ls, i):
        if ls[i][1].startswith("- ") or ls[i][1] == "-":
            return seq(ls, i, ls[i][0])
        return mapping(ls, i, ls[i][0])

    def mapping(ls, i, indent):
        d = {}
        while i < len(ls):
            ind, txt, n = ls[i]
            if ind < indent:
                break
            if ind > indent:
                raise YamlSubsetError("line %d: unexpected indentation" % n)
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+|\"[^\"]+\")\s*:(?:\s+(.*))?", txt)
            if not m:
                raise YamlSubsetError("line %d: not a 'key: value' line: %r" % (n, txt))
            key = m.group(1).strip('"')
            if key in d:
                raise YamlSubsetError("line %d: duplicate key %r" % (n, key))
            i += 1
            if m.group(2) is not None and m.group(2).strip():
                d[key] = _scalar(m.group(2))
            elif i < len(ls) and ls[i][0] > ind:
                d[key], i = block(ls, i)
            elif i < len(ls) and ls[i][0] == ind and ls[i][1].startswith("- "):
                d[key], i = seq(ls, i, ind)
            else:
                d[key] = None
        return d, i

    def seq(ls, i, indent):
        items = []
        while i < len(ls) and ls[i][0] == indent and ls[i][1].startswith("-"):
            ind, txt, n = ls[i]
            rest = txt[1:].strip()
            j = i + 1
            while j < len(ls) and ls[j][0] > ind:
                j += 1
            if re.match(r"^[A-Za-z0-9_.\-]+\s*:(\s|$)", rest):
                # a mapping item: first key on the dash line, the others aligned with it
                sub = [(ind + 2, rest, n)] + ls[i + 1:j]
                val, k = mapping(sub, 0, ind + 2)
                if k != len(sub):
                    raise YamlSubsetError("line %d: unparsed content in a list item" % sub[k][2])
                items.append(val)
            elif j > i + 1:
                raise YamlSubsetError("line %d: nested content under a scalar list item" % ls[i + 1][2])
            else:
                items.append(_scalar(rest))
            i = j
        return items, i

    if not lines:
        return None
    doc, i = block(lines, 0)
    if i != len(lines):
        raise YamlSubsetError("line %d: unparsed content" % lines[i][2])
    return doc


def test_yaml_subset_parser_is_strict():
    assert parse_yaml_subset("a:\n  b: [x, y]\n  c:\n    - 1\n    - k: v\n      m: 'q # r'\n") == \
        {"a": {"b": ["x", "y"], "c": [1, {"k": "v", "m": "q # r"}]}}
    for bad in ("a: &anchor 1\n", "a: |\n  text\n", "a:\n\tb: 1\n", "a: 1\na: 2\n", "just text\n"):
        with pytest.raises(YamlSubsetError):
            parse_yaml_subset(bad)


# -- Dockerfiles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.digits"])
def test_copy_sources_exist(name):
    instrs = parse_dockerfile(os.path.join(DOCKER, name))
    srcs = copy_sources(instrs)
    assert srcs, name
    for s in srcs:
        assert os.path.exists(os.path.join(REPO, s)), "%s copies %s, which is not in the repository" % (name, s)


@pytest.mark.parametrize("name,flag", [("Dockerfile.cpu", None), ("Dockerfile.gpu", "--gpu")])
def test_caffe_is_built_by_the_ci_script(name, flag):
    instrs = parse_dockerfile(os.path.join(DOCKER, name))
    runs = [rest for ins, rest in instrs if ins == "RUN"]
    calls = [r for r in runs if INSTALL in r]
    assert any("--deps-only" in r for r in calls), "%s: no package step through %s" % (name, INSTALL)
    build = [r for r in calls if "--deps-only" not in r]
    assert build, "%s builds Caffe without %s" % (name, INSTALL)
    # the script is copied before it runs, from the repository's own tools/
    assert INSTALL in copy_sources(instrs)
    if flag:
        flags = arg_defaults(instrs)["CAFFE_GPU_FLAGS"].split()
        assert flags[0] == flag
        script = open(os.path.join(REPO, INSTALL)).read()
        for f in flags:   # every default flag is one the script parses
            assert "    %s)" % f in script, "%s passes %s, which %s does not accept" % (name, f, INSTALL)
        assert all("$CAFFE_GPU_FLAGS" in r for r in build)
    else:
        assert all("--gpu" not in r for r in build)
    assert any("make setup" in r for r in runs), "%s: the kit is not set up with make setup" % name
    # the script really understands the options the Dockerfile passes
    with open(os.path.join(REPO, INSTALL)) as f:
        script = f.read()
    for opt in ("--deps-only", "--no-apt", "--jobs", "--gpu", "--cuda-arch"):
        assert re.search(r"^\s*%s\)" % re.escape(opt), script, re.M), opt


def test_bases():
    cpu = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.cpu"))
    assert [r for i, r in cpu if i == "FROM"] == ["debian:bookworm"]
    gpu = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.gpu"))
    base = arg_defaults(gpu)["CUDA_IMAGE"]
    assert base.startswith("nvidia/cuda:") and "cudnn" in base and "devel" in base and base.endswith("ubuntu24.04")
    dig = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.digits"))
    img = arg_defaults(dig)["DIGITS_IMAGE"]
    assert img.startswith("nvcr.io/nvidia/digits:") and img.endswith("-caffe")
    assert [r for i, r in dig if i == "FROM"] == ["${DIGITS_IMAGE}"]


def test_digits_image_carries_the_loss_layer_and_jobs():
    dig = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.digits"))
    srcs = copy_sources(dig)
    assert "prototxt/" in srcs and "digits_jobs/jobs/" in srcs
    assert os.path.isfile(os.path.join(REPO, "prototxt", "digits_python_layers.py"))
    assert any(i == "EXPOSE" and r == "5000" for i, r in dig)


# -- compose ----------------------------------------------------------------------------------------
def test_compose_ports_volumes_and_environment():
    with open(os.path.join(DOCKER, "docker-compose.yml")) as f:
        doc = parse_yaml_subset(f.read())
    svc = doc["services"]["digits"]
    assert svc["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.digits"}
    assert os.path.isfile(os.path.join(DOCKER, svc["build"]["context"], svc["build"]["dockerfile"]))
    assert svc["ports"] == ["5000:5000"]
    mounts = {v.rsplit(":", 1)[1]: v.rsplit(":", 1)[0] for v in svc["volumes"]}
    assert set(mounts) == {"/data", "/workspace/jobs"}
    assert svc["environment"]["DIGITS_JOBS_DIR"] == "/workspace/jobs"
    assert svc["environment"]["THERMALNET_DATASET"].startswith("/data/")
    gpu = svc["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    try:
        import yaml   # cross-check with a full parser where one is installed
    except ImportError:
        return
    with open(os.path.join(DOCKER, "docker-compose.yml")) as f:
        assert yaml.safe_load(f) == doc


def test_readme_documents_the_compose_mounts():
    with open(os.path.join(DOCKER, "README.md")) as f:
        text = f.read()
    for needle in ("5000", "/data", "/workspace/jobs", "docker build -f docker/Dockerfile.cpu",
                   "docker build -f docker/Dockerfile.gpu", "docker compose", "python -m digits_jobs.client",
                   "Nothing in this folder was run with Docker"):
        assert needle in text, needle
