#!/usr/bin/env bash
# Creates .venv with torch, a pure-Python detectron2 v0.6 and detpre. Idempotent: each step
# is skipped when what it makes is already there, so a second run takes seconds.
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

if [ ! -x "$PY" ]; then
  step "creating $VENV (python3.11)"
  python3.11 -m venv "$VENV"
fi

if ! have "import torch, torchvision, torchvision.ops as o; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__; o.nms"; then
  # Three '=' on purpose: '==2.13.0' would pick the local CPU wheel (2.13.0+cpu), whose
  # torchvision ops fail to load ("operator torchvision::nms does not exist").
  step "installing torch===2.13.0 torchvision==0.28.0 (a few GB, several minutes the first time)"
  $PIP install 'torch===2.13.0' 'torchvision==0.28.0'
fi

if ! have "import pkg_resources, yacs, fvcore, pycocotools, skimage, cv2, selectivesearch, pytest, ruff" \
   || [ requirements.txt -nt "$VENV/.requirements-done" ]; then
  step "installing requirements.txt"
  $PIP install -r requirements.txt
  touch "$VENV/.requirements-done"
fi

if ! have "import detectron2, detectron2.model_zoo as mz; assert detectron2.__version__ == '0.6'; mz.get_config_file('COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml')"; then
  step "building a pure-Python detectron2 0.6 wheel from the pb1-detectron2 sdist"
  $PY scripts/build_detectron2_wheel.py --out build/wheels
  $PIP install --no-deps --force-reinstall build/wheels/detectron2-0.6-py3-none-any.whl
fi

# detpre must import from outside the repository, and from this checkout (not another clone's)
if ! have "import os, detpre; assert os.path.dirname(os.path.dirname(os.path.realpath(detpre.__file__))) == os.path.realpath('$ROOT')"; then
  step "installing detpre (editable)"
  $PIP install --no-deps --no-build-isolation -e "$ROOT"
fi
step "ready: $VENV"
