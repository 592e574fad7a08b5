#!/usr/bin/env bash
# The GPU check of issue 19, as one command for the device machine (one H200, reached through the
# device tool; the call to make is in bench/README.md, "GPU check (issue 19)"), from a bare machine:
#
#   1. the Python packages: when the worker's code does not import (the device has torch and
#      transformers, not diffusers, pydantic, nats-py, OpenTelemetry), installs the wheels carried
#      in .whl/ (made here by bench/gpu_wheels.sh) into /tmp/easel-site, with no registry;
#   2. bench/gpu_throughput.py on the SD 1.5-sized random-weight model (bench/_models.py builds it on
#      the GPU): the plain diffusers pipeline at 1 and 16 images, the worker's path eager and
#      compiled (worker-default: CUDA graphs, channels-last, fused QKV) at buckets 1 and 16, one job
#      at a time (p50/p95) and a queue of 64, the fraction of the FLOP floor, the accuracy against
#      the plain pipeline, and a restarted worker on the warm compile cache;
#   3. [optional] a Flux-size row, once the models issue (14) adds a `bench-flux` model;
#   4. ONE report of it all (bench/gpu_throughput.py --render), written with a JSON of the figures
#      and the whole log to $OUT when $OUT is set.
#
# Time: everything must end within GPU_CHECK_BUDGET_S (default 540 s, 9 minutes; the device runs a
# command for at most 10). The bench's time guard (--deadline) starts a variant only when its
# estimate fits (a cold compile is estimated at GPU_CHECK_COMPILE_ESTIMATE_S per shape; the issue
# measured 93-121 s on an H100) and says which rows it skipped; the restart probe is killed at the
# deadline; the bench itself is killed 15 s before the budget's end, and the report is then made of
# the phases it had finished.
#
#   bench/gpu_check.sh           # full mode: needs CUDA
#   bench/gpu_check.sh --tiny    # the same script on a CPU: tiny-sd, 2 steps, small counts, bucket 2
#                                # (tests/unit/test_gpu_check.py runs it in `make test`)
#
# Settings (environment): PYTHON (default python3), GPU_CHECK_BUDGET_S, GPU_CHECK_WORK (models,
# compile cache and JSON; default /tmp/easel-gpu-check), GPU_CHECK_MODELS_DIR (tiny mode: where
# tiny-sd is; default ./models, else built), GPU_CHECK_COMPILE_ESTIMATE_S, GPU_CHECK_PEAK_TFLOPS
# (the FLOP floor's peak; default 787, the bf16 matrix rate measured on the H200 here: 769-798),
# GPU_CHECK_FLUX_MIN_S (time the Flux row needs left to start; default 180), OUT.
set -uo pipefail
cd "$(dirname "$0")/.."

T0=$(date +%s)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
WORK=${GPU_CHECK_WORK:-/tmp/easel-gpu-check}
SITE=/tmp/easel-site
HARD=$((T0 + BUDGET - 15)) # the bench is killed here: 15 s left for the report
DEADLINE=$((HARD - 20))    # nothing new starts after this (the time guard)
TINY=0
case "${1:-}" in
--tiny) TINY=1 ;;
"") ;;
*)
    echo "usage: bench/gpu_check.sh [--tiny]" >&2
    exit 2
    ;;
esac
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

say() { echo "gpu_check [$(($(date +%s) - T0)) s]: $*"; }
left() { echo $(($1 - $(date +%s))); }

# The worker's own modules import everything the bench needs (diffusers, pydantic-settings, nats,
# OpenTelemetry, the generated gRPC stubs with their protobuf and grpcio version checks).
importable() {
    PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
        "import diffusers, transformers, torch, services.inference.worker.runner, services.inference.pipelines" \
        2>"$WORK/import.err"
}

packages() {
    if importable; then
        say "packages: importable already; no wheels installed"
        return 0
    fi
    if [ ! -d easel ]; then
        say "FAILED: no generated gRPC stubs (easel/): run make proto here and carry \"easel\""
        return 1
    fi
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        say "FAILED: packages missing and no wheels in .whl/: run bench/gpu_wheels.sh and carry \".whl\""
        tail -3 "$WORK/import.err"
        return 1
    fi
    say "packages: installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE (no registry)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .whl/*.whl || return 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if ! importable; then
        say "FAILED: the worker's modules still do not import:"
        tail -5 "$WORK/import.err"
        return 1
    fi
    say "packages: installed; the worker's modules import"
}

# One bench run under the hard limit; $1 names it, the rest are its arguments.
bench() {
    local name=$1 rc secs
    shift
    secs=$(left "$HARD")
    [ "$secs" -ge 1 ] || secs=1 # (0 would be no limit at all)
    timeout -k 10 "$secs" "$PY" -u bench/gpu_throughput.py "$@" --deadline "$DEADLINE" \
        --no-report --json "$WORK/$name.json"
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        say "$name: KILLED at the hard limit ($((HARD - T0)) s); the report has the phases it finished"
    elif [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then # 1: over the accuracy tolerance, which the report says
        say "$name: the bench FAILED with status $rc (see above)"
    fi
    return "$rc"
}

# --- optional: a Flux-size row (1024x1024, 28 steps, one image and four) --------------------------
# For when the models issue (14) adds the Flux family: bench/_models.py then has a `bench-flux`
# model, and bench/gpu_throughput.py must know its transformer (its FLOP count and pipeline) too.
# Until then this says it is skipped. It runs after the SD 1.5 rows, only when GPU_CHECK_FLUX_MIN_S
# are left, eager only (no compile, no restart probe).
flux_row() {
    if ! "$PY" -c "import sys; sys.path.insert(0, 'bench'); import _models; sys.exit('bench-flux' not in _models.SPECS)" \
        2>/dev/null; then
        say "Flux-size row: skipped: bench/_models.py has no bench-flux model (the Flux family of issue 14 is not there)"
        return 0
    fi
    if [ "$TINY" -eq 1 ]; then
        say "Flux-size row: skipped in tiny mode"
        return 0
    fi
    local need=${GPU_CHECK_FLUX_MIN_S:-180}
    if [ "$(left "$DEADLINE")" -lt "$need" ]; then
        say "Flux-size row: skipped by the time guard: $(left "$DEADLINE") s left, it needs $need s"
        return 0
    fi
    say "Flux-size row: bench-flux at 1024x1024, 28 steps, 1 and 4 images, eager"
    bench flux --models bench-flux --models-dir "$WORK/models" --compile-cache "$WORK/compile-cache" \
        --size 1024 --steps 28 --singles 1 --burst 4 --queue 4 --batch-max 4 --variants eager --no-restart \
        --peak-tflops "${GPU_CHECK_PEAK_TFLOPS:-787}" || say "Flux-size row: no figures (see above)"
}

main() {
    say "start: $([ "$TINY" -eq 1 ] && echo "TINY mode (CPU)" || echo "full mode"), budget $BUDGET s," \
        "time guard at $((DEADLINE - T0)) s, hard limit at $((HARD - T0)) s; work folder $WORK"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader ||
            true
    fi
    packages || return 3
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
        torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"

    local args rc=0
    if [ "$TINY" -eq 1 ]; then
        args=(--tiny --models-dir "${GPU_CHECK_MODELS_DIR:-models}" --steps 2 --singles 2 --burst 2 --queue 4
            --batch-max 2 --variants eager,compiled --buckets 2)
    else
        if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
            say "FAILED: no CUDA device here (use --tiny on a CPU)"
            return 3
        fi
        args=(--models bench-sd15 --models-dir "$WORK/models" --compile-cache "$WORK/compile-cache"
            --steps 30 --singles 8 --burst 16 --queue 64 --batch-max 16 --variants eager,worker-default
            --buckets 1,16 --compile-estimate-s "${GPU_CHECK_COMPILE_ESTIMATE_S:-130}"
            --peak-tflops "${GPU_CHECK_PEAK_TFLOPS:-787}")
    fi
    bench sd15 "${args[@]}" || rc=$?
    flux_row

    local parts=()
    for f in "$WORK/sd15.json" "$WORK/flux.json"; do
        [ -f "$f" ] && parts+=("$f")
    done
    if [ "${#parts[@]}" -eq 0 ]; then
        say "no figures: the bench stopped before its first phase ended"
        return 1
    fi
    say "the report ($(left "$((T0 + BUDGET))") s of the budget left):"
    local rendered=0
    "$PY" bench/gpu_throughput.py --render "${parts[@]}" ${OUT:+--out "$OUT"} || rendered=$?
    [ "$rc" -ne 0 ] || rc=$rendered # 1: a row over the accuracy tolerance
    if [ -n "${OUT:-}" ]; then
        say "wrote $OUT/gpu_check.md, $OUT/gpu_check.json and $OUT/gpu_check.log"
    fi
    say "done in $(($(date +%s) - T0)) s of $BUDGET; exit status $rc"
    return "$rc"
}

mkdir -p "$WORK"
rm -f "$WORK"/*.json # a report only of this run
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    main 2>&1 | tee "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
main
