#!/usr/bin/env python
"""
Build a pure-Python wheel of detectron2 v0.6 from the registry sdist ``pb1-detectron2==0.6``.

That sdist holds v0.6's Python code and model-zoo configs but not its C++ sources, so
``pip install`` of it fails. We package its ``detectron2/`` tree as-is, plus
``detpre/_c_placeholder.py`` as ``detectron2/_C.py``, and no dependencies (requirements.txt
installs those). Re-running reuses the downloaded sdist.
"""
import argparse
import glob
import os
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
    args = ap.parse_args()

    sdist = download_sdist(args.cache)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp)
        src = os.path.join(tmp, "pb1-detectron2-0.6", "detectron2")
        if not os.path.isfile(os.path.join(src, "model_zoo", "configs", "Base-RCNN-FPN.yaml")):
            sys.exit(f"{sdist}: unexpected layout (no detectron2/model_zoo/configs); delete it and retry")
        stage = os.path.join(tmp, "stage")
        shutil.copytree(src, os.path.join(stage, "detectron2"))
        shutil.copy(os.path.join(ROOT, "detpre", "_c_placeholder.py"),
                    os.path.join(stage, "detectron2", "_C.py"))
        with open(os.path.join(stage, "setup.py"), "w") as f:
            f.write(SETUP_PY)
        os.makedirs(args.out, exist_ok=True)
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", args.out, stage])
    print("wheel:", os.path.join(args.out, "detectron2-0.6-py3-none-any.whl"))


if __name__ == "__main__":
    main()
