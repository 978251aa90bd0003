#!/usr/bin/env bash
# Every GPU step of book/speed.md in one script, sized for a short GPU window (< 10 min on one
# H100/H200: the step timeouts add up to 570 s; a failed or timed-out step does not stop the next):
#
#   1. the CUDA tests (tests whose name contains "cuda"; they skip without CUDA);
#   2. benchmarks/bench_train.py: SSVI 90% and deterministic ResNet-18, batch 128, fast and
#      reference path;
#   3. a short real-data run: SSVI 90%, ResNet-18 (full width), 1 epoch of the recipe on the
#      CIFAR-10 JPEG-75 copy (unpacked from its 18 MB archive when data/ has no CIFAR-10).
#
#   bash scripts/gpu_check.sh              # on the GPU machine; results under results/gpu/
#   bash scripts/gpu_check.sh --dry-run    # on a CPU, tiny sizes, a few steps (about 40 s of CPU;
#                                          # the dry-run timeouts allow for a busy machine);
#                                          # results in a temporary folder unless GPU_CHECK_OUT is set
#
# Results: OUT/summary.json (device name, commit, per-step exit code and wall time, seed, the
# exact commands), OUT/bench_train.json, OUT/ssvi90_short.json (config, metrics, history,
# provenance), OUT/*.log. Exit status: 0 if every step passed, else 1.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then PY="$ROOT/.venv/bin/python"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

DRY=0
for a in "$@"; do
    case "$a" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$a'; use --dry-run or nothing" >&2; exit 2 ;;
    esac
done

SEED=0
if [ $DRY -eq 1 ]; then
    OUT="${GPU_CHECK_OUT:-$(mktemp -d -t gpu_check_dry.XXXXXX)}"
    DEVICE=cpu
else
    OUT="${GPU_CHECK_OUT:-results/gpu}"
    DEVICE=cuda
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: no CUDA device here; run it on the GPU machine, or use --dry-run" >&2
        exit 2
    fi
fi
mkdir -p "$OUT"
T_START=$(date +%s)
STEPS_JSON=""
failed=0

# run NAME TIMEOUT_S CMD...: one step, its log in OUT/NAME.log, its status in summary.json
run() {
    local name=$1 limit=$2; shift 2
    echo "[gpu_check] == $name (timeout ${limit}s): $*"
    local t0 rc
    t0=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local dt
    dt=$(( ($(date +%s%N) - t0) / 1000000 ))
    dt="$((dt / 1000)).$(printf '%03d' $((dt % 1000)))"
    tail -n 15 "$OUT/$name.log"
    if [ $rc -ne 0 ]; then
        failed=1
        [ $rc -eq 124 ] && echo "[gpu_check] $name: TIMED OUT after ${limit}s" \
                        || echo "[gpu_check] $name: FAILED (exit $rc)"
    else
        echo "[gpu_check] $name: ok in ${dt}s"
    fi
    local cmd
    cmd=$("$PY" -c 'import json, sys; print(json.dumps(" ".join(sys.argv[1:])))' "$@")
    STEPS_JSON="$STEPS_JSON{\"step\": \"$name\", \"exit_code\": $rc, \"wall_s\": $dt, \"timeout_s\": $limit, \"command\": $cmd},"
}

# -- 1. CUDA tests ---------------------------------------------------------------------------
# the test files that hold a test named *cuda* (collecting only those keeps the CPU dry run short)
CUDA_TEST_FILES=$(grep -l "def test_[a-z0-9_]*cuda" tests/test_*.py)
run cuda_tests $((DRY ? 300 : 90)) "$PY" -m pytest -q -rs -p no:cacheprovider $CUDA_TEST_FILES -k cuda

# -- 2. training benchmark at batch 128 --------------------------------------------------------
if [ $DRY -eq 1 ]; then
    run bench_train 300 "$PY" benchmarks/bench_train.py --quick --methods ssvi dense \
        --out "$OUT/bench_train.json"
else
    run bench_train 240 "$PY" benchmarks/bench_train.py --device cuda --methods ssvi dense \
        --batch-sizes 128 --steps 50 --warmup 10 --out "$OUT/bench_train.json"
fi

# -- 3. a short real-data run --------------------------------------------------------------------
DATA="${SSVI_DATA:-data}"
if [ $DRY -eq 1 ]; then
    # the CIFAR-10 reader on a generated copy in the official layout (no 60k-JPEG decode in CI)
    DATA="$OUT/data"
    run data 120 "$PY" -c "import sys; sys.path.insert(0, '$ROOT/tests'); from fakes import write_fake_cifar; write_fake_cifar('$DATA', 'cifar10', n_train=256, n_test=128, seed=0)"
    TRAIN_ARGS=(--preset tiny --model small_cnn --width 0.25 --epochs 1 --batch-size 32
                --train-subset 256 --test-subset 128 --update-every 3 --eval-samples 2)
    TRAIN_LIMIT=300
else
    if [ ! -f "$DATA/cifar-10-batches-py/test_batch" ]; then
        ARCHIVE=""
        for d in "${SSVI_CIFAR_ARCHIVE_DIR:-}" shared/data/cifar10-jpeg75 ../shared/data/cifar10-jpeg75; do
            if [ -n "$d" ] && [ -f "$d/cifar10-jpeg75.tar.xz" ] && [ -f "$d/make_cifar10.py" ]; then
                ARCHIVE="$d"; break
            fi
        done
        if [ -z "$ARCHIVE" ]; then
            echo "[gpu_check] no CIFAR-10 in $DATA and no cifar10-jpeg75.tar.xz + make_cifar10.py in" \
                 "shared/data/cifar10-jpeg75 or ../shared/data/cifar10-jpeg75 (set SSVI_CIFAR_ARCHIVE_DIR)" >&2
            STEPS_JSON="$STEPS_JSON{\"step\": \"data\", \"exit_code\": 2, \"wall_s\": 0, \"timeout_s\": 0, \"command\": \"(no archive)\"},"
            failed=1
        else
            run data 60 "$PY" "$ARCHIVE/make_cifar10.py" "$DATA"
        fi
    fi
    # 1 epoch of the recipe (ResNet-18 x1, batch 128, lr 0.01, dT 100, 5 draws), the fast path
    TRAIN_ARGS=(--preset paper --epochs 1 --run-dir "$OUT/run_ssvi90_short")
    TRAIN_LIMIT=180
fi
run train_short $TRAIN_LIMIT "$PY" -m ssvi train --dataset cifar10 --data-dir "$DATA" \
    --method ssvi --density 0.1 --seed $SEED --device $DEVICE --progress false \
    "${TRAIN_ARGS[@]}" --results-path "$OUT/ssvi90_short.json"

# -- summary --------------------------------------------------------------------------------------
WALL=$(( $(date +%s) - T_START ))
"$PY" - "$OUT" "$DRY" "$WALL" "$SEED" "[${STEPS_JSON%,}]" <<'EOF'
import json, os, sys
from ssvi.provenance import provenance
out, dry, wall, seed, steps = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
import torch
dev = "cuda" if (torch.cuda.is_available() and not dry) else "cpu"
summary = {"kind": "gpu_check", "dry_run": dry, "steps": steps,
           "passed": all(s["exit_code"] == 0 for s in steps),
           "provenance": provenance(device=dev, seed=seed, wall_time_s=wall)}
run = os.path.join(out, "ssvi90_short.json")
if os.path.exists(run):
    r = json.load(open(run))
    summary["short_run"] = {"config": r.get("config"), "metrics": r.get("metrics"),
                            "history": r.get("history")}
bench = os.path.join(out, "bench_train.json")
if os.path.exists(bench):
    summary["bench_ratios"] = json.load(open(bench)).get("ratios_ssvi_over_deterministic")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(f"[gpu_check] {'dry run' if dry else 'GPU check'} on {summary['provenance']['device_name']} "
      f"at {summary['provenance'].get('commit')}: {'all steps passed' if summary['passed'] else 'FAILED'}"
      f" in {wall:.0f} s; results in {out}/")
EOF
[ $failed -eq 0 ]
