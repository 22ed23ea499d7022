#!/usr/bin/env bash
# Creates .venv with torch, a pure-Python detectron2 v0.6 and detpre. Idempotent: each step
# is skipped when what it makes is already there, so a second run takes seconds.
# Python: $PYTHON if set, else the newest working python3.12 / python3.11 (3.13 is not
# supported yet). An existing .venv is kept whatever its Python.
# Every check runs from / (not the repository root, which would put ./detpre on sys.path and
# make a missing install look present).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=$ROOT/.venv
PY=$VENV/bin/python
PIP="$PY -m pip --disable-pip-version-check -q"

step() { echo "[bootstrap] $*"; }
have() { (cd / && "$PY" -c "$1") >/dev/null 2>&1; }

# A candidate counts only if it runs: a pyenv shim for a version not selected exits non-zero.
works() { (cd / && "$1" -c "import sys, venv; assert sys.version_info[:2] in ((3, 11), (3, 12))") >/dev/null 2>&1; }
pick_python() {
  if [ -n "${PYTHON:-}" ]; then
    works "$PYTHON" || { echo "[bootstrap] PYTHON=$PYTHON is not a working Python 3.11/3.12" >&2; exit 1; }
    echo "$PYTHON"; return
  fi
  local v c
  for v in 3.12 3.11; do
    for c in "python$v" $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V -r); do
      if works "$c"; then echo "$c"; return; fi
    done
  done
  echo "[bootstrap] no working python3.12 or python3.11 found; set PYTHON=..." >&2; exit 1
}

if [ ! -x "$PY" ]; then
  BASE_PY=$(pick_python)
  step "creating $VENV ($BASE_PY, $("$BASE_PY" -c 'import sys; print(sys.version.split()[0])'))"
  "$BASE_PY" -m venv "$VENV"
fi

if ! have "import torch, torchvision, torchvision.ops as o; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__; o.nms"; then
  # Three '=' on purpose: '==2.13.0' would pick the local CPU wheel (2.13.0+cpu), whose
  # torchvision ops fail to load ("operator torchvision::nms does not exist").
  step "installing torch===2.13.0 torchvision==0.28.0 (a few GB, several minutes the first time)"
  $PIP install 'torch===2.13.0' 'torchvision==0.28.0'
fi

if ! have "import yacs, fvcore, pycocotools, skimage, cv2, selectivesearch, pytest, ruff" \
   || [ requirements.txt -nt "$VENV/.requirements-done" ]; then
  step "installing requirements.txt"
  $PIP install -r requirements.txt
  touch "$VENV/.requirements-done"
fi

# the patched wheel, built with this checkout's patch list (an unpatched or older build fails)
if ! (cd / && "$PY" "$ROOT/scripts/build_detectron2_wheel.py" --check-installed) >/dev/null 2>&1; then
  step "building a patched pure-Python detectron2 0.6 wheel from the pb1-detectron2 sdist"
  $PY scripts/build_detectron2_wheel.py --out build/wheels
  $PIP install --no-deps --force-reinstall build/wheels/detectron2-0.6-py3-none-any.whl
fi

# detpre must import from outside the repository, and from this checkout (not another clone's)
if ! have "import os, detpre; assert os.path.dirname(os.path.dirname(os.path.realpath(detpre.__file__))) == os.path.realpath('$ROOT')"; then
  step "installing detpre (editable)"
  $PIP install --no-deps --no-build-isolation -e "$ROOT"
fi
step "ready: $VENV"
