#!/usr/bin/env bash
# One fail-closed call on a GPU machine (no network needed), about 8 minutes
# on an H200 (GPU_CHECK_SECONDS, default 470):
#   1. the GPU, driver and nvcc (the CUDA bin folder first on PATH);
#   2. gpunet._C built with nvcc for sm_90 only (GPUNET_CUDA_ARCHS, default
#      "90") in a fresh build folder, no build isolation, no downloads;
#   3. the GPU parity suite on cuda and cupy, with a table per kernel family
#      (ran, passed, failed, skipped); it fails unless every family passed at
#      least one cuda test, so a run where gpunet._C never executed fails;
#   4. compute-sanitizer memcheck and racecheck over one small parity case
#      per family (any error fails);
#   5. the benchmarks on cuda and cupy against PyTorch CUDA on the same
#      shapes, with the copy bandwidth and cuBLAS GEMM rate measured in the
#      same run as ceilings (TF32 off, recorded);
#   6. a one-screen summary.
# Every stage runs under `timeout`; a failing stage does not stop the later
# ones, and the script exits non-zero if any failed. With no GPU visible it
# exits non-zero at once. Files go to $OUT when set, else bench/results/, as
# <gpu>-driver<version>-cuda<version>-<commit>-<date>-*.
#
#   bash bench/gpu_check.sh                    # on a GPU machine
#   bash bench/gpu_check.sh --quick            # a few tests per family, tiny benchmark shapes
#   bash bench/gpu_check.sh --dry-run --quick  # anywhere: the same stages on the sim backend
#                                              # (no _C build, no sanitizer; PyTorch CPU if installed)
#
# Needs python3 (PYTHON) with numpy, pytest, cupy, torch, pybind11, cmake
# (ninja optional) and the CUDA toolkit (CUDA_HOME, default /usr/local/cuda).
# GPUNET_COMMIT names the commit where the copy has no .git folder.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0 QUICK=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument $arg (expected --dry-run, --quick)" >&2; exit 2 ;;
    esac
done

CUDA_HOME="${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}"
[ -d "$CUDA_HOME/bin" ] && export PATH="$CUDA_HOME/bin:$PATH"
PY="${PYTHON:-python3}"
START=$(date +%s)
BUDGET="${GPU_CHECK_SECONDS:-470}"
left() { echo $((BUDGET - ($(date +%s) - START))); }
slug() { tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9.]\+/-/g' -e 's/^-//' -e 's/-$//'; }

# ---- fail fast: no GPU, no check (CUDA_VISIBLE_DEVICES="" or -1 hides them all)
if [ "$DRY" = 0 ]; then
    case "${CUDA_VISIBLE_DEVICES-unset}" in
        ""|-1) GPUS="" ;;
        *) GPUS=$(timeout 20 nvidia-smi -L 2>/dev/null | grep '^GPU ') ;;
    esac
    if [ -z "$GPUS" ]; then
        echo "gpu_check: no GPU visible (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them);" \
             "nothing was run. On a machine without a GPU: bash bench/gpu_check.sh --dry-run --quick" >&2
        exit 3
    fi
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)
    DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1)
else
    GPU="sim" DRIVER="none"
fi
CUDA=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')
COMMIT=${GPUNET_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo no-git)}
TAG="$(echo "$GPU" | slug)-driver${DRIVER}-cuda${CUDA:-none}-${COMMIT}-$(date +%Y-%m-%d-%H%M)"
[ "$DRY" = 1 ] && TAG="dryrun-$TAG"
R="${OUT:-bench/results}"
mkdir -p "$R"
STAGES="$R/$TAG-stages.tsv"
: > "$STAGES"
FAILED=0

# stage NAME CAP COMMAND: run COMMAND (a bash string) under timeout, at most CAP
# seconds and never past the budget; log to $R/$TAG-NAME.log; record the status.
stage() {
    local name=$1 cap=$2 cmd=$3 log="$R/$TAG-$1.log" t0 rc note=""
    local limit=$(( $(left) - 15 ))
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 10 ]; then
        printf '%s\t%s\t%s\t%s\n' "$name" 1 0 "not run: no time left in the ${BUDGET}s budget" >> "$STAGES"
        FAILED=1
        return
    fi
    echo "== $name (limit ${limit}s) -> $log"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" bash -c "$cmd" > "$log" 2>&1
    rc=$?
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="timed out after ${limit}s; "
    tail -n 30 "$log"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "${note}log $log" >> "$STAGES"
    [ "$rc" = 0 ] || FAILED=1
}
skipped() { printf '%s\t-\t0\t%s\n' "$1" "$2" >> "$STAGES"; }
export PY R TAG

# ---- what ran, on what
stage env 60 '
echo "date: $(date -Is)"
echo "commit: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "(dirty)")"
echo "gpu: '"$GPU"'  driver: '"$DRIVER"'  nvcc: $(command -v nvcc || echo none) '"${CUDA:-}"'"
nvidia-smi 2>/dev/null || echo "nvidia-smi: none"
nvcc --version 2>/dev/null
"$PY" - <<EOF
import platform, numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
try:
    import cupy
    rt = cupy.cuda.runtime
    print("cupy", cupy.__version__, "runtime", rt.runtimeGetVersion(), "driver API", rt.driverGetVersion())
except Exception as e:
    print("cupy:", type(e).__name__, e)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
except Exception as e:
    print("torch:", type(e).__name__, e)
EOF'

# ---- gpunet._C for this GPU only, from a fresh build folder
if [ "$DRY" = 0 ]; then
    BUILD=$(mktemp -d "${TMPDIR:-/tmp}/gpunet-gpucheck-build.XXXXXX")
    export BUILD ARCHS="${GPUNET_CUDA_ARCHS:-90}"
    stage build 180 '
set -e
# a module left by an earlier build must not stand in for this one
rm -f gpunet/_C$("$PY" -c "import sysconfig; print(sysconfig.get_config_var(\"EXT_SUFFIX\"))")
gen=""; ninja --version > /dev/null 2>&1 && gen="-G Ninja"
cmake -S . -B "$BUILD" $gen -DPython_EXECUTABLE="$(command -v "$PY")" -DGPUNET_BUILD_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" -DGPUNET_OUTPUT_DIR="$PWD/gpunet"
# _C_sim too (the test set-up probes every backend), in the same parallel build
cmake --build "$BUILD" --target _C _C_sim --parallel "$(nproc)"
"$PY" -c "import gpunet, gpunet._C; s = gpunet.backends()[\"cuda\"]; print(\"cuda backend:\", s); assert s[\"available\"]"'
    grep -hE "Compiling entry|Used [0-9]+ registers|spill" "$R/$TAG-build.log" > "$R/$TAG-ptxas.txt"
    echo "ptxas: $(grep -c 'Compiling entry' "$R/$TAG-ptxas.txt") kernels; spilling:"
    grep -E "[1-9][0-9]* bytes spill" "$R/$TAG-ptxas.txt" | sort -u | head -n 10
    rm -rf "$BUILD"
else
    # no gpunet._C; the sim modules compile on first use (gpunet/simbuild.py): here, not in the parity stage
    stage build-sim 600 '"$PY" -c "import gpunet._C_sim as m; print(\"gpunet._C_sim:\", m.__file__)"'
fi

# ---- the parity suite, counted per kernel family
FAMILY_ARGS="-p gpunet.bench.gpucheck -p no:cacheprovider"
if [ "$DRY" = 0 ]; then
    SELECT='-k "cuda or cupy" --families-require cuda' BACKENDS=cuda,cupy
else
    SELECT='-k sim --families-require sim' BACKENDS=sim
fi
[ "$QUICK" = 1 ] && SELECT="$SELECT --families-quick 3 --families-backends $BACKENDS"
stage parity 180 "\"\$PY\" -m pytest -q -rs $FAMILY_ARGS $SELECT --families-json \"$R/$TAG-parity.json\" \
    --junitxml \"$R/$TAG-parity.xml\""

# ---- compute-sanitizer over one small parity case per family (CuPy's and
# PyTorch's caching allocators off, so that every allocation's bounds are seen)
if [ "$DRY" = 0 ]; then
    for tool in memcheck racecheck; do
        stage "sanitizer-$tool" 90 "PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool $tool --error-exitcode 86 \
            --print-limit 20 \"\$PY\" -m pytest -q -x $FAMILY_ARGS -k cuda --families-quick 1 --families-backends cuda \
            --families-require cuda --families-no-pool --families-json \"$R/$TAG-sanitizer-$tool.json\""
    done
else
    skipped sanitizer "dry run: no compute-sanitizer"
fi

# ---- benchmarks against PyTorch on the same shapes; ceilings measured in the run.
# The JSON/Markdown are rewritten after every case, so a stop keeps what was measured.
# (the dry run: sim, validated against PyTorch CPU when installed; `python -m gpunet.bench --quick` covers cpu)
if [ "$DRY" = 0 ]; then DEVICES="cuda cupy"; else DEVICES="sim"; fi
BENCH_ARGS="--device $DEVICES --out \"$R/$TAG-bench\""
[ "$QUICK" = 1 ] && BENCH_ARGS="$BENCH_ARGS --quick"
CASES=$(( $(left) - 60 ))
if [ "$CASES" -ge 30 ]; then
    stage bench $((CASES + 40)) "\"\$PY\" -m gpunet.bench $BENCH_ARGS --time-limit $CASES"
else
    printf 'bench\t1\t0\tnot run: no time left\n' >> "$STAGES"
    FAILED=1
fi

echo
"$PY" -m gpunet.bench.gpucheck summary "$R" "$TAG" || FAILED=1
echo "total $(( $(date +%s) - START ))s"
exit "$FAILED"
