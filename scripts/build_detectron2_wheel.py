#!/usr/bin/env python
"""
Build a pure-Python wheel of detectron2 v0.6 from the registry sdist ``pb1-detectron2==0.6``.

That sdist holds v0.6's Python code and model-zoo configs but not its C++ sources, so
``pip install`` of it fails. We package its ``detectron2/`` tree, plus
``detpre/_c_placeholder.py`` as ``detectron2/_C.py``, and no dependencies (requirements.txt
installs those). Re-running reuses the downloaded sdist.

Before packaging, ``PATCHES`` is applied to v0.6's sources: each entry is the fix upstream
detectron2 made after v0.6 for a library that has since dropped an API, so that one wheel runs on
numpy 1.26 and 2.x, Pillow 10/11 and setuptools >= 81 (no ``pkg_resources``). Every patch must
match exactly as listed (the build stops otherwise), and afterwards no removed API may be left
anywhere in the tree (``check_patched``). Nothing is patched at import time.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_PY = '''
from setuptools import find_packages, setup
setup(
    name="detectron2",
    version="0.6",
    description="detectron2 v0.6, pure-Python build (no compiled ops), packaged by detpre",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={"detectron2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", "configs/**/*.py"]},
    include_package_data=False,
    python_requires=">=3.7",
)
'''


# NumPy 1.24 removed the aliases np.int/np.float/np.str/np.bool (deprecated in 1.20); upstream
# detectron2 replaced them by the builtins they aliased.
_NUMPY_ALIAS = re.compile(r"\bnp\.(int|float|str|bool)\b(?!\.)")
_NUMPY_FILES = {  # file -> number of aliases it holds in v0.6
    "data/build.py": 2,
    "data/datasets/pascal_voc.py": 1,
    "evaluation/pascal_voc_evaluation.py": 2,
    "evaluation/sem_seg_evaluation.py": 7,
    "structures/masks.py": 3,
    "utils/visualizer.py": 3,
    "utils/video_visualizer.py": 1,
}
_MODEL_ZOO_OLD = """    cfg_file = pkg_resources.resource_filename(
        "detectron2.model_zoo", os.path.join("configs", config_path)
    )"""
# importlib.resources (stdlib since 3.9) instead of setuptools' pkg_resources, which
# setuptools 81 removed; the wheel installs unzipped, so the traversable is a real path.
_MODEL_ZOO_NEW = """    cfg_file = str(importlib.resources.files("detectron2.model_zoo") / "configs" / config_path)"""

# (file, old, new, count, why): applied in order, each must match exactly `count` times.
PATCHES = [
    *[(f, _NUMPY_ALIAS, r"\1", n, "NumPy >= 1.24: np.int/np.float/np.str/np.bool -> builtins")
      for f, n in _NUMPY_FILES.items()],
    ("data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR", 1,
     "Pillow >= 10 removed Image.LINEAR (an alias of Image.BILINEAR)"),
    ("model_zoo/model_zoo.py", "import pkg_resources\n", "import importlib.resources\n", 1,
     "setuptools >= 81 removed pkg_resources: importlib.resources"),
    ("model_zoo/model_zoo.py", _MODEL_ZOO_OLD, _MODEL_ZOO_NEW, 1,
     "setuptools >= 81 removed pkg_resources: importlib.resources"),
    # upstream 70f45430 (2024): NumPy 2 raises on a copy=False it cannot honour
    ("layers/mask_ops.py", "mask = np.array(mask, copy=False)", "mask = np.asarray(mask)", 1,
     "NumPy 2: np.array(..., copy=False) -> np.asarray (upstream 70f45430)"),
]

# what must not be left anywhere in the patched tree
_REMOVED_APIS = [_NUMPY_ALIAS, re.compile(r"\bImage\.(LINEAR|ANTIALIAS|CUBIC)\b"),
                 re.compile(r"\bpkg_resources\b"), re.compile(r"\bnp\.array\(.*copy=False")]


def apply_patches(tree):
    """Apply ``PATCHES`` to the ``detectron2/`` source tree at ``tree``; return a log line each."""
    log = []
    for rel, old, new, count, why in PATCHES:
        path = os.path.join(tree, rel)
        with open(path) as f:
            text = f.read()
        if isinstance(old, re.Pattern):
            text, n = old.subn(new, text)
        else:
            n = text.count(old)
            text = text.replace(old, new)
        if n != count:
            raise SystemExit(f"patch {rel!r} ({why}): expected {count} match(es), found {n}; "
                             "is this detectron2 v0.6?")
        with open(path, "w") as f:
            f.write(text)
        log.append(f"detectron2/{rel}: {n}x {why}")
    return log


def check_patched(tree):
    """Raise if any removed API is still used in a ``.py`` file under ``tree``."""
    left = []
    for path in sorted(glob.glob(os.path.join(tree, "**", "*.py"), recursive=True)):
        with open(path) as f:
            for i, line in enumerate(f, 1):
                code = line.split("#", 1)[0]
                if any(p.search(code) for p in _REMOVED_APIS):
                    left.append(f"{os.path.relpath(path, tree)}:{i}: {line.strip()}")
    if left:
        raise SystemExit("removed APIs left after patching:\n" + "\n".join(left))


def patch_list():
    return sorted({f"detectron2/{rel}: {why}" for rel, _, _, _, why in PATCHES})


def write_build_marker(tree):
    """``detectron2/_detpre_build.py``: how detpre tells its own build (``detpre._compat.DETPRE_BUILD``)
    from any other detectron2, and the patch list a user can read."""
    with open(os.path.join(tree, "_detpre_build.py"), "w") as f:
        f.write('"""detectron2 v0.6 built by detpre\'s scripts/build_detectron2_wheel.py."""\n'
                f"PATCHES = {patch_list()!r}\n")


def check_installed():
    """Exit status 0 when the importable detectron2 is this script's build with today's patches."""
    try:
        import detectron2
        from detectron2 import _detpre_build
    except ImportError as e:
        sys.exit(f"not detpre's detectron2 build: {e}")
    if detectron2.__version__ != "0.6" or _detpre_build.PATCHES != patch_list():
        sys.exit("detpre's detectron2 build is older than scripts/build_detectron2_wheel.py")


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def download_sdist(cache):
    found = glob.glob(os.path.join(cache, "pb1-detectron2-0.6.tar.gz"))
    if found:
        return found[0]
    os.makedirs(cache, exist_ok=True)
    # --no-build-isolation: the sdist's setup.py imports torch to compute metadata.
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--no-build-isolation", "-q", "-d", cache, SDIST])
    return glob.glob(os.path.join(cache, "pb1-detectron2-0.6.tar.gz"))[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "wheels"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "build", "sdist"))
    ap.add_argument("--check-installed", action="store_true",
                    help="only check that the installed detectron2 is this build (exit status)")
    args = ap.parse_args()
    if args.check_installed:
        return check_installed()

    sdist = download_sdist(args.cache)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp)
        src = os.path.join(tmp, "pb1-detectron2-0.6", "detectron2")
        if not os.path.isfile(os.path.join(src, "model_zoo", "configs", "Base-RCNN-FPN.yaml")):
            sys.exit(f"{sdist}: unexpected layout (no detectron2/model_zoo/configs); delete it and retry")
        stage = os.path.join(tmp, "stage")
        shutil.copytree(src, os.path.join(stage, "detectron2"))
        for line in apply_patches(os.path.join(stage, "detectron2")):
            print("patched", line)
        check_patched(os.path.join(stage, "detectron2"))
        shutil.copy(os.path.join(ROOT, "detpre", "_c_placeholder.py"),
                    os.path.join(stage, "detectron2", "_C.py"))
        write_build_marker(os.path.join(stage, "detectron2"))
        with open(os.path.join(stage, "setup.py"), "w") as f:
            f.write(SETUP_PY)
        os.makedirs(args.out, exist_ok=True)
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", args.out, stage])
    print("wheel:", os.path.join(args.out, "detectron2-0.6-py3-none-any.whl"))


if __name__ == "__main__":
    main()
