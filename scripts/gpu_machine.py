#!/usr/bin/env python
"""
The GPU machine's Python packages, for `make wheelhouse` and scripts/gpu_check.sh (stdlib only):

    python scripts/gpu_machine.py check-requirements   # requirements.txt = machine + requirements-gpu.txt + not needed
    python scripts/gpu_machine.py plan REPORT.json     # `pip install --report` -> what the wheelhouse fetches
    .venv/bin/python scripts/gpu_machine.py standin DIR  # the machine's packages, as links into .venv
    PYTHON scripts/gpu_machine.py venv DIR [--site D ...] [--site-of-this-python] [--system-site-packages]
    python scripts/gpu_machine.py sizes WHEELHOUSE     # wheel sizes; fails over 40 MiB / 64 MiB with the tree

The machine's list is scripts/gpu_machine_packages.txt (normalized names; '*' patterns allowed).
"""
import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import sysconfig
import venv
from collections import defaultdict
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINE_LIST = os.path.join(ROOT, "scripts", "gpu_machine_packages.txt")
REQUIREMENTS = os.path.join(ROOT, "requirements.txt")
REQUIREMENTS_GPU = os.path.join(ROOT, "scripts", "requirements-gpu.txt")
NOT_NEEDED = "# not-needed-on-gpu:"
MIB = 2**20


def normalize(name):
    """PEP 503 name: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def machine_patterns(path=MACHINE_LIST):
    with open(path) as f:
        return [normalize(s) if "*" not in s else s.strip().lower()
                for s in (line.strip() for line in f) if s and not s.startswith("#")]


def on_machine(name, patterns):
    n = normalize(name)
    return any(fnmatch.fnmatchcase(n, p) for p in patterns)


def requirement_lines(path):
    """{normalized name: line} of a requirements file (comments and blank lines skipped)."""
    out = {}
    with open(path) as f:
        for line in f:
            s = line.split(" #")[0].strip()
            if not s or s.startswith("#"):
                continue
            m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", s)
            if not m:
                sys.exit(f"{path}: cannot read a package name in {s!r}")
            out[normalize(m.group(0))] = s
    return out


def not_needed(path=REQUIREMENTS_GPU):
    with open(path) as f:
        return {normalize(n) for line in f if line.startswith(NOT_NEEDED)
                for n in line[len(NOT_NEEDED):].replace(",", " ").split()}


def check_requirements(_args):
    patterns, req, gpu, skip = machine_patterns(), requirement_lines(REQUIREMENTS), \
        requirement_lines(REQUIREMENTS_GPU), not_needed()
    errors = []
    for name, line in req.items():
        places = [p for p, hit in (("the machine's list", on_machine(name, patterns)),
                                   ("requirements-gpu.txt", name in gpu),
                                   ("not-needed-on-gpu", name in skip)) if hit]
        if not places:
            errors.append(f"requirements.txt's {line!r} is neither on the GPU machine's list "
                          "nor in scripts/requirements-gpu.txt (nor marked not-needed-on-gpu there)")
        elif len(places) > 1:
            errors.append(f"{name} is in both {' and '.join(places)}: keep it in one")
        elif name in gpu and gpu[name] != line:
            errors.append(f"scripts/requirements-gpu.txt has {gpu[name]!r}, requirements.txt {line!r}")
    errors += [f"scripts/requirements-gpu.txt's {line!r} is not in requirements.txt"
               for name, line in gpu.items() if name not in req]
    if errors:
        sys.exit("\n".join(["[gpu_machine] requirements do not add up:"] + errors))
    print(f"[gpu_machine] requirements.txt: {len(req)} packages = "
          f"{sum(on_machine(n, patterns) for n in req)} on the GPU machine + {len(gpu)} in "
          f"scripts/requirements-gpu.txt + {len(skip & set(req))} not needed there ({', '.join(sorted(skip))})")


def plan(args):
    """What `pip install --dry-run --report` in the stand-in venv would install: one line per
    distribution, 'wheel NAME==VERSION' (a wheel exists) or 'sdist NAME==VERSION' (built here).
    Fails if one is on the machine's list (the wheelhouse holds only what the machine lacks)."""
    with open(args.report) as f:
        items = json.load(f)["install"]
    patterns, lines, errors = machine_patterns(), [], []
    for it in items:
        name, version = it["metadata"]["name"], it["metadata"]["version"]
        if on_machine(name, patterns):
            errors.append(f"{name} {version}: on the GPU machine's list, yet the stand-in venv would "
                          "install it (missing from .venv, or a requirement excludes its version)")
        url = it.get("download_info", {}).get("url", "")
        lines.append(f"{'wheel' if url.endswith('.whl') else 'sdist'} {name}=={version}")
    if errors:
        sys.exit("\n".join(["[gpu_machine] the wheelhouse would hold packages the machine has:"] + errors))
    print("\n".join(lines))


def _site_dirs():
    return list(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))


def build_standin(out, sites, patterns):
    """Fill the new folder OUT with links for each distribution in SITES whose name matches
    PATTERNS: to its .dist-info and its top-level packages / modules (from its RECORD). A folder
    shared with a distribution not on the list (a namespace package) is made in OUT and filled
    with links to the listed distributions' entries only. Returns (chosen, all) distribution names."""
    out = os.path.abspath(out)
    if os.path.lexists(out):
        sys.exit(f"{out} exists: remove it first")
    owners = defaultdict(set)  # (site, path parts...) -> distribution names
    chosen, dists = set(), set()
    for site in sites:
        for dist in metadata.distributions(path=[site]):
            name = normalize(dist.metadata["Name"])
            dists.add(name)
            if on_machine(name, patterns):
                chosen.add(name)
            files = dist.files
            if files is None:  # no RECORD: its top_level.txt and the metadata folder
                top = (dist.read_text("top_level.txt") or "").split()
                files = [os.path.basename(str(dist._path))] + top
            for f in files:
                parts = tuple(str(f).replace("\\", "/").split("/"))
                if parts[0] in ("..", "__pycache__") or os.path.isabs(str(f)):
                    continue  # scripts in bin/, byte code
                for k in range(1, len(parts) + 1):
                    owners[(site,) + parts[:k]].add(name)

    children = defaultdict(set)
    for key in owners:
        if len(key) > 2:
            children[key[:-1]].add(key)

    def place(key):
        src, dst = os.path.join(*key), os.path.join(out, *key[1:])
        if not os.path.lexists(src):
            return  # in a RECORD, not on disk (deleted byte code, ...)
        if owners[key] <= chosen or not os.path.isdir(src) or os.path.islink(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not os.path.lexists(dst):
                os.symlink(src, dst)
            return
        os.makedirs(dst, exist_ok=True)  # shared with a distribution not on the list
        for child in sorted(children[key]):
            if owners[child] & chosen:
                place(child)

    os.makedirs(out)
    for key in sorted(k for k in owners if len(k) == 2 and owners[k] & chosen):
        place(key)
    return chosen, dists


def standin(args):
    """The stand-in of the GPU machine's packages, from this interpreter's site-packages (run it
    with .venv's python): see build_standin."""
    patterns = machine_patterns()
    chosen, dists = build_standin(args.dir, _site_dirs(), patterns)
    absent = sorted(p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in dists))
    print(f"[gpu_machine] stand-in {os.path.abspath(args.dir)}: {len(chosen)} distributions of {sys.prefix} "
          f"on the GPU machine's list; {len(dists - chosen)} others left out "
          f"({', '.join(sorted(dists - chosen))}); {len(absent)} listed names not in it")


def make_venv(args):
    """A venv from this interpreter's base Python, without pip of its own (it uses the machine's
    pip), whose site-packages adds each --site folder with site.addsitedir (so their .pth files
    run too) and the repository (detpre importable without PYTHONPATH).
    --site-of-this-python adds this interpreter's own site-packages: `venv
    --system-site-packages` from a Python that is itself a venv (the GPU machine's
    /opt/torch/.venv) sees its base installation's packages, not the venv's."""
    sites = [os.path.abspath(s) for s in args.site]
    if args.site_of_this_python:
        import site
        sites += [s for s in site.getsitepackages() if os.path.isdir(s)]
    for s in sites:
        if not os.path.isdir(s):
            sys.exit(f"--site {s}: no such folder")
    venv.EnvBuilder(system_site_packages=args.system_site_packages, clear=True, with_pip=False,
                    symlinks=True).create(args.dir)
    py = os.path.join(os.path.abspath(args.dir), "bin", "python")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "gpu_machine_packages.pth"), "w") as f:
        f.writelines(f"import site; site.addsitedir({s!r})\n" for s in sites)
    with open(os.path.join(purelib, "detpre_repository.pth"), "w") as f:
        f.write(os.path.abspath(args.repo) + "\n")
    print(f"[gpu_machine] venv {args.dir} (base {sys._base_executable}, "
          f"system site-packages {args.system_site_packages}) + {', '.join(sites) or 'nothing'}")


def _tree_bytes():
    """Bytes of what travels to the GPU machine besides carried paths: tracked files and untracked
    ones git does not ignore (`git ls-files -z | xargs -0 du -cb`, plus the untracked)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    return sum(os.lstat(p).st_size for p in (os.path.join(ROOT, n) for n in set(names) if n)
               if os.path.lexists(p))


def sizes(args):
    files = sorted(os.listdir(args.wheelhouse))
    wheels = sum(os.path.getsize(os.path.join(args.wheelhouse, f)) for f in files)
    for f in files:
        print(f"  {os.path.getsize(os.path.join(args.wheelhouse, f)) / MIB:7.2f} MiB  {f}")
    tree = _tree_bytes()
    print(f"[gpu_machine] wheelhouse: {len(files)} files, {wheels / MIB:.2f} MiB ({wheels} bytes; "
          f"limit {args.max_wheelhouse_mib} MiB)")
    print(f"[gpu_machine] tracked tree {tree / MIB:.2f} MiB + wheelhouse = {(tree + wheels) / MIB:.2f} MiB "
          f"(limit {args.max_total_mib} MiB: what one run carries to the GPU machine)")
    if wheels > args.max_wheelhouse_mib * MIB:
        sys.exit(f"[gpu_machine] the wheelhouse is over {args.max_wheelhouse_mib} MiB")
    if tree + wheels > args.max_total_mib * MIB:
        sys.exit(f"[gpu_machine] the tree and the wheelhouse are over {args.max_total_mib} MiB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check-requirements").set_defaults(fn=check_requirements)
    s = sub.add_parser("plan")
    s.add_argument("report")
    s.set_defaults(fn=plan)
    s = sub.add_parser("standin")
    s.add_argument("dir")
    s.set_defaults(fn=standin)
    s = sub.add_parser("venv")
    s.add_argument("dir")
    s.add_argument("--site", action="append", default=[], help="a folder of the machine's packages")
    s.add_argument("--site-of-this-python", action="store_true")
    s.add_argument("--system-site-packages", action="store_true")
    s.add_argument("--repo", default=ROOT)
    s.set_defaults(fn=make_venv)
    s = sub.add_parser("sizes")
    s.add_argument("wheelhouse")
    s.add_argument("--max-wheelhouse-mib", type=float, default=40)
    s.add_argument("--max-total-mib", type=float, default=64)
    s.set_defaults(fn=sizes)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
