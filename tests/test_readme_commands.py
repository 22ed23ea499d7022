"""
Every command in README.md runs as written: each shell line of its ```bash blocks is checked —
its tool and config files exist, its tool's argument parser accepts the arguments, a
``tools/train_net.py`` config merges with its overrides (unknown keys fail) and its model builds
(paper-scale configs are built, not trained) — and the README links only inside the repository.
"""
import argparse
import os
import re
import runpy
import shlex
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
MAKE_TARGETS = re.compile(r"^([\w-]+):", re.M)


def readme_commands():
    """(line number, argv) of every command line in README.md's bash blocks (continuations joined)."""
    text = open(README).read()
    out = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        start = text[: block.start()].count("\n") + 2
        joined, first = "", None
        for i, line in enumerate(block.group(1).splitlines()):
            line = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
            if not line and not joined:
                continue
            first = first if joined else start + i
            if line.endswith("\\"):
                joined += line[:-1] + " "
                continue
            joined += line
            if joined.strip():
                out.append((first, shlex.split(joined)))
            joined = ""
    return out


class _Parsed(Exception):
    pass


def _parse_tool(tool, args, monkeypatch):
    """Run ``tool``'s own argument parser on ``args`` (nothing else of the tool runs)."""
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, argv=None, namespace=None):
        raise _Parsed(original(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", [tool, *args])
    with pytest.raises(_Parsed) as info:
        runpy.run_path(tool, run_name="__main__")
    monkeypatch.undo()
    return info.value.args[0]


def _check_train_net(ns):
    from detectron2.modeling import build_model

    from detpre.config import get_detpre_cfg

    cfg = get_detpre_cfg(os.path.join(REPO, ns.config_file), ns.opts)
    cfg.MODEL.DEVICE = "cpu"
    weights = cfg.MODEL.WEIGHTS
    cfg.MODEL.WEIGHTS = ""
    build_model(cfg)
    return weights


COMMANDS = readme_commands()


def test_readme_has_the_two_setup_commands():
    argvs = [a for _, a in COMMANDS]
    assert ["make", "demo"] in argvs and ["make", "test"] in argvs


@pytest.mark.parametrize("line,argv", COMMANDS, ids=[f"L{n}:{' '.join(a)[:60]}" for n, a in COMMANDS])
def test_readme_command(line, argv, monkeypatch):
    while argv and ("=" in argv[0] and not argv[0].startswith("-")):  # VAR=value prefixes
        argv = argv[1:]
    if argv[0] == "make":
        targets = MAKE_TARGETS.findall(open(os.path.join(REPO, "Makefile")).read())
        assert all(t in targets for t in argv[1:]), f"README.md:{line}: no make target {argv[1:]}"
        return
    if argv[0] == "pip" or argv[:3] == ["python", "-m", "pytest"]:  # into the user's own environment
        files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-r", "-e")]
        files += argv[4:] if argv[0] == "python" else []
        files = [f for f in files if not f.startswith("-")]
        assert files and all(os.path.exists(os.path.join(REPO, f)) for f in files), f"README.md:{line}: {argv}"
        return
    if argv[0] in ("torchrun", "srun", "sbatch"):
        argv = [a for a in argv if a.endswith(".py") or a.endswith(".sh")][:1] + argv[
            next(i for i, a in enumerate(argv) if a.endswith((".py", ".sh"))) + 1:]
    if argv[0] in ("bash", "sh") or argv[0].endswith("python"):
        argv = argv[1:]
    tool = argv[0]
    assert os.path.isfile(os.path.join(REPO, tool)), f"README.md:{line}: {tool} does not exist"
    if tool.endswith(".sh"):
        return
    for a in argv[1:]:
        if a.endswith(".yaml"):
            assert os.path.isfile(os.path.join(REPO, a)), f"README.md:{line}: {a} does not exist"
    ns = _parse_tool(os.path.join(REPO, tool), argv[1:], monkeypatch)
    if tool == "tools/train_net.py":
        _check_train_net(ns)


def test_readme_links_stay_inside_the_repository():
    text = open(README).read()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if re.match(r"https?://", target):
            continue
        path = os.path.normpath(os.path.join(REPO, target))
        assert path.startswith(REPO + os.sep) and os.path.exists(path), f"README.md links to {target}"
    assert "../shared" not in text
