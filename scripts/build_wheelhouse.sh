#!/usr/bin/env bash
# `make wheelhouse`: the wheels scripts/gpu_check.sh installs, offline, on the GPU machine, which
# already has the packages of scripts/gpu_machine_packages.txt (torch, numpy, scipy, OpenCV, ...):
# only what it lacks, i.e. the patched detectron2 v0.6 wheel and scripts/requirements-gpu.txt with
# the dependencies the machine lacks. The set is computed, not listed: pip resolves
# requirements-gpu.txt in a venv over a stand-in of the machine's packages (links to .venv's
# distributions on the list) and reports what it would install; those are fetched as CPython 3.12
# x86_64 manylinux wheels, or built here as pure-Python wheels when the registry has only an sdist.
# Then: the set must install from the wheelhouse alone in that venv, the wheelhouse must stay
# under 40 MiB and, with the repository's tree, under 64 MiB (what one run carries to the GPU).
# Needs .venv on Python 3.12 (the GPU machine's; the stand-in links .venv's compiled packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${WHEELHOUSE:-build/wheelhouse}
TMP=${WHEELHOUSE_TMP:-build/wheelhouse-resolve}
PIP=(--disable-pip-version-check -q)
# wheels any glibc >= 2.28 runs (the GPU machine's torch wheel needs 2.28 itself)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
start=$(date +%s)

"$PY" -c "import sys; assert sys.version_info[:2] == (3, 12), 'make wheelhouse needs .venv on Python 3.12 (the GPU machine has 3.12), not ' + sys.version" \
  || exit 1
"$PY" scripts/gpu_machine.py check-requirements

rm -rf "$OUT" "$TMP"  # no wheel of an earlier, larger wheelhouse may stay
mkdir -p "$OUT" "$TMP"

echo "[wheelhouse] detectron2 v0.6 (patched, pure Python)"
"$PY" scripts/build_detectron2_wheel.py --out "$OUT"

echo "[wheelhouse] what the GPU machine lacks: pip's resolution over a stand-in of its packages"
"$PY" scripts/gpu_machine.py standin "$TMP/machine"
"$PY" scripts/gpu_machine.py venv "$TMP/venv" --site "$TMP/machine"
VPY=$TMP/venv/bin/python
"$VPY" -m pip install "${PIP[@]}" --dry-run --prefer-binary --report "$TMP/report.json" \
  -r scripts/requirements-gpu.txt
"$PY" scripts/gpu_machine.py plan "$TMP/report.json" > "$TMP/plan.txt"
sed 's/^/  /' "$TMP/plan.txt"
mapfile -t BINARY < <(awk '$1 == "wheel" {print $2}' "$TMP/plan.txt")
mapfile -t SOURCE < <(awk '$1 == "sdist" {print $2}' "$TMP/plan.txt")

if [ "${#BINARY[@]}" -gt 0 ]; then
  "$PY" -m pip download "${PIP[@]}" --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$OUT" "${BINARY[@]}"
fi
if [ "${#SOURCE[@]}" -gt 0 ]; then  # sdist only on the registry: build them here, pure Python only
  "$PY" -m pip wheel "${PIP[@]}" --no-deps -w "$TMP/built" "${SOURCE[@]}"
  for w in "$TMP"/built/*.whl; do
    case "$w" in
      *-none-any.whl) mv "$w" "$OUT"/ ;;
      *) echo "[wheelhouse] $w is not pure Python: it would not run on the GPU machine" >&2; exit 1 ;;
    esac
  done
fi

echo "[wheelhouse] check: the set installs offline from $OUT in the stand-in venv"
"$VPY" -m pip install "${PIP[@]}" --dry-run --no-index --find-links "$OUT" -r scripts/requirements-gpu.txt
"$VPY" -m pip install "${PIP[@]}" --dry-run --no-index --no-deps "$OUT"/detectron2-0.6-py3-none-any.whl
rm -rf "$TMP"
"$PY" scripts/gpu_machine.py sizes "$OUT" --max-wheelhouse-mib 40 --max-total-mib 64
echo "[wheelhouse] done in $(( $(date +%s) - start )) s: $OUT"
