#!/usr/bin/env bash
# The GPU check: one command for anyone with a CUDA GPU, sized for an 8-minute budget (BUDGET_S) on one
# H100/H200 (not yet timed there). At the
# repository root, with the wheels of scripts/fetch_wheels.sh in wheels/ (or $WHEELS):
#     bash scripts/gpu_check.sh
# It installs resexp from those wheels into the image's Python ($PYTHON; the image brings torch,
# torchvision, typer, rich, tensorboard, matplotlib and joblib), then runs, each under its own
# timeout and each step's output in its own log:
#   the CUDA tests, the ResNet-56 bench (default, then trainer.compile=true), the figure6 sweep bench
#   on the synthetic set (no CIFAR download) for 150 s, and its 5-seed variant if the time budget
#   ($BUDGET_S, 480 s) still allows it.
# Reports and logs go to $OUT, else results/gpu_check/<date>. On exit, however it ends, it stops what
# it started: the running step's process group, and any CUDA MPS daemon resexp left behind.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
OUT=${OUT:-results/gpu_check/$(date +%Y-%m-%d_%H%M)}
BUDGET_S=${BUDGET_S:-480}
SEED_SECONDS=${SEED_SECONDS:-60}  # the 5-seed sweep bench's window: its speeds are the 1-seed one's
mkdir -p "$OUT"
MPS_FOLDERS="${TMPDIR:-/tmp}/resexp-mps-*"  # resexp/sweep/mps.py's private daemons
MPS_BEFORE=$(ls -d $MPS_FOLDERS 2>/dev/null)  # someone else's: left alone
STEP_PID=
FAILED=()

cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$STEP_PID" ]; then  # `timeout` leads its own process group: the step and all it started
        kill -TERM -- "-$STEP_PID" 2>/dev/null
        for _ in $(seq 40); do kill -0 -- "-$STEP_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$STEP_PID" 2>/dev/null
    fi
    for folder in $MPS_FOLDERS; do
        [ -e "$folder/pipe/control" ] || continue
        grep -qxF "$folder" <<<"$MPS_BEFORE" && continue
        echo "stopping the CUDA MPS daemon of $folder"
        echo quit | CUDA_MPS_PIPE_DIRECTORY="$folder/pipe" timeout 30 nvidia-cuda-mps-control && rm -rf "$folder"
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

step() {  # step NAME SECONDS COMMAND...: the command under `timeout`, its output in $OUT/NAME.log
    local name=$1 limit=$2 began=$SECONDS rc
    shift 2
    echo "== $name (at most ${limit} s): $*"
    timeout --kill-after=30 "$limit" "$@" >"$OUT/$name.log" 2>&1 &
    STEP_PID=$!
    wait "$STEP_PID"
    rc=$?
    STEP_PID=
    tail -n 12 "$OUT/$name.log"
    echo "$name: exit $rc after $((SECONDS - began)) s" | tee -a "$OUT/steps.txt"
    [ "$rc" -eq 0 ] || FAILED+=("$name")
}

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in $WHEELS: run scripts/fetch_wheels.sh where PyPI is reachable and bring its folder" >&2
    exit 2
fi
RESEXP=("$PYTHON" -m resexp.cli)

step install 180 bash -c '"$0" -m pip install --no-index --no-deps "$@" && "$0" -m pip install --no-deps \
    --no-build-isolation . && "$0" -c "import hydra, omegaconf, submitit, pytest, resexp.cli"' "$PYTHON" "${wheels[@]}"
if [ ${#FAILED[@]} -ne 0 ]; then
    echo "the install failed (its log: $OUT/install.log); nothing else can run" >&2
    exit 1
fi
step environment 60 bash -c 'nvidia-smi; git rev-parse HEAD; "$0" -m pip freeze; "$@" version' "$PYTHON" \
    "${RESEXP[@]}"
step test_cuda 180 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step bench_resnet56 180 "${RESEXP[@]}" bench model=resnet56 --iters 50 -o "$OUT" --force
step bench_resnet56_compiled 240 "${RESEXP[@]}" bench model=resnet56 trainer.compile=true --iters 50 \
    --precisions auto -o "$OUT" --force
# the sweep's window, its start-up, and the bench's grace for the runs to checkpoint after SIGTERM
step sweep_figure6 330 "${RESEXP[@]}" bench --sweep figure6 data=synthetic --seconds 150 -o "$OUT" --force
left=$((BUDGET_S - SECONDS))
if [ "$left" -ge $((SEED_SECONDS + 60)) ]; then
    step sweep_figure6_5seeds $((SEED_SECONDS + 180)) "${RESEXP[@]}" bench --sweep figure6 data=synthetic \
        seed=0,1,2,3,4 --seconds "$SEED_SECONDS" -o "$OUT" --force
else
    echo "sweep_figure6_5seeds: skipped, $left s of the $BUDGET_S s budget left" | tee -a "$OUT/steps.txt"
fi

echo "results: $OUT"
if [ ${#FAILED[@]} -ne 0 ]; then
    echo "failed: ${FAILED[*]}" >&2
    exit 1
fi
