#!/usr/bin/env bash
# The GPU check, for a machine with a preinstalled CUDA torch, Python 3.12 and no network.
# Here first: `make wheelhouse` (build/wheelhouse/); then copy the repository there and run
#
#   bash scripts/gpu_check.sh                     # tables in $OUT, else output/gpu_check/
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh   # dry run of every section, tiny, on CPU
#
# Sections (each under `timeout`; a failed or timed-out one is recorded and the rest still
# run; the exit status is non-zero if any failed), ~8 minutes in all on one GPU:
#   install    venv (--system-site-packages: the machine's torch) + wheels, offline
#   data       demo data sets, SoCo's selective-search proposals, Jigsaw's samples
#   tests      pytest -m gpu: every method's step under fp16 and bf16 AMP, SyncBN
#   bench_*    tools/benchmark_pretrain.py per method (data / fwd+bwd / momentum, images/s, memory),
#              SoCo and Fast-MoCo also with the photometric views on the GPU (*_gpu_augment)
#   fastmoco   tools/benchmark_fastmoco.py: Fast-MoCo / MoCo v3 iteration-time ratio
# Output: summary.md (section, status, seconds), tables.md, one <section>.log (+ .json) each.
# Self-training has no pretraining benchmark (its student is a detector); its AMP step is in tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUTDIR=${OUT:-$ROOT/output/gpu_check}
WHEELS=${WHEELHOUSE:-$ROOT/build/wheelhouse}
mkdir -p "$OUTDIR"
WORK=$OUTDIR/work
mkdir -p "$WORK"
export DETECTRON2_DATASETS=$WORK/datasets PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
SUMMARY=$OUTDIR/summary.md
FAILED=0

if [ "$DEVICE" = cuda ]; then
  # GPU sizes: SoCo/Fast-MoCo/MoCo v3 at batch 64 and 224 px views, bf16 AMP
  AMP=(SOLVER.AMP.ENABLED True SOLVER.AMP.DTYPE bfloat16)
  WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
  COMMON=(MODEL.DEVICE cuda DATALOADER.NUM_WORKERS "$WORKERS" "${AMP[@]}")
  BATCH=64 ITERS=15 WARMUP=5 VIEW=224 SMALL=112 REID="(256, 128)"
  T_INSTALL=90 T_DATA=60 T_TESTS=100 T_BENCH=25 T_FASTMOCO=40  # 465 s at most
else
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DETPRE_TEST_DEVICE=cpu
  AMP=(SOLVER.AMP.ENABLED True SOLVER.AMP.DTYPE bfloat16)
  COMMON=(MODEL.DEVICE cpu DATALOADER.NUM_WORKERS 0 "${AMP[@]}")
  BATCH=4 ITERS=3 WARMUP=1 VIEW=64 SMALL=32 REID="(64, 64)"
  T_INSTALL=120 T_DATA=300 T_TESTS=300 T_BENCH=120 T_FASTMOCO=120
fi

printf '# GPU check (%s)\n\n%s, device %s\n\n| section | status | seconds |\n|---|---|---|\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$(uname -n)" "$DEVICE" > "$SUMMARY"

# section NAME LIMIT_S CMD...: output -> NAME.log (results go to NAME.json / tables.md)
section() {
  local name=$1 limit=$2 start rc=0
  shift 2
  start=$(date +%s)
  echo "[gpu_check] $name (limit ${limit}s)"
  if declare -F "$1" >/dev/null; then  # a function of this script: timeout runs it in bash
    set -- bash -c "set -euo pipefail; $*"
  fi
  timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1 || rc=$?
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT"; elif [ "$rc" -ne 0 ]; then status="FAILED ($rc)"; fi
  [ "$status" = ok ] || { FAILED=1; tail -5 "$OUTDIR/$name.log" >&2 || true; }
  echo "| $name | $status | $(( $(date +%s) - start )) |" >> "$SUMMARY"
  echo "[gpu_check] $name: $status"
}

# --- install: a venv that sees the machine's torch, the wheels from build/wheelhouse, no index
install() {
  local base=${PYTHON:-python3} venv=$WORK/venv
  "$base" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  [ -x "$venv/bin/python" ] || "$base" -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-index --find-links "$WHEELS" -r requirements.txt
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-index --no-deps --force-reinstall "$WHEELS"/detectron2-0.6-py3-none-any.whl
  (cd / && "$venv/bin/python" -c "import torch, numpy, detectron2, detectron2.engine; assert torch.cuda.is_available(), 'no CUDA'; print('numpy', numpy.__version__, 'gpu', torch.cuda.get_device_name(0))")
}
export -f install
export WORK WHEELS
if [ "$DEVICE" = cuda ]; then
  section install "$T_INSTALL" install
  PY=$WORK/venv/bin/python
else
  # dry run: the wheelhouse must resolve offline for Python 3.12; the rest runs in .venv
  section install "$T_INSTALL" "$ROOT/.venv/bin/python" -m pip install --disable-pip-version-check -q --dry-run \
    --ignore-installed --no-index --find-links "$WHEELS" --python-version 3.12 --only-binary=:all: \
    --target "$WORK/install-dry-run" -r requirements.txt
  PY=$ROOT/.venv/bin/python
fi

# --- data: what the pretraining configs read but nothing trains
PROPOSALS=$WORK/proposals/detpre_demo_unlabeled.pkl
JIGSAW=$WORK/jigsaw_samples.json
data() {
  "$PY" tools/generate_proposals.py --dataset detpre_demo_unlabeled --output "$PROPOSALS"
  "$PY" tools/extract_jigsaw_samples.py --config-file configs/demo/jigsaw_R18_tiny.yaml --output "$JIGSAW"
}
export -f install data
export WORK WHEELS PY PROPOSALS JIGSAW
section data "$T_DATA" data

# --- GPU tests
section tests "$T_TESTS" "$PY" -m pytest -q -m gpu tests/test_gpu.py

# --- where an iteration's time goes, per method
bench() {
  local name=$1 config=$2
  shift 2
  section "bench_$name" "$T_BENCH" "$PY" tools/benchmark_pretrain.py --config-file "configs/demo/$config" \
    --iters "$ITERS" --warmup "$WARMUP" --output "$OUTDIR/bench_$name.json" \
    "${COMMON[@]}" SOLVER.IMS_PER_BATCH "$BATCH" "$@"
}
SOCO=(DATASETS.PROPOSAL_FILES_TRAIN "('$PROPOSALS',)" INPUT.SOCO.VIEW_SIZE "$VIEW" INPUT.SOCO.SMALL_VIEW_SIZE "$SMALL")
bench soco soco_R18_FPN_tiny.yaml "${SOCO[@]}"
bench soco_gpu_augment soco_R18_FPN_tiny.yaml "${SOCO[@]}" INPUT.SOCO.GPU_AUGMENT True
bench fastmoco fastmoco_R18_tiny.yaml INPUT.TWO_VIEW.SIZE "$VIEW"
bench fastmoco_gpu_augment fastmoco_R18_tiny.yaml INPUT.TWO_VIEW.SIZE "$VIEW" INPUT.TWO_VIEW.GPU_AUGMENT True
bench mocov3 mocov3_R18_tiny.yaml INPUT.TWO_VIEW.SIZE "$VIEW"
bench jigsaw jigsaw_R18_tiny.yaml DATASETS.JIGSAW_SAMPLES "$JIGSAW" INPUT.JIGSAW.SIZE "$VIEW"
bench spcl spcl_usl_R18_tiny.yaml INPUT.REID.SIZE "$REID" MODEL.SPCL.EXTRACT_BATCH_SIZE "$BATCH"

# --- Fast-MoCo / MoCo v3 time ratio (same backbone, batch and start weights)
section fastmoco "$T_FASTMOCO" "$PY" tools/benchmark_fastmoco.py --config-file configs/demo/fastmoco_R18_tiny.yaml \
  --no-probe --synthetic --iters "$ITERS" --warmup "$WARMUP" --output "$OUTDIR/fastmoco.json" \
  "${COMMON[@]}" SOLVER.IMS_PER_BATCH "$BATCH" INPUT.TWO_VIEW.SIZE "$VIEW"

"$PY" scripts/gpu_check_tables.py "$OUTDIR" > "$OUTDIR/tables.md" || FAILED=1
echo "[gpu_check] results in $OUTDIR: summary.md, tables.md, <section>.log / .json"
cat "$SUMMARY" "$OUTDIR/tables.md"
exit "$FAILED"
