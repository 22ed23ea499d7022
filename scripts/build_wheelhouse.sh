#!/usr/bin/env bash
# `make wheelhouse`: every wheel that scripts/gpu_check.sh installs on a GPU machine with no
# network, beside that machine's own CUDA torch: the patched detectron2 v0.6 wheel, the
# sdist-only packages built here as pure-Python wheels (fvcore, selectivesearch, ...), and
# binary wheels of everything else in requirements.txt for CPython $WHEEL_PY (default 3.12) on
# this machine's platform (x86_64 Linux). torch/torchvision are not included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHEEL_PY=${WHEEL_PY:-3.12}
OUT=${WHEELHOUSE:-build/wheelhouse}
PIP="$PY -m pip --disable-pip-version-check -q"
mkdir -p "$OUT"

echo "[wheelhouse] detectron2 v0.6 (patched, pure Python)"
$PY scripts/build_detectron2_wheel.py --out "$OUT"

# no binary wheel on the registry: build them here (all pure Python, py3-none-any)
echo "[wheelhouse] pure-Python wheels of sdist-only packages"
$PIP wheel --no-deps -w "$OUT" 'fvcore==0.1.5.post20221221' selectivesearch 'antlr4-python3-runtime==4.9.3'

echo "[wheelhouse] binary wheels for Python $WHEEL_PY"
$PIP download --only-binary=:all: --python-version "$WHEEL_PY" --find-links "$OUT" -d "$OUT" \
  -r requirements.txt

# the result must install with no index at all (what gpu_check.sh does); a dry run resolves it
$PIP install --dry-run --ignore-installed --no-index --find-links "$OUT" --python-version "$WHEEL_PY" \
  --only-binary=:all: --target /tmp/detpre-wheelhouse-check -r requirements.txt >/dev/null
echo "[wheelhouse] $(ls "$OUT" | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
