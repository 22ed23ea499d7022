#!/usr/bin/env bash
# The GPU check, for the GPU machine (Python 3.12 with a CUDA torch and the packages of
# scripts/gpu_machine_packages.txt, no network). Here first: `make wheelhouse` (build/wheelhouse/,
# only what that machine lacks); then, with the repository and build/wheelhouse there:
#
#   bash scripts/gpu_check.sh                     # results in $OUT, else output/gpu_check/
#   make gpu-check-dry                            # here: every section, tiny, on CPU (CI runs it)
#
# Sections (each under `timeout`; a failed or timed-out one is recorded and the rest still run;
# the exit status is non-zero if any failed). On the GPU at most WORST_S (below) in all:
#   install    a venv over the machine's python and packages + scripts/requirements-gpu.txt and the
#              detpre detectron2 wheel from build/wheelhouse, offline; imports checked from /
#   data       demo data sets, SoCo's selective-search proposals, Jigsaw's samples
#   tests      pytest -m gpu: every method's step under fp16 and bf16 AMP, SyncBN
#   bench_*    tools/benchmark_pretrain.py per method at batch 64 per GPU, 224 px, bf16 AMP
#              (images/s, data-loading share, peak memory); SoCo and Fast-MoCo also with the
#              photometric views on the GPU (*_gpu_augment); bench_soco_r50: SoCo's paper model
#              (configs/soco/soco_R50_FPN_100ep.yaml, R50-FPN, views 224/112)
#   fastmoco   tools/benchmark_fastmoco.py: Fast-MoCo / MoCo v3 iteration-time ratio
# Output ($OUT or output/gpu_check[_dry]/): summary.md (section, status, seconds), tables.md
# (scripts/gpu_check_tables.py) and logs.tar.gz (each section's .log / .json, also in logs/ of
# output/gpu_check[_dry]/). The dry run (GPU_CHECK_DEVICE=cpu) installs the same way into a venv
# over a stand-in of the machine's packages (links to .venv's distributions on its list), so it
# fails where the wheelhouse lacks something the machine lacks.
# Self-training has no pretraining benchmark (its student is a detector); its AMP step is in tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
case "$DEVICE" in
  cuda) RUN=$ROOT/output/gpu_check ;;
  cpu) RUN=$ROOT/output/gpu_check_dry ;;
  *) echo "GPU_CHECK_DEVICE=$DEVICE: cuda or cpu" >&2; exit 2 ;;
esac
OUTDIR=${OUT:-$RUN}           # on a lent GPU machine, $OUT is what comes back: 3 files only
WORK=$RUN/work LOGS=$RUN/logs VENV=$RUN/work/venv
WHEELS=${WHEELHOUSE:-$ROOT/build/wheelhouse}
rm -rf "$LOGS"
mkdir -p "$OUTDIR" "$WORK" "$LOGS"
SUMMARY=$OUTDIR/summary.md
FAILED=0
KILL_AFTER=5

AMP=(SOLVER.AMP.ENABLED True SOLVER.AMP.DTYPE bfloat16)
if [ "$DEVICE" = cuda ]; then
  # GPU sizes: batch 64 per GPU, 224 px views (SoCo's small view 112), every run under bf16 AMP
  WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
  COMMON=(MODEL.DEVICE cuda DATALOADER.NUM_WORKERS "$WORKERS")
  FP32_RUNS=""
  BATCH=64 ITERS=15 WARMUP=5 VIEW=224 SMALL=112 REID="(256, 128)" PROPOSAL_WORKERS=$(nproc) TESTS=()
  FM_ITERS=$ITERS
  R50_BATCH=64 R50_ITERS=15 R50_WARMUP=5 R50_VIEW=224 R50_SMALL=112
  T_INSTALL=60 T_DATA=60 T_TESTS=75 T_BENCH=22 T_BENCH_R50=60 T_FASTMOCO=40
else
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DETPRE_TEST_DEVICE=cpu
  unset PYTHONPATH  # only the stand-in and the venv (whose .pth names this checkout) may provide packages
  COMMON=(MODEL.DEVICE cpu DATALOADER.NUM_WORKERS 0)
  # bf16 on a CPU without bf16 instructions (AVX2) is ~15x slower than fp32, so the dry run keeps
  # bf16 AMP for bench_soco (AMP's step under the step timer) and the tests, fp32 for the other
  # runs; 2 iterations (1 timed) at batch 2; of the tests SoCo's two and the batched views (make
  # test's test_amp.py runs every method's CPU bf16 step already)
  FP32_RUNS="soco_gpu_augment fastmoco fastmoco_gpu_augment mocov3 jigsaw spcl soco_r50 fastmoco_ratio"
  BATCH=2 ITERS=2 WARMUP=1 VIEW=64 SMALL=32 REID="(64, 64)" PROPOSAL_WORKERS=1 TESTS=(-k "soco or batched_views")
  FM_ITERS=3  # at --iters 2, benchmark_fastmoco.py dies in after_train (ZeroDivisionError) and hangs
  R50_BATCH=2 R50_ITERS=2 R50_WARMUP=1 R50_VIEW=64 R50_SMALL=32
  T_INSTALL=120 T_DATA=300 T_TESTS=300 T_BENCH=120 T_BENCH_R50=180 T_FASTMOCO=120
fi
# the longest the 12 sections can take: each one's limit + timeout's kill delay; on the GPU at most
# 510 s, which leaves 30 s of the 9 minutes a run may take for the tables and the archive (~2 s)
WORST_S=$(( T_INSTALL + T_DATA + T_TESTS + 7 * T_BENCH + T_BENCH_R50 + T_FASTMOCO + 12 * KILL_AFTER ))
if [ "$DEVICE" = cuda ] && [ "$WORST_S" -gt 510 ]; then
  echo "[gpu_check] section limits add up to ${WORST_S}s: over 510 s" >&2; exit 2
fi

printf '# GPU check (%s)\n\n%s, device %s; section limits add up to %s s\n\n| section | status | seconds |\n|---|---|---|\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$(uname -n)" "$DEVICE" "$WORST_S" > "$SUMMARY"

# section NAME LIMIT_S CMD...: output -> logs/NAME.log (results go to logs/NAME.json)
section() {
  local name=$1 limit=$2 start rc=0
  shift 2
  start=$(date +%s)
  echo "[gpu_check] $name (limit ${limit}s)"
  if declare -F "$1" >/dev/null; then  # a function of this script: timeout runs it in bash
    set -- bash -c "set -euo pipefail; $*"
  fi
  timeout --kill-after=$KILL_AFTER "$limit" "$@" > "$LOGS/$name.log" 2>&1 || rc=$?
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT"; elif [ "$rc" -ne 0 ]; then status="FAILED ($rc)"; fi
  [ "$status" = ok ] || { FAILED=1; tail -5 "$LOGS/$name.log" >&2 || true; }
  echo "| $name | $status | $(( $(date +%s) - start )) |" >> "$SUMMARY"
  echo "[gpu_check] $name: $status"
}

# --- install: the same on the GPU machine and in the dry run, offline (--no-index, no pip config)
install() {
  if [ "$DEVICE" = cuda ]; then
    local base=${PYTHON:-python3}
    "$base" -c "import torch, sys; print('machine python', sys.executable, sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
    # --system-site-packages alone would miss /opt/torch/.venv's packages (a venv made from a
    # venv sees the base installation's); the venv's .pth adds them
    "$base" scripts/gpu_machine.py venv "$VENV" --system-site-packages --site-of-this-python
  else
    # a stand-in for the machine's packages: links to .venv's distributions on its list
    rm -rf "$WORK/machine"
    "$ROOT/.venv/bin/python" scripts/gpu_machine.py standin "$WORK/machine"
    "$ROOT/.venv/bin/python" scripts/gpu_machine.py venv "$VENV" --site "$WORK/machine"
  fi
  local pip=(env PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip --isolated --disable-pip-version-check)
  "${pip[@]}" install -q --no-index --find-links "$WHEELS" -r scripts/requirements-gpu.txt
  "${pip[@]}" install -q --no-index --no-deps --force-reinstall "$WHEELS"/detectron2-0.6-py3-none-any.whl
  echo "installed in the venv:"
  "${pip[@]}" list --path "$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")"
  (cd / && "$VENV/bin/python" -c "
import os, sys, torch, numpy, detectron2, detectron2.engine, fvcore, pycocotools.mask, detpre
assert os.path.realpath(sys.prefix) == os.path.realpath('$VENV'), sys.prefix
assert os.path.realpath(os.path.dirname(os.path.dirname(detpre.__file__))) == os.path.realpath('$ROOT'), detpre.__file__
print('from /:', sys.executable, 'torch', torch.__version__, 'numpy', numpy.__version__, 'detectron2', detectron2.__version__)
if '$DEVICE' == 'cuda':
    assert torch.cuda.is_available(), 'no CUDA'
    print('gpu', torch.cuda.get_device_name(0))
")
}
export -f install
export DEVICE ROOT WORK VENV WHEELS
section install "$T_INSTALL" install
PY=$VENV/bin/python

# --- data: what the pretraining configs read but nothing trains
PROPOSALS=$WORK/proposals/detpre_demo_unlabeled.pkl
JIGSAW=$WORK/jigsaw_samples.json
data() {
  "$PY" tools/generate_proposals.py --dataset detpre_demo_unlabeled --output "$PROPOSALS" --workers "$PROPOSAL_WORKERS"
  "$PY" tools/extract_jigsaw_samples.py --config-file configs/demo/jigsaw_R18_tiny.yaml --output "$JIGSAW"
}
export -f data
export PY PROPOSALS JIGSAW PROPOSAL_WORKERS
section data "$T_DATA" data

# --- GPU tests
section tests "$T_TESTS" "$PY" -m pytest -q -m gpu tests/engine/test_gpu.py ${TESTS[@]+"${TESTS[@]}"}

# --- where an iteration's time goes, per method
# precision NAME: PRECISION = run NAME's AMP overrides (bf16 AMP unless FP32_RUNS names it)
precision() {
  if [[ " $FP32_RUNS " == *" $1 "* ]]; then PRECISION=(SOLVER.AMP.ENABLED False); else PRECISION=("${AMP[@]}"); fi
}
# bench NAME LIMIT_S CONFIG ITERS WARMUP BATCH [KEY VALUE ...]
bench() {
  local name=$1 limit=$2 config=$3 iters=$4 warmup=$5 batch=$6
  shift 6
  precision "$name"
  section "bench_$name" "$limit" "$PY" tools/benchmark_pretrain.py --config-file "$config" --iters "$iters" \
    --warmup "$warmup" --output "$LOGS/bench_$name.json" "${COMMON[@]}" "${PRECISION[@]}" \
    SOLVER.IMS_PER_BATCH "$batch" "$@"
}
R18=("$ITERS" "$WARMUP" "$BATCH")
SOCO=(DATASETS.PROPOSAL_FILES_TRAIN "('$PROPOSALS',)" INPUT.SOCO.VIEW_SIZE "$VIEW" INPUT.SOCO.SMALL_VIEW_SIZE "$SMALL")
bench soco "$T_BENCH" configs/demo/soco_R18_FPN_tiny.yaml "${R18[@]}" "${SOCO[@]}"
bench soco_gpu_augment "$T_BENCH" configs/demo/soco_R18_FPN_tiny.yaml "${R18[@]}" "${SOCO[@]}" INPUT.SOCO.GPU_AUGMENT True
bench fastmoco "$T_BENCH" configs/demo/fastmoco_R18_tiny.yaml "${R18[@]}" INPUT.TWO_VIEW.SIZE "$VIEW"
bench fastmoco_gpu_augment "$T_BENCH" configs/demo/fastmoco_R18_tiny.yaml "${R18[@]}" INPUT.TWO_VIEW.SIZE "$VIEW" INPUT.TWO_VIEW.GPU_AUGMENT True
bench mocov3 "$T_BENCH" configs/demo/mocov3_R18_tiny.yaml "${R18[@]}" INPUT.TWO_VIEW.SIZE "$VIEW"
bench jigsaw "$T_BENCH" configs/demo/jigsaw_R18_tiny.yaml "${R18[@]}" DATASETS.JIGSAW_SAMPLES "$JIGSAW" INPUT.JIGSAW.SIZE "$VIEW"
bench spcl "$T_BENCH" configs/demo/spcl_usl_R18_tiny.yaml "${R18[@]}" INPUT.REID.SIZE "$REID" MODEL.SPCL.EXTRACT_BATCH_SIZE "$BATCH"
# SoCo's paper model (ResNet-50-FPN, 4conv1fc head, SyncBN, views 224/224/112, its cutout) on the
# demo's unlabeled images and proposals instead of ImageNet's: tables.md sets it against the
# reference figure per V100
bench soco_r50 "$T_BENCH_R50" configs/soco/soco_R50_FPN_100ep.yaml "$R50_ITERS" "$R50_WARMUP" "$R50_BATCH" \
  DATASETS.FOLDER "[]" DATASETS.TRAIN "('detpre_demo_unlabeled',)" \
  DATASETS.PROPOSAL_FILES_TRAIN "('$PROPOSALS',)" INPUT.SOCO.VIEW_SIZE "$R50_VIEW" INPUT.SOCO.SMALL_VIEW_SIZE "$R50_SMALL"

# --- Fast-MoCo / MoCo v3 time ratio (same backbone, batch and start weights)
precision fastmoco_ratio
section fastmoco "$T_FASTMOCO" "$PY" tools/benchmark_fastmoco.py --config-file configs/demo/fastmoco_R18_tiny.yaml \
  --no-probe --synthetic --iters "$FM_ITERS" --warmup "$WARMUP" --output "$LOGS/fastmoco.json" \
  "${COMMON[@]}" "${PRECISION[@]}" SOLVER.IMS_PER_BATCH "$BATCH" INPUT.TWO_VIEW.SIZE "$VIEW"

"$PY" scripts/gpu_check_tables.py "$LOGS" --summary "$SUMMARY" --fp32 "$FP32_RUNS" > "$OUTDIR/tables.md" || FAILED=1
tar -czf "$OUTDIR/logs.tar.gz" -C "$RUN" logs
echo "[gpu_check] results in $OUTDIR: summary.md, tables.md, logs.tar.gz (also $LOGS)"
cat "$SUMMARY" "$OUTDIR/tables.md"
exit "$FAILED"
