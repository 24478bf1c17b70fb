#!/usr/bin/env bash
# The GPU check (issue 16, item 7), prepared to run once, as one command, on a lent GPU host.
#
# Measures train-step examples/s of the e-commerce MMoE (configs/ecommerce.py) with EW and
# with exact whole-trunk PCGrad at large batches, through experiments/bench_throughput.py
# (the step alone, and fed by the real input pipeline), and records what ran where.
#
#   bash experiments/device_check.sh fetch      # here, with network: the wheels a bare
#                                                # GPU image lacks, into .whl/ (git-ignored)
#   bash experiments/device_check.sh run OUT    # there: installs .whl/ if present, writes
#                                                # OUT/device.txt and OUT/gpu_throughput.jsonl
#
# With the device tool, whose copy of the tree has no .git (so the commit is passed in):
#   run(command="MTL_JAX_COMMIT=<git rev-parse HEAD> bash experiments/device_check.sh run $OUT",
#       carry=[".whl"], timeout_s=560)
# then append OUT/gpu_throughput.jsonl to experiments/results/ and report it there.
# Knobs (environment): BATCHES (default "16384 32768 65536"), METHODS ("ew pcgrad"),
# STEPS (64 per timed repeat), REPEATS (3), PER_DISPATCH (8), CONFIG
# (configs/ecommerce.py), EXTRA_FLAGS (more flags for every benchmark), PYTHON (python3),
# STEP_TIMEOUT (seconds per benchmark, 120), BUDGET (seconds for the whole run, 500: a
# benchmark that might not finish inside it is skipped, so the device call's 600 s limit
# still returns the files), WHEEL_DIR (.whl).
set -uo pipefail
cd "$(dirname "$0")/.."

# What the GPU image (Python 3.12, jax/flax/optax/orbax/numpy preinstalled) does not hold.
WHEELS="grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0 tensorboardX==2.6.5"
PYTHON=${PYTHON:-python3}

fetch() {
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    local platforms=""
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
        manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=" --platform $p"
    done
    # shellcheck disable=SC2086  # the platform flags are meant to split
    $PYTHON -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp $platforms -d .whl $WHEELS
}

run() {
    local out=${1:?usage: device_check.sh run OUT_DIR}
    mkdir -p "$out"
    local wheels=${WHEEL_DIR:-.whl}
    if compgen -G "$wheels/*.whl" >/dev/null; then
        $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$wheels"/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    {
        date -u
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
        $PYTHON -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__); print(jax.devices())"
    } 2>&1 | tee "$out/device.txt"
    local failed=0
    for method in ${METHODS:-ew pcgrad}; do
        for batch in ${BATCHES:-16384 32768 65536}; do
            if ((SECONDS + ${STEP_TIMEOUT:-120} > ${BUDGET:-500})); then
                echo "== $method, batch $batch: skipped, ${SECONDS}s of ${BUDGET:-500}s spent" |
                    tee -a "$out/device.txt"
                failed=1
                continue
            fi
            echo "== $method, batch $batch" | tee -a "$out/device.txt"
            timeout "${STEP_TIMEOUT:-120}" $PYTHON experiments/bench_throughput.py \
                --config="${CONFIG:-configs/ecommerce.py}" --batch_size="$batch" \
                --steps="${STEPS:-64}" --repeats="${REPEATS:-3}" \
                --steps_per_dispatch="${PER_DISPATCH:-8}" \
                --config.balancing.method="$method" --out="$out/gpu_throughput.jsonl" \
                ${EXTRA_FLAGS:-} >"$out/bench.log" 2>&1
            local rc=$?
            grep '^{' "$out/bench.log" | tee -a "$out/device.txt"
            if [ $rc -ne 0 ]; then
                failed=1
                echo "exit $rc; the log's end:" | tee -a "$out/device.txt"
                tail -20 "$out/bench.log" | tee -a "$out/device.txt"
            fi
        done
    done
    rm -f "$out/bench.log"
    return $failed
}

case "${1:-}" in
fetch) fetch ;;
run) run "${2:-}" ;;
*)
    echo "usage: $0 fetch | run OUT_DIR" >&2
    exit 2
    ;;
esac
