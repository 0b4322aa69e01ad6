#!/usr/bin/env bash
# The GPU check: one command for a borrowed CUDA GPU with a hard time limit, a copy of the tree
# without .git, and only a few files copied back. At the repository root, with the wheels of
# scripts/fetch_wheels.sh in wheels/ (or $WHEELS; it also writes wheels/COMMIT, the commit id):
#     bash scripts/gpu_check.sh
# The whole check ends within $BUDGET_S (570 s: one 10-minute slot with room to copy back). Each
# step runs under `timeout` and starts only if its own limit still fits; a step that cannot fit
# is shortened to what is left if that is at least its minimum, else skipped and said so. In
# order of what decides most:
#   cuda         CUDA visible to torch, else the check fails at once (exit 1)
#   install      what the image lacks, from the wheels only (--no-index --find-links: the image's
#                own packages are kept)
#   environment  nvidia-smi, the commit, pip freeze
#   test_cuda    tests/test_cuda.py with RESEXP_REQUIRE_CUDA=1: a skipped test fails it
#   fused_resnet56, fused_resnet20
#                bench --runs 5, bf16: one after another, 5 processes, 5 under CUDA MPS, lock-step,
#                and the 5 seeds fused into one net (resexp/bench/fused.py); graph where it captures
#   sweep_figure6, sweep_figure6_compiled
#                bench --sweep figure6 on the synthetic set, eager step for a 45 s window, then
#                trainer.compile=true for 90 s (each process compiles first), under the sweep's MPS daemon
# Left out for the budget (committed from earlier checks: results/bench/resnet56_cuda_b128*.md): the
# single-step ResNet-56 benches, and the 5-seed figure6 sweep bench (its speeds are the 1-seed one's).
# Everything goes to $OUT/gpu_check_<date>.tar.gz (with steps.txt beside it); on exit, however it
# ends, the running step's process group and any CUDA MPS daemon resexp left behind are stopped.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
OUT=${OUT:-results/gpu_check}
BUDGET_S=${BUDGET_S:-570}
STAMP=$(date +%Y-%m-%d_%H%M)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/resexp-gpu-check-XXXXXX")
LOG=$WORK/gpu_check_$STAMP
mkdir -p "$OUT" "$LOG"
MPS_FOLDERS="${TMPDIR:-/tmp}/resexp-mps-*"  # resexp/sweep/mps.py's private daemons
MPS_BEFORE=$(ls -d $MPS_FOLDERS 2>/dev/null)  # someone else's: left alone
STEP_PID=
FAILED=()
END=$((SECONDS + BUDGET_S))

cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$STEP_PID" ]; then  # `timeout` leads its own process group: the step and all it started
        kill -TERM -- "-$STEP_PID" 2>/dev/null
        for _ in $(seq 20); do kill -0 -- "-$STEP_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$STEP_PID" 2>/dev/null
    fi
    for folder in $MPS_FOLDERS; do
        [ -e "$folder/pipe/control" ] || continue
        grep -qxF "$folder" <<<"$MPS_BEFORE" && continue
        echo "stopping the CUDA MPS daemon of $folder"
        echo quit | CUDA_MPS_PIPE_DIRECTORY="$folder/pipe" timeout 10 nvidia-cuda-mps-control && rm -rf "$folder"
    done
    echo "failed: ${FAILED[*]:-none}" >>"$LOG/steps.txt"
    tar -czf "$OUT/gpu_check_$STAMP.tar.gz" -C "$WORK" "gpu_check_$STAMP" && cp "$LOG/steps.txt" "$OUT/steps.txt"
    echo "results: $OUT/gpu_check_$STAMP.tar.gz"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

step() {  # step NAME LIMIT MINIMUM COMMAND...: under `timeout`, output in NAME.log, within the budget
    local name=$1 limit=$2 minimum=$3 began=$SECONDS rc left
    shift 3
    # kept for the worst end of a step and of the check: timeout's 10 s --kill-after, then the
    # cleanup's 10 s wait for the process group, 10 s for the MPS daemon to quit, and the archive
    left=$((END - SECONDS - 40))
    if [ "$left" -lt "$limit" ]; then
        if [ "$left" -lt "$minimum" ]; then
            echo "$name: skipped, ${left} s of the ${BUDGET_S} s budget left (needs ${minimum})" | tee -a "$LOG/steps.txt"
            return
        fi
        limit=$left
    fi
    echo "== $name (at most ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$LOG/$name.log" 2>&1 &
    STEP_PID=$!
    wait "$STEP_PID"
    rc=$?
    STEP_PID=
    tail -n 12 "$LOG/$name.log"
    echo "$name: exit $rc after $((SECONDS - began)) s" | tee -a "$LOG/steps.txt"
    [ "$rc" -eq 0 ] || FAILED+=("$name")
}

# the commit: git where the tree has .git, else the id fetch_wheels.sh wrote before the tree left
{ git rev-parse HEAD 2>/dev/null || cat "$WHEELS/COMMIT" 2>/dev/null || echo unknown; } >"$LOG/COMMIT"
echo "commit $(cat "$LOG/COMMIT")" | tee "$LOG/steps.txt"

if [ -z "${GPU_CHECK_ON_CPU:-}" ]; then  # GPU_CHECK_ON_CPU=1: try the script's own parts on a CPU
    if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >"$LOG/cuda.log" 2>&1; then
        echo "cuda: CUDA is not visible to torch ($PYTHON): nothing of the GPU check can run" | tee -a "$LOG/steps.txt" >&2
        FAILED+=(cuda)
        exit 1
    fi
fi
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "install: no wheels in $WHEELS: run scripts/fetch_wheels.sh where PyPI is reachable and bring its folder" \
        | tee -a "$LOG/steps.txt" >&2
    FAILED+=(install)
    exit 2
fi
step install 90 90 "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-build-isolation .
if [ ${#FAILED[@]} -ne 0 ]; then
    echo "the install failed (its log is in the archive); nothing else can run" >&2
    exit 1
fi
RESEXP=("$PYTHON" -m resexp.cli)
step environment 20 10 bash -c 'nvidia-smi; "$0" -m pip freeze; "$@" version' "$PYTHON" "${RESEXP[@]}"
step test_cuda 110 60 env RESEXP_REQUIRE_CUDA=1 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py
FUSED=(bench --runs 5 trainer.precision=bf16 data=synthetic --iters 30 --repeats 3 -o "$LOG" --force)
step fused_resnet56 100 60 "${RESEXP[@]}" "${FUSED[@]}" model=resnet56
# each sweep's window, its start-up, and the bench's grace for the runs to checkpoint after SIGTERM
SWEEP=(bench --sweep figure6 data=synthetic -o "$LOG" --force)
step sweep_figure6 110 100 "${RESEXP[@]}" "${SWEEP[@]}" --seconds 45
step sweep_figure6_compiled 170 150 "${RESEXP[@]}" "${SWEEP[@]}" --seconds 90 trainer.compile=true
step fused_resnet20 80 50 "${RESEXP[@]}" "${FUSED[@]}" model=resnet20

[ ${#FAILED[@]} -eq 0 ] || { echo "failed: ${FAILED[*]}" >&2; exit 1; }
